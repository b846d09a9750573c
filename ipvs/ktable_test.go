package ipvs

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

// kservers returns servers with these weights at distinct addresses.
func kservers(weights ...int) []*RealServer {
	out := make([]*RealServer, len(weights))
	for i, w := range weights {
		a := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
		out[i] = &RealServer{Addr: netip.AddrPortFrom(a, 80), Weight: w}
	}
	return out
}

func randWeights(r *rand.Rand, n, maxW int) []int {
	w := make([]int, n)
	for i := range w {
		w[i] = r.IntN(maxW + 1)
	}
	return w
}

// slotCounts checks that t's runs are sorted, within Size, non-overlapping,
// merged, and name only available servers; it returns each server's slots.
func slotCounts(t *testing.T, tab KernelTable, servers []*RealServer) map[int]int {
	t.Helper()
	got := map[int]int{}
	for i, r := range tab.Runs {
		if r.First > r.Last || r.Last >= tab.Size {
			t.Fatalf("run %d %+v out of 0..%d", i, r, tab.Size-1)
		}
		if i > 0 {
			p := tab.Runs[i-1]
			if p.Last >= r.First {
				t.Fatalf("runs %d %+v and %+v overlap or are unsorted", i, p, r)
			}
			if p.Last+1 == r.First && p.Server == r.Server {
				t.Fatalf("runs %d %+v and %+v not merged", i, p, r)
			}
		}
		if !available(servers[r.Server]) {
			t.Fatalf("run %+v names unavailable server %d", r, r.Server)
		}
		got[r.Server] += int(r.Last - r.First + 1)
	}
	return got
}

// expand returns the server of each slot, -1 where none.
func expand(tab KernelTable) []int {
	out := make([]int, tab.Size)
	for i := range out {
		out[i] = -1
	}
	for _, r := range tab.Runs {
		for s := r.First; s <= r.Last; s++ {
			out[s] = r.Server
		}
	}
	return out
}

func TestKernelScheduled(t *testing.T) {
	for _, name := range SchedulerNames {
		want := name == "rr" || name == "wrr" || name == "sh" || name == "mh"
		if KernelScheduled(name) != want {
			t.Errorf("KernelScheduled(%q) = %v", name, !want)
		}
	}
	if tab := BuildKernelTable("wlc", kservers(1, 1), KernelTableOptions{}); tab.Size != 0 || tab.Runs != nil {
		t.Errorf("wlc table %+v, want zero", tab)
	}
}

func TestKernelTableRR(t *testing.T) {
	rs := kservers(1, 2, 0, 1, 5)
	rs[3].Down = true
	tab := BuildKernelTable("rr", rs, KernelTableOptions{})
	want := []SlotRun{{0, 0, 0}, {1, 1, 1}, {2, 2, 4}}
	if tab.By != KeyCounter || tab.Size != 3 || !slices.Equal(tab.Runs, want) {
		t.Errorf("rr table %+v, want size 3 runs %v", tab, want)
	}
}

// TestKernelTableNone: with no available server there are no runs and the
// modulus stays valid.
func TestKernelTableNone(t *testing.T) {
	rs := kservers(0, 3)
	rs[1].Down = true
	for name, size := range map[string]uint32{"rr": 1, "wrr": 1, "sh": 256, "mh": 65537} {
		for _, list := range [][]*RealServer{rs, nil} {
			tab := BuildKernelTable(name, list, KernelTableOptions{})
			if tab.Size != size || len(tab.Runs) != 0 {
				t.Errorf("%s with %d unavailable servers: %+v, want size %d, no runs", name, len(list), tab, size)
			}
		}
	}
}

func TestKernelTableWRRInterleaved(t *testing.T) {
	tab := BuildKernelTable("wrr", kservers(300, 100), KernelTableOptions{})
	// Weights 3:1 after gcd; smooth round robin deals 0 0 1 0.
	want := []SlotRun{{0, 1, 0}, {2, 2, 1}, {3, 3, 0}}
	if tab.By != KeyCounter || tab.Size != 4 || !slices.Equal(tab.Runs, want) {
		t.Errorf("wrr 3:1 table %+v, want size 4 runs %v", tab, want)
	}
}

// TestKernelTableShares: rr and wrr give every available server exactly
// its share of a cycle, for any weights 0..65535, in a bounded number of
// runs.
func TestKernelTableShares(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 1))
	for trial := range 300 {
		n := []int{1, 2, 3, 7, 10, 100, 1000}[trial%7]
		rs := kservers(randWeights(r, n, []int{3, 100, 65535}[trial%3])...)
		for _, s := range rs {
			s.Down = r.IntN(10) == 0
		}
		for _, name := range []string{"rr", "wrr"} {
			checkShares(t, name, rs)
		}
	}
}

func checkShares(t *testing.T, name string, rs []*RealServer) {
	t.Helper()
	tab := BuildKernelTable(name, rs, KernelTableOptions{})
	got := slotCounts(t, tab, rs)
	g, total := 0, 0
	for _, s := range rs {
		if available(s) {
			g = gcd(g, s.Weight)
		}
	}
	for i, s := range rs {
		want := 0
		if available(s) && name == "rr" {
			want = 1
		} else if available(s) {
			want = s.Weight / g
		}
		total += want
		if got[i] != want {
			t.Fatalf("%s over %d servers: server %d (weight %d) has %d slots, want %d", name, len(rs), i, s.Weight, got[i], want)
		}
	}
	if total > 0 && tab.Size != uint32(total) {
		t.Fatalf("%s over %d servers: size %d, want %d", name, len(rs), tab.Size, total)
	}
	if len(tab.Runs) > wrrChunks+len(rs) {
		t.Fatalf("%s over %d servers: %d runs", name, len(rs), len(tab.Runs))
	}
}

// TestKernelTableSH checks the bucket deal against one worked by hand.
func TestKernelTableSH(t *testing.T) {
	rs := kservers(2, 0, 3, 1, 1)
	rs[3].Down = true
	tab := BuildKernelTable("sh", rs, KernelTableOptions{})
	// Rounds of 0 0 2 2 2 4: 42 of them fill 252 buckets, then 0 0 2 2.
	var want []int
	for len(want) < 256 {
		want = append(want, 0, 0, 2, 2, 2, 4)
	}
	want = want[:256]
	if got := expand(tab); tab.By != KeySource || tab.Size != 256 || !slices.Equal(got, want) {
		t.Errorf("sh table by %d size %d slots %v, want by source, 256 slots %v", tab.By, tab.Size, got, want)
	}
	if c := slotCounts(t, tab, rs); c[0] != 86 || c[2] != 128 || c[4] != 42 || len(tab.Runs) != 42*3+2 {
		t.Errorf("sh slot counts %v in %d runs", c, len(tab.Runs))
	}
	if tab := BuildKernelTable("sh", rs, KernelTableOptions{SHPort: true}); tab.By != KeySourcePort {
		t.Errorf("sh-port table keyed by %d", tab.By)
	}
	// A weight past the table takes every bucket.
	if tab := BuildKernelTable("sh", kservers(300, 1), KernelTableOptions{}); !slices.Equal(tab.Runs, []SlotRun{{0, 255, 0}}) {
		t.Errorf("sh weights 300:1 runs %v", tab.Runs)
	}
}

func TestKernelTableMHSize(t *testing.T) {
	for in, want := range map[uint32]uint32{0: 65537, 251: 251, 250: 251, 4093: 4093, 1: 2, 131071: 131071} {
		tab := BuildKernelTable("mh", kservers(1, 1, 1), KernelTableOptions{MHSize: in})
		if tab.Size != want || tab.By != KeySource {
			t.Errorf("MHSize %d: size %d by %d, want %d by source", in, tab.Size, tab.By, want)
		}
		if c := slotCounts(t, tab, kservers(1, 1, 1)); c[0]+c[1]+c[2] != int(want) {
			t.Errorf("MHSize %d: slots %v, want all %d filled", in, c, want)
		}
	}
}

// byAddr returns the address of each slot's server.
func byAddr(tab KernelTable, rs []*RealServer) []netip.AddrPort {
	var out []netip.AddrPort
	for _, s := range expand(tab) {
		out = append(out, rs[s].Addr)
	}
	return out
}

// TestKernelTableMHDeterministic: the table depends only on the servers'
// addresses, ports and weights: equal inputs give equal tables, and so
// does the same list in another order (slots name the same addresses).
func TestKernelTableMHDeterministic(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 2))
	a := kservers(randWeights(r, 20, 50)...)
	b := kservers(make([]int, 20)...)
	for i := range a {
		a[i].Weight++
		b[i].Weight = a[i].Weight
	}
	ta := BuildKernelTable("mh", a, KernelTableOptions{})
	if tb := BuildKernelTable("mh", b, KernelTableOptions{}); !slices.Equal(ta.Runs, tb.Runs) {
		t.Fatal("equal server lists gave different tables")
	}
	r.Shuffle(len(b), func(i, j int) { b[i], b[j] = b[j], b[i] })
	tb := BuildKernelTable("mh", b, KernelTableOptions{})
	if !slices.Equal(byAddr(ta, a), byAddr(tb, b)) {
		t.Fatal("the same servers in another order gave a different table")
	}
	// A server of another port is another server.
	b[0].Addr = netip.AddrPortFrom(b[0].Addr.Addr(), 81)
	if tc := BuildKernelTable("mh", b, KernelTableOptions{}); slices.Equal(byAddr(tb, b), byAddr(tc, b)) {
		t.Error("changing a server's port left the table as it was")
	}
}

// moved counts the slots that changed server among those that were not
// on server skip before.
func moved(before, after []netip.AddrPort, skip netip.AddrPort) (moved, others int) {
	for i := range before {
		if before[i] == skip {
			continue
		}
		others++
		if after[i] != before[i] {
			moved++
		}
	}
	return moved, others
}

// TestKernelTableMHDisruption: when one of N equal servers leaves, only its
// slots move, but for a few others of the refill; when one joins, it
// takes its share and few others move between the old servers.
func TestKernelTableMHDisruption(t *testing.T) {
	for _, n := range []int{3, 10, 100} {
		var worstOut, worstIn float64
		for trial := range 4 {
			rs := kservers(slices.Repeat([]int{1}, n+1)...)
			for i, s := range rs { // a different server set per trial
				s.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(trial), byte(i >> 8), byte(i)}), 80)
			}
			base := rs[:n]
			before := byAddr(BuildKernelTable("mh", base, KernelTableOptions{}), base)

			gone := base[trial%n]
			gone.Down = true
			m, others := moved(before, byAddr(BuildKernelTable("mh", base, KernelTableOptions{}), base), gone.Addr)
			gone.Down = false
			worstOut = max(worstOut, float64(m)/float64(others))

			after := byAddr(BuildKernelTable("mh", rs, KernelTableOptions{}), rs)
			joined := rs[n].Addr
			m, _ = moved(after, before, joined) // slots not the new server's that changed
			worstIn = max(worstIn, float64(m)/float64(len(before)))
			checkShare(t, fmt.Sprintf("%d+1 servers", n), after, joined, 1/float64(n+1))
		}
		t.Logf("%3d servers: other slots moved, one leaving: worst %.4f; one joining: worst %.4f", n, worstOut, worstIn)
		if worstOut > 0.01 || worstIn > 0.01 {
			t.Errorf("%d servers: other slots moved: %.4f when one leaves, %.4f when one joins, want <= 0.01", n, worstOut, worstIn)
		}
	}
}

// checkShare checks that server has want of the slots, within 3%.
func checkShare(t *testing.T, what string, slots []netip.AddrPort, server netip.AddrPort, want float64) {
	t.Helper()
	got := 0
	for _, s := range slots {
		if s == server {
			got++
		}
	}
	if f := float64(got) / float64(len(slots)); f < want*0.97 || f > want*1.03 {
		t.Errorf("%s: %v has %.5f of the slots, want %.5f", what, server, f, want)
	}
}

// TestKernelTableMHWeights: slots follow the weights within 3% while
// weight/gcd fits the turns' 8 bits (table 65537): the fill stops in the
// middle of a round, so a server is off by at most its turns of one round
// (here up to ~1500 turns a round, ~43 rounds). Past 8 bits the kernel's
// shift rounds weights down (at least one turn each).
func TestKernelTableMHWeights(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 3))
	for trial := range 9 {
		w := randWeights(r, []int{3, 10, 30}[trial%3], 99)
		for i := range w {
			w[i]++
		}
		rs := kservers(w...)
		rs[0].Down = true
		tab := BuildKernelTable("mh", rs, KernelTableOptions{})
		slotCounts(t, tab, rs)
		slots, sum := byAddr(tab, rs), 0
		for _, s := range rs[1:] {
			sum += s.Weight
		}
		for _, s := range rs[1:] {
			checkShare(t, fmt.Sprintf("weights %v", w), slots, s.Addr, float64(s.Weight)/float64(sum))
		}
	}
	rs := kservers(randWeights(r, 100, 65535)...)
	got := slotCounts(t, BuildKernelTable("mh", rs, KernelTableOptions{}), rs)
	for i, s := range rs {
		if available(s) && got[i] == 0 {
			t.Errorf("server %d of weight %d has no slots", i, s.Weight)
		}
	}
}

func BenchmarkKernelTable(b *testing.B) {
	r := rand.New(rand.NewPCG(15, 4))
	for _, c := range []struct {
		name  string
		sched string
		rs    []*RealServer
	}{
		{"mh65537/10", "mh", kservers(slices.Repeat([]int{1}, 10)...)},
		{"mh65537/100", "mh", kservers(slices.Repeat([]int{1}, 100)...)},
		{"mh65537/100-weighted", "mh", kservers(randWeights(r, 100, 65535)...)},
		{"wrr/100", "wrr", kservers(randWeights(r, 100, 65535)...)},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			var runs int
			for b.Loop() {
				runs = len(BuildKernelTable(c.sched, c.rs, KernelTableOptions{}).Runs)
			}
			b.ReportMetric(float64(runs), "runs")
		})
	}
}
