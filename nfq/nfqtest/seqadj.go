package nfqtest

import "github.com/nfhelper/nfhelper/nfq/seqnum"

// SeqAdj models what the kernel's conntrack seqadj (nf_conntrack_seqadj.c)
// does to the packets of one connection, written from the kernel's code:
// per direction one correction point, sequence numbers after it moving by
// one offset and up to it by another. Directions are 0 (original) and 1.
// It keeps the records in seqnum.Adj but maps by its own code, not Adj's
// methods: it is the model the engine's use of those is checked against.
type SeqAdj struct {
	dir [2]seqnum.Adj
}

// Set sets direction d's record outright, as ctnetlink does.
func (k *SeqAdj) Set(d int, a seqnum.Adj) { k.dir[d] = a }

// Record is nf_ct_seqadj_set: a segment of direction d at seq changed
// length by off (what a verdict with NFQA_CT and a new payload does).
func (k *SeqAdj) Record(d int, seq seqnum.Value, off seqnum.Delta) {
	w := &k.dir[d]
	if off == 0 {
		return
	}
	if w.Before == w.After || int32(w.Pos-seq) < 0 {
		w.Pos, w.Before, w.After = seq, w.After, w.After+off
	}
}

// Map is nf_ct_seq_adjust for a packet of direction d: its sequence number
// by d's record, its acknowledgement by the other's.
func (k *SeqAdj) Map(d int, seq, ack seqnum.Value) (seqnum.Value, seqnum.Value) {
	this, other := &k.dir[d], &k.dir[1-d]
	if int32(seq-this.Pos) > 0 {
		seq += seqnum.Value(this.After)
	} else {
		seq += seqnum.Value(this.Before)
	}
	if int32(ack-seqnum.Value(other.Before)-other.Pos) > 0 {
		ack -= seqnum.Value(other.After)
	} else {
		ack -= seqnum.Value(other.Before)
	}
	return seq, ack
}
