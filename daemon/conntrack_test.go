package daemon

import (
	"net/netip"
	"testing"

	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/kernel"
	"github.com/nfhelper/nfhelper/nfq/nfqtest"
	"github.com/nfhelper/nfhelper/nfq/packet"
	"github.com/nfhelper/nfhelper/nft"
)

func TestEngineState(t *testing.T) {
	for s, want := range map[kernel.CtTCPState]ipvs.TCPState{
		kernel.CtTCPNone: ipvs.StateSynSent, kernel.CtTCPSynSent: ipvs.StateSynSent, kernel.CtTCPSynRecv: ipvs.StateSynSent,
		kernel.CtTCPEstablished: ipvs.StateEstablished,
		kernel.CtTCPFinWait:     ipvs.StateFinWait, kernel.CtTCPCloseWait: ipvs.StateFinWait, kernel.CtTCPLastAck: ipvs.StateFinWait,
		kernel.CtTCPTimeWait: ipvs.StateFinWait, kernel.CtTCPSynSent2: ipvs.StateFinWait,
		kernel.CtTCPClose: ipvs.StateClose,
	} {
		if got := engineState(s); got != want {
			t.Errorf("conntrack state %d: %v, want %v", s, got, want)
		}
	}
}

// ctFlow is the conntrack entry of a TCP connection from client to dst
// whose reply comes from server.
func ctFlow(client, dst, server netip.AddrPort) *conntrack.Flow {
	f := conntrack.NewFlow(unix.IPPROTO_TCP, 0, client.Addr(), dst.Addr(), client.Port(), dst.Port(), 0, 0)
	f.TupleReply.IP.SourceAddress, f.TupleReply.Proto.SourcePort = server.Addr(), server.Port()
	return &f
}

// A plain connection of a least-connection service gets its state from
// conntrack's updates.
func TestFollowerUpdates(t *testing.T) {
	ap := netip.MustParseAddrPort
	client, vip := ap("203.0.113.2:40000"), ap("198.51.100.10:80")
	rs := &ipvs.RealServer{Addr: ap("10.0.0.11:80"), Weight: 1}
	e := oneService(t, vip, "lc", "", rs)
	e.NewWorker().Process(nfqtest.Build(nfqtest.Segment{Src: client, Dst: vip, Seq: 100, Flags: packet.FlagSYN}), 0)
	f := &conntrackFollower{engine: e}
	ev := conntrack.Event{Type: conntrack.EventUpdate, Flow: ctFlow(client, vip, rs.Addr)}
	ev.Flow.ProtoInfo.TCP = &conntrack.ProtoInfoTCP{State: uint8(kernel.CtTCPEstablished)}
	f.handle(ev)
	if rs.Active.Load() != 1 || rs.Inactive.Load() != 0 {
		t.Fatalf("established: active %d inactive %d", rs.Active.Load(), rs.Inactive.Load())
	}
	ev.Flow.ProtoInfo.TCP.State = uint8(kernel.CtTCPTimeWait)
	f.handle(ev)
	if rs.Active.Load() != 0 || rs.Inactive.Load() != 1 {
		t.Fatalf("time wait: active %d inactive %d", rs.Active.Load(), rs.Inactive.Load())
	}
}

// A data connection conntrack confirms ends its channel, and the datapath
// is handed the channel; a connection without the channel mark is none.
func TestFollowerChannelUsed(t *testing.T) {
	ap := netip.MustParseAddrPort
	client, vip, rs := ap("203.0.113.2:40000"), ap("198.51.100.10:21"), ap("10.0.0.11:21")
	e := oneService(t, vip, "rr", "ftp", &ipvs.RealServer{Addr: rs, Weight: 1})
	w := e.NewWorker()
	seg := func(src, dst netip.AddrPort, seq, ack uint32, flags uint8, payload string) ipvs.Verdict {
		return w.Process(nfqtest.Build(nfqtest.Segment{Src: src, Dst: dst, Seq: seq, Ack: ack, Flags: flags, Payload: []byte(payload)}), 0)
	}
	seg(client, vip, 100, 0, packet.FlagSYN, "")
	seg(rs, client, 5000, 101, packet.FlagSYN|packet.FlagACK, "")
	seg(client, rs, 101, 5001, packet.FlagPSH|packet.FlagACK, "PASV\r\n")
	v := seg(rs, client, 5001, 107, packet.FlagPSH|packet.FlagACK, "227 Entering Passive Mode (10,0,0,11,156,64).\r\n")
	if len(v.Open) != 1 || v.Open[0].Kind != ipvs.ChannelPassive {
		t.Fatalf("227 opened %+v", v.Open)
	}
	ch := v.Open[0]
	var used []ipvs.Channel
	f := &conntrackFollower{engine: e, used: func(ch ipvs.Channel) { used = append(used, ch) }}
	data := conntrack.Event{Type: conntrack.EventNew, Flow: ctFlow(netip.AddrPortFrom(client.Addr(), 40001), ch.VIP, ch.Server)}
	f.handle(data) // no channel mark: not one of the daemon's
	if len(used) != 0 || !e.Claimed(ch) {
		t.Fatalf("unmarked connection used the channel: %+v", used)
	}
	data.Flow.Mark = nft.ChannelMark
	f.handle(data)
	if len(used) != 1 || used[0].VIP != ch.VIP || e.Claimed(ch) {
		t.Fatalf("used %+v, still claimed %v", used, e.Claimed(ch))
	}
}

// A connection conntrackd creates on a backup router (born established,
// with the daemon's follow mark and the offsets in its labels) is adopted
// with those offsets and its elements handed to the datapath; a new
// connection's own first event (its SYN) and an unmarked one are not.
func TestFollowerAdopts(t *testing.T) {
	ap := netip.MustParseAddrPort
	client, vip := ap("203.0.113.2:40000"), ap("198.51.100.10:21")
	rs := &ipvs.RealServer{Addr: ap("10.0.0.11:21"), Weight: 1}
	e := oneService(t, vip, "rr", "ftp", rs)
	dp := &compatPath{engine: e, adopted: make(chan adoption, 4)}
	f := &conntrackFollower{engine: e, adopt: dp.adopt}
	event := func(state kernel.CtTCPState, mark uint32) conntrack.Event {
		ev := conntrack.Event{Type: conntrack.EventNew, Flow: ctFlow(client, vip, rs.Addr)}
		ev.Flow.ProtoInfo.TCP = &conntrack.ProtoInfoTCP{State: uint8(state)}
		ev.Flow.Mark = mark
		labels, _ := kernel.OffsetLabels([2]int32{0, 3})
		ev.Flow.Labels = labels[:]
		return ev
	}
	f.handle(event(kernel.CtTCPSynSent, nft.FollowMark))
	f.handle(event(kernel.CtTCPEstablished, 0))
	if e.Table.LookupVIP(client, vip) != nil {
		t.Fatal("adopted a connection's SYN, or an unmarked connection")
	}
	f.handle(event(kernel.CtTCPEstablished, nft.FollowMark))
	if e.Table.LookupVIP(client, vip) == nil || e.Stats.AdoptedMidstream.Load() != 1 {
		t.Fatal("not adopted")
	}
	select {
	case a := <-dp.adopted:
		want := adoption{client: client, vip: vip, server: rs.Addr, off: [2]int32{0, 3}, timeout: ipvs.DefaultPolicy.ChannelTimeout}
		if a != want {
			t.Errorf("elements %+v, want %+v", a, want)
		}
	default:
		t.Error("no elements asked for")
	}
}
