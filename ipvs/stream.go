package ipvs

import "github.com/nfhelper/nfhelper/nfq/seqnum"

// maxEditText bounds one edit's replacement text, so that a stream records
// its edits without allocating.
const maxEditText = 32

// maxEdits bounds the edits a stream remembers for retransmissions. Edits
// are forgotten once the receiver acknowledges them, so only a sender that
// pipelines half this many rewritten commands unanswered reaches it; its new
// segments are then dropped (it resends them) until the receiver catches up.
const maxEdits = 128

// streamEdit is one rewrite of a stream, in the sender's sequence space.
type streamEdit struct {
	pos    seqnum.Value // first replaced byte
	oldLen seqnum.Size
	n      uint8
	text   [maxEditText]byte
	cum    seqnum.Delta // the stream's total offset after this edit
}

func (e *streamEdit) end() seqnum.Value   { return e.pos.Add(e.oldLen) }
func (e *streamEdit) delta() seqnum.Delta { return seqnum.Delta(e.n) - seqnum.Delta(e.oldLen) }
func (e *streamEdit) newText() []byte     { return e.text[:e.n] }

// stream is one direction of a helped connection: where its helper has read
// to, what it carries and withholds, and the edits that map the sender's
// sequence numbers ("input") to what the receiver sees ("output"). Output
// position of an input position x at a segment boundary is x + off(x).
type stream struct {
	sync streamSync
	// stopped: the helper no longer reads the stream (it ended
	// inspection, or broke its contract). Independent of sync: a stopped
	// stream's numbers are still mapped, and a stream resuming after a
	// restart may have stopped before it.
	stopped bool
	// fin: the sender's FIN was seen (synced): it takes sequence number
	// next.
	fin bool
	// gapped: the last segment, at gapAt past bytes not seen, was dropped
	// (it is read if it comes again as it was). Any segment read clears it.
	gapped bool
	gapAt  seqnum.Value
	// throttled: new bytes from next on were dropped here (the throttle):
	// their sender resends them, so a segment past them that comes again
	// (a tail loss probe) is no sign that they went by the daemon.
	throttled bool
	next      seqnum.Value // first input byte not yet presented to the helper
	carry     []byte       // input [next-len(carry), next), presented again
	hold      int          // trailing bytes of carry not yet delivered
	last      byte         // the last byte delivered, to elicit an ACK
	haveLast  bool
	// rel is input [relFrom, relFrom+len(rel)): withheld bytes the sender
	// was told had arrived, and so resends only from their end; kept until
	// the receiver acknowledges them.
	rel     []byte
	relFrom seqnum.Value
	base    seqnum.Delta // offset of edits folded away
	edits   []streamEdit
	kadj    seqnum.Adj // the kernel datapath: the kernel's seqadj record of this direction
}

// streamSync is what a stream knows of its sender's position.
type streamSync uint8

const (
	// unsynced: no position: no SYN seen yet, or the stream lost it (a
	// segment came too far past next, maxGap). Its bytes pass unread,
	// its receiver's ACKs unmapped.
	unsynced streamSync = iota
	// resuming: taken over mid-way (a restart); the next data segment
	// starts a line, and next is its first byte. ACKs are mapped.
	resuming
	// synced: next is the first byte not yet presented to the helper.
	synced
)

// mapsAcks reports whether the receiver's acknowledgements of the stream
// are mapped to input.
func (st *stream) mapsAcks() bool { return st.sync == synced || st.sync == resuming }

// start begins the stream at the first data byte after the SYN.
func (st *stream) start(isn seqnum.Value) {
	if st.sync == synced && st.next == isn.Add(1) {
		return // a retransmitted SYN
	}
	*st = stream{sync: synced, next: isn.Add(1), carry: st.carry[:0], edits: st.edits[:0], rel: st.rel[:0]}
}

// heldFrom is the input position of the first withheld byte.
func (st *stream) heldFrom() seqnum.Value { return st.next.Shift(-seqnum.Delta(st.hold)) }

// off is the offset at input position x, which must not lie inside an edit.
func (st *stream) off(x seqnum.Value) seqnum.Delta {
	for i := len(st.edits) - 1; i >= 0; i-- {
		if e := &st.edits[i]; !e.end().After(x) {
			return e.cum
		}
	}
	return st.base
}

// input maps an output position acknowledged by the receiver back to input.
// Inside replaced text it answers the text's start: the sender resends the
// whole edited text rather than believe unsent bytes arrived.
func (st *stream) input(y seqnum.Value) seqnum.Value {
	for i := len(st.edits) - 1; i >= 0; i-- {
		e := &st.edits[i]
		if outEnd := e.end().Shift(e.cum); !y.Before(outEnd) {
			return y.Shift(-e.cum)
		}
		if outStart := e.pos.Shift(e.cum - e.delta()); y.After(outStart) {
			return e.pos
		}
	}
	return y.Shift(-st.base)
}

// acked maps the receiver's cumulative ACK to input. An ACK of everything
// delivered also covers what is withheld: the sender must go on sending
// (Nagle waits for it), and the withheld bytes go out with its next segment.
// Those bytes are kept in rel until the receiver itself acknowledges them,
// since the sender no longer will resend them. skipped: the ACK showed
// that bytes went by the stream unseen.
func (st *stream) acked(y seqnum.Value) (x seqnum.Value, skipped bool) {
	x = st.input(y)
	if st.sync == synced && x.After(st.next) && !(st.fin && x == st.next.Add(1)) {
		// The receiver has bytes the stream never saw: they went by (the
		// queue failed open, full or without a reader). Segments after
		// them would wait forever for the gap to fill: pick up at x.
		st.next, st.carry, st.hold, st.rel = x, st.carry[:0], 0, st.rel[:0]
		skipped = true
	}
	if len(st.rel) > 0 && !x.Before(st.relEnd()) {
		st.rel = st.rel[:0]
	}
	if st.hold > 0 && x == st.heldFrom() {
		if st.rel == nil {
			st.rel = make([]byte, 0, MaxCarry)
		}
		st.rel, st.relFrom = append(st.rel[:0], st.carry[len(st.carry)-st.hold:]...), x
		return st.next, skipped
	}
	return x, skipped
}

// relEnd is the input position after the bytes kept for resending.
func (st *stream) relEnd() seqnum.Value { return st.relFrom.Add(seqnum.Size(len(st.rel))) }

// prune forgets edits that end before input x, which the receiver has
// acknowledged: the sender never retransmits before it.
func (st *stream) prune(x seqnum.Value) {
	n := 0
	for n < len(st.edits) && !st.edits[n].end().After(x) {
		n++
	}
	st.fold(n)
}

func (st *stream) fold(n int) {
	if n == 0 {
		return
	}
	st.base = st.edits[n-1].cum
	st.edits = st.edits[:copy(st.edits, st.edits[n:])]
}

// record notes an edit at input pos; false if its text is too long to keep.
func (st *stream) record(pos seqnum.Value, oldLen int, text []byte) bool {
	if len(text) > maxEditText {
		return false
	}
	if st.edits == nil {
		st.edits = make([]streamEdit, 0, 4)
	}
	if len(st.edits) == maxEdits {
		st.fold(1) // one segment with more edits than the throttle leaves room for
	}
	cum := st.base
	if len(st.edits) > 0 {
		cum = st.edits[len(st.edits)-1].cum
	}
	e := streamEdit{pos: pos, oldLen: seqnum.Size(oldLen), n: uint8(len(text))}
	copy(e.text[:], text)
	e.cum = cum + e.delta()
	st.edits = append(st.edits, e)
	return true
}

// replay appends to dst the output for input bytes data starting at seq,
// which were delivered before, with the recorded edits applied. An edit the
// segment touches goes out whole, even where the segment starts or ends
// inside it (a sender may cut its retransmissions anew): the receiver
// already has, or gets once more, the same bytes at the same place. from is
// the input position the output starts at: seq, or the start of an edit seq
// lies inside.
func (st *stream) replay(dst []byte, seq seqnum.Value, data []byte) (out []byte, from seqnum.Value) {
	end := seq.Add(seqnum.Size(len(data)))
	from, cur := seq, seq
	for i := range st.edits {
		e := &st.edits[i]
		if !e.end().After(cur) {
			continue
		}
		if !e.pos.Before(end) {
			break
		}
		if e.pos.Before(cur) {
			from = e.pos // only the first edit can begin before seq
		} else {
			dst = append(dst, data[seq.Size(cur):seq.Size(e.pos)]...)
		}
		dst = append(dst, e.newText()...)
		cur = e.end()
	}
	if cur.Before(end) {
		dst = append(dst, data[seq.Size(cur):]...)
	}
	return dst, from
}
