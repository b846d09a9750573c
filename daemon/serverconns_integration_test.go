//go:build integration

package daemon

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/nfq/nfqtest"
	"github.com/nfhelper/nfhelper/nfq/packet"
)

// TestResetConns: on_down reset deletes exactly the entries of connections
// to the VIP that the down server answers: not those of the other server,
// another port of the same server, or another VIP; IPv6 as IPv4.
func TestResetConns(t *testing.T) {
	ns, ct := ctNamespace(t)
	ap := netip.MustParseAddrPort
	for _, c := range []struct{ vip, down, other, client string }{
		{"198.51.100.10:80", "10.0.0.11:80", "10.0.0.12:80", "203.0.113.2"},
		{"[2001:db8:1::10]:80", "[fd00::11]:80", "[fd00::12]:80", "2001:db8::2"},
	} {
		vip, down, other := ap(c.vip), ap(c.down), ap(c.other)
		client := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr(c.client), port) }
		otherVIP := netip.AddrPortFrom(vip.Addr(), 8080)
		downOtherPort := netip.AddrPortFrom(down.Addr(), 8080)
		for _, f := range []struct {
			client      netip.AddrPort
			vip, server netip.AddrPort
		}{
			{client(40001), vip, down},
			{client(40002), vip, down},
			{client(40003), vip, other},
			{client(40004), otherVIP, downOtherPort},
		} {
			if err := ct.Create(established(f.client, f.vip, f.server)); err != nil {
				t.Fatal(err)
			}
		}
		n, err := resetConns(ns, false, vip, down)
		if n != 2 || err != nil {
			t.Errorf("%s: reset %d (%v), want 2", c.vip, n, err)
		}
		if n, err := resetConns(ns, true, vip, other); n != 0 || err != nil {
			t.Errorf("%s: UDP reset %d (%v) of TCP entries", c.vip, n, err)
		}
		left, err := ct.Dump(nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(left) != 2 {
			t.Errorf("%s: %d entries left, want 2 (the other server's, the other port's)", c.vip, len(left))
		}
		for _, f := range left {
			if balancedTo(f, unix.IPPROTO_TCP, vip, down) {
				t.Errorf("%s: entry of the down server left: %+v", c.vip, f.TupleOrig)
			}
		}
		if err := ct.Flush(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSyncStates: a drain reads the states of the server's running
// connections from conntrack: an established one becomes active in the
// engine, whatever its scheduler.
func TestSyncStates(t *testing.T) {
	ns, ct := ctNamespace(t)
	ap := netip.MustParseAddrPort
	client, vip := ap("203.0.113.2:40000"), ap("198.51.100.10:80")
	rs := &ipvs.RealServer{Addr: ap("10.0.0.11:80"), Weight: 1}
	e := oneService(t, vip, "rr", "", rs)
	e.NewWorker().Process(nfqtest.Build(nfqtest.Segment{Src: client, Dst: vip, Seq: 100, Flags: packet.FlagSYN}), 0)
	if rs.Active.Load() != 0 || rs.Inactive.Load() != 1 {
		t.Fatalf("before: active %d inactive %d", rs.Active.Load(), rs.Inactive.Load())
	}
	if err := ct.Create(established(client, vip, rs.Addr)); err != nil {
		t.Fatal(err)
	}
	if err := syncStates(ns, e, vip, rs.Addr); err != nil {
		t.Fatal(err)
	}
	if rs.Active.Load() != 1 || rs.Inactive.Load() != 0 {
		t.Errorf("after: active %d inactive %d, want 1 0", rs.Active.Load(), rs.Inactive.Load())
	}
}
