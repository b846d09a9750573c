package daemon

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/nfhelper/nfhelper/config"
	"github.com/nfhelper/nfhelper/ctl"
	"github.com/nfhelper/nfhelper/health"
)

// A real server's standing is what new connections see of it: whether it
// takes any (down) and its share (weight). The file gives the weight; the
// health checks and the operators' overrides (nfhelperctl server) change
// both.

// standing is one real server's effective state.
type standing struct {
	weight int
	down   bool // no new connections: health down or forced down
}

// serverState is what the daemon knows of a configured real server beyond
// its entry in the file.
type serverState struct {
	up    bool // its health, as the checks last said (or initial_state)
	since time.Time
	// override, if set, is the operators' change, made against the entry
	// whose fingerprint is fingerprint.
	override    *ctl.Override
	fingerprint string
}

// standing is s's effective state for a server whose file weight is
// fileWeight: down when its health or an override says so; weight 0 if
// drained, else the override's weight, else the file's.
func (s *serverState) standing(fileWeight int) standing {
	st := standing{weight: fileWeight, down: !s.up}
	if o := s.override; o != nil {
		st.down = st.down || o.Down
		switch {
		case o.Drained:
			st.weight = 0
		case o.Weight != nil:
			st.weight = *o.Weight
		}
	}
	return st
}

// roster is the state of every configured real server, by service name and
// address.
type roster map[health.Key]*serverState

// fingerprint names a real server's entry in the file: its address,
// weight and effective check. An override is cleared when it changes.
func fingerprint(sc *config.Service, r *config.RealServer) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "%s|%d|%+v", r.Addr, r.EffectiveWeight(), sc.CheckFor(r)))
	return hex.EncodeToString(sum[:8])
}

// reconcile is the roster for cfg, made from cur (the running one, or the
// state file's at start): servers that stay keep their health state, new
// ones start as their initial_state says, since now; an override stays
// only while its server's entry keeps its fingerprint. It returns the
// overrides it clears, for the caller to log once the change is made. A
// server without checks is up.
func (cur roster) reconcile(cfg *config.Config, now time.Time) (roster, []cleared) {
	next := roster{}
	var gone []cleared
	for i := range cfg.Services {
		sc := &cfg.Services[i]
		for j := range sc.RealServers {
			r := &sc.RealServers[j]
			k := health.Key{Service: sc.Name, Addr: r.Addr}
			check := sc.CheckFor(r)
			s := &serverState{up: check.InitialUp, since: now, fingerprint: fingerprint(sc, r)}
			if old := cur[k]; old != nil {
				s.up, s.since = old.up, old.since
				if old.override != nil && old.fingerprint != s.fingerprint {
					gone = append(gone, cleared{k, old.override, "the server's entry in the file changed"})
				} else {
					s.override = old.override
				}
			}
			if check.Type == "none" && !s.up {
				s.up, s.since = true, now
			}
			next[k] = s
		}
	}
	for k, s := range cur {
		if next[k] == nil && s.override != nil {
			gone = append(gone, cleared{k, s.override, "the server is no longer in the file"})
		}
	}
	return next, gone
}

// cleared is an override reconcile cleared, and why.
type cleared struct {
	key      health.Key
	override *ctl.Override
	why      string
}

func (c cleared) log(log *slog.Logger) {
	log.Warn("override cleared: "+c.why, overrideAttrs(c.key, c.override)...)
}

// standings is every configured server's effective state.
func (ro roster) standings(cfg *config.Config) map[health.Key]standing {
	out := map[health.Key]standing{}
	for _, sc := range cfg.Services {
		for _, r := range sc.RealServers {
			k := health.Key{Service: sc.Name, Addr: r.Addr}
			if s := ro[k]; s != nil {
				out[k] = s.standing(r.EffectiveWeight())
			}
		}
	}
	return out
}

// draining tells whether an override takes new connections from some
// server (drained or weight 0) while it may still have running ones.
func (ro roster) draining() bool {
	for _, s := range ro {
		if o := s.override; o != nil && (o.Drained || o.Weight != nil && *o.Weight == 0) {
			return true
		}
	}
	return false
}

// saved is the roster as the state file holds it.
func (ro roster) saved() *savedState {
	st := &savedState{Version: stateVersion}
	// By service and address: the file reads the same after every write
	// that changes nothing of a server, and diffs show what did change.
	keys := slices.SortedFunc(maps.Keys(ro), func(a, b health.Key) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), a.Addr.Compare(b.Addr))
	})
	for _, k := range keys {
		s := ro[k]
		st.Health = append(st.Health, savedHealth{Service: k.Service, Address: k.Addr, Up: s.up, Since: s.since})
		if o := s.override; o != nil {
			st.Overrides = append(st.Overrides, savedOverride{Service: k.Service, Address: k.Addr, Weight: o.Weight, Drained: o.Drained, Down: o.Down, Fingerprint: s.fingerprint})
		}
	}
	return st
}

// rosterOf is the roster a state file holds, for reconcile.
func rosterOf(st *savedState) roster {
	ro := roster{}
	get := func(service string, addr netip.AddrPort) *serverState {
		k := health.Key{Service: service, Addr: addr}
		if ro[k] == nil {
			ro[k] = &serverState{up: true}
		}
		return ro[k]
	}
	for _, h := range st.Health {
		s := get(h.Service, h.Address)
		s.up, s.since = h.Up, h.Since
	}
	for _, o := range st.Overrides {
		s := get(o.Service, o.Address)
		s.override = &ctl.Override{Weight: o.Weight, Drained: o.Drained, Down: o.Down}
		s.fingerprint = o.Fingerprint
	}
	return ro
}

// overrideAttrs are the log attributes of server k's override o.
func overrideAttrs(k health.Key, o *ctl.Override) []any {
	attrs := []any{"service", k.Service, "server", k.Addr, "drained", o.Drained, "down", o.Down}
	if o.Weight != nil {
		attrs = append(attrs, "weight", *o.Weight)
	}
	return attrs
}
