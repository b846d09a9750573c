package ipvs

import (
	"bytes"

	"github.com/nfhelper/nfhelper/nfq/packet"
	"github.com/nfhelper/nfhelper/nfq/seqnum"
)

// A helped connection's segment, from the packet through its stream to
// what the receiver gets: Worker.help.

// segment is the helped packet a worker is handling: its numbers as it
// came, and what to write instead. The worker holds it, so that the
// datapath mode's methods take it without allocating.
type segment struct {
	dir      Direction
	st, peer *stream // the stream the segment belongs to, and the one it acknowledges
	seq, ack seqnum.Value
	flags    uint8
	inLen    seqnum.Size
	read     seqnum.Value    // st.next before the stream read the segment
	before   [2]seqnum.Delta // the streams' total offsets before it
	outSeq   seqnum.Value    // the sequence number to write
	outAck   seqnum.Value    // the acknowledgement to write
	payload  []byte          // the payload to write; nil: the packet's own
	sack     bool            // its SACK blocks are to be mapped
}

// help handles a packet of a connection the table knows.
func (w *Worker) help(c *Conn, dir Direction) Verdict {
	e := w.e
	flags := w.in.TCP().Flags()
	c.mu.Lock()
	defer c.mu.Unlock()
	w.cur, w.now = c, now()
	w.open, w.close = w.open[:0], w.close[:0]
	c.track(flags, w.now)
	if flags&packet.FlagSYN != 0 && c.Service.AddOn && dir == FromServer && !c.help.clientNAT.IsValid() {
		// The server's SYN-ACK came to the client's own address (no
		// SNAT): the connection no longer waits to learn another.
		e.mu.Lock()
		delete(e.unnamed, synAck{c.Server, seqnum.Value(w.in.TCP().Ack())})
		e.mu.Unlock()
	}
	if c.help == nil {
		return Verdict{} // balanced without a helper: nothing is ever edited
	}
	s := w.begin(c, dir, flags)
	if c.help.waitsAnnounced(s) {
		// A copy of the segment still waiting for its channels' elements
		// (the sender's retransmission timer fired first): the held one
		// goes on when the kernel has them.
		e.Stats.Dropped.Add(1)
		return Verdict{Drop: true}
	}
	var drop bool
	if s.outSeq, s.payload, drop = w.flow(c, s); drop {
		return Verdict{Drop: true}
	}
	v := &w.verdict
	*v = Verdict{}
	e.mode.channels(w, c, s, v)
	v.Open, v.Close = w.open, w.close
	e.Stats.Channels.Add(uint64(len(w.open)))
	if len(w.open) > 0 { // only a helper opens channels: c's service has one
		c.Service.helperStats.ChannelsOpened.Add(uint64(len(w.open)))
	}
	w.ackNumbers(s)
	e.mode.numbers(w, c, s, v)
	return w.write(s, v)
}

// begin sets the worker's segment up for the packet of c in direction dir,
// starting its stream at a SYN or at the first data segment after a
// restart; c.mu is held.
func (w *Worker) begin(c *Conn, dir Direction, flags uint8) *segment {
	tcp := w.in.TCP()
	s := &w.seg
	*s = segment{dir: dir, st: &c.help.streams[dir], peer: &c.help.streams[1-dir], flags: flags,
		seq: seqnum.Value(tcp.Seq()), ack: seqnum.Value(tcp.Ack()), inLen: seqnum.Size(len(w.in.PayloadBytes()))}
	if flags&packet.FlagSYN != 0 {
		s.st.start(s.seq)
	}
	s.st.resynced(s.seq, int(s.inLen), flags)
	s.before, s.read = c.help.totals(), s.st.next
	return s
}

// waitsAnnounced reports whether s is a copy of the segment that announced
// data channels and waits for their elements (Verdict.Announcing).
func (h *helped) waitsAnnounced(s *segment) bool {
	return h.announcing && h.annDir == s.dir && s.inLen > 0 &&
		s.seq.Before(h.annEnd) && s.seq.Add(s.inLen).After(h.annSeq)
}

// ackNumbers maps the segment's acknowledgement of the peer's stream, and
// notes whether its SACK blocks need mapping too.
func (w *Worker) ackNumbers(s *segment) {
	s.outAck, s.sack = s.ack, false
	if s.flags&packet.FlagACK == 0 || !s.peer.mapsAcks() {
		return
	}
	var skipped bool
	if s.outAck, skipped = s.peer.acked(s.ack); skipped {
		w.e.Stats.Skipped.Add(1)
	}
	s.peer.prune(s.outAck)
	s.sack = (s.peer.base != 0 || len(s.peer.edits) > 0) && w.hasSACKRoom()
}

// hasSACKRoom reports whether the packet has TCP options, where SACK
// blocks would be.
func (w *Worker) hasSACKRoom() bool { return w.in.TCP().DataOffset() > packet.TCPMinHeaderLen }

// write returns the verdict v for the segment: the packet as it came
// where nothing changes, else rewritten.
func (w *Worker) write(s *segment, v *Verdict) Verdict {
	e := w.e
	syn := s.flags&packet.FlagSYN != 0
	if s.payload == nil && s.outSeq == s.seq && s.outAck == s.ack && !s.sack {
		if syn {
			v.Packet = w.roomier()
		}
		return *v
	}
	if s.payload != nil {
		out, err := packet.Rewrite(w.buf[:0], &w.in, []packet.Edit{{Off: 0, Len: len(w.in.PayloadBytes()), New: s.payload}})
		if err != nil {
			// Cannot happen for payloads the stream bounded; never send a
			// half-corrected packet.
			e.Stats.HelperErrors.Add(1)
			w.cur.Service.helperStats.Errors.Add(1)
			return Verdict{Drop: true}
		}
		w.buf = out
		e.Stats.Rewritten.Add(1)
		w.cur.Service.helperStats.Rewritten.Add(1)
	} else {
		w.buf = append(w.buf[:0], w.in.Buf...)
	}
	packet.Parse(w.buf, &w.out)
	t := w.out.TCP()
	if syn {
		t.LowerMSS(MSSRoom, minMSS)
	}
	t.SetSeq(uint32(s.outSeq))
	if s.flags&packet.FlagACK != 0 {
		t.SetAck(uint32(s.outAck))
		if s.sack {
			w.peer = s.peer
			t.AdjustSACK(w.sackEdge)
		}
	}
	e.Stats.Corrected.Add(1)
	v.Packet = w.buf
	return *v
}

// sackEdge maps a SACK edge of the peer stream's bytes, as the receiver
// wrote it, to what to write instead.
func (w *Worker) sackEdge(edge uint32) uint32 {
	return uint32(w.e.mode.sackEdge(w.peer, w.peer.input(seqnum.Value(edge))))
}

// flow runs the segment through its stream: it returns the sequence number
// the receiver must see, and the payload it must get when that differs from
// the packet's (nil: unchanged), or drop for a segment past a gap.
func (w *Worker) flow(c *Conn, s *segment) (outSeq seqnum.Value, payload []byte, drop bool) {
	st, seq := s.st, s.seq
	in := w.in.PayloadBytes()
	fin := s.flags&packet.FlagFIN != 0
	if fin && st.sync == synced {
		st.fin = true
	}
	shifted := seq.Shift(st.off(seq))
	if st.sync != synced || st.stopped || c.help.helper == nil || s.flags&(packet.FlagSYN|packet.FlagRST) != 0 {
		return shifted, nil, false
	}
	end := seq.Add(s.inLen)
	newData := len(in) > 0 && end.After(st.next) || (fin && end == st.next && len(st.carry) > 0)
	if len(in) == 0 && !newData {
		return shifted, nil, false
	}
	if seq.After(st.next) {
		if read, drop := w.pastGap(st, seq); !read {
			return shifted, nil, drop
		}
	}
	st.gapped = false
	if !w.in.TCPChecksumValid() {
		// The receiver discards it and the sender resends it; read it then.
		w.e.Stats.BadChecksum.Add(1)
		return shifted, nil, false
	}
	return w.read(c, s.dir, st, seq, in, newData, fin)
}

// pastGap decides about a segment that starts at seq, past bytes the stream
// has not seen: read it (the missing bytes went by), drop it, or neither
// (the stream lost its position).
func (w *Worker) pastGap(st *stream, seq seqnum.Value) (read, drop bool) {
	if st.next.Size(seq) > maxGap {
		st.sync = unsynced
		return false, false
	}
	if !st.gapped || st.gapAt != seq || st.throttled {
		// Its line may have begun in the missing bytes: let the sender
		// resend it once the gap is filled.
		st.gapped, st.gapAt = true, seq
		w.e.Stats.Dropped.Add(1)
		return false, true
	}
	// Resent as it was, and the missing bytes were not dropped here: its
	// sender resends from the first byte it has no ACK for, so they
	// arrived without the daemon (the queue failed open) and will not come
	// again. (Their ACKs may not come either: a clean connection's pure
	// ACKs pass by.)
	st.next, st.carry, st.hold, st.rel = seq, st.carry[:0], 0, st.rel[:0]
	w.e.Stats.Skipped.Add(1)
	return true, false
}

// read gives the receiver the segment's bytes in, at seq: those delivered
// before again as they went out, new ones as the helper has them (newData).
// It returns flow's results.
func (w *Worker) read(c *Conn, dir Direction, st *stream, seq seqnum.Value, in []byte, newData, fin bool) (outSeq seqnum.Value, payload []byte, drop bool) {
	origSeq, origIn := seq, in
	end := seq.Add(seqnum.Size(len(in)))
	if len(st.rel) > 0 && seq.After(st.relFrom) && !seq.After(st.relEnd()) {
		// The sender resends from the end of bytes it believes delivered:
		// resend them too.
		in = append(append(w.resent[:0], st.rel[:st.relFrom.Size(seq)]...), in...)
		seq = st.relFrom
	}
	out := w.pay[:0]
	start := st.heldFrom()
	if seq.Before(start) {
		n := seqnum.Size(len(in))
		if start.Before(end) {
			n = seq.Size(start)
		}
		out, start = st.replay(out, seq, in[:n])
	}
	outSeq = start.Shift(st.off(start))
	if newData {
		if len(st.edits) >= maxEdits/2 {
			// The receiver has yet to acknowledge that many rewrites: take
			// no more until it does, or retransmissions of the oldest
			// would go out unrewritten. (Half: one segment's own edits
			// must fit.)
			w.e.Stats.Throttled.Add(1)
			st.throttled = true
			return 0, nil, true
		}
		var ok bool
		if out, ok = w.inspect(c, dir, st, in[seq.Size(st.next):], fin, out); !ok {
			return origSeq.Shift(st.off(origSeq)), nil, false
		}
		st.next, st.throttled = end, false
	}
	if len(out) == 0 && len(in) > 0 && st.haveLast {
		// All withheld: repeat the last delivered byte, so that the
		// receiver acknowledges and the sender sees its bytes taken.
		out = append(out, st.last)
		outSeq = outSeq.Shift(-1)
	}
	if outSeq == origSeq && bytes.Equal(out, origIn) {
		return outSeq, nil, false
	}
	return outSeq, out, false
}

// inspect presents carried and new bytes to the helper and appends what the
// receiver gets now to out. False: the helper's answer broke its contract;
// the bytes pass as they are and the stream is no longer read.
func (w *Worker) inspect(c *Conn, dir Direction, st *stream, fresh []byte, fin bool, out []byte) ([]byte, bool) {
	e := w.e
	data := append(append(w.data[:0], st.carry...), fresh...)
	fixed := len(st.carry) - st.hold
	r := &w.res
	r.Reset()
	if !w.callHelper(c, dir, data, fixed, fin) {
		// A helper bug: this connection goes on unread, the others helped.
		c.help.streams[FromClient].stopped, c.help.streams[FromServer].stopped = true, true
		return out, false
	}
	w.refused(c, r.Refusals)
	if !r.valid(len(data), fixed, fin) {
		e.Stats.HelperErrors.Add(1)
		c.Service.helperStats.Errors.Add(1)
		st.stopped = true
		return out, false
	}
	first := st.next.Shift(-seqnum.Delta(len(st.carry))) // input position of data[0]
	cur := fixed
	// Edits that keep the length together (a 227 whose free text gave way
	// to a longer address) are recorded as one: then no position is
	// shifted, and the receiver's ACKs need no mapping (needsAcks).
	one := len(r.Edits) > 1 && r.Delta() == 0 && r.Edits[len(r.Edits)-1].Off+r.Edits[len(r.Edits)-1].Len-r.Edits[0].Off <= maxEditText
	from := 0
	for i, ed := range r.Edits {
		out = append(out, data[cur:ed.Off]...)
		if i == 0 {
			from = len(out)
		}
		out = append(out, ed.New...)
		if !one {
			st.record(first.Add(seqnum.Size(ed.Off)), ed.Len, ed.New)
		}
		cur = ed.Off + ed.Len
	}
	if one {
		st.record(first.Add(seqnum.Size(r.Edits[0].Off)), cur-r.Edits[0].Off, out[from:])
	}
	keep := len(data) - r.Hold
	out = append(out, data[cur:keep]...)
	if keep > fixed {
		st.last, st.haveLast = out[len(out)-1], true
	}
	if r.Hold > 0 {
		e.Stats.Held.Add(1)
	}
	if st.carry == nil {
		st.carry = make([]byte, 0, MaxCarry)
	}
	st.carry = append(st.carry[:0], data[len(data)-r.Carry:]...)
	st.hold = r.Hold
	if r.Stop {
		c.help.streams[FromClient].stopped, c.help.streams[FromServer].stopped = true, true
		e.Stats.Stopped.Add(1)
	}
	return out, true
}

// callHelper runs the connection's helper; false if it panicked.
func (w *Worker) callHelper(c *Conn, dir Direction, data []byte, fixed int, fin bool) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			w.e.Stats.Panics.Add(1)
			if w.e.log != nil {
				w.e.log.Error("helper panic; connection no longer read", "panic", p, "service", c.Service.Name,
					"client", c.Client, "server", c.Server, "total", w.e.Stats.Panics.Load())
			}
			ok = false
		}
	}()
	c.help.helper.Inspect(dir, data, fixed, fin, &w.res)
	return true
}

// valid checks a helper's answer against the Inspect contract.
func (r *Result) valid(n, fixed int, fin bool) bool {
	if r.Carry < 0 || r.Carry > min(n, MaxCarry) || r.Hold < 0 || r.Hold > r.Carry {
		return false
	}
	if (fin || r.Stop) && r.Hold > 0 {
		return false
	}
	end := fixed
	for _, ed := range r.Edits {
		if ed.Off < end || ed.Len < 0 || ed.Off+ed.Len > n-r.Hold || len(ed.New) > maxEditText {
			return false
		}
		end = ed.Off + ed.Len
	}
	return true
}

// refused counts refusals and logs them, at most once a second per reason.
func (w *Worker) refused(c *Conn, why []Refusal) {
	e := w.e
	for _, r := range why {
		e.Stats.Refused[r].Add(1)
		c.Service.helperStats.Refused[r].Add(1)
		if e.log == nil {
			continue
		}
		// 0: never logged (now() starts near 0, so 0 cannot mean "at 0").
		last := e.lastLog[r].Load()
		if (last == 0 || w.now-last >= 1e9) && e.lastLog[r].CompareAndSwap(last, max(w.now, 1)) {
			e.log.Warn("refused data channel", "reason", r.String(), "service", c.Service.Name,
				"client", c.Client, "server", c.Server, "total", e.Stats.Refused[r].Load())
		}
	}
}
