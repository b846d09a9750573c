package ipvs_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/nfq/nfqtest"
	"github.com/nfhelper/nfhelper/nfq/packet"
	"github.com/nfhelper/nfhelper/nfq/seqnum"
)

// kernelConn is ftpConn in the kernel datapath's mode: packets come from
// the helper's queue after NAT, so the server's show the VIP as source.
func kernelConn(tb testing.TB) *ipvs.Worker {
	tb.Helper()
	e := ftpEngine(tb, ipvs.DatapathKernel)
	w := e.NewWorker()
	w.Process(seg(client, vip, 100, 0, packet.FlagSYN, ""), 0) // scheduled at raw priority
	w.Process(seg(client, rs1, 100, 0, packet.FlagSYN, ""), 0) // the helper's queue: after DNAT
	w.Process(seg(vip, client, isn, 101, packet.FlagSYN|ack, ""), 0)
	return w
}

// TestKernelSeqAdjRecordsLengthChange: a rewrite that changes a new
// segment's length goes to the kernel's seqadj with the verdict (NFQA_CT);
// later numbers are left for the kernel to map.
func TestKernelSeqAdjRecordsLengthChange(t *testing.T) {
	w := kernelConn(t)
	w.Process(seg(client, rs1, 101, isn+1, pshAck, "PASV\r\n"), 0)
	reply := "227 10,0,0,11,156,64\r\n" // no text to shorten: the rewrite is longer
	pkt := seg(vip, client, isn+1, 107, pshAck, reply)
	v := w.Process(pkt, 0)
	s, p := payload(t, v, pkt)
	if s != isn+1 || !strings.Contains(p, "198,51,100,10,156,64") {
		t.Fatalf("227: seq %d %q", s, p)
	}
	delta := len(p) - len(reply)
	// The connection's first change sets the records outright (which
	// makes its tracking liberal); later ones go with the verdict.
	if want := (seqnum.Adj{Pos: seqnum.Value(isn + 1), After: seqnum.Delta(delta)}); delta == 0 || v.SeqAdjDiff || v.SeqAdj == nil || v.SeqAdj[ipvs.FromServer] != want {
		t.Fatalf("227 of %+d bytes: SeqAdjDiff %v, SeqAdj %v", delta, v.SeqAdjDiff, v.SeqAdj)
	}
	if len(v.Open) != 1 || v.Open[0].Server != ap("10.0.0.11:40000") {
		t.Errorf("channel %+v", v.Open)
	}
	// A retransmission before the client's ACK gets the same edit, and
	// goes without a length change for the kernel to record again.
	v = w.Process(pkt, 0)
	if s, p2 := payload(t, v, pkt); s != isn+1 || p2 != p || v.SeqAdjDiff || v.SeqAdj != nil {
		t.Errorf("retransmission: seq %d %q (want %q), SeqAdjDiff %v, SeqAdj %v", s, p2, p, v.SeqAdjDiff, v.SeqAdj)
	}
	next := seg(vip, client, isn+1+uint32(len(reply)), 107, pshAck, "150 ok\r\n")
	if s, _ := payload(t, w.Process(next, 0), next); s != isn+1+uint32(len(reply)) {
		t.Errorf("later segment moved to %d", s)
	}
	cack := seg(client, rs1, 107, isn+1+uint32(len(reply)+delta), ack, "")
	if v := w.Process(cack, 0); v.Packet != nil {
		t.Errorf("client ACK altered")
	}
	w.Process(seg(client, rs1, 107, isn+1+uint32(len(reply)+delta+8), pshAck, "PASV\r\n"), 0)
	second := seg(vip, client, isn+1+uint32(len(reply)+8), 113, pshAck, reply)
	if v := w.Process(second, 0); !v.SeqAdjDiff || v.SeqAdj != nil {
		t.Errorf("second 227: SeqAdjDiff %v, SeqAdj %v", v.SeqAdjDiff, v.SeqAdj)
	}
}

// TestKernelSeqAdjSplitReply: a 227 split over two segments is withheld
// and rewritten whole, with the records set so that the kernel's mapping
// puts the whole line where the first half began.
func TestKernelSeqAdjSplitReply(t *testing.T) {
	w := kernelConn(t)
	w.Process(seg(client, rs1, 101, isn+1, pshAck, "PASV\r\n"), 0)
	first := seg(vip, client, isn+1, 107, pshAck, "227 Entering Passive Mode (10,0,")
	v := w.Process(first, 0)
	s, p1 := payload(t, v, first)
	if s != isn+1 || len(p1) >= 32 || v.SeqAdj == nil {
		t.Fatalf("first half: seq %d %q, SeqAdj %v", s, p1, v.SeqAdj)
	}
	second := seg(vip, client, isn+33, 107, pshAck, "0,11,156,64).\r\n")
	v = w.Process(second, 0)
	s, p2 := payload(t, v, second)
	// Written at its own number, which the recorded shortening of the
	// first half maps to where the withheld bytes begin.
	if p1+p2 != "227 Entering Passive  (198,51,100,10,156,64).\r\n" || !v.SeqAdjDiff || v.SeqAdj != nil || s != isn+33 {
		t.Errorf("second half: seq %d %q, SeqAdjDiff %v, SeqAdj %v", s, p1+p2, v.SeqAdjDiff, v.SeqAdj)
	}
	if len(v.Open) != 1 {
		t.Errorf("channels %+v", v.Open)
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
	// A restore, not an add-on connection taken over after DNAT.
	if e2.Stats.Restored.Load() != 1 || e2.Stats.Adopted.Load() != 0 {
		t.Errorf("restored %d, adopted %d", e2.Stats.Restored.Load(), e2.Stats.Adopted.Load())
	}
	// The old daemon saw the PASV; the kernel kept the FTP helper's state
	// with the positions. The reply came after the restart, past the kept
	// position (a NOOP and its reply passed while no daemon ran).
	pkt := seg(vip, other, isn+21, 119, pshAck, "227 Entering Passive Mode (10,0,0,11,156,64).\r\n")
	v = w2.Process(pkt, 0)
	if _, p := payload(t, v, pkt); !strings.Contains(p, "198,51,100,10,156,64") || len(v.Open) != 1 {
		t.Errorf("after adoption: %q %+v", p, v.Open)
	}
}

// kernelPath is a helped connection in the kernel datapath's mode with the
// kernel's seqadj after the worker: what each side receives.
type kernelPath struct {
	t      *testing.T
	w      *ipvs.Worker
	k      nfqtest.SeqAdj
	next   [2]uint32 // each sender's next sequence number
	got    [2]string // each receiver's byte stream
	recv   [2]uint32 // each receiver's next expected sequence number
	sndAck [2]uint32 // what each sender last saw acknowledged
}

func newKernelPath(t *testing.T) *kernelPath {
	return &kernelPath{t: t, w: kernelConn(t), next: [2]uint32{101, isn + 1}, recv: [2]uint32{isn + 1, 101}}
}

// send is one segment from dir's sender, carrying an ACK of all the
// receiver got so far, delivered in order.
func (kp *kernelPath) send(dir ipvs.Direction, data string) {
	kp.t.Helper()
	src, dst := client, rs1
	if dir == ipvs.FromServer {
		src, dst = vip, client
	}
	pkt := seg(src, dst, kp.next[dir], kp.recv[dir], pshAck, data)
	kp.next[dir] += uint32(len(data))
	v := kp.w.Process(pkt, 0)
	if v.Drop {
		kp.t.Fatalf("%q dropped", data)
	}
	b := pkt
	if v.Packet != nil {
		b = v.Packet
	}
	var p packet.Packet
	if err := packet.Parse(b, &p); err != nil {
		kp.t.Fatal(err)
	}
	if v.SeqAdj != nil {
		for d, a := range v.SeqAdj {
			kp.k.Set(d, a)
		}
	}
	out := string(p.PayloadBytes())
	if diff := int32(len(out) - len(data)); diff != 0 && v.SeqAdjDiff {
		kp.k.Record(int(dir), seqnum.Value(p.TCP().Seq()), seqnum.Delta(diff))
	}
	kseq, kack := kp.k.Map(int(dir), seqnum.Value(p.TCP().Seq()), seqnum.Value(p.TCP().Ack()))
	seq, ack := uint32(kseq), uint32(kack)
	peer := 1 - dir
	switch have := kp.got[peer]; {
	case out == "":
	case seq == kp.recv[peer]:
		kp.got[peer] += out
		kp.recv[peer] += uint32(len(out))
	case int32(seq+uint32(len(out))-kp.recv[peer]) <= 0 && strings.HasSuffix(have[:len(have)-int(kp.recv[peer]-seq)+len(out)], out):
		// Bytes it has, again (a withheld segment's repeated last byte).
	default:
		kp.t.Fatalf("%q from %d arrives at %d, receiver expects %d", out, dir, seq, kp.recv[peer])
	}
	kp.sndAck[peer] = ack
	if int32(ack-kp.next[peer]) > 0 {
		kp.t.Fatalf("%d's sender told %d arrived, it sent up to %d", peer, ack, kp.next[peer])
	}
}

// TestKernelSeqAdjSplitReplies: 227 replies cut as quirkyftpd cuts them
// reach the client rewritten whole, and the stream goes on in place.
func TestKernelSeqAdjSplitReplies(t *testing.T) {
	std := "227 Entering Passive Mode (10,0,0,11,156,64).\r\n"
	for name, parts := range map[string][]string{
		"crlf":    {std[:len(std)-1], std[len(std)-1:]},
		"numbers": {std[:33], std[33:]},
		"bytes":   strings.Split(std, ""),
	} {
		t.Run(name, func(t *testing.T) {
			kp := newKernelPath(t)
			kp.send(ipvs.FromServer, "220 hi\r\n")
			kp.send(ipvs.FromClient, "PASV\r\n")
			for _, p := range parts {
				kp.send(ipvs.FromServer, p)
				kp.send(ipvs.FromClient, "") // the client's ACK
			}
			kp.send(ipvs.FromClient, "RETR x\r\n")
			kp.send(ipvs.FromServer, "150 ok\r\n")
			kp.send(ipvs.FromClient, "")
			want := "220 hi\r\n227 Entering Passive  (198,51,100,10,156,64).\r\n150 ok\r\n"
			if kp.got[ipvs.FromClient] != want {
				t.Errorf("client got %q\nwant %q", kp.got[ipvs.FromClient], want)
			}
			if kp.sndAck[ipvs.FromServer] != kp.next[ipvs.FromServer] {
				t.Errorf("server told %d arrived, sent up to %d", kp.sndAck[ipvs.FromServer], kp.next[ipvs.FromServer])
			}
		})
	}
}

// TestHelperStatesHandedOver: a successor that takes the connection back
// and is given the helper states rewrites the reply to a PASV its
// predecessor saw; without them the reply is unsolicited.
func TestHelperStatesHandedOver(t *testing.T) {
	for _, pass := range []bool{true, false} {
		w := ftpConn(t)
		w.Process(seg(client, rs1, 101, isn+1, pshAck, "PASV\r\n"), 0)
		type rec struct {
			client, vip netip.AddrPort
			w           uint64
		}
		var recs []rec
		w.Engine().HelperStates(func(c, v netip.AddrPort, word uint64) { recs = append(recs, rec{c, v, word}) })
		if len(recs) != 1 || recs[0].client != client || recs[0].vip != vip || recs[0].w == 0 {
			t.Fatalf("states %+v", recs)
		}
		// The successor: its connection took the handshake, not the PASV.
		e2 := ftpConn(t).Engine()
		if pass && !e2.LoadHelperState(client, vip, recs[0].w) {
			t.Fatal("state not loaded")
		}
		w2 := e2.NewWorker()
		pkt := seg(rs1, client, isn+1, 107, pshAck, "227 Entering Passive Mode (10,0,0,11,156,64).\r\n")
		_, p := payload(t, w2.Process(pkt, 0), pkt)
		if rewritten := strings.Contains(p, "198,51,100,10"); rewritten != pass {
			t.Errorf("states passed %v: 227 went out as %q", pass, p)
		}
	}
}
