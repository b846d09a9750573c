package ipvs

import "testing"

func TestSeqAdjUntouched(t *testing.T) {
	var s SeqAdj
	if s.Active() || s.Seq(1234) != 1234 || s.Ack(1234) != 1234 {
		t.Fatal("an empty correction moved numbers")
	}
}

func TestSeqAdjOneRewrite(t *testing.T) {
	// A 227 reply of 50 bytes at seq 1000 grew by 3.
	var s SeqAdj
	s.Record(1000, 3)
	cases := []struct {
		name     string
		seq, out uint32
	}{
		{"earlier segment", 900, 900},
		{"the rewritten segment itself", 1000, 1000},
		{"retransmission of the rewritten segment", 1000, 1000},
		{"next segment", 1050, 1053},
	}
	for _, c := range cases {
		if got := s.Seq(c.seq); got != c.out {
			t.Errorf("%s: Seq(%d) = %d, want %d", c.name, c.seq, got, c.out)
		}
	}
	acks := []struct {
		name     string
		ack, out uint32
	}{
		{"ack before the rewritten segment", 1000, 1000},
		// Inside the resized text the mapping errs low: the server may
		// resend bytes, never believes that unsent ones arrived.
		{"ack inside the rewritten segment", 1020, 1017},
		{"ack covering the rewritten segment", 1053, 1050},
		{"ack of later data", 2003, 2000},
	}
	for _, c := range acks {
		if got := s.Ack(c.ack); got != c.out {
			t.Errorf("%s: Ack(%d) = %d, want %d", c.name, c.ack, got, c.out)
		}
	}
}

func TestSeqAdjRetransmissionNotCountedTwice(t *testing.T) {
	var s SeqAdj
	s.Record(1000, 3)
	s.Record(1000, 3)
	if s.Before != 0 || s.After != 3 {
		t.Fatalf("after a retransmitted rewrite: %+v", s)
	}
	// An older segment rewritten again (seq before Pos) keeps the state too.
	s.Record(900, 3)
	if s.Pos != 1000 || s.After != 3 {
		t.Fatalf("after an older rewrite: %+v", s)
	}
}

func TestSeqAdjManyRewrites(t *testing.T) {
	var s SeqAdj
	total := int32(0)
	seq := uint32(5000)
	for i := range 50 {
		s.Record(seq, 3)
		total += 3
		if s.After != total || s.Before != total-3 || s.Pos != seq {
			t.Fatalf("rewrite %d: %+v", i, s)
		}
		// The segment after this one moves by everything so far.
		if got := s.Seq(seq + 60); got != seq+60+uint32(total) {
			t.Fatalf("rewrite %d: Seq = %d", i, got)
		}
		seq += 200
	}
}

func TestSeqAdjShrink(t *testing.T) {
	var s SeqAdj
	s.Record(1000, -2)
	if got := s.Seq(1100); got != 1098 {
		t.Errorf("Seq = %d, want 1098", got)
	}
	if got := s.Ack(1098); got != 1100 {
		t.Errorf("Ack = %d, want 1100", got)
	}
}

func TestSeqAdjWraparound(t *testing.T) {
	var s SeqAdj
	pos := uint32(0xffffffe0)
	s.Record(pos, 3)
	if got := s.Seq(pos + 0x40); got != 0x23 {
		t.Errorf("Seq across the wrap = %#x, want 0x23", got)
	}
	if got := s.Seq(pos - 0x10); got != pos-0x10 {
		t.Errorf("earlier segment moved to %#x", got)
	}
	if got := s.Ack(0x23); got != 0x20 {
		t.Errorf("Ack across the wrap = %#x, want 0x20", got)
	}
	// Ack exactly at the start of the rewritten segment is not past it.
	if got := s.Ack(pos); got != pos {
		t.Errorf("Ack(pos) = %#x", got)
	}
	// A rewrite that itself crosses zero.
	var z SeqAdj
	z.Record(0xfffffff0, 5)
	z.Record(0x10, 5)
	if z.Before != 5 || z.After != 10 || z.Pos != 0x10 {
		t.Errorf("second rewrite after the wrap: %+v", z)
	}
}
