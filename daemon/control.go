package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/nfhelper/nfhelper/config"
	"github.com/nfhelper/nfhelper/ctl"
	"github.com/nfhelper/nfhelper/health"
)

// The daemon is the control socket's ctl.ServerControl: nfhelperctl server
// changes a real server's standing at once, without a reload.

// maxWeight is the largest weight an override sets (IPVS's).
const maxWeight = 65535

// errStopping refuses a change while the daemon stops or hands over.
var errStopping = errors.New("the daemon is stopping")

// SetServer changes a real server's override as req asks and applies it.
// Unknown services and servers, bad ops and weights are errors wrapping
// ctl's sentinels.
func (d *Daemon) SetServer(_ context.Context, req ctl.ServerRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping {
		return errStopping
	}
	sc, r, err := lookup(d.running, req.Service, req.Address)
	if err != nil {
		return err
	}
	k := health.Key{Service: sc.Name, Addr: r.Addr}
	s := d.roster[k]
	var o ctl.Override
	if s.override != nil {
		o = *s.override
	}
	switch req.Op {
	case "weight":
		if req.Weight < 0 || req.Weight > maxWeight {
			return fmt.Errorf("%w: weight %d is not in 0..%d", ctl.ErrBadRequest, req.Weight, maxWeight)
		}
		// The file's weight again: no override.
		o.Weight = nil
		if w := req.Weight; w != r.EffectiveWeight() {
			o.Weight = &w
		}
	case "drain", "undrain":
		o.Drained = req.Op == "drain"
	case "down", "up":
		o.Down = req.Op == "down"
	default:
		return fmt.Errorf("%w: unknown op %q (want weight, drain, undrain, down or up)", ctl.ErrBadRequest, req.Op)
	}
	before := d.roster.standings(d.running)
	s.override, s.fingerprint = nil, fingerprint(sc, r)
	if o != (ctl.Override{}) {
		s.override = &o
	}
	d.log.Info("server override", append(overrideAttrs(k, &o), "op", req.Op)...)
	d.commit(before, func(health.Key) string { return "nfhelperctl " + req.Op })
	d.states.adjust(d.ctx, d.roster.draining())
	if sc.Protocol != "udp" && s.standing(r.EffectiveWeight()).weight == 0 {
		// Following the states from now on, the engine learns those of
		// the connections already running.
		vip, addr := sc.VIPAddr, r.Addr
		d.background.Go(func() {
			if err := syncStates(d.follower.netns, d.engine, vip, addr); err != nil {
				d.log.Warn("drain: connection states not read; its active count may be low", "service", k.Service, "server", addr, "err", err)
			}
		})
	}
	return nil
}

// Standing tells what the daemon knows of a configured real server beyond
// the engine's view.
func (d *Daemon) Standing(service string, addr netip.AddrPort) (ctl.Standing, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	sc, r, err := lookup(d.running, service, addr)
	if err != nil {
		return ctl.Standing{}, false
	}
	k := health.Key{Service: service, Addr: addr}
	s := d.roster[k]
	st := ctl.Standing{Check: sc.CheckFor(r).Type, Health: upDown(s.up), Since: s.since, ConfigWeight: r.EffectiveWeight()}
	if s.override != nil {
		o := *s.override
		st.Override = &o
	}
	if m, ok := d.monitor.Status(k); ok {
		st.LastFailure, st.LastCause = m.LastFailure, m.LastCause
	}
	return st, true
}

// lookup finds a real server in cfg.
func lookup(cfg *config.Config, service string, addr netip.AddrPort) (*config.Service, *config.RealServer, error) {
	for i := range cfg.Services {
		sc := &cfg.Services[i]
		if sc.Name != service {
			continue
		}
		for j := range sc.RealServers {
			if r := &sc.RealServers[j]; r.Addr == addr {
				return sc, r, nil
			}
		}
		return nil, nil, fmt.Errorf("%w: service %s has no real server %s", ctl.ErrUnknownServer, service, addr)
	}
	return nil, nil, fmt.Errorf("%w: no service %q", ctl.ErrUnknownService, service)
}

// commit applies the roster's standings after a change (a health change,
// nfhelperctl) to the engine and the ruleset's fail-open map, reports the
// servers whose state changed since before (cause says why) and saves the
// state. d.mu is held. It returns the servers whose state changed.
func (d *Daemon) commit(before map[health.Key]standing, cause func(health.Key) string) map[health.Key]bool {
	after := d.roster.standings(d.running)
	services := d.engine.Services()
	d.setStandings(after)
	spec := specFor(d.running, services, after)
	d.dp.shape(spec)
	spec.LiveVIPs, spec.LiveServers = d.engine.Live()
	if err := d.ruleset.Update(d.nft, spec); err != nil {
		// The engine follows the change; the fail-open map at the next one.
		d.log.Error("server states: ruleset not updated", "err", err)
	}
	changed := d.report(before, after, cause)
	d.saveState()
	return changed
}

// setStandings gives the engine's real servers their standings.
func (d *Daemon) setStandings(st map[health.Key]standing) {
	for _, svc := range d.engine.Services() {
		for _, rs := range svc.Servers {
			if s, ok := st[health.Key{Service: svc.Name, Addr: rs.Addr}]; ok {
				d.engine.SetStanding(rs, s.weight, s.down)
			}
		}
	}
}

// report logs, counts and notifies each server whose state (up: it takes
// new connections) differs from before, and resets the connections of
// those that went down where their service says so (on_down: reset).
// Servers new since before have no change to report. d.mu is held.
func (d *Daemon) report(before, after map[health.Key]standing, cause func(health.Key) string) map[health.Key]bool {
	changed := map[health.Key]bool{}
	for i := range d.running.Services {
		sc := &d.running.Services[i]
		for _, r := range sc.RealServers {
			k := health.Key{Service: sc.Name, Addr: r.Addr}
			b, ok := before[k]
			a := after[k]
			if !ok || b.down == a.down {
				continue
			}
			changed[k] = true
			d.stateChanges.Add(1)
			state, why := upDown(!a.down), cause(k)
			d.log.Info("server state", "service", sc.Name, "server", r.Addr, "state", state, "cause", why)
			if sc.Notify != "" {
				d.notify(sc.Notify, k, state, why)
			}
			if a.down && sc.OnDown == "reset" {
				udp, vip, addr := sc.Protocol == "udp", sc.VIPAddr, r.Addr
				d.background.Go(func() {
					n, err := resetConns(d.follower.netns, udp, vip, addr)
					d.log.Info("server down: connections reset", "service", k.Service, "server", addr, "conns", n, "err", err)
				})
			}
		}
	}
	return changed
}

// StateChanges counts the real servers' state changes (up to down and
// back, by health, nfhelperctl or reload) since the start.
func (d *Daemon) StateChanges() uint64 { return d.stateChanges.Load() }

// loadRoster is the state file's roster; without a state directory, or
// when the file cannot be read, an empty one (logged: the daemon starts
// without overrides rather than not at all).
func (d *Daemon) loadRoster() roster {
	if d.opts.StateDir == "" {
		return roster{}
	}
	path := filepath.Join(d.opts.StateDir, stateFileName)
	st, err := readState(path)
	if err != nil {
		d.log.Error("starting without overrides and health states", "err", err)
		return roster{}
	}
	if len(st.Overrides)+len(st.Health) > 0 {
		d.log.Info("state loaded", "path", path, "overrides", len(st.Overrides), "servers", len(st.Health))
	}
	return rosterOf(st)
}

// saveState writes the roster to the state file; a failure is logged (the
// change is made; a restart would not know it).
func (d *Daemon) saveState() {
	if d.opts.StateDir == "" {
		return
	}
	err := os.MkdirAll(d.opts.StateDir, 0o700)
	if err == nil {
		err = writeState(filepath.Join(d.opts.StateDir, stateFileName), d.roster.saved())
	}
	if err != nil {
		d.log.Error("state not saved: a restart forgets the last changes", "err", err)
	}
}
