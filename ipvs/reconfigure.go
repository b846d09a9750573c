package ipvs

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"time"
)

// ErrMarks reports more real servers and add-ons than the mark bits name.
var ErrMarks = errors.New("ipvs: out of mark values")

// snapshot is the configuration workers read, replaced whole on reload.
type snapshot struct {
	services map[netip.AddrPort]*Service // balanced TCP, by VIP
	udp      map[netip.AddrPort]*Service // balanced UDP, by VIP
	addOns   map[uint32]*Service         // by mark bits
	list     []*Service
	pickups  map[netip.AddrPort]*serverPickups // by real server
}

// Services returns the running services, in configuration order.
func (e *Engine) Services() []*Service { return e.snap.Load().list }

// Prepare merges a new configuration into the running one without
// changing anything that runs: real servers that stay (same service VIP,
// same address) are the running objects, so that their connection counts
// carry over, and keep their marks; new ones get free marks; add-ons keep
// theirs, and their learned servers, by name. The caller installs the
// result (next, now marked) in the kernel and then calls commit, which sets
// the new weights and standings (Down) and switches the workers over.
// Connections keep their service and server: a reload changes only what
// new connections get. A service's sorry server is carried over likewise
// when its address stays.
func (e *Engine) Prepare(next []*Service) (commit func(), err error) {
	cur := e.snap.Load()
	weights := carryOver(cur, next)
	if err := e.assignMarks(next); err != nil {
		return nil, err
	}
	snap := e.newSnapshot(next)
	for _, s := range next {
		s.mu = &e.schedMu
		s.helperStats = e.helperStatsFor(s)
	}
	return func() { e.switchTo(cur, snap, weights) }, nil
}

// running is the running service that svc, of a new configuration,
// replaces: the add-on of the same name, the service of the same protocol
// and VIP; nil if none (or nothing runs yet).
func (snap *snapshot) running(svc *Service) *Service {
	switch {
	case snap == nil:
		return nil
	case svc.AddOn:
		for _, s := range snap.addOns {
			if s.Name == svc.Name {
				return s
			}
		}
		return nil
	case svc.UDP:
		return snap.udp[svc.VIP]
	}
	return snap.services[svc.VIP]
}

// newWeight is a running real server's weight and standing in the new
// configuration, set at commit.
type newWeight struct {
	rs   *RealServer
	w    int
	down bool
}

// carryOver puts into next the running objects it keeps: an add-on's mark
// and learned servers, a service's persistence table, the real servers
// and sorry server that stay, whose new weights it returns.
func carryOver(cur *snapshot, next []*Service) []newWeight {
	var weights []newWeight
	for _, s := range next {
		if s.Sorry != nil {
			s.Sorry.Sorry = true
		}
		old := cur.running(s)
		if old == nil {
			continue
		}
		if s.AddOn {
			s.Mark = old.Mark
			old.mu.Lock()
			s.Servers = append([]*RealServer(nil), old.Servers...)
			old.mu.Unlock()
			continue
		}
		if old.Persist != nil && s.Persist != nil {
			// Clients stay where they were; templates to servers that
			// leave are dropped at commit.
			s.Persist = old.Persist
		}
		for i, rs := range s.Servers {
			for _, ors := range old.Servers {
				if ors.Addr == rs.Addr {
					weights = append(weights, newWeight{ors, rs.Weight, rs.Down})
					s.Servers[i] = ors
				}
			}
		}
		if s.Sorry != nil && old.Sorry != nil && s.Sorry.Addr == old.Sorry.Addr {
			weights = append(weights, newWeight{old.Sorry, s.Sorry.Weight, s.Sorry.Down})
			s.Sorry = old.Sorry
		}
	}
	return weights
}

// assignMarks gives the add-ons and real servers of next without a mark a
// free one of the mark mask's values.
func (e *Engine) assignMarks(next []*Service) error {
	used := map[uint32]bool{}
	for _, s := range next {
		if s.AddOn && s.Mark != 0 {
			used[s.Mark] = true
		}
		for _, rs := range s.Servers {
			if rs.Mark != 0 && !s.AddOn {
				used[rs.Mark] = true
			}
		}
		if s.Sorry != nil && s.Sorry.Mark != 0 {
			used[s.Sorry.Mark] = true
		}
	}
	shift := uint32(bits.TrailingZeros32(e.markMask))
	free := uint32(1)
	take := func() (uint32, error) {
		for ; (free<<shift)&e.markMask == free<<shift && free<<shift != 0; free++ {
			if m := free << shift; !used[m] {
				used[m] = true
				return m, nil
			}
		}
		return 0, ErrMarks
	}
	for _, s := range next {
		var err error
		switch {
		case s.AddOn && s.Mark == 0:
			s.Mark, err = take()
		case !s.AddOn:
			for _, rs := range s.Servers {
				if rs.Mark == 0 && err == nil {
					rs.Mark, err = take()
				}
			}
			if s.Sorry != nil && s.Sorry.Mark == 0 && err == nil {
				s.Sorry.Mark, err = take()
			}
		}
		if err != nil {
			return fmt.Errorf("%w (mask %#x)", err, e.markMask)
		}
	}
	return nil
}

// newSnapshot is what the workers read of the services next.
func (e *Engine) newSnapshot(next []*Service) *snapshot {
	snap := &snapshot{services: map[netip.AddrPort]*Service{}, udp: map[netip.AddrPort]*Service{}, addOns: map[uint32]*Service{}, list: next, pickups: pickupsOf(next)}
	for _, s := range next {
		switch {
		case s.AddOn:
			snap.addOns[s.Mark&e.markMask] = s
		case s.UDP:
			snap.udp[s.VIP] = s
		default:
			snap.services[s.VIP] = s
		}
	}
	return snap
}

// switchTo sets the new weights and switches the workers from cur to snap;
// persistence tables carried over forget the servers that left.
func (e *Engine) switchTo(cur, snap *snapshot, weights []newWeight) {
	// A worker still picking with an old service reads the weights under
	// the same lock.
	e.schedMu.Lock()
	for _, w := range weights {
		w.rs.Weight, w.rs.Down = w.w, w.down
	}
	e.schedMu.Unlock()
	e.snap.Store(snap)
	for _, s := range snap.list {
		if s.Persist == nil || s.AddOn {
			continue
		}
		if old := cur.running(s); old != nil && old.Persist == s.Persist {
			for _, ors := range old.Servers {
				if !slices.Contains(s.Servers, ors) {
					s.Persist.Forget(ors)
				}
			}
		}
	}
}

// RunExpiry drops timed-out connections and persistence templates every
// interval until stop is closed, a shard at a time, and helped connections
// conntrack no longer holds (checkIdle, through Options.Alive).
func (e *Engine) RunExpiry(interval time.Duration, stop <-chan struct{}) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			at := now()
			e.checkIdle(at)
			e.Table.Expire(at)
			e.UDP.Expire(at)
			for _, s := range e.Services() {
				if s.Persist != nil {
					s.Persist.Expire(at)
				}
			}
		}
	}
}

// Live lists the VIPs (or add-on matches) and real servers of the helped
// connections in the table, whose packets must keep reaching the daemon
// whatever a reload removed.
func (e *Engine) Live() (vips, servers []netip.AddrPort) {
	seenVIP, seenServer := map[netip.AddrPort]bool{}, map[netip.AddrPort]bool{}
	e.Table.each(func(c *Conn) {
		if c.help == nil || c.help.helper == nil {
			return
		}
		if !seenVIP[c.VIP] {
			seenVIP[c.VIP] = true
			vips = append(vips, c.VIP)
		}
		if !seenServer[c.Server] {
			seenServer[c.Server] = true
			servers = append(servers, c.Server)
		}
	})
	return vips, servers
}
