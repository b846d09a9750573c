package ipvs

import (
	"math/bits"
	"slices"
)

// KernelScheduled reports whether nftables schedules a service with this
// scheduler in the kernel: the decision needs no state only the daemon
// has (connection counts), so a table of slots decides it.
func KernelScheduled(scheduler string) bool {
	switch scheduler {
	case "rr", "wrr", "sh", "mh":
		return true
	}
	return false
}

// KernelKey is what the kernel reduces modulo Size to pick a slot.
type KernelKey uint8

const (
	KeyCounter    KernelKey = iota // numgen inc: rr, wrr
	KeySource                      // jhash of the client address: sh, mh
	KeySourcePort                  // jhash of the client address and port: sh with SHPort
)

// KernelTable maps slot numbers 0..Size-1 to servers.
type KernelTable struct {
	By   KernelKey
	Size uint32    // the modulus, never 0 for a kernel-scheduled scheduler
	Runs []SlotRun // sorted, non-overlapping; a slot in no run names no server
}

// SlotRun gives the slots First..Last (inclusive) to one server.
type SlotRun struct {
	First, Last uint32
	Server      int // index into the servers slice given to BuildKernelTable
}

// KernelTableOptions are the service's scheduler flags.
type KernelTableOptions struct {
	MHSize uint32 // mh table size, a prime; 0: 65537; others are rounded up to one
	SHPort bool   // sh hashes the client port too (IPVS's sh-port)
}

const mhDefaultSize = 65537

// BuildKernelTable lays out the slots of a kernel-scheduled service.
// Servers with Weight <= 0 or Down take no slots; with none available
// there are no runs (Size is still set, so that the kernel's modulus
// stays valid and a sorry server can fill it). Other schedulers get a
// zero table.
func BuildKernelTable(scheduler string, servers []*RealServer, o KernelTableOptions) KernelTable {
	var avail []int
	for i, rs := range servers {
		if available(rs) {
			avail = append(avail, i)
		}
	}
	switch scheduler {
	case "rr":
		return rrTable(avail)
	case "wrr":
		return wrrTable(servers, avail)
	case "sh":
		t := KernelTable{By: KeySource, Size: shSize, Runs: slotRuns(shFill(servers, avail))}
		if o.SHPort {
			t.By = KeySourcePort
		}
		return t
	case "mh":
		size := mhTableSize(o.MHSize)
		return KernelTable{By: KeySource, Size: size, Runs: slotRuns(mhFill(servers, avail, size))}
	}
	return KernelTable{}
}

// appendRun appends slots first..last of server, merging with the last
// run when it is the same server's and adjacent: fewer map elements.
func appendRun(runs []SlotRun, first, last uint32, server int) []SlotRun {
	if n := len(runs); n > 0 && runs[n-1].Server == server && runs[n-1].Last+1 == first {
		runs[n-1].Last = last
		return runs
	}
	return append(runs, SlotRun{First: first, Last: last, Server: server})
}

// slotRuns turns a lookup table (server index per slot, -1: none) into
// runs; counted first, as an mh table has tens of thousands.
func slotRuns(lookup []int32) []SlotRun {
	n, prev := 0, int32(-1)
	for _, s := range lookup {
		if s >= 0 && s != prev {
			n++
		}
		prev = s
	}
	runs := make([]SlotRun, 0, n)
	for i, s := range lookup {
		if s >= 0 {
			runs = appendRun(runs, uint32(i), uint32(i), int(s))
		}
	}
	return runs
}

// rrTable gives each available server one slot, in list order.
func rrTable(avail []int) KernelTable {
	t := KernelTable{By: KeyCounter, Size: uint32(max(len(avail), 1))}
	for i, s := range avail {
		t.Runs = append(t.Runs, SlotRun{First: uint32(i), Last: uint32(i), Server: s})
	}
	return t
}

// wrrChunks caps the interleaved part of a wrr table: with the weights
// reduced by their gcd summing to T, slots are dealt in chunks of
// ceil(T/wrrChunks) consecutive numbers, so a table of millions of slots
// is still about wrrChunks+N map elements.
const wrrChunks = 1024

// wrrTable gives each available server exactly weight/gcd slots of a
// cycle of Σweight/gcd: its whole chunks interleaved by smooth weighted
// round robin, then its remainder as one run at the end.
func wrrTable(servers []*RealServer, avail []int) KernelTable {
	t := KernelTable{By: KeyCounter, Size: 1}
	g, total := 0, 0
	for _, s := range avail {
		g = gcd(g, servers[s].Weight)
	}
	for _, s := range avail {
		total += servers[s].Weight / g
	}
	if total == 0 {
		return t
	}
	t.Size = uint32(total)
	c := (total + wrrChunks - 1) / wrrChunks
	chunks := make([]int, len(avail))
	for i, s := range avail {
		chunks[i] = servers[s].Weight / g / c
	}
	pos := uint32(0)
	for _, i := range smoothOrder(chunks) {
		t.Runs = appendRun(t.Runs, pos, pos+uint32(c)-1, avail[i])
		pos += uint32(c)
	}
	for i, s := range avail {
		if r := servers[s].Weight/g - chunks[i]*c; r > 0 {
			t.Runs = appendRun(t.Runs, pos, pos+uint32(r)-1, s)
			pos += uint32(r)
		}
	}
	return t
}

// smoothOrder is nginx's smooth weighted round robin over Σw picks: each
// index appears w[i] times, spread as evenly as the weights allow (ties to
// the lower index, so the order is deterministic).
func smoothOrder(w []int) []int {
	total := 0
	for _, x := range w {
		total += x
	}
	cur := make([]int, len(w))
	order := make([]int, 0, total)
	for range total {
		best := 0
		for i, x := range w {
			cur[i] += x
			if cur[i] > cur[best] {
				best = i
			}
		}
		cur[best] -= total
		order = append(order, best)
	}
	return order
}

// shFill is ip_vs_sh_reassign over the available servers: in list order,
// each takes weight consecutive buckets, round after round.
func shFill(servers []*RealServer, avail []int) []int32 {
	lookup := make([]int32, shSize)
	for i := range lookup {
		lookup[i] = -1
	}
	p, n := 0, 0
	for i := range lookup {
		if len(avail) == 0 {
			break
		}
		lookup[i] = int32(avail[p])
		if n++; n >= servers[avail[p]].Weight {
			p, n = (p+1)%len(avail), 0
		}
	}
	return lookup
}

// mhTableSize is the mh table size for MHSize: a prime, or the skip of a
// preference permutation might not visit every slot.
func mhTableSize(n uint32) uint32 {
	if n == 0 {
		return mhDefaultSize
	}
	for p := max(n, 2); ; p++ {
		if isPrime(p) {
			return p
		}
	}
}

func isPrime(n uint32) bool {
	if n < 2 {
		return false
	}
	for d := uint32(2); uint64(d)*uint64(d) <= uint64(n); d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// mhDest is one server's place in the Maglev fill.
type mhDest struct {
	server     int
	perm, skip uint64
	turns      int
}

// mhFill is ip_vs_mh's permutate and populate over the available servers,
// taken in address order so that the table depends on the set of servers
// and their weights, not on how the list is ordered.
func mhFill(servers []*RealServer, avail []int, size uint32) []int32 {
	lookup := make([]int32, size)
	for i := range lookup {
		lookup[i] = -1
	}
	if len(avail) == 0 {
		return lookup
	}
	ds := mhDests(servers, avail, size)
	m := uint64(size)
	for n := uint32(0); ; {
		for i := range ds {
			d := &ds[i]
			for range d.turns {
				for lookup[d.perm] >= 0 {
					if d.perm += d.skip; d.perm >= m {
						d.perm -= m
					}
				}
				lookup[d.perm] = int32(d.server)
				if n++; n == size {
					return lookup
				}
			}
		}
	}
}

// mhDests gives each available server its permutation (offset and skip
// from the kernel's fixed-key hsiphash of address and port: no random
// seed, so every router computes the same table) and its turns, weight/gcd
// shifted right as ip_vs_mh_shift_weight so that the largest fits half the
// table size's bits: a round stays small beside the table.
func mhDests(servers []*RealServer, avail []int, size uint32) []mhDest {
	order := slices.Clone(avail)
	slices.SortStableFunc(order, func(a, b int) int {
		return servers[a].Addr.Compare(servers[b].Addr)
	})
	g, maxW := 0, 0
	for _, s := range order {
		g, maxW = gcd(g, servers[s].Weight), max(maxW, servers[s].Weight)
	}
	shift := max(bits.Len(uint(maxW/g))-bits.Len32(size)/2, 0)
	ds := make([]mhDest, len(order))
	for i, s := range order {
		rs := servers[s]
		v := foldAddr(rs.Addr.Addr()) + uint32(rs.Addr.Port())
		ds[i] = mhDest{
			server: s,
			perm:   uint64(hsiphash32(v, mhHashKey1) % size),
			skip:   uint64(hsiphash32(v, mhHashKey2)%(size-1) + 1),
			turns:  max((rs.Weight/g)>>shift, 1),
		}
	}
	return ds
}
