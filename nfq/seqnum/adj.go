package seqnum

// Adj is one direction's seqadj record (struct nf_ct_seqadj in the kernel's
// nf_conntrack_seqadj.c): a sequence number after Pos moves by After, one
// up to it by Before. The kernel keeps one per direction of a connection
// whose payload changed length, and maps every later packet by them.
type Adj struct {
	Pos           Value
	Before, After Delta
}

// Seq is what the kernel makes of a sequence number of this direction.
func (a Adj) Seq(v Value) Value {
	if v.After(a.Pos) {
		return v.Shift(a.After)
	}
	return v.Shift(a.Before)
}

// Ack is what the kernel makes of an acknowledgement (or a SACK edge) of
// this direction's bytes (nf_ct_seq_adjust's ack side).
func (a Adj) Ack(v Value) Value {
	if v.Shift(-a.Before).After(a.Pos) {
		return v.Shift(-a.After)
	}
	return v.Shift(-a.Before)
}

// SeqFor is a sequence number that Seq turns into want; false if none
// does (want lies in bytes the correction point inserted).
func (a Adj) SeqFor(want Value) (Value, bool) {
	if v := want.Shift(-a.Before); !v.After(a.Pos) {
		return v, true
	}
	if v := want.Shift(-a.After); v.After(a.Pos) {
		return v, true
	}
	return 0, false
}

// AckFor is an acknowledgement that Ack turns into want; false if none
// does (want lies in bytes the correction point removed).
func (a Adj) AckFor(want Value) (Value, bool) {
	if !want.After(a.Pos) {
		return want.Shift(a.Before), true
	}
	if want.Shift(a.After - a.Before).After(a.Pos) {
		return want.Shift(a.After), true
	}
	return 0, false
}

// Record is the kernel's nf_ct_seqadj_set: a segment at seq changed length
// by diff. A point before the current one is not recorded.
func (a *Adj) Record(seq Value, diff Delta) {
	if diff == 0 {
		return
	}
	if a.Before == a.After || a.Pos.Before(seq) {
		a.Pos, a.Before, a.After = seq, a.After, a.After+diff
	}
}
