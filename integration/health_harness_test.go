//go:build integration

package integration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/ctl"
	"github.com/nfhelper/nfhelper/integration/topo"
)

// The health tests (issue 14) run a daemon of their own, with their own
// configuration, against real servers of their own: three vsftpd servers
// hs1..hs3 and a fourth, hsorry, each in a namespace on the router's
// bridge, behind VIPs of their own on the router's lo. The suite's daemon
// is stopped first (needDaemon starts it again for the next test) and the
// health daemon stopped when the test ends.

const (
	hcVIP   = "198.51.100.40" // the health tests' first VIP
	hcVIP2  = "198.51.100.41" // a second service's
	hcSorry = "10.0.0.29"
	// hcTable is the table a test installs in a real server's namespace
	// to break it (never the router's).
	hcTable = "nfht_hc"
)

var hcAddrs = []string{"10.0.0.21", "10.0.0.22", "10.0.0.23"}

// hcServer is one of the health tests' real servers.
type hcServer struct {
	*topo.Server
	vsftpd *exec.Cmd // nil while stopped
}

// addr is its FTP address as the configuration names it.
func (s *hcServer) addr() string { return s.V4 + ":21" }

var hcFixture struct {
	once    sync.Once
	err     error
	servers []*hcServer // hs1, hs2, hs3, hsorry
}

// hcEnv is one health test's view of the fixture.
type hcEnv struct {
	t       *testing.T
	tp      *topo.Topo
	servers []*hcServer // hs1..hs3
	sorry   *hcServer
}

// needHealth sets the fixture up on first use and, for every test, makes
// sure every vsftpd of it runs and no server is broken.
func needHealth(t *testing.T) *hcEnv {
	t.Helper()
	tp := needTopo(t)
	if harness.daemonBin == "" {
		t.Skip(harness.noDaemon)
	}
	hcFixture.once.Do(func() { hcFixture.err = setUpHealthFixture(tp) })
	if hcFixture.err != nil {
		t.Fatalf("health fixture: %v", hcFixture.err)
	}
	e := &hcEnv{t: t, tp: tp, servers: hcFixture.servers[:3], sorry: hcFixture.servers[3]}
	for _, s := range hcFixture.servers {
		e.repair(s)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, s := range hcFixture.servers {
				b, _ := os.ReadFile(s.Log)
				t.Logf("--- %s vsftpd log (tail):\n%s", s.Name, tailString(string(b), 1500))
			}
		}
	})
	return e
}

func setUpHealthFixture(tp *topo.Topo) error {
	ctx, cancel := context.WithTimeout(context.Background(), topo.Scaled(30*time.Second))
	defer cancel()
	for _, vip := range []string{hcVIP, hcVIP2} {
		if _, err := tp.Run(ctx, tp.Router, "ip", "addr", "add", vip+"/32", "dev", "lo"); err != nil {
			return err
		}
	}
	names := []string{"hs1", "hs2", "hs3", "hsorry"}
	addrs := append(append([]string(nil), hcAddrs...), hcSorry)
	for i, n := range names {
		s, err := tp.AddServer(ctx, n, addrs[i])
		if err != nil {
			return err
		}
		hcFixture.servers = append(hcFixture.servers, &hcServer{Server: s})
	}
	return nil
}

// repair starts s's vsftpd if it is not running and removes the test
// table from its namespace.
func (e *hcEnv) repair(s *hcServer) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), topo.Scaled(15*time.Second))
	defer cancel()
	_, _ = e.tp.Run(ctx, s.NS, "nft", "delete", "table", "inet", hcTable)
	if s.vsftpd != nil {
		select {
		case <-e.tp.Exited(s.vsftpd):
			s.vsftpd = nil
		default:
			return
		}
	}
	c, err := e.tp.StartVsftpd(ctx, s.Server)
	if err != nil {
		e.t.Fatal(err)
	}
	s.vsftpd = c
}

// stopFTP stops s's vsftpd (the listener and its sessions, as a service
// manager would).
func (e *hcEnv) stopFTP(s *hcServer) {
	e.t.Helper()
	if s.vsftpd == nil {
		return
	}
	if err := e.tp.StopGroup(s.vsftpd, syscall.SIGTERM, 5*time.Second); err != nil {
		e.t.Fatal(err)
	}
	s.vsftpd = nil
}

// startFTP starts s's vsftpd again.
func (e *hcEnv) startFTP(s *hcServer) { e.t.Helper(); e.repair(s) }

// breakWith installs nft rules (a chain body of a filter chain at the
// input hook) in s's namespace, as table inet nfht_hc.
func (e *hcEnv) breakWith(s *hcServer, rules string) {
	e.t.Helper()
	script := fmt.Sprintf("table inet %s {\n chain input {\n  type filter hook input priority 0; policy accept;\n  %s\n }\n}\n", hcTable, rules)
	if err := nftScript(e.t, s.NS, script); err != nil {
		e.t.Fatalf("nft in %s: %v\n%s", s.Name, err, script)
	}
}

// failChecksOf makes s refuse TCP connections to port 21 from the router's
// own address (where the checks come from) while the clients' connections,
// balanced with their own source address, still reach it.
func (e *hcEnv) failChecksOf(s *hcServer) {
	e.breakWith(s, "ip saddr "+topo.RouterLANV4+" tcp dport 21 reject with tcp reset")
}

// heal removes what breakWith installed.
func (e *hcEnv) heal(s *hcServer) {
	e.t.Helper()
	if out, err := e.tp.Run(context.Background(), s.NS, "nft", "delete", "table", "inet", hcTable); err != nil {
		e.t.Fatalf("heal %s: %v %s", s.Name, err, out)
	}
}

// hcDaemon is a health test's nfhelperd.
type hcDaemon struct {
	*topo.Daemon
	env      *hcEnv
	config   string
	stateDir string
	client   *ctl.Client
}

// start stops the suite's daemon and starts one with configuration cfg
// and state directory stateDir (a new temporary one when empty). It is
// stopped when the test ends.
func (e *hcEnv) start(cfg, stateDir string) *hcDaemon {
	t := e.t
	t.Helper()
	harness.mu.Lock()
	shared := harness.daemon
	harness.stopped = true
	harness.mu.Unlock()
	if shared != nil && shared.Running() {
		if res, err := shared.Stop(); err != nil || res.ExitCode != 0 {
			t.Logf("the suite's daemon at its stop: %+v %v", res, err)
		}
	}
	if stateDir == "" {
		stateDir = t.TempDir()
	}
	d := &hcDaemon{env: e, config: filepath.Join(t.TempDir(), "health.yaml"), stateDir: stateDir,
		client: ctl.NewClient(e.tp.ControlSocket(), 10*time.Second)}
	if err := os.WriteFile(d.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	// Connections of earlier tests (TIME_WAIT) must not take new ones.
	flushConntrack(t)
	d.launch()
	t.Cleanup(func() { d.finish() })
	return d
}

// launch starts the process (again).
func (d *hcDaemon) launch() {
	t, tp := d.env.t, d.env.tp
	t.Helper()
	env := tp.DaemonEnv
	tp.DaemonEnv = append(append([]string(nil), env...), "NFHELPER_STATE_DIR="+d.stateDir)
	dd, err := tp.StartDaemon(harness.daemonBin, d.config)
	tp.DaemonEnv = env
	if err != nil {
		b, _ := os.ReadFile(d.config)
		t.Fatalf("health daemon: %v\nconfig:\n%s", err, b)
	}
	d.Daemon = dd
	t.Logf("health daemon (pid %d) ready: datapath=%s", dd.Pid(), dd.Datapath)
}

// restart stops the daemon (SIGTERM) and starts it again, same
// configuration file and state directory.
func (d *hcDaemon) restart() {
	d.env.t.Helper()
	if res, err := d.Stop(); err != nil || res.ExitCode != 0 {
		d.env.t.Fatalf("stop: %+v %v\n%s", res, err, tailString(d.Log(), 3000))
	}
	d.launch()
}

// handOver makes the daemon hand itself over to a new process in place
// (SIGUSR2) and waits until that one is ready.
func (d *hcDaemon) handOver() {
	t := d.env.t
	t.Helper()
	before := len(d.Log())
	if err := syscall.Kill(d.Pid(), syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(topo.Scaled(20 * time.Second)); !strings.Contains(d.Log()[before:], "msg=ready"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) || !d.Running() {
			t.Fatalf("not ready again after SIGUSR2 (running %v):\n%s", d.Running(), d.Log()[before:])
		}
	}
}

// finish stops the daemon, or after a kill -9 removes the table it left
// and the conntrack entries of its outage.
func (d *hcDaemon) finish() {
	t, tp := d.env.t, d.env.tp
	if t.Failed() {
		t.Logf("health daemon log (tail, %s):\n%s", d.LogPath, tailString(d.Log(), 8000))
	}
	if d.Running() {
		if res, err := d.Stop(); err != nil || res.ExitCode != 0 || !res.TableGone {
			t.Errorf("health daemon stop: %+v %v", res, err)
		}
		return
	}
	if ok, _, _ := tp.TableExists(context.Background()); ok {
		if out, err := tp.Run(context.Background(), tp.Router, "nft", "delete", "table", "inet", "nfhelper"); err != nil {
			t.Errorf("delete the killed daemon's table: %v %s", err, out)
		}
	}
	flushConntrack(t)
}

// reload writes cfg (when not empty) and sends SIGHUP; it waits for the
// outcome.
func (d *hcDaemon) reload(cfg string) {
	t := d.env.t
	t.Helper()
	if cfg != "" {
		if err := writeFileAtomic(d.config, cfg); err != nil {
			t.Fatal(err)
		}
	}
	line, err := sighupAndWait(d.Daemon, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGHUP: %s", line)
}

// hcRealServer is a real server in nfhelperctl's JSON with issue 14's
// fields (decoded here so that the tests name the contract's keys).
type hcRealServer struct {
	Address      netip.AddrPort `json:"address"`
	Weight       int            `json:"weight"`
	Active       int64          `json:"active_conns"`
	Inactive     int64          `json:"inactive_conns"`
	Conns        uint64         `json:"conns"`
	State        string         `json:"state"`  // up, down: takes new connections or not
	Health       string         `json:"health"` // up, down
	Check        string         `json:"check"`
	Since        time.Time      `json:"since"`
	LastFailure  time.Time      `json:"last_failure"`
	LastCause    string         `json:"last_cause"`
	ConfigWeight int            `json:"config_weight"`
	Override     *hcOverride    `json:"override"`
	Sorry        bool           `json:"sorry"`
	Down         bool           `json:"down"`
}

// hcOverride is an operator's override (ctl.Override).
type hcOverride struct {
	Weight  *int `json:"weight,omitempty"`
	Drained bool `json:"drained,omitempty"`
	Down    bool `json:"down,omitempty"`
}

type hcServices struct {
	Services []struct {
		Name    string         `json:"name"`
		VIP     netip.AddrPort `json:"vip"`
		Servers []hcRealServer `json:"servers"`
	} `json:"services"`
}

// services reads /v1/services: service name -> server address -> server.
func (d *hcDaemon) services() (map[string]map[string]hcRealServer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var v hcServices
	if err := d.client.Get(ctx, ctl.PathServices, &v); err != nil {
		return nil, err
	}
	out := map[string]map[string]hcRealServer{}
	for _, s := range v.Services {
		m := map[string]hcRealServer{}
		for _, rs := range s.Servers {
			m[rs.Address.String()] = rs
		}
		out[s.Name] = m
	}
	return out, nil
}

// server is one server of service svc now.
func (d *hcDaemon) server(svc, addr string) hcRealServer {
	t := d.env.t
	t.Helper()
	all, err := d.services()
	if err != nil {
		t.Fatal(err)
	}
	rs, ok := all[svc][addr]
	if !ok {
		t.Fatalf("service %s has no server %s: %+v", svc, addr, all[svc])
	}
	return rs
}

// waitServer polls (every 10 ms) until f holds for server addr of svc and
// returns it with the time it took; it fails the test after limit
// (topo.Scaled).
func (d *hcDaemon) waitServer(svc, addr, what string, limit time.Duration, f func(hcRealServer) bool) (hcRealServer, time.Duration) {
	t := d.env.t
	t.Helper()
	limit = topo.Scaled(limit)
	start := time.Now()
	var last hcRealServer
	var lastErr error
	for time.Since(start) < limit {
		all, err := d.services()
		if err == nil {
			if rs, ok := all[svc][addr]; ok {
				last = rs
				if f(rs) {
					return rs, time.Since(start)
				}
			}
		}
		lastErr = err
		if !d.Running() {
			t.Fatalf("%s %s: the daemon exited", svc, addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s %s: not %s within %v; last seen %+v (%v)", svc, addr, what, limit, last, lastErr)
	return last, 0
}

// waitState waits for the server's state ("up" or "down").
func (d *hcDaemon) waitState(svc, addr, state string, limit time.Duration) (hcRealServer, time.Duration) {
	d.env.t.Helper()
	return d.waitServer(svc, addr, state, limit, func(rs hcRealServer) bool { return rs.State == state })
}

// holdState fails unless the server's state stays state, and its since
// unchanged, for d; it polls every 20 ms.
func (d *hcDaemon) holdState(svc, addr, state string, dur time.Duration) hcRealServer {
	t := d.env.t
	t.Helper()
	first := d.server(svc, addr)
	for end := time.Now().Add(dur); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		rs := d.server(svc, addr)
		if rs.State != state || !rs.Since.Equal(first.Since) {
			t.Fatalf("%s %s: state %q since %v, want %q held since %v", svc, addr, rs.State, rs.Since, state, first.Since)
		}
	}
	return first
}

// clientConnects counts the control connections from the client that s's
// vsftpd logged (checks come from the router's address, not counted).
func clientConnects(s *hcServer) int {
	b, _ := os.ReadFile(s.Log)
	n := 0
	for _, l := range parseVsftpdLog(string(b)) {
		if l.kind == "CONNECT" && l.client == netip.MustParseAddr(topo.ClientV4) {
			n++
		}
	}
	return n
}

// whichServer runs one session through vip:21 (Go client, PASV): it
// fetches server.txt and small.bin (checked by hash) and returns the
// server's name.
func (e *hcEnv) whichServer(vip string) string {
	e.t.Helper()
	r := runFtpget(e.t, e.tp.Client, net.JoinHostPort(vip, "21"), "pasv", "server.txt,small.bin", 2)
	if r.results[1].SHA256 != e.tp.Files["small.bin"] {
		e.t.Fatalf("small.bin through %s: sha256 %s, want %s", vip, r.results[1].SHA256, e.tp.Files["small.bin"])
	}
	return strings.TrimSpace(r.results[0].Content)
}

// sessionsTo runs n sessions through vip and counts them by server.
func (e *hcEnv) sessionsTo(vip string, n int) map[string]int {
	e.t.Helper()
	seen := map[string]int{}
	for range n {
		seen[e.whichServer(vip)]++
	}
	return seen
}

// dialVIP opens a TCP connection from the client to addr and reports how
// long the answer took.
func (e *hcEnv) dialVIP(addr string, timeout time.Duration) (net.Conn, time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	c, err := topo.DialIn(ctx, e.tp.Client, "tcp", addr)
	return c, time.Since(start), err
}

// isRefused reports a connection refused (a TCP reset to the SYN).
func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
