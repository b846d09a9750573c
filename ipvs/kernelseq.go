package ipvs

import (
	"bytes"
	"net/netip"
	"sync"

	"github.com/nfhelper/nfhelper/nfq"
)

// The kernel datapath's mode (Engine.KernelSeqAdj): packets reach the
// worker from a userspace conntrack helper's queue, after NAT, and the
// verdict hands rewritten payloads back with NFQA_CT, so that the kernel's
// seqadj records each length change and corrects sequence numbers,
// acknowledgements and SACK blocks itself. The worker then only edits
// payloads:
//
//   - sequence and acknowledgement numbers stay as they are;
//   - nothing is withheld: a line split over segments is delivered as it
//     comes, and its carried start can no longer be edited (seqadj keeps
//     one correction point per direction, so a later edit cannot reach
//     back before a delivered segment). Like ip_vs_ftp, a 227 reply split
//     over two segments is not rewritten;
//   - a retransmission of bytes already read gets the recorded edits
//     again, so that its length change matches the one the kernel knows.

// KernelState is what the kernel datapath keeps of a helped connection in
// the kernel (its helper data), so that a restarted daemon can go on: where
// each direction's helper has read to, and whether inspection ended.
type KernelState struct {
	Synced  [2]bool   // by Direction
	Next    [2]uint32 // the first byte not yet read, in the sender's space
	Stopped bool
}

// helpKernel is help's tail in the kernel datapath's mode; c.mu is held and
// st is the packet's direction. The verdict carries the connection's state
// after the packet.
func (w *Worker) helpKernel(c *Conn, dir Direction, st *stream, seq uint32, flags uint8) Verdict {
	v := w.editKernel(c, dir, st, seq, flags)
	k := &w.kstate
	for d := range c.help.streams {
		s := &c.help.streams[d]
		k.Synced[d], k.Next[d] = s.synced, s.next
	}
	k.Stopped = c.help.streams[dir].stopped
	v.Kernel = k
	return v
}

// AdoptKernel takes over a helped connection the kernel knows and the
// engine does not, as a restarted daemon finds them: client and vip are
// its original direction, server where it went, st what the kernel kept.
// False when no running service and server match (the connection then
// passes unread). A stream without a position is not read.
func (e *Engine) AdoptKernel(client, vip, server netip.AddrPort, st KernelState) bool {
	svc := e.snap.Load().services[vip]
	if svc == nil || svc.Helper == nil {
		return false
	}
	var rs *RealServer
	svc.mu.Lock()
	for _, r := range svc.Servers {
		if r.Addr == server {
			rs = r
			rs.Conns.Add(1)
			rs.Inactive.Add(1)
		}
	}
	svc.mu.Unlock()
	if rs == nil {
		return false
	}
	c := newConn(Session{Client: client, VIP: vip, Server: server}, svc, rs)
	resync.Store(c, &[2]bool{true, true})
	for d := range c.help.streams {
		if st.Synced[d] {
			c.help.streams[d] = stream{synced: true, next: st.Next[d], stopped: st.Stopped}
		}
	}
	c.mu.Lock()
	c.setState(StateEstablished, now())
	c.mu.Unlock()
	e.Table.Insert(c)
	e.Stats.Adopted.Add(1)
	return true
}

// resync holds, for connections adopted after a restart, the directions
// whose first segment may start past the kept position: bytes passed
// unread while no daemon ran and will never come again. Taken (and the
// entry dropped) with each direction's first segment.
var resync sync.Map // *Conn -> *[2]bool; c.mu guards the array

func takeResync(c *Conn, dir Direction) bool {
	v, ok := resync.Load(c)
	if !ok {
		return false
	}
	r := v.(*[2]bool)
	was := r[dir]
	r[dir] = false
	if !r[0] && !r[1] {
		resync.Delete(c)
	}
	return was
}

// editKernel edits the packet's payload.
func (w *Worker) editKernel(c *Conn, dir Direction, st *stream, seq uint32, flags uint8) Verdict {
	e := w.e
	in := w.in.PayloadBytes()
	if !st.synced || st.stopped || c.help.helper == nil || flags&(nfq.FlagSYN|nfq.FlagRST) != 0 || len(in) == 0 {
		return Verdict{}
	}
	if takeResync(c, dir) && nfq.SeqAfter(seq, st.next) && seq-st.next <= maxGap {
		// Passed while the daemon was down: read on from here.
		st.next, st.carry = seq, st.carry[:0]
	}
	end := seq + uint32(len(in))
	fin := flags&nfq.FlagFIN != 0
	out := w.pay[:0]
	switch {
	case !nfq.SeqAfter(end, st.next):
		// All read before: a retransmission. One that starts inside an
		// edit cannot be mapped on its own: it goes as it is.
		var from uint32
		if out, from = st.replay(out, seq, in); from != seq {
			return Verdict{}
		}
	case nfq.SeqAfter(seq, st.next):
		if seq-st.next > maxGap {
			st.synced = false
			return Verdict{}
		}
		// Its line may have begun in the missing bytes: the sender
		// resends it once the gap is filled.
		e.Stats.Dropped.Add(1)
		return Verdict{Drop: true}
	default:
		if !w.in.TCPChecksumValid() {
			e.Stats.BadChecksum.Add(1)
			return Verdict{}
		}
		if nfq.SeqBefore(seq, st.next) {
			var from uint32
			if out, from = st.replay(out, seq, in[:st.next-seq]); from != seq {
				return Verdict{}
			}
		}
		var ok bool
		if out, ok = w.inspect(c, dir, st, in[st.next-seq:], fin, out); !ok {
			return Verdict{}
		}
		st.next = end
	}
	v := Verdict{Open: w.open, Close: w.close}
	e.Stats.Channels.Add(uint64(len(w.open)))
	if bytes.Equal(out, in) {
		return v
	}
	pkt, err := nfq.Rewrite(w.buf[:0], &w.in, []nfq.Edit{{Off: 0, Len: len(in), New: out}})
	if err != nil {
		e.Stats.HelperErrors.Add(1)
		return Verdict{Drop: true}
	}
	w.buf = pkt
	e.Stats.Rewritten.Add(1)
	v.Packet = w.buf
	return v
}

// Engine returns the worker's engine.
func (w *Worker) Engine() *Engine { return w.e }
