package ipvs

import (
	"errors"
	"fmt"
	"net/netip"
)

// ErrScheduler reports an unknown scheduler name.
var ErrScheduler = errors.New("unknown scheduler")

// Scheduler chooses a real server; calls are serialized by the service.
type Scheduler interface {
	Pick(servers []*RealServer, client netip.AddrPort) *RealServer
}

// NewScheduler returns a scheduler by its IPVS name.
func NewScheduler(name string) (Scheduler, error) {
	switch name {
	case "rr":
		return &roundRobin{}, nil
	case "wrr":
		return &weightedRoundRobin{last: -1}, nil
	}
	return nil, fmt.Errorf("%w %q (have rr, wrr)", ErrScheduler, name)
}

// roundRobin cycles through servers with a non-zero weight, ignoring the
// weight's size, as ip_vs_rr does.
type roundRobin struct{ next int }

func (r *roundRobin) Pick(servers []*RealServer, _ netip.AddrPort) *RealServer {
	for i := range servers {
		rs := servers[(r.next+i)%len(servers)]
		if rs.Weight > 0 {
			r.next = (r.next + i + 1) % len(servers)
			return rs
		}
	}
	return nil
}

// weightedRoundRobin is ip_vs_wrr: servers are visited in turn while the
// current weight threshold steps down by the weights' gcd, so each gets
// connections in proportion to its weight, interleaved.
type weightedRoundRobin struct {
	last, cw int
}

func (w *weightedRoundRobin) Pick(servers []*RealServer, _ netip.AddrPort) *RealServer {
	maxW, g := 0, 0
	for _, rs := range servers {
		if rs.Weight > 0 {
			maxW = max(maxW, rs.Weight)
			g = gcd(g, rs.Weight)
		}
	}
	if maxW == 0 {
		return nil
	}
	for {
		w.last = (w.last + 1) % len(servers)
		if w.last == 0 {
			w.cw -= g
			if w.cw <= 0 {
				w.cw = maxW
			}
		}
		if rs := servers[w.last]; rs.Weight >= w.cw {
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
