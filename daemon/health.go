package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/nfhelper/nfhelper/config"
	"github.com/nfhelper/nfhelper/health"
)

// The checks run in the daemon's own network namespace, on the monitor's
// one scheduler goroutine (package health). Its changes reach the daemon
// through a queue that never blocks it, and are applied on a daemon
// goroutine under the daemon's lock, as reloads and nfhelperctl's changes
// are.

// notifyTimeout bounds a notify command; its process group is killed then.
const notifyTimeout = 30 * time.Second

// healthTargets are the monitor's targets for cfg; the roster's states are
// those of servers new to the monitor. Credentials files are read here, at
// each start and reload.
func healthTargets(cfg *config.Config, ro roster) ([]health.Target, error) {
	var out []health.Target
	for i := range cfg.Services {
		sc := &cfg.Services[i]
		for j := range sc.RealServers {
			r := &sc.RealServers[j]
			c := sc.CheckFor(r)
			spec := health.Spec{Type: c.Type, Addr: netip.AddrPortFrom(r.Addr.Addr(), c.Port), Interval: c.Interval, Timeout: c.Timeout,
				Rise: c.Rise, Fall: c.Fall, User: c.User, Password: c.Password,
				Path: c.Path, Status: c.Status, Body: c.Body, Host: c.Host, Command: c.Command}
			if c.CredentialsFile != "" {
				var err error
				if spec.User, spec.Password, err = config.ReadCredentials(c.CredentialsFile); err != nil {
					return nil, fmt.Errorf("service %s, real server %s: credentials file: %w", sc.Name, r.Addr, err)
				}
			}
			k := health.Key{Service: sc.Name, Addr: r.Addr}
			t := health.Target{Key: k, Spec: spec, Up: true, Since: time.Now()}
			if s := ro[k]; s != nil {
				t.Up, t.Since = s.up, s.since
			}
			out = append(out, t)
		}
	}
	return out, nil
}

// changeQueue carries the monitor's changes to the daemon's goroutine: add
// never blocks the monitor, and the daemon takes all that waits at once.
type changeQueue struct {
	mu      sync.Mutex
	pending []health.Change
	ready   chan struct{} // one token while pending is not empty
}

func newChangeQueue() *changeQueue { return &changeQueue{ready: make(chan struct{}, 1)} }

func (q *changeQueue) add(c health.Change) {
	q.mu.Lock()
	q.pending = append(q.pending, c)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

func (q *changeQueue) take() []health.Change {
	q.mu.Lock()
	defer q.mu.Unlock()
	p := q.pending
	q.pending = nil
	return p
}

// followHealth applies the monitor's changes until ctx ends.
func (d *Daemon) followHealth(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.changes.ready:
			d.healthChanged(d.changes.take())
		}
	}
}

// healthChanged applies health changes, in the order the monitor made them.
func (d *Daemon) healthChanged(changes []health.Change) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping {
		return
	}
	before := d.roster.standings(d.running)
	causes := map[health.Key]string{}
	for _, c := range changes {
		s := d.roster[c.Key]
		if s == nil || s.up == c.Up { // gone in a reload, or no change after all
			continue
		}
		s.up, s.since = c.Up, c.At
		causes[c.Key] = c.Cause
		if c.Cause == "" { // the checks pass again
			causes[c.Key] = "checks pass"
		}
	}
	if len(causes) == 0 {
		return
	}
	changed := d.commit(before, func(k health.Key) string { return causes[k] })
	for k, cause := range causes {
		if !changed[k] {
			// Forced down: the health is noted, the state stays.
			d.log.Info("server health", "service", k.Service, "server", k.Addr, "health", upDown(d.roster[k].up), "cause", cause)
		}
	}
}

// notice is one run of a service's notify command.
type notice struct {
	command string
	env     []string
}

// notify queues a notify run; one goroutine runs them in order (runNotices),
// so that a slow command delays the next ones, never the daemon.
func (d *Daemon) notify(command string, k health.Key, state, cause string) {
	n := notice{command: command, env: []string{
		"NFHELPER_SERVICE=" + k.Service, "NFHELPER_SERVER=" + k.Addr.String(),
		"NFHELPER_STATE=" + state, "NFHELPER_CAUSE=" + cause,
	}}
	select {
	case d.notices <- n:
	default:
		d.log.Warn("notify skipped: too many waiting", "service", k.Service, "server", k.Addr, "state", state)
	}
}

// runNotices runs the queued notify commands until ctx ends.
func (d *Daemon) runNotices(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case n := <-d.notices:
			if err := health.RunCommand(ctx, n.command, n.env, notifyTimeout); err != nil && ctx.Err() == nil {
				d.log.Warn("notify command failed", "command", n.command, "env", strings.Join(n.env, " "), "err", err)
			}
		}
	}
}

// upDown names a health or a state.
func upDown(up bool) string {
	if up {
		return "up"
	}
	return "down"
}
