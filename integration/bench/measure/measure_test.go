package measure

import (
	"math"
	"testing"
)

func TestParseStat(t *testing.T) {
	// user nice system idle iowait irq softirq steal guest guest_nice
	text := "cpu  1000 20 300 90000 500 7 60 3 400 0\ncpu0 500 10 150 45000 250 3 30 1 200 0\nintr 1 2 3\n"
	got := ParseStat(text)
	// busy: user+nice+system+irq+softirq+steal, not idle, iowait nor guest.
	want := Times{Busy: float64(1000+20+300+7+60+3) / ClockTicks, Softirq: 60.0 / ClockTicks}
	if got != want {
		t.Errorf("ParseStat = %+v, want %+v", got, want)
	}
	for _, bad := range []string{"", "intr 1 2 3 4 5 6\n", "cpu 1 2\n", "cpu0 1 2 3 4 5 6 7 8\ncpu 1 2 3 4 5 6 7 8\n"} {
		if got := ParseStat(bad); got != (Times{}) {
			t.Errorf("ParseStat(%q) = %+v, want zero", bad, got)
		}
	}
}

func TestParseProcStat(t *testing.T) {
	// A command name with spaces and a parenthesis: fields count from the last ')'.
	stat := []byte("4242 (in.tftpd (x) y) S 1 4242 4242 0 -1 4194560 300 0 0 0 150 50 7 3 20 0 1 0 12345 1000000 200 18446744073709551615\n")
	if got, err := ParseProcStat(stat, false); err != nil || got != 2 {
		t.Errorf("ParseProcStat(false) = %v, %v; want 2 (150+50 ticks)", got, err)
	}
	if got, err := ParseProcStat(stat, true); err != nil || got != 2.1 {
		t.Errorf("ParseProcStat(true) = %v, %v; want 2.1 (150+50+7+3 ticks)", got, err)
	}
	for _, bad := range []string{"4242 no parenthesis", "4242 (x) S 1 2 3", "4242 (x) S 1 4242 4242 0 -1 0 0 0 0 0 a 50 0 0"} {
		if _, err := ParseProcStat([]byte(bad), false); err == nil {
			t.Errorf("ParseProcStat(%q): no error", bad)
		}
	}
}

func TestParseQueues(t *testing.T) {
	text := "    0  12345     0 2 65531     3     1      900  1\n" +
		"    1  12346     5 2 65531     0     2     1100  1\n" +
		"short line\n"
	got := ParseQueues(text)
	want := []Queue{
		{Number: "0", Dropped: 3, UserDropped: 1, IDSequence: 900},
		{Number: "1", Dropped: 0, UserDropped: 2, IDSequence: 1100},
	}
	if len(got) != len(want) {
		t.Fatalf("ParseQueues = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("queue %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if n := Queued(got); n != 2000 {
		t.Errorf("Queued = %d, want 2000", n)
	}
	if qs := ParseQueues(""); len(qs) != 0 || Queued(qs) != 0 {
		t.Errorf("no queues: %+v", qs)
	}
}

func TestMedianSpread(t *testing.T) {
	for _, c := range []struct {
		v              []float64
		median, spread float64
	}{
		{nil, 0, 0},
		{[]float64{5}, 5, 0},
		{[]float64{3, 1, 2}, 2, 100},
		{[]float64{4, 1, 3, 2}, 2.5, 120},
		{[]float64{0, 0, 1}, 0, 0},
	} {
		v := append([]float64(nil), c.v...)
		if m := Median(c.v); m != c.median {
			t.Errorf("Median(%v) = %v, want %v", c.v, m, c.median)
		}
		if s := Spread(c.v); math.Abs(s-c.spread) > 1e-9 {
			t.Errorf("Spread(%v) = %v, want %v", c.v, s, c.spread)
		}
		for i := range v {
			if v[i] != c.v[i] {
				t.Errorf("Median sorted its argument: %v", c.v)
			}
		}
	}
}

func TestRatios(t *testing.T) {
	num := map[int]float64{1: 10, 2: 30, 3: 5, 4: 8}
	base := map[int]float64{1: 5, 2: 10, 3: 0}
	get := func(m map[int]float64) func(int) (float64, bool) {
		return func(r int) (float64, bool) { x, ok := m[r]; return x, ok }
	}
	// Round 3: base 0; round 4: no base; round 5: neither.
	got := Ratios(5, get(num), get(base))
	if len(got) != 2 || got[0] != 2 || got[1] != 3 {
		t.Errorf("Ratios = %v, want [2 3]", got)
	}
	if _, ok := Ratio(3, get(num), get(base)); ok {
		t.Error("Ratio over a base of 0: ok")
	}
}
