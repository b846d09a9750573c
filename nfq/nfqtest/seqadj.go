package nfqtest

// SeqAdj models what the kernel's conntrack seqadj (nf_conntrack_seqadj.c)
// does to the packets of one connection, written from the kernel's code:
// per direction one correction point, sequence numbers after it moving by
// one offset and up to it by another. Directions are 0 (original) and 1.
type SeqAdj struct {
	dir [2]struct {
		pos           uint32
		before, after int32
	}
}

// Set sets direction d's record outright, as ctnetlink does.
func (k *SeqAdj) Set(d int, pos uint32, before, after int32) {
	k.dir[d].pos, k.dir[d].before, k.dir[d].after = pos, before, after
}

// Record is nf_ct_seqadj_set: a segment of direction d at seq changed
// length by off (what a verdict with NFQA_CT and a new payload does).
func (k *SeqAdj) Record(d int, seq uint32, off int32) {
	w := &k.dir[d]
	if off == 0 {
		return
	}
	if w.before == w.after || int32(w.pos-seq) < 0 {
		w.pos, w.before, w.after = seq, w.after, w.after+off
	}
}

// Map is nf_ct_seq_adjust for a packet of direction d: its sequence number
// by d's record, its acknowledgement by the other's.
func (k *SeqAdj) Map(d int, seq, ack uint32) (uint32, uint32) {
	this, other := &k.dir[d], &k.dir[1-d]
	if int32(seq-this.pos) > 0 {
		seq += uint32(this.after)
	} else {
		seq += uint32(this.before)
	}
	if int32(ack-uint32(other.before)-other.pos) > 0 {
		ack -= uint32(other.after)
	} else {
		ack -= uint32(other.before)
	}
	return seq, ack
}
