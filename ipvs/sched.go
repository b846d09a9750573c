package ipvs

import (
	"errors"
	"fmt"
	"net/netip"
)

// ErrScheduler reports an unknown scheduler name.
var ErrScheduler = errors.New("unknown scheduler")

// Scheduler chooses a real server; calls are serialized by the service.
//
// Every scheduler treats a server with Weight <= 0 as quiesced and a Down
// one as out: neither gets new connections. Pick returns nil when no
// server can take one. The servers slice and the servers' weights and
// standings may change between calls; schedulers that cache tables (wrr,
// sh, mh) notice and rebuild them.
type Scheduler interface {
	Pick(servers []*RealServer, client netip.AddrPort) *RealServer
}

// SchedulerNames are the schedulers NewScheduler knows, by IPVS name.
var SchedulerNames = []string{"rr", "wrr", "lc", "wlc", "sed", "nq", "sh", "mh"}

// NewScheduler returns a scheduler by its IPVS name.
func NewScheduler(name string) (Scheduler, error) {
	switch name {
	case "rr":
		return &roundRobin{}, nil
	case "wrr":
		return &weightedRoundRobin{last: -1}, nil
	case "lc":
		return leastConn{}, nil
	case "wlc":
		return weightedLeastConn{}, nil
	case "sed":
		return shortestExpectedDelay{}, nil
	case "nq":
		return neverQueue{}, nil
	case "sh":
		return &sourceHash{}, nil
	case "mh":
		return &maglevHash{}, nil
	}
	return nil, fmt.Errorf("%w %q (have rr, wrr, lc, wlc, sed, nq, sh, mh)", ErrScheduler, name)
}

// byLoad reports whether s weighs servers' active and inactive connections.
func byLoad(s Scheduler) bool {
	switch s.(type) {
	case leastConn, weightedLeastConn, shortestExpectedDelay, neverQueue:
		return true
	}
	return false
}

// available reports whether rs may take new connections.
func available(rs *RealServer) bool { return rs.Weight > 0 && !rs.Down }

// anyAvailable reports whether a server of servers may take new connections.
func anyAvailable(servers []*RealServer) bool {
	for _, rs := range servers {
		if available(rs) {
			return true
		}
	}
	return false
}

// roundRobin cycles through servers with a non-zero weight, ignoring the
// weight's size, as ip_vs_rr does.
type roundRobin struct{ next int }

func (r *roundRobin) Pick(servers []*RealServer, _ netip.AddrPort) *RealServer {
	for i := range servers {
		rs := servers[(r.next+i)%len(servers)]
		if available(rs) {
			r.next = (r.next + i + 1) % len(servers)
			return rs
		}
	}
	return nil
}

// weightedRoundRobin is ip_vs_wrr: servers are visited in turn while the
// current weight threshold steps down by the weights' gcd, so each gets
// connections in proportion to its weight, interleaved. The weights' max
// and gcd are cached and recomputed when the server set changes; the
// threshold is then reset as ip_vs_wrr_dest_changed does.
type weightedRoundRobin struct {
	set       serverSet
	last, cw  int
	maxW, gcd int
}

func (w *weightedRoundRobin) Pick(servers []*RealServer, _ netip.AddrPort) *RealServer {
	if w.set.changed(servers) {
		w.maxW, w.gcd = 0, 0
		for _, rs := range servers {
			if available(rs) {
				w.maxW = max(w.maxW, rs.Weight)
				w.gcd = gcd(w.gcd, rs.Weight)
			}
		}
		w.last = -1 // the kernel restarts at the list head
		if w.cw > w.maxW {
			w.cw = 0
		}
	}
	if w.maxW == 0 {
		return nil
	}
	for {
		w.last = (w.last + 1) % len(servers)
		if w.last == 0 {
			w.cw -= w.gcd
			if w.cw <= 0 {
				w.cw = w.maxW
			}
		}
		if rs := servers[w.last]; available(rs) && rs.Weight >= w.cw {
			return rs
		}
	}
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// serverSet remembers the server list a table was built from: each
// server's identity, weight, standing and address. It is compared in full
// on every Pick (a few words per server, no allocation) so that a change
// to the slice or to any weight or standing is never missed.
type serverSet struct {
	valid   bool
	members []setMember
}

type setMember struct {
	rs     *RealServer
	weight int
	down   bool
	addr   netip.AddrPort
}

// changed reports whether servers differs from the remembered list, and
// remembers servers.
func (s *serverSet) changed(servers []*RealServer) bool {
	if s.valid && len(servers) == len(s.members) {
		same := true
		for i, rs := range servers {
			m := &s.members[i]
			if m.rs != rs || m.weight != rs.Weight || m.down != rs.Down || m.addr != rs.Addr {
				same = false
				break
			}
		}
		if same {
			return false
		}
	}
	s.valid = true
	s.members = s.members[:0]
	for _, rs := range servers {
		s.members = append(s.members, setMember{rs, rs.Weight, rs.Down, rs.Addr})
	}
	return true
}
