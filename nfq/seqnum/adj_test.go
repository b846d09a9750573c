package seqnum

import "testing"

// records are seqadj records around the wrap of sequence space too: a
// growth, a shrink, a growth after a shrink, a shrink after a growth.
var records = []Adj{
	{Pos: 1000, Before: 0, After: 7},
	{Pos: 1000, Before: 0, After: -4},
	{Pos: 0xfffffff0, Before: -4, After: 3},
	{Pos: 0xfffffffe, Before: 9, After: 2},
	{Pos: 5, Before: 3, After: 3}, // no change at the point
}

// TestAdjInverses: SeqFor and AckFor find a number that Seq and Ack turn
// into the one wanted, and none only where no number maps there.
func TestAdjInverses(t *testing.T) {
	for _, m := range []struct {
		name    string
		forward func(Adj, Value) Value
		inverse func(Adj, Value) (Value, bool)
		// unreached are the numbers forward skips.
		unreached func(a Adj, want Value) bool
	}{
		// Seq skips the numbers between Pos+Before and Pos+After (a
		// growth inserted them).
		{"Seq", Adj.Seq, Adj.SeqFor, func(a Adj, want Value) bool {
			return a.After > a.Before && want.After(a.Pos.Shift(a.Before)) && !want.After(a.Pos.Shift(a.After))
		}},
		// Ack maps the acknowledgements after the point back by the bytes
		// a shrink removed: those just after it are not reached.
		{"Ack", Adj.Ack, Adj.AckFor, func(a Adj, want Value) bool {
			return a.After < a.Before && want.After(a.Pos) && !want.After(a.Pos.Shift(a.Before-a.After))
		}},
	} {
		for _, a := range records {
			for d := Delta(-40); d <= 40; d++ {
				want := a.Pos.Shift(d)
				v, ok := m.inverse(a, want)
				if ok && m.forward(a, v) != want {
					t.Errorf("%+v: %sFor(%#x) = %#x, which %s maps to %#x", a, m.name, want, v, m.name, m.forward(a, v))
				}
				if unreached := m.unreached(a, want); ok == unreached {
					t.Errorf("%+v: %sFor(%#x) ok %v, unreached %v", a, m.name, want, ok, unreached)
				}
			}
		}
	}
}

// TestAdjSeqAck: an acknowledgement of the bytes up to a mapped sequence
// number maps back to it: the receiver's ACK of what the kernel sent
// reaches the sender as one of what it sent. Not so for the first bytes
// after a shrink's point, which the shrunk segment's end overtakes.
func TestAdjSeqAck(t *testing.T) {
	for _, a := range records {
		for d := Delta(-40); d <= 40; d++ {
			v := a.Pos.Shift(d)
			if a.After < a.Before && v.After(a.Pos) && !v.After(a.Pos.Shift(a.Before-a.After)) {
				continue
			}
			if got := a.Ack(a.Seq(v)); got != v {
				t.Errorf("%+v: Ack(Seq(%#x)) = %#x", a, v, got)
			}
		}
	}
}

// TestAdjRecord: the kernel's nf_ct_seqadj_set moves the point forward
// only, keeping what came before as Before.
func TestAdjRecord(t *testing.T) {
	var a Adj
	a.Record(100, 0) // no change: nothing recorded
	if a != (Adj{}) {
		t.Fatalf("a zero change recorded: %+v", a)
	}
	a.Record(100, 5)
	if want := (Adj{Pos: 100, Before: 0, After: 5}); a != want {
		t.Fatalf("first: %+v, want %+v", a, want)
	}
	a.Record(50, 3) // before the point: not recorded
	if want := (Adj{Pos: 100, Before: 0, After: 5}); a != want {
		t.Fatalf("earlier: %+v, want %+v", a, want)
	}
	a.Record(200, -2)
	if want := (Adj{Pos: 200, Before: 5, After: 3}); a != want {
		t.Fatalf("later: %+v, want %+v", a, want)
	}
	// Across the wrap: 0xfffffff0 comes before 0x10.
	b := Adj{Pos: 0xfffffff0, Before: 0, After: 4}
	b.Record(0x10, 4)
	if want := (Adj{Pos: 0x10, Before: 4, After: 8}); b != want {
		t.Fatalf("across the wrap: %+v, want %+v", b, want)
	}
}
