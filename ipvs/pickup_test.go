package ipvs_test

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/nfq/packet"
)

var mss1460 = []byte{2, 4, 0x05, 0xb4}

// pickupEngine is an engine over services, each given as scheduler, helper
// ("": none), VIP and real servers.
type svcSpec struct {
	sched, helper string
	vip           netip.AddrPort
	servers       []netip.AddrPort
}

func pickupEngine(tb testing.TB, opts ipvs.Options, specs ...svcSpec) *ipvs.Engine {
	tb.Helper()
	var svcs []*ipvs.Service
	for _, sp := range specs {
		var h ipvs.Helper
		if sp.helper != "" {
			h, _ = ipvs.LookupHelper(sp.helper)
		}
		var rss []*ipvs.RealServer
		for _, a := range sp.servers {
			rss = append(rss, &ipvs.RealServer{Addr: a, Weight: 1})
		}
		svc, err := ipvs.NewService(sp.sched+"-"+sp.vip.String(), sp.vip, sp.sched, h, rss)
		if err != nil {
			tb.Fatal(err)
		}
		svcs = append(svcs, svc)
	}
	opts.MarkMask = 0x00ff0000
	e, err := ipvs.NewEngine(svcs, opts)
	if err != nil {
		tb.Fatal(err)
	}
	return e
}

// mssOf is the MSS option of the verdict's packet (orig where unaltered).
func mssOf(tb testing.TB, v ipvs.Verdict, orig []byte) uint16 {
	tb.Helper()
	opts := verdictPacket(tb, v, orig).TCP().Options()
	for i := 0; i+4 <= len(opts); i++ {
		if opts[i] == 2 && opts[i+1] == 4 {
			return binary.BigEndian.Uint16(opts[i+2:])
		}
	}
	return 0
}

// TestPickUpSynAck: a SYN-ACK from a real server of a helped
// kernel-scheduled service, for a connection the daemon never saw the SYN
// of, creates it (client's stream from the ACK number), lowers the MSS,
// counts it on the server, and the helper then rewrites the 227.
func TestPickUpSynAck(t *testing.T) {
	for _, tc := range []struct{ client, vip, rs netip.AddrPort }{
		{client, vip, rs1},
		{ap("[2001:db8::2]:40000"), ap("[2001:db8:1::10]:21"), ap("[fd00::11]:21")},
	} {
		e := pickupEngine(t, ipvs.Options{}, svcSpec{"mh", "ftp", tc.vip, []netip.AddrPort{tc.rs}})
		w := e.NewWorker()
		sa := seg(tc.rs, tc.client, isn, 101, packet.FlagSYN|ack, "", mss1460...)
		v := w.Process(sa, 0)
		if got := mssOf(t, v, sa); got != 1460-ipvs.MSSRoom || v.Drop {
			t.Errorf("%v: SYN-ACK's MSS %d, drop %v", tc.vip, got, v.Drop)
		}
		c := e.Table.LookupVIP(tc.client, tc.vip)
		if c == nil || c.Server != tc.rs || e.Stats.PickedUp.Load() != 1 || c.Real.Conns.Load() != 1 || c.Real.Inactive.Load() != 1 {
			t.Fatalf("%v: connection %+v, picked up %d", tc.vip, c, e.Stats.PickedUp.Load())
		}
		w.Process(seg(tc.rs, tc.client, isn+1, 101, pshAck, "220 hi\r\n"), 0)
		if c.State() != ipvs.StateEstablished || c.Real.Active.Load() != 1 {
			t.Errorf("%v: state %v, active %d", tc.vip, c.State(), c.Real.Active.Load())
		}
		w.Process(seg(tc.client, tc.rs, 101, isn+9, pshAck, "EPSV\r\n"), 0)
		reply := seg(tc.rs, tc.client, isn+9, 107, pshAck, "229 Entering Extended Passive Mode (|||40000|)\r\n")
		v = w.Process(reply, 0)
		if _, p := payload(t, v, reply); len(v.Open) != 1 || v.Open[0].VIP.Addr() != tc.vip.Addr() {
			t.Errorf("%v: 229 %q opened %+v", tc.vip, p, v.Open)
		}
	}
}

// TestPickUpRetransmittedSynAck: the same SYN-ACK again finds the
// connection it made (MSS lowered again); one of a new handshake on the
// same ports replaces it.
func TestPickUpRetransmittedSynAck(t *testing.T) {
	e := pickupEngine(t, ipvs.Options{}, svcSpec{"rr", "ftp", vip, []netip.AddrPort{rs1}})
	w := e.NewWorker()
	sa := seg(rs1, client, isn, 101, packet.FlagSYN|ack, "", mss1460...)
	w.Process(sa, 0)
	first := e.Table.LookupVIP(client, vip)
	v := w.Process(sa, 0)
	if c := e.Table.LookupVIP(client, vip); c != first || e.Stats.PickedUp.Load() != 1 || first.Real.Conns.Load() != 1 {
		t.Fatalf("retransmission: connection %p (first %p), picked up %d, conns %d", c, first, e.Stats.PickedUp.Load(), first.Real.Conns.Load())
	}
	if got := mssOf(t, v, sa); got != 1460-ipvs.MSSRoom {
		t.Errorf("retransmitted SYN-ACK's MSS %d", got)
	}
	w.Process(seg(rs1, client, isn+1, 101, pshAck, "220 hi\r\n"), 0)
	w.Process(seg(client, rs1, 101, isn+9, pshAck, "USER x\r\n"), 0)
	w.Process(sa, 0) // a late copy
	if c := e.Table.LookupVIP(client, vip); c != first || c.State() != ipvs.StateEstablished {
		t.Fatalf("late copy: connection %p (first %p)", c, first)
	}
	w.Process(seg(rs1, client, 9000, 70001, packet.FlagSYN|ack, ""), 0)
	c := e.Table.LookupVIP(client, vip)
	if c == first || c == nil || e.Stats.PickedUp.Load() != 2 || e.Table.Len() != 1 || first.Real.Conns.Load() != 2 || first.Real.Active.Load() != 0 {
		t.Errorf("new handshake: connection %p (old %p), picked up %d, table %d, conns %d, active %d",
			c, first, e.Stats.PickedUp.Load(), e.Table.Len(), first.Real.Conns.Load(), first.Real.Active.Load())
	}
}

// TestPickUpSharedServer: a server that several services hold does not
// tell the VIP: conntrack is asked (OriginalDst), without the engine's
// locks held, and its answer decides; no answer, or a service that is
// not a helped kernel-scheduled one, leaves the SYN-ACK untouched.
func TestPickUpSharedServer(t *testing.T) {
	vip2, plain := ap("198.51.100.20:21"), ap("198.51.100.30:21")
	var answer netip.AddrPort
	var fail error
	var e *ipvs.Engine
	asked := 0
	opts := ipvs.Options{OriginalDst: func(server, cl netip.AddrPort) (netip.AddrPort, error) {
		asked++
		if server != rs1 || cl != client {
			t.Errorf("asked about %v -> %v", server, cl)
		}
		e.Table.Len() // every shard's lock: none is held
		return answer, fail
	}}
	e = pickupEngine(t, opts,
		svcSpec{"rr", "ftp", vip, []netip.AddrPort{rs1}},
		svcSpec{"mh", "ftp", vip2, []netip.AddrPort{rs1, ap("10.0.0.12:21")}},
		svcSpec{"rr", "", plain, []netip.AddrPort{rs1}})
	w := e.NewWorker()
	sa := seg(rs1, client, isn, 101, packet.FlagSYN|ack, "", mss1460...)
	for _, tc := range []struct {
		answer netip.AddrPort
		fail   error
		want   netip.AddrPort // invalid: untouched
	}{
		{vip2, nil, vip2},
		{plain, nil, netip.AddrPort{}},
		{vip, errors.New("no entry"), netip.AddrPort{}},
		{vip, nil, vip},
	} {
		answer, fail = tc.answer, tc.fail
		e.Table.Expire(1 << 62)
		v := w.Process(sa, 0)
		var got netip.AddrPort
		if c, _ := e.Table.Lookup(client, rs1); c != nil {
			got = c.VIP
		}
		untouched := v.Packet == nil && !v.Drop && !v.SetMark
		if got != tc.want || untouched != !tc.want.IsValid() {
			t.Errorf("answer %v %v: connection to %v, untouched %v", tc.answer, tc.fail, got, untouched)
		}
	}
	if asked != 4 || e.Stats.PickupUnresolved.Load() != 1 {
		t.Errorf("asked %d, unresolved %d", asked, e.Stats.PickupUnresolved.Load())
	}
}

// TestPickUpNotHelped: SYN-ACKs from servers of a plain kernel-scheduled
// service, and of a daemon-scheduled helped one whose SYN was not seen, go
// untouched and create nothing; the kernel datapath picks up no SYN-ACK.
func TestPickUpNotHelped(t *testing.T) {
	plainRS, lcRS := ap("10.0.0.21:21"), ap("10.0.0.22:21")
	specs := []svcSpec{
		{"rr", "", ap("198.51.100.20:21"), []netip.AddrPort{plainRS}},
		{"wlc", "ftp", ap("198.51.100.30:21"), []netip.AddrPort{lcRS}},
		{"rr", "ftp", vip, []netip.AddrPort{rs1}},
	}
	e := pickupEngine(t, ipvs.Options{}, specs...)
	k := pickupEngine(t, ipvs.Options{Datapath: ipvs.DatapathKernel}, specs...)
	for _, tc := range []struct {
		e  *ipvs.Engine
		rs netip.AddrPort
	}{{e, plainRS}, {e, lcRS}, {k, rs1}} {
		sa := seg(tc.rs, client, isn, 101, packet.FlagSYN|ack, "", mss1460...)
		v := tc.e.NewWorker().Process(sa, 0)
		if v.Packet != nil || v.Drop || v.SetMark || tc.e.Table.Len() != 0 || tc.e.Stats.PickedUp.Load() != 0 {
			t.Errorf("%v: verdict %+v, table %d", tc.rs, v, tc.e.Table.Len())
		}
	}
}

// TestPickUpKernel: the kernel datapath picks a connection up from the
// conntrack entry of its SYN after NAT; the SYN's MSS is lowered, and the
// helper goes on as for a connection it scheduled.
func TestPickUpKernel(t *testing.T) {
	e := pickupEngine(t, ipvs.Options{Datapath: ipvs.DatapathKernel},
		svcSpec{"sh", "ftp", vip, []netip.AddrPort{rs1}},
		svcSpec{"lc", "ftp", ap("198.51.100.30:21"), []netip.AddrPort{rs1}})
	if e.PickUpKernel(client, ap("198.51.100.30:21"), rs1) || e.PickUpKernel(client, vip, ap("10.9.9.9:21")) {
		t.Fatal("picked up a daemon-scheduled service's connection, or one to a server the service lacks")
	}
	first := e.PickUpKernel(client, vip, rs1)
	again := e.PickUpKernel(client, vip, rs1) // the SYN retransmitted: the same connection
	if !first || !again || e.Stats.PickedUp.Load() != 1 {
		t.Fatalf("picked up %d", e.Stats.PickedUp.Load())
	}
	w := e.NewWorker()
	syn := seg(client, rs1, 100, 0, packet.FlagSYN, "", mss1460...)
	v := w.Process(syn, 0)
	if got := mssOf(t, v, syn); got != 1460-ipvs.MSSRoom || v.Kernel == nil || !v.Kernel.Synced[ipvs.FromClient] {
		t.Fatalf("SYN: MSS %d, state %+v", got, v.Kernel)
	}
	w.Process(seg(vip, client, isn, 101, packet.FlagSYN|ack, ""), 0)
	w.Process(seg(client, rs1, 101, isn+1, pshAck, "PASV\r\n"), 0)
	reply := seg(vip, client, isn+1, 107, pshAck, "227 Entering Passive Mode (10,0,0,11,156,64).\r\n")
	v = w.Process(reply, 0)
	if _, p := payload(t, v, reply); !strings.Contains(p, "198,51,100,10,156,64") || len(v.Open) != 1 {
		t.Errorf("227 %q opened %+v", p, v.Open)
	}
}
