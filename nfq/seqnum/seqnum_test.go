package seqnum

import "testing"

func TestSeqBeforeAfter(t *testing.T) {
	for _, tt := range []struct {
		a, b          uint32
		before, after bool
	}{
		{1, 2, true, false},
		{2, 1, false, true},
		{5, 5, false, false},
		{0xffffffff, 0, true, false},    // wraps
		{0, 0xffffffff, false, true},    // wraps
		{0xfffffff0, 0x10, true, false}, // wraps
		{0x7fffffff, 0, false, true},    // farthest after
		{0, 0x7fffffff, true, false},    // farthest before
		{0x80000001, 0, true, false},    // more than half way round is before
		{0x80000000, 0, true, true},     // exactly half: each before the other, as in the kernel
		{0, 0x80000000, true, true},     //
		{0x12345678, 0x12345678 + 1e9, true, false},
	} {
		if got := Value(tt.a).Before(Value(tt.b)); got != tt.before {
			t.Errorf("Before(%#x, %#x) = %v", tt.a, tt.b, got)
		}
		if got := Value(tt.a).After(Value(tt.b)); got != tt.after {
			t.Errorf("After(%#x, %#x) = %v", tt.a, tt.b, got)
		}
	}
}
