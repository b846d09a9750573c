package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// The health comparison: keepalived driving IPVS and nfhelperd, each with
// the same TCP checks (hcInterval, hcFall), balancing two VIPs over real
// servers hk1 and hk2 of their own while a session loop runs through the
// first VIP. Each scenario is timed from the client's side (which server
// served each session, which failed) and from the balancer's (ipvsadm -Ln,
// nfhelperctl's services).

// hcLoad is the session loop's offered load: workers, each starting a
// session every hcEvery.
const (
	hcWorkers = 4
	hcEvery   = 100 * time.Millisecond
	// hcHold is how long the loop keeps running after a change settled,
	// for late failures and sessions to show.
	hcHold = 2 * time.Second
	// hcWarm: after the start, every check has passed at least once
	// before a server is stopped (keepalived takes a server that fails
	// its very first check out at once, without a retry).
	hcWarm = 2*hcInterval + 500*time.Millisecond
)

// A span is a measured delay, or that it did not come within its limit.
type span struct {
	d     time.Duration
	ok    bool
	limit time.Duration
}

func (s span) String() string {
	if !s.ok {
		return fmt.Sprintf("not within %v", s.limit)
	}
	return fmt.Sprintf("%.1f s", s.d.Seconds())
}

// hcResult is one system's measurements.
type hcResult struct {
	system string
	err    string // the run ended early: why

	// 1: hk2's vsftpd stopped.
	out          span // until the balancer no longer listed hk2
	lastFailed   span // until the last failed session started (none: ok false, limit 0)
	failed       int  // sessions started after the stop that failed
	started      int  // sessions started from the stop until hcHold after out
	lateFailures int  // failed sessions that started after the balancer took hk2 out
	outExec      span // the same for the third VIP, checked by a script
	// 2: hk2's vsftpd started again.
	back     span // until the balancer listed hk2
	backExec span // the same for the third VIP
	served   span // until the first session hk2 served started
	// 3: every server down.
	sorry       span // until the first session the sorry server served started
	sorryFailed int  // sessions that failed meanwhile
	noSorry     string
	// 4: drain.
	drainCmd     string
	drainedNew   int // sessions that reached the drained server after the command returned
	drainedTotal int // sessions started then
	held         string

	problems []string // nfhelperd's own expectations that failed
}

// healthSystems is the systems of the comparison among those -systems
// names: keepalived goes with ipvs.
func (e *env) healthSystems(systems []system) []healthSystem {
	var out []healthSystem
	for _, s := range systems {
		switch s.key {
		case "ipvs":
			out = append(out, e.keepalivedHealth())
		case "nfhelperd":
			out = append(out, e.nfhelperdHealth())
		}
	}
	return out
}

// runHealth sets the comparison's servers up and runs every available
// system. Its status is 1 when the setup failed or nfhelperd missed an
// expectation.
func (e *env) runHealth(ctx context.Context, systems []healthSystem) (results []*hcResult, unavailable map[string]string, status int) {
	unavailable = map[string]string{}
	srv, err := e.healthServers(ctx)
	if err != nil {
		logf("health: setup: %v", err)
		for _, s := range systems {
			unavailable[s.name] = "setup failed: " + err.Error()
		}
		return nil, unavailable, 1
	}
	for _, s := range systems {
		if ctx.Err() != nil {
			break
		}
		if why := s.avail(ctx); why != "" {
			logf("health: %s: not available: %s", s.name, why)
			unavailable[s.name] = why
			continue
		}
		began := time.Now()
		r := e.healthRun(ctx, s, srv)
		logf("health: %s: %+v (%.0f s)", s.name, *r, time.Since(began).Seconds())
		results = append(results, r)
		if s.key == "nfhelperd" && (r.err != "" || len(r.problems) > 0) {
			status = 1
		}
		if s.key != "nfhelperd" && r.err != "" {
			logf("health: %s did not complete: %s", s.name, r.err)
		}
	}
	return results, unavailable, status
}

// hcServer is one of the comparison's real servers.
type hcServer struct {
	*topo.Server
	vsftpd *exec.Cmd // nil while stopped
}

func (s *hcServer) addr() string { return net.JoinHostPort(s.V4, "21") }

// healthServers adds the VIPs to the router's lo and hk1, hk2 and hksorry
// to its bridge, each running vsftpd.
func (e *env) healthServers(ctx context.Context) ([]*hcServer, error) {
	ctx, cancel := context.WithTimeout(ctx, topo.Scaled(30*time.Second))
	defer cancel()
	for _, vip := range []string{hcVIPSorry, hcVIPNoSorry, hcVIPExec} {
		if err := e.routerRun(ctx, "ip", "addr", "add", vip+"/32", "dev", "lo"); err != nil {
			return nil, err
		}
	}
	var out []*hcServer
	for _, s := range hcServers {
		ts, err := e.tp.AddServer(ctx, s.name, s.v4)
		if err != nil {
			return nil, err
		}
		hs := &hcServer{Server: ts}
		if err := e.startFTP(ctx, hs); err != nil {
			return nil, err
		}
		out = append(out, hs)
	}
	return out, nil
}

func (e *env) startFTP(ctx context.Context, s *hcServer) error {
	if s.vsftpd != nil {
		return nil
	}
	c, err := e.tp.StartVsftpd(ctx, s.Server)
	s.vsftpd = c
	return err
}

func (e *env) stopFTP(s *hcServer) error {
	if s.vsftpd == nil {
		return nil
	}
	err := e.tp.StopGroup(s.vsftpd, syscall.SIGTERM, 10*time.Second)
	s.vsftpd = nil
	return err
}

// healthRun runs the scenarios on one system: 1 and 2 (one server stops,
// starts again), 4 (drain), then 3 (every server down), the order that
// needs no restart in between.
func (e *env) healthRun(ctx context.Context, s healthSystem, srv []*hcServer) *hcResult {
	r := &hcResult{system: s.name}
	_, _ = e.tp.Run(ctx, e.tp.Router, "conntrack", "-F")
	defer func() {
		s.stop()
		for _, hs := range srv {
			if err := e.startFTP(context.Background(), hs); err != nil {
				logf("health: %s: %v", hs.Name, err)
			}
		}
		_, _ = e.tp.Run(context.Background(), e.tp.Router, "conntrack", "-F")
	}()
	if err := s.start(ctx); err != nil {
		r.err = "start: " + firstLine(err.Error())
		return r
	}
	if err := e.healthScenarios(ctx, s, srv, r); err != nil {
		r.err = firstLine(err.Error())
	}
	return r
}

// hcBounds are nfhelperd's expectations (issue 14): out within fall ×
// interval plus one interval, back within rise × interval plus one; a
// refusal at once. Scaled under emulation.
var (
	hcOutBound     = topo.Scaled(time.Duration(hcFall+1) * hcInterval)
	hcBackBound    = topo.Scaled(time.Duration(hcRise+1) * hcInterval)
	hcRefuseBound  = topo.Scaled(time.Second)
	hcWait         = topo.Scaled(15 * time.Second) // what either system is given
	hcConnectLimit = topo.Scaled(3 * time.Second)
)

func (e *env) healthScenarios(ctx context.Context, s healthSystem, srv []*hcServer, r *hcResult) error {
	hk1, hk2, sorry := srv[0], srv[1], srv[2]
	mine := s.key == "nfhelperd"
	expect := func(ok bool, format string, args ...any) {
		if !ok && mine {
			p := fmt.Sprintf(format, args...)
			logf("health: nfhelperd: FAIL: %s", p)
			r.problems = append(r.problems, p)
		}
	}
	in := func(vip string, hs *hcServer, want bool) func(context.Context) (bool, error) {
		return func(ctx context.Context) (bool, error) {
			v, err := s.view(ctx, vip)
			if err != nil {
				return false, err
			}
			w, ok := v[hs.addr()]
			return (ok && w > 0) == want, nil
		}
	}
	for _, vip := range []string{hcVIPSorry, hcVIPNoSorry, hcVIPExec} {
		for _, hs := range []*hcServer{hk1, hk2} {
			if sp := waitFor(ctx, time.Now(), hcWait, in(vip, hs, true)); !sp.ok {
				return fmt.Errorf("%s not balanced to %s within %v after the start", vip, hs.Name, hcWait)
			}
		}
	}
	loop := e.startLoop(net.JoinHostPort(hcVIPSorry, "21"), hcWorkers, hcEvery)
	defer loop.end()
	began := time.Now()
	sleepCtx(ctx, hcWarm)
	for _, hs := range []*hcServer{hk1, hk2} {
		if _, ok := loop.waitServed(ctx, began, hs.Name, hcWait); !ok {
			return fmt.Errorf("no session reached %s within %v", hs.Name, hcWait)
		}
	}

	// 1: hk2's vsftpd stops.
	t0 := time.Now()
	if err := e.stopFTP(hk2); err != nil {
		return err
	}
	outExec := waitAsync(ctx, t0, hcWait, in(hcVIPExec, hk2, false))
	r.out = waitFor(ctx, t0, hcWait, in(hcVIPSorry, hk2, false))
	r.outExec = <-outExec
	expect(r.outExec.ok && r.outExec.d <= hcOutBound, "%s taken out by its exec check after %v, want within %v", hk2.Name, r.outExec, hcOutBound)
	expect(r.out.ok && r.out.d <= hcOutBound, "%s taken out after %v, want within %v", hk2.Name, r.out, hcOutBound)
	sleepCtx(ctx, hcHold)
	for _, x := range loop.since(t0) {
		r.started++
		if x.err == nil {
			continue
		}
		r.failed++
		if d := x.start.Sub(t0); d > r.lastFailed.d {
			r.lastFailed = span{d: d, ok: true} // sessions are listed as they end
		}
		if r.out.ok && x.start.After(t0.Add(r.out.d)) {
			r.lateFailures++
		}
		expect(x.start.Sub(t0) <= hcOutBound, "a session that started %.1f s after the stop failed: %v", x.start.Sub(t0).Seconds(), x.err)
	}

	// 2: it starts again.
	if err := e.startFTP(ctx, hk2); err != nil {
		return err
	}
	t1 := time.Now()
	backExec := waitAsync(ctx, t1, hcWait, in(hcVIPExec, hk2, true))
	r.back = waitFor(ctx, t1, hcWait, in(hcVIPSorry, hk2, true))
	r.backExec = <-backExec
	expect(r.backExec.ok && r.backExec.d <= hcBackBound, "%s back by its exec check after %v, want within %v", hk2.Name, r.backExec, hcBackBound)
	expect(r.back.ok && r.back.d <= hcBackBound, "%s back after %v, want within %v", hk2.Name, r.back, hcBackBound)
	if x, ok := loop.waitServed(ctx, t1, hk2.Name, hcWait); ok {
		r.served = span{d: x.start.Sub(t1), ok: true}
	} else {
		r.served = span{limit: hcWait}
	}
	expect(r.served.ok, "no session reached %s after it started again", hk2.Name)

	// 4: drain hk2 with a session of it open.
	held, err := e.holdSession(net.JoinHostPort(hcVIPSorry, "21"), hk2.Name, 10)
	if err != nil {
		return fmt.Errorf("a session to hold on %s: %w", hk2.Name, err)
	}
	cmd, err := s.drain(ctx, hk2.addr())
	r.drainCmd = cmd
	if err != nil {
		held.c.Close()
		return fmt.Errorf("drain: %w", err)
	}
	td := time.Now()
	sleepCtx(ctx, hcHold)
	for _, x := range loop.since(td) {
		r.drainedTotal++
		if x.server == hk2.Name {
			r.drainedNew++
		}
	}
	expect(r.drainedNew == 0, "%d sessions reached %s after the drain", r.drainedNew, hk2.Name)
	if err := e.finishHeld(held); err != nil {
		r.held = "failed: " + firstLine(err.Error())
	} else {
		r.held = "completed"
	}
	expect(err == nil, "the session held across the drain: %v", err)
	if err := s.undrain(ctx, hk2.addr()); err != nil {
		return fmt.Errorf("undrain: %w", err)
	}
	if sp := waitFor(ctx, time.Now(), hcWait, in(hcVIPSorry, hk2, true)); !sp.ok {
		return fmt.Errorf("%s not balanced again after the undrain", hk2.Name)
	}

	// 3: every server down.
	t3 := time.Now()
	for _, hs := range []*hcServer{hk1, hk2} {
		if err := e.stopFTP(hs); err != nil {
			return err
		}
	}
	x, ok := loop.waitServed(ctx, t3, sorry.Name, hcWait)
	r.sorry = span{d: x.start.Sub(t3), ok: ok, limit: hcWait}
	expect(ok && r.sorry.d <= hcOutBound, "the sorry server served after %v, want within %v", r.sorry, hcOutBound)
	for _, x := range loop.since(t3) {
		if x.err != nil && (!ok || x.start.Before(t3.Add(r.sorry.d))) {
			r.sorryFailed++
		}
	}
	for _, hs := range []*hcServer{hk1, hk2} {
		if sp := waitFor(ctx, time.Now(), hcWait, in(hcVIPNoSorry, hs, false)); !sp.ok {
			r.noSorry = fmt.Sprintf("(%s still balanced %v after the stop)", hs.Name, hcWait)
			expect(false, "%s", r.noSorry)
			return nil
		}
	}
	loop.end() // nothing else in the client's namespace while the answer is counted
	what, refused, took := e.dialOnce(ctx, net.JoinHostPort(hcVIPNoSorry, "21"))
	r.noSorry = what
	expect(refused && took <= hcRefuseBound, "a new connection with every server down and no sorry server: %s, want refused within %v", what, hcRefuseBound)
	return nil
}

// waitFor polls f every 20 ms until it holds and reports the time since
// from, or that it did not hold within limit.
func waitFor(ctx context.Context, from time.Time, limit time.Duration, f func(context.Context) (bool, error)) span {
	end := time.Now().Add(limit)
	for time.Now().Before(end) && ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ok, err := f(cctx)
		cancel()
		if err == nil && ok {
			return span{d: time.Since(from), ok: true}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return span{limit: limit}
}

// waitAsync is waitFor in a goroutine of its own.
func waitAsync(ctx context.Context, from time.Time, limit time.Duration, f func(context.Context) (bool, error)) <-chan span {
	c := make(chan span, 1)
	go func() { c <- waitFor(ctx, from, limit, f) }()
	return c
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// dialOnce opens one TCP connection from the client to addr and says what
// it got: refused (by a TCP reset or an ICMP port unreachable, counted by
// a table in the client's namespace), timed out, or connected (and what it
// read).
func (e *env) dialOnce(ctx context.Context, addr string) (what string, refused bool, took time.Duration) {
	counted := e.clientNft(ctx, probeRules) == nil
	cctx, cancel := context.WithTimeout(ctx, hcConnectLimit)
	defer cancel()
	start := time.Now()
	c, err := topo.DialIn(cctx, e.tp.Client, "tcp", addr)
	took = time.Since(start)
	how := ""
	if counted {
		out, lerr := e.tp.Run(ctx, e.tp.Client, "nft", "list", "table", "inet", "nfhref_probe")
		if lerr == nil {
			var by []string
			for _, m := range probeCountRE.FindAllStringSubmatch(string(out), -1) {
				if m[1] != "0" {
					by = append(by, m[2])
				}
			}
			if len(by) > 0 {
				how = " (" + strings.Join(by, ", ") + ")"
			}
		}
		_ = e.clientNft(context.Background(), "delete table inet nfhref_probe")
	}
	switch {
	case err == nil:
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		b := make([]byte, 128)
		n, _ := c.Read(b)
		c.Close()
		return fmt.Sprintf("connected after %.0f ms (read %q)", ms(took), strings.TrimSpace(string(b[:n]))), false, took
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("refused%s after %.1f ms", how, ms(took)), true, took
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT):
		return fmt.Sprintf("no answer: timed out after %.1f s", took.Seconds()), false, took
	default:
		return fmt.Sprintf("%s%s after %.0f ms", firstLine(err.Error()), how, ms(took)), false, took
	}
}

// probeRules count what answers the client's SYN: a reset from port 21 or
// an ICMP port unreachable (IPVS's answer when a service has no
// destination).
const probeRules = `table inet nfhref_probe {
	chain in {
		type filter hook input priority 0; policy accept;
		tcp sport 21 tcp flags & rst == rst counter comment "TCP reset"
		icmp type destination-unreachable icmp code port-unreachable counter comment "ICMP port unreachable"
	}
}
`

var probeCountRE = regexp.MustCompile(`packets (\d+) bytes \d+ comment "([^"]+)"`)

// clientNft loads an nft script in the client's namespace.
func (e *env) clientNft(ctx context.Context, script string) error {
	c := e.tp.CommandContext(ctx, e.tp.Client, "nft", "-f", "-")
	c.Stdin = strings.NewReader(script)
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("nft -f in the client: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
