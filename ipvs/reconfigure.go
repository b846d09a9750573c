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
}

// Services returns the running services, in configuration order.
func (e *Engine) Services() []*Service { return e.snap.Load().list }

// Prepare merges a new configuration into the running one without
// changing anything that runs: real servers that stay (same service VIP,
// same address) are the running objects, so that their connection counts
// carry over, and keep their marks; new ones get free marks; add-ons keep
// theirs, and their learned servers, by name. The caller installs the
// result (next, now marked) in the kernel and then calls commit, which sets
// the new weights and switches the workers over. Connections keep their
// service and server: a reload changes only what new connections get.
func (e *Engine) Prepare(next []*Service) (commit func(), err error) {
	cur := e.snap.Load()
	var byVIP, udpByVIP map[netip.AddrPort]*Service
	byName := map[string]*Service{}
	if cur != nil {
		byVIP, udpByVIP = cur.services, cur.udp
		for _, s := range cur.addOns {
			byName[s.Name] = s
		}
	}
	type weight struct {
		rs *RealServer
		w  int
	}
	var weights []weight
	used := map[uint32]bool{}
	for _, s := range next {
		if s.AddOn {
			if old := byName[s.Name]; old != nil {
				s.Mark = old.Mark
				old.mu.Lock()
				s.Servers = append([]*RealServer(nil), old.Servers...)
				old.mu.Unlock()
			}
			continue
		}
		old := byVIP[s.VIP]
		if s.UDP {
			old = udpByVIP[s.VIP]
		}
		if old != nil && old.Persist != nil && s.Persist != nil {
			// Clients stay where they were; templates to servers that
			// leave are dropped at commit.
			s.Persist = old.Persist
		}
		for i, rs := range s.Servers {
			if old == nil {
				continue
			}
			for _, ors := range old.Servers {
				if ors.Addr == rs.Addr {
					weights = append(weights, weight{ors, rs.Weight})
					s.Servers[i] = ors
				}
			}
		}
	}
	for _, s := range next {
		if s.AddOn && s.Mark != 0 {
			used[s.Mark] = true
		}
		for _, rs := range s.Servers {
			if rs.Mark != 0 && !s.AddOn {
				used[rs.Mark] = true
			}
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
		}
		if err != nil {
			return nil, fmt.Errorf("%w (mask %#x)", err, e.markMask)
		}
	}
	snap := &snapshot{services: map[netip.AddrPort]*Service{}, udp: map[netip.AddrPort]*Service{}, addOns: map[uint32]*Service{}, list: next}
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
	for _, s := range next {
		s.mu = &e.schedMu
	}
	return func() {
		// A worker still picking with an old service reads the weights
		// under the same lock.
		e.schedMu.Lock()
		for _, w := range weights {
			w.rs.Weight = w.w
		}
		e.schedMu.Unlock()
		e.snap.Store(snap)
		for _, s := range next {
			if s.Persist == nil {
				continue
			}
			old := byVIP[s.VIP]
			if s.UDP {
				old = udpByVIP[s.VIP]
			}
			if old != nil && old.Persist == s.Persist {
				for _, ors := range old.Servers {
					if !slices.Contains(s.Servers, ors) {
						s.Persist.Forget(ors)
					}
				}
			}
		}
	}, nil
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
