package ipvs

import "slices"

// SetStanding sets a real server's weight and whether it is down, at once
// for new connections. Going down also drops the persistence templates that
// name it in every running service that holds it: its persistent clients
// are scheduled anew (Lookup would drop them one by one anyway; this frees
// them now and keeps the template count true).
func (e *Engine) SetStanding(rs *RealServer, weight int, down bool) {
	e.schedMu.Lock()
	wentDown := down && !rs.Down
	rs.Weight, rs.Down = weight, down
	e.schedMu.Unlock()
	if !wentDown {
		return
	}
	for _, s := range e.Services() {
		if s.Persist == nil || s.AddOn {
			continue
		}
		s.mu.Lock()
		holds := slices.Contains(s.Servers, rs)
		s.mu.Unlock()
		if holds {
			s.Persist.Forget(rs)
		}
	}
}
