package ipvs_test

import (
	"strings"
	"testing"

	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/nfq"
)

// kernelConn is ftpConn in the kernel datapath's mode: packets come from
// the helper's queue after NAT, so the server's show the VIP as source.
func kernelConn(tb testing.TB) *ipvs.Worker {
	tb.Helper()
	h, _ := ipvs.LookupHelper("ftp")
	svc, err := ipvs.NewService("ftp", vip, "rr", h, []*ipvs.RealServer{{Addr: rs1, Weight: 1, Mark: 1 << 16}})
	if err != nil {
		tb.Fatal(err)
	}
	e, err := ipvs.NewEngine([]*ipvs.Service{svc}, 0x00ff0000)
	if err != nil {
		tb.Fatal(err)
	}
	e.KernelSeqAdj = true
	w := e.NewWorker()
	w.Process(seg(client, vip, 100, 0, nfq.FlagSYN, ""), 0) // scheduled at raw priority
	w.Process(seg(client, rs1, 100, 0, nfq.FlagSYN, ""), 0) // the helper's queue: after DNAT
	w.Process(seg(vip, client, isn, 101, nfq.FlagSYN|ack, ""), 0)
	return w
}

func seqAck(tb testing.TB, v ipvs.Verdict, orig []byte) (uint32, uint32) {
	tb.Helper()
	b := orig
	if v.Packet != nil {
		b = v.Packet
	}
	var p nfq.Packet
	if err := nfq.Parse(b, &p); err != nil {
		tb.Fatal(err)
	}
	return p.TCP().Seq(), p.TCP().Ack()
}

func TestKernelSeqAdjLeavesSequenceNumbers(t *testing.T) {
	w := kernelConn(t)
	w.Process(seg(client, rs1, 101, isn+1, pshAck, "PASV\r\n"), 0)
	reply := "227 Entering Passive Mode (10,0,0,11,156,64).\r\n"
	pkt := seg(vip, client, isn+1, 107, pshAck, reply)
	v := w.Process(pkt, 0)
	s, p := payload(t, v, pkt)
	if s != isn+1 || !strings.Contains(p, "198,51,100,10,156,64") {
		t.Fatalf("227: seq %d %q", s, p)
	}
	if _, a := seqAck(t, v, pkt); a != 107 {
		t.Errorf("ack moved to %d", a)
	}
	if len(v.Open) != 1 || v.Open[0].Server != ap("10.0.0.11:40000") {
		t.Errorf("channel %+v", v.Open)
	}
	delta := len(p) - len(reply)

	// Later segments and the client's acknowledgements are left to the
	// kernel's seqadj.
	next := seg(vip, client, isn+1+uint32(len(reply)), 107, pshAck, "150 ok\r\n")
	if s, _ := payload(t, w.Process(next, 0), next); s != isn+1+uint32(len(reply)) {
		t.Errorf("later segment moved to %d", s)
	}
	cack := seg(client, rs1, 107, isn+1+uint32(len(reply)+delta), ack, "")
	if v := w.Process(cack, 0); v.Packet != nil {
		t.Errorf("client ACK altered")
	}
	// A retransmitted 227 gets the same edit (its length change is the
	// one the kernel recorded).
	v = w.Process(pkt, 0)
	if s, p2 := payload(t, v, pkt); s != isn+1 || p2 != p {
		t.Errorf("retransmission: seq %d %q, want %q", s, p2, p)
	}
}

func TestKernelSeqAdjSplitReplyPassesUnedited(t *testing.T) {
	w := kernelConn(t)
	w.Process(seg(client, rs1, 101, isn+1, pshAck, "PASV\r\n"), 0)
	first := seg(vip, client, isn+1, 107, pshAck, "227 Entering Passive Mode (10,0,")
	v := w.Process(first, 0)
	if s, p := payload(t, v, first); s != isn+1 || p != "227 Entering Passive Mode (10,0," {
		t.Fatalf("first half withheld or moved: %d %q", s, p)
	}
	second := seg(vip, client, isn+33, 107, pshAck, "0,11,156,64).\r\n")
	v = w.Process(second, 0)
	if s, _ := payload(t, v, second); s != isn+33 {
		t.Errorf("second half moved to %d", s)
	}
}

func TestKernelSeqAdjGapDropped(t *testing.T) {
	w := kernelConn(t)
	late := seg(client, rs1, 201, isn+1, pshAck, "PASV\r\n")
	if v := w.Process(late, 0); !v.Drop {
		t.Errorf("a segment past a gap was not dropped")
	}
}

// TestKernelStateRestores: a restarted engine adopts a connection from the
// state the kernel kept and goes on rewriting where the old one stopped.
func TestKernelStateRestores(t *testing.T) {
	w := kernelConn(t)
	v := w.Process(seg(client, rs1, 101, isn+1, pshAck, "PASV\r\n"), 0)
	if v.Kernel == nil || !v.Kernel.Synced[ipvs.FromClient] || !v.Kernel.Synced[ipvs.FromServer] || v.Kernel.Next != [2]uint32{107, isn + 1} {
		t.Fatalf("state %+v", v.Kernel)
	}
	state := *v.Kernel

	w2 := kernelConn(t) // another engine, knowing nothing of this client
	e2 := w2.Engine()
	if e2.AdoptKernel(client, vip, ap("10.9.9.9:21"), state) {
		t.Error("adopted for a server the service does not have")
	}
	other := ap("203.0.113.9:40000")
	if !e2.AdoptKernel(other, vip, rs1, state) {
		t.Fatal("not adopted")
	}
	// The FTP helper answers a 227 only to a PASV it saw: the old one's
	// pending command is not kept (yet), so the next PASV is the first.
	// Both directions moved on while no daemon ran (a NOOP and its
	// reply): the first segments after the adoption start past the kept
	// positions.
	w2.Process(seg(other, rs1, 113, isn+1, pshAck, "PASV\r\n"), 0)
	pkt := seg(vip, other, isn+21, 119, pshAck, "227 Entering Passive Mode (10,0,0,11,156,64).\r\n")
	v = w2.Process(pkt, 0)
	if _, p := payload(t, v, pkt); !strings.Contains(p, "198,51,100,10,156,64") || len(v.Open) != 1 {
		t.Errorf("after adoption: %q %+v", p, v.Open)
	}
}
