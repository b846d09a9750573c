package ipvs

import "github.com/nfhelper/nfhelper/nfq"

// SeqAdj is the correction of one direction's sequence numbers after its
// payload length was changed, kept as nf_conntrack_seqadj keeps it: segments
// that start after Pos (the original sequence number of the last resized
// segment) move by After, earlier ones (retransmissions) by Before.
type SeqAdj struct {
	Pos           uint32
	Before, After int32
}

// Active reports whether any length change was recorded.
func (s *SeqAdj) Active() bool { return s.Before != 0 || s.After != 0 }

// Record notes that the segment starting at original sequence number seq
// changed length by delta. A retransmission of that segment (seq == Pos) is
// rewritten identically and must not count twice.
func (s *SeqAdj) Record(seq uint32, delta int32) {
	if delta == 0 {
		return
	}
	if s.Before == s.After || nfq.SeqAfter(seq, s.Pos) {
		s.Pos = seq
		s.Before = s.After
		s.After += delta
	}
}

// Seq maps an original sequence number of this direction to the peer's view.
func (s *SeqAdj) Seq(seq uint32) uint32 {
	if nfq.SeqAfter(seq, s.Pos) {
		return seq + uint32(s.After)
	}
	return seq + uint32(s.Before)
}

// Ack maps an acknowledgement (or SACK edge) the peer sent for this
// direction's data back to original sequence numbers.
func (s *SeqAdj) Ack(ack uint32) uint32 {
	if nfq.SeqAfter(ack-uint32(s.Before), s.Pos) {
		return ack - uint32(s.After)
	}
	return ack - uint32(s.Before)
}
