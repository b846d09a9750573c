package ipvs

import (
	"net/netip"

	"github.com/nfhelper/nfhelper/nfq/packet"
	"github.com/nfhelper/nfhelper/nfq/seqnum"
)

// The kernel datapath's mode (DatapathKernel): packets reach the
// worker from a userspace conntrack helper's queue, after NAT, and once the
// verdict is in, the kernel's seqadj maps the packet's sequence number, its
// acknowledgement and its SACK blocks. The worker runs the same stream as
// in the other datapath (withheld split lines included) and mirrors the
// kernel's seqadj record of each direction, so that it can write numbers
// which the kernel's mapping turns into the stream's.
//
// seqadj keeps one correction point per direction: bytes after it move by
// one offset, bytes up to it by another. Each new segment whose length
// changes moves the point to itself, through the verdict's NFQA_CT (the
// kernel records the length change), so that if the daemon goes away the
// kernel goes on correcting every later segment by itself. Where one
// recorded length change cannot express what the stream did (a line held
// back in one segment and delivered with the next, a retransmission cut
// anew), the worker asks for the record to be set outright (ctnetlink)
// before the verdict.

// kernelMode is DatapathKernel's datapathMode.
type kernelMode struct{}

// channels asks for nothing. The kernel keeps its expectations until the
// control connection's entry goes, and refuses another master's for the
// same tuple until then: the claims stay as long, a FIN or RST closes
// none. The datapath's reader makes the expectations before the verdict:
// no copy of the segment waits for them. The helper's queue has every
// packet, pure ACKs too.
func (kernelMode) channels(*Worker, *Conn, *segment, *Verdict) {}

func (kernelMode) numbers(w *Worker, c *Conn, s *segment, v *Verdict) {
	outLen := int(s.inLen)
	if s.payload != nil {
		outLen = len(s.payload)
	}
	s.outSeq = w.kernelNumbers(s.st, s.seq, s.outSeq, int(s.inLen), outLen, s.st.next != s.read, v)
	if s.flags&packet.FlagACK != 0 {
		s.outAck = w.kernelAck(s.peer, s.ack, s.outAck, v)
	}
	s.sack = (s.sack || s.peer.kadj != seqnum.Adj{}) && w.hasSACKRoom()
	v.Kernel = w.kernelState(c, s.dir)
}

func (kernelMode) sackEdge(peer *stream, x seqnum.Value) seqnum.Value {
	if a, ok := peer.kadj.AckFor(x); ok {
		return a
	}
	return x
}

// KernelState is what the kernel datapath keeps of a helped connection in
// the kernel, so that a restarted daemon can go on: where each direction's
// helper has read to, whether inspection ended, and (read from conntrack,
// not the helper data) the seqadj records.
type KernelState struct {
	Synced  [2]bool   // by Direction
	Next    [2]uint32 // the first byte not yet read, in the sender's space (a seqnum.Value, as the helper data holds it)
	Stopped bool
	SeqAdj  [2]seqnum.Adj // by Direction
	Helper  uint64        // the helper's own state (StateSaver)
}

// kernelNumbers turns the stream's numbers for the packet into what to
// write, given what the kernel will do to them; c.mu is held, st is the
// packet's direction and peer the other. fresh: the segment brought bytes
// the stream had not read, and inLen and outLen are its payload's length
// before and after. Sets v.SeqAdjDiff (the length change goes to the
// kernel's record) or v.SeqAdj (the records are to be set first).
func (w *Worker) kernelNumbers(st *stream, seq, outSeq seqnum.Value, inLen, outLen int, fresh bool, v *Verdict) (wseq seqnum.Value) {
	a := &st.kadj
	diff := seqnum.Delta(outLen - inLen)
	if fresh {
		// Later bytes of this direction must move by what this segment
		// moved its end by.
		end := seq.Add(seqnum.Size(inLen))
		steady := end.Delta(outSeq.Add(seqnum.Size(outLen)))
		// IPv6 records are always set outright: for an NFQA_CT length
		// change the kernel reads the TCP sequence number at the IPv4
		// header's length (nf_ct_tcp_seqadj_set), from the IPv6 header.
		// So is the first change of a connection, to make its tracking
		// liberal: conntrack's window check maps acknowledgements back
		// by comparing them, unmapped, with the correction point
		// (nf_ct_seq_offset), and finds the peer's ACKs of a segment
		// that grew by withheld bytes beyond what the sender sent.
		if diff != 0 && outLen > 0 && !w.in.V6 && w.cur.help.liberal && a.After == seq.Delta(outSeq) && (a.Before == a.After || a.Pos.Before(seq)) {
			a.Record(seq, diff)
			v.SeqAdjDiff = true
			return seq
		}
		if a.After == steady {
			if s, ok := a.SeqFor(outSeq); ok {
				return s
			}
		}
		if outLen == 0 && inLen > 0 {
			// All withheld: the receiver's ACK of what came before must
			// reach the sender as one of this segment too (see
			// stream.acked), so the point goes just before the segment.
			*a = seqnum.Adj{Pos: seq.Shift(-1), Before: seq.Delta(outSeq), After: steady}
			w.setSeqAdj(v)
			return end
		}
		*a = seqnum.Adj{Pos: seq, Before: seq.Delta(outSeq), After: steady}
		w.setSeqAdj(v)
		return seq
	}
	if s, ok := a.SeqFor(outSeq); ok {
		return s
	}
	// A retransmission that starts in bytes the last point inserted: a
	// point of its own, later bytes moving as before.
	*a = seqnum.Adj{Pos: seq, Before: seq.Delta(outSeq), After: a.After}
	w.setSeqAdj(v)
	return seq
}

// kernelAck is what to write for an acknowledgement the receiver wrote as
// ack and the stream reads as want, of peer's bytes.
func (w *Worker) kernelAck(peer *stream, ack, want seqnum.Value, v *Verdict) seqnum.Value {
	if a, ok := peer.kadj.AckFor(want); ok {
		return a
	}
	// The receiver acknowledges part of a segment whose length changed
	// (the sender cut its retransmission anew): the kernel's point sits
	// at the segment's start. A point of its own, later bytes moving as
	// before.
	peer.kadj = seqnum.Adj{Pos: want, Before: want.Delta(ack), After: peer.kadj.After}
	w.setSeqAdj(v)
	return ack
}

// setSeqAdj asks for the connection's records to be set before the verdict.
func (w *Worker) setSeqAdj(v *Verdict) {
	c := w.cur
	c.help.liberal = true
	w.kadj = [2]seqnum.Adj{c.help.streams[FromClient].kadj, c.help.streams[FromServer].kadj}
	if v.SeqAdj == nil {
		v.SeqAdj = &w.kadj
		w.e.Stats.SeqAdjSet.Add(1)
	}
}

// kernelState is the helped connection's state after the packet.
func (w *Worker) kernelState(c *Conn, dir Direction) *KernelState {
	k := &w.kstate
	for d := range c.help.streams {
		s := &c.help.streams[d]
		k.Synced[d], k.Next[d], k.SeqAdj[d] = s.sync == synced, uint32(s.next), s.kadj
	}
	k.Stopped = c.help.streams[dir].stopped
	k.Helper = 0
	if s, ok := c.help.helper.(StateSaver); ok {
		k.Helper = s.SaveState()
	}
	return k
}

// AdoptKernel takes over a helped connection the kernel knows and the
// engine does not, as a restarted daemon finds them: client and vip are
// its original direction, server where it went, st what the kernel kept.
// False when no running service and server match (the connection then
// passes unread). A stream without a position is not read; one with a
// position picks up at its next data segment (bytes may have passed unread
// while no daemon ran), moved as the kernel's record moves new bytes.
func (e *Engine) AdoptKernel(client, vip, server netip.AddrPort, st KernelState) bool {
	if !e.adoptKernel(client, vip, server, st, false) {
		return false
	}
	e.Stats.Restored.Add(1)
	return true
}

// AdoptKernelMidstream takes up, mid-stream, an established connection of
// the helper that the engine does not know and whose helper data is empty:
// conntrackd created its entry on this (backup) router, carrying its
// seqadj records but not the helper data. Both streams pick up at their
// next data segment, resynchronising on a line boundary (Adoptable).
func (e *Engine) AdoptKernelMidstream(client, vip, server netip.AddrPort, seqadj [2]seqnum.Adj) bool {
	if !e.adoptKernel(client, vip, server, KernelState{Synced: [2]bool{true, true}, SeqAdj: seqadj}, true) {
		return false
	}
	e.Stats.AdoptedMidstream.Add(1)
	return true
}

func (e *Engine) adoptKernel(client, vip, server netip.AddrPort, st KernelState, midstream bool) bool {
	svc := e.snap.Load().services[vip]
	if svc == nil || svc.Helper == nil {
		return false
	}
	rs := svc.counted(server)
	if rs == nil {
		return false
	}
	c := newConn(Session{Client: client, VIP: vip, Server: server}, svc, rs)
	for d := range c.help.streams {
		s := &c.help.streams[d]
		if st.Synced[d] {
			s.resume(st.SeqAdj[d].After)
			s.stopped = st.Stopped
		}
		s.kadj = st.SeqAdj[d]
	}
	if s, ok := c.help.helper.(StateSaver); ok {
		s.LoadState(st.Helper)
	}
	if a, ok := c.help.helper.(Adoptable); ok && midstream {
		a.Adopted()
	}
	c.mu.Lock()
	c.setState(StateEstablished, now())
	c.mu.Unlock()
	e.Table.Insert(c)
	svc.helperStats.Sessions.Add(1)
	return true
}

// Engine returns the worker's engine.
func (w *Worker) Engine() *Engine { return w.e }
