//go:build integration

package daemon

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/internal/netnstest"
	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/kernel"
	"github.com/nfhelper/nfhelper/nfq/nfqtest"
	"github.com/nfhelper/nfhelper/nfq/packet"
	"github.com/nfhelper/nfhelper/nft"
)

// ctNamespace is a new network namespace's file descriptor and a conntrack
// socket in it.
func ctNamespace(t *testing.T) (int, *conntrack.Conn) {
	t.Helper()
	ns, err := os.Open(netnstest.Path(netnstest.New(t, "nfhct")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	ct, err := conntrack.Dial(&netlink.Config{NetNS: int(ns.Fd())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ct.Close() })
	return int(ns.Fd()), ct
}

// established is a confirmed, established conntrack entry of client ->
// vip, answered by server.
func established(client, vip, server netip.AddrPort) conntrack.Flow {
	f := conntrack.NewFlow(unix.IPPROTO_TCP, conntrack.StatusConfirmed, client.Addr(), vip.Addr(), client.Port(), vip.Port(), 600, 0)
	f.TupleReply.IP.SourceAddress, f.TupleReply.Proto.SourcePort = server.Addr(), server.Port()
	f.ProtoInfo.TCP = &conntrack.ProtoInfoTCP{State: uint8(kernel.CtTCPEstablished)}
	return f
}

// TestConntrackAlive asks a namespace's conntrack about a connection by
// its original tuple, as the engine's idle check does: there, then gone.
func TestConntrackAlive(t *testing.T) {
	ns, ct := ctNamespace(t)
	a := &conntrackAlive{netns: ns}
	defer a.close()
	ap := netip.MustParseAddrPort
	for _, s := range []ipvs.Session{
		{Client: ap("203.0.113.2:40000"), VIP: ap("198.51.100.10:21"), Server: ap("10.0.0.11:21")},
		{Client: ap("[2001:db8::2]:40000"), VIP: ap("[2001:db8:1::10]:21"), Server: ap("[fd00::11]:21")},
	} {
		if there, err := a.alive(s.Client, s.VIP); there || err != nil {
			t.Fatalf("%v before its entry: %v %v", s, there, err)
		}
		f := established(s.Client, s.VIP, s.Server)
		if err := ct.Create(f); err != nil {
			t.Fatalf("create %v: %v", s, err)
		}
		if there, err := a.alive(s.Client, s.VIP); !there || err != nil {
			t.Fatalf("%v with its entry: %v %v", s, there, err)
		}
		// By its reply tuple, as a SYN-ACK shows it (OriginalDst).
		if dst, err := a.originalDst(s.Server, s.Client); dst != s.VIP || err != nil {
			t.Fatalf("%v: original destination %v %v", s, dst, err)
		}
		if err := ct.Delete(f); err != nil {
			t.Fatal(err)
		}
		if there, err := a.alive(s.Client, s.VIP); there || err != nil {
			t.Fatalf("%v after its entry: %v %v", s, there, err)
		}
		if _, err := a.originalDst(s.Server, s.Client); !errors.Is(err, unix.ENOENT) {
			t.Fatalf("%v: original destination after its entry: %v", s, err)
		}
	}
}

// TestConntrackFollower follows a namespace's conntrack: an update gives a
// least-connection service's connection its state, the entry's end
// removes the connection.
func TestConntrackFollower(t *testing.T) {
	ns, ct := ctNamespace(t)
	ap := netip.MustParseAddrPort
	client, vip := ap("203.0.113.2:40000"), ap("198.51.100.10:80")
	rs := &ipvs.RealServer{Addr: ap("10.0.0.11:80"), Weight: 1}
	e := oneService(t, vip, "lc", "", rs)
	e.NewWorker().Process(nfqtest.Build(nfqtest.Segment{Src: client, Dst: vip, Seq: 100, Flags: packet.FlagSYN}), 0)
	f := &conntrackFollower{engine: e, netns: ns}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 2)
	go func() { done <- f.followStates(ctx) }()
	go func() { done <- f.followEnds(ctx) }()
	time.Sleep(200 * time.Millisecond) // both listening

	flow := established(client, vip, rs.Addr)
	flow.Mark = nft.FollowMark // as the rules mark what the daemon schedules
	flow.ProtoInfo.TCP.State = uint8(kernel.CtTCPSynRecv)
	if err := ct.Create(flow); err != nil {
		t.Fatal(err)
	}
	flow.ProtoInfo.TCP.State = uint8(kernel.CtTCPEstablished)
	if err := ct.Update(flow); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "established from the update", func() bool { return rs.Active.Load() == 1 })
	// The engine keeps a connection that saw a packet just now when an
	// entry of its ports goes (a reused port's old entry).
	time.Sleep(2100 * time.Millisecond)
	if err := ct.Delete(flow); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "removed at the entry's end", func() bool { return e.Table.Len() == 0 })
	if e.Stats.ConntrackGone.Load() != 1 {
		t.Errorf("conntrack gone %d", e.Stats.ConntrackGone.Load())
	}
	cancel()
	for range 2 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not %s", what)
		}
	}
}

// TestConntrackEventFilter: the event socket gets the new, update and
// destroy events of connections marked FollowMark or ChannelMark, and none
// of the others' (no mark, other bits).
func TestConntrackEventFilter(t *testing.T) {
	ns, ct := ctNamespace(t)
	c, err := dialEvents(ns, []netfilter.NetlinkGroup{netfilter.GroupCTNew, netfilter.GroupCTUpdate, netfilter.GroupCTDestroy})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ap := netip.MustParseAddrPort
	vip, server := ap("198.51.100.10:80"), ap("10.0.0.11:80")
	marks := map[uint16]uint32{40001: 0, 40002: nft.UnseenMark | 0x00ff0000, 40003: nft.FollowMark, 40004: nft.ChannelMark | 7}
	for port := uint16(40001); port <= 40004; port++ {
		f := established(netip.AddrPortFrom(ap("203.0.113.2:0").Addr(), port), vip, server)
		f.Mark = marks[port]
		if err := ct.Create(f); err != nil {
			t.Fatal(err)
		}
		f.Timeout = 300
		if err := ct.Update(f); err != nil {
			t.Fatal(err)
		}
		if err := ct.Delete(f); err != nil {
			t.Fatal(err)
		}
	}
	got := map[uint16]int{} // events by client port
	c.SetReadDeadline(time.Now().Add(time.Second))
	for {
		msgs, err := c.Receive()
		if err != nil {
			break // the deadline
		}
		for _, m := range msgs {
			var ev conntrack.Event
			if err := ev.Unmarshal(m); err != nil {
				t.Fatal(err)
			}
			port := ev.Flow.TupleOrig.Proto.SourcePort
			got[port]++
		}
	}
	for port, mark := range marks {
		want := 0
		if mark&followedMarks != 0 {
			want = 3 // new, update, destroy
		}
		if got[port] != want {
			t.Errorf("mark %#08x: %d events, want %d", mark, got[port], want)
		}
	}
}
