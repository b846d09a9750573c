package ipvs

import (
	"errors"
	"net/netip"
	"testing"
)

func servers(weights ...int) []*RealServer {
	var out []*RealServer
	for i, w := range weights {
		out = append(out, &RealServer{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(11 + i)}), 21), Weight: w})
	}
	return out
}

func counts(t *testing.T, name string, rs []*RealServer, n int) map[int]int {
	t.Helper()
	s, err := NewScheduler(name)
	if err != nil {
		t.Fatal(err)
	}
	got := map[int]int{}
	for range n {
		p := s.Pick(rs, netip.AddrPort{})
		if p == nil {
			got[-1]++
			continue
		}
		for i := range rs {
			if rs[i] == p {
				got[i]++
			}
		}
	}
	return got
}

func TestRoundRobin(t *testing.T) {
	rs := servers(1, 2, 0, 1)
	got := counts(t, "rr", rs, 300)
	// rr ignores weight sizes but never picks a quiesced server.
	if got[0] != 100 || got[1] != 100 || got[2] != 0 || got[3] != 100 {
		t.Errorf("rr counts %v", got)
	}
	s, _ := NewScheduler("rr")
	a, b := s.Pick(rs, netip.AddrPort{}), s.Pick(rs, netip.AddrPort{})
	if a == b {
		t.Error("rr picked the same server twice in a row")
	}
}

func TestWeightedRoundRobin(t *testing.T) {
	got := counts(t, "wrr", servers(1, 2, 0, 3), 600)
	if got[0] != 100 || got[1] != 200 || got[2] != 0 || got[3] != 300 {
		t.Errorf("wrr counts %v, want 100/200/0/300", got)
	}
	// Interleaved, as ip_vs_wrr: the heaviest is not picked three times first.
	s, _ := NewScheduler("wrr")
	rs := servers(1, 1, 3)
	var seq []int
	for range 5 {
		p := s.Pick(rs, netip.AddrPort{})
		for i := range rs {
			if rs[i] == p {
				seq = append(seq, i)
			}
		}
	}
	if want := []int{2, 2, 0, 1, 2}; !equal(seq, want) {
		t.Errorf("wrr order %v, want %v", seq, want)
	}
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestAllQuiesced(t *testing.T) {
	for _, name := range []string{"rr", "wrr"} {
		if got := counts(t, name, servers(0, 0), 3); got[-1] != 3 {
			t.Errorf("%s picked a quiesced server: %v", name, got)
		}
	}
}

func TestUnknownScheduler(t *testing.T) {
	if _, err := NewScheduler("fastest"); !errors.Is(err, ErrScheduler) {
		t.Errorf("err = %v", err)
	}
}
