package ipvs

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
	pos    uint32 // first replaced byte
	oldLen uint32
	n      uint8
	text   [maxEditText]byte
	cum    int32 // the stream's total offset after this edit
}

func (e *streamEdit) end() uint32     { return e.pos + e.oldLen }
func (e *streamEdit) delta() int32    { return int32(e.n) - int32(e.oldLen) }
func (e *streamEdit) newText() []byte { return e.text[:e.n] }

// stream is one direction of a helped connection: where its helper has read
// to, what it carries and withholds, and the edits that map the sender's
// sequence numbers ("input") to what the receiver sees ("output"). Output
// position of an input position x at a segment boundary is x + off(x).
type stream struct {
	synced   bool // next is known (the SYN was seen)
	resync   bool // resumed after a restart: next is the next segment's
	skipped  bool // bytes went by unseen; reported once by the worker
	fin      bool // the sender's FIN was seen: it takes sequence number next
	stopped  bool // the helper ended inspection
	gapped   bool // a segment at gapAt, past bytes not seen, was dropped
	gapAt    uint32
	next     uint32 // first input byte not yet presented to the helper
	carry    []byte // input [next-len(carry), next), presented again
	hold     int    // trailing bytes of carry not yet delivered
	last     byte   // the last byte delivered, to elicit an ACK
	haveLast bool
	// rel is input [relFrom, relFrom+len(rel)): withheld bytes the sender
	// was told had arrived, and so resends only from their end; kept until
	// the receiver acknowledges them.
	rel     []byte
	relFrom uint32
	base    int32 // offset of edits folded away
	edits   []streamEdit
	kadj    SeqAdj // the kernel datapath: the kernel's seqadj record of this direction
}

// start begins the stream at the first data byte after the SYN.
func (st *stream) start(isn uint32) {
	if st.synced && st.next == isn+1 {
		return // a retransmitted SYN
	}
	*st = stream{synced: true, next: isn + 1, carry: st.carry[:0], edits: st.edits[:0], rel: st.rel[:0]}
}

// heldFrom is the input position of the first withheld byte.
func (st *stream) heldFrom() uint32 { return st.next - uint32(st.hold) }

// off is the offset at input position x, which must not lie inside an edit.
func (st *stream) off(x uint32) int32 {
	for i := len(st.edits) - 1; i >= 0; i-- {
		if e := &st.edits[i]; !seqAfter(e.end(), x) {
			return e.cum
		}
	}
	return st.base
}

// input maps an output position acknowledged by the receiver back to input.
// Inside replaced text it answers the text's start: the sender resends the
// whole edited text rather than believe unsent bytes arrived.
func (st *stream) input(y uint32) uint32 {
	for i := len(st.edits) - 1; i >= 0; i-- {
		e := &st.edits[i]
		outEnd := e.end() + uint32(e.cum)
		if !seqBefore(y, outEnd) {
			return y - uint32(e.cum)
		}
		if outStart := e.pos + uint32(e.cum-e.delta()); seqAfter(y, outStart) {
			return e.pos
		}
	}
	return y - uint32(st.base)
}

// acked maps the receiver's cumulative ACK to input. An ACK of everything
// delivered also covers what is withheld: the sender must go on sending
// (Nagle waits for it), and the withheld bytes go out with its next segment.
// Those bytes are kept in rel until the receiver itself acknowledges them,
// since the sender no longer will resend them.
func (st *stream) acked(y uint32) uint32 {
	x := st.input(y)
	if st.synced && seqAfter(x, st.next) && !(st.fin && x == st.next+1) {
		// The receiver has bytes the stream never saw: they went by (the
		// queue failed open, full or without a reader). Segments after
		// them would wait forever for the gap to fill: pick up at x.
		st.next, st.carry, st.hold, st.rel = x, st.carry[:0], 0, st.rel[:0]
		st.skipped = true
	}
	if len(st.rel) > 0 && !seqBefore(x, st.relFrom+uint32(len(st.rel))) {
		st.rel = st.rel[:0]
	}
	if st.hold > 0 && x == st.heldFrom() {
		if st.rel == nil {
			st.rel = make([]byte, 0, MaxCarry)
		}
		st.rel, st.relFrom = append(st.rel[:0], st.carry[len(st.carry)-st.hold:]...), x
		return st.next
	}
	return x
}

// prune forgets edits that end before input x, which the receiver has
// acknowledged: the sender never retransmits before it.
func (st *stream) prune(x uint32) {
	n := 0
	for n < len(st.edits) && !seqAfter(st.edits[n].end(), x) {
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
func (st *stream) record(pos uint32, oldLen int, text []byte) bool {
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
	e := streamEdit{pos: pos, oldLen: uint32(oldLen), n: uint8(len(text))}
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
func (st *stream) replay(dst []byte, seq uint32, data []byte) (out []byte, from uint32) {
	end := seq + uint32(len(data))
	from, cur := seq, seq
	for i := range st.edits {
		e := &st.edits[i]
		if !seqAfter(e.end(), cur) {
			continue
		}
		if !seqBefore(e.pos, end) {
			break
		}
		if seqBefore(e.pos, cur) {
			from = e.pos // only the first edit can begin before seq
		} else {
			dst = append(dst, data[cur-seq:e.pos-seq]...)
		}
		dst = append(dst, e.newText()...)
		cur = e.end()
	}
	if seqBefore(cur, end) {
		dst = append(dst, data[cur-seq:]...)
	}
	return dst, from
}
