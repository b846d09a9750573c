//go:build integration

package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/config"
	"github.com/nfhelper/nfhelper/ctl"
	"github.com/nfhelper/nfhelper/internal/netnstest"
)

// The daemon under test runs in a child process (this test binary again,
// TestHealthChild) in a network namespace of its own: Start works in the
// process's namespace, and the host's must not be touched.

const (
	envChild       = "NFH_HEALTH_CHILD" // the configuration file's path
	healthTestYAML = `
queue:
  first: 64200
  count: 1
services:
  - name: web
    vip: 198.51.100.10:80
    scheduler: wlc
    health_check:
      type: exec
      command: test ! -e %[1]s/down-$NFHELPER_SERVER_ADDRESS
      interval: 200ms
      timeout: 200ms
      rise: %[2]d
      fall: 1
    real_servers:
      - address: 10.0.0.1:80
      - address: 10.0.0.2:80
`
)

// TestHealthChild is the daemon of TestHealthFailOpenMap; without its
// environment, nothing.
func TestHealthChild(t *testing.T) {
	path := os.Getenv(envChild)
	if path == "" {
		t.Skip("run by TestHealthFailOpenMap")
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	d := New(cfg, Options{ConfigPath: path, Log: log, StateDir: os.Getenv("NFHELPER_STATE_DIR")})
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case <-ctx.Done():
			d.Stop()
			return
		case <-hup:
			cfg, err := config.Load(path)
			if err == nil {
				err = d.Reload(cfg)
			}
			log.Info("reloaded", "err", err)
		}
	}
}

// child is a running TestHealthChild.
type child struct {
	cmd  *exec.Cmd
	logs *syncBuffer
	done chan struct{}
}

// startChild starts the daemon in ns with the configuration file config and
// the state directory dir, and waits until it is ready.
func startChild(t *testing.T, ns, config, dir string) *child {
	t.Helper()
	c := &child{logs: &syncBuffer{}, done: make(chan struct{})}
	c.cmd = exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^TestHealthChild$", "-test.v")
	c.cmd.Env = append(os.Environ(), envChild+"="+config, "NFHELPER_STATE_DIR="+dir, ctl.EnvSocket+"="+filepath.Join(dir, "sock"))
	c.cmd.Stdout, c.cmd.Stderr = c.logs, c.logs
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		c.cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			c.cmd.Process.Kill()
			<-c.done
		}
	})
	if !eventually(10*time.Second, func() bool { return strings.Contains(c.logs.String(), "msg=ready") }) {
		t.Fatalf("daemon not ready:\n%s", c.logs.String())
	}
	return c
}

// kill ends the child with SIGKILL: its table stays, as after a crash.
func (c *child) kill(t *testing.T) {
	t.Helper()
	// ip netns exec execs the test binary: the pid is the daemon's.
	c.cmd.Process.Kill()
	<-c.done
}

// eventually tells whether f holds within max.
func eventually(max time.Duration, f func() bool) bool {
	for deadline := time.Now().Add(max); ; time.Sleep(20 * time.Millisecond) {
		if f() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// failOpen is which of the servers the table's fail-open map names.
func failOpen(t *testing.T, ns string, servers ...string) map[string]bool {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "map", "inet", tableName, "fallback4").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list map: %v %s\n%s", err, out, output(exec.Command("ip", "netns", "exec", ns, "nft", "list", "ruleset").CombinedOutput()))
	}
	named := map[string]bool{}
	for _, s := range servers {
		ap := netip.MustParseAddrPort(s)
		named[s] = strings.Contains(string(out), fmt.Sprintf(": %s . %d", ap.Addr(), ap.Port()))
	}
	return named
}

// TestHealthFailOpenMap: a server whose exec check fails is taken out of
// the fail-open map (a daemon-scheduled service's: wlc); one forced down by nfhelperctl too; after a kill -9
// and a restart, both stay out from the start (the state file), until the
// first one's checks pass again.
func TestHealthFailOpenMap(t *testing.T) {
	ns := netnstest.New(t, "nfhhealth")
	dir := t.TempDir()
	config := filepath.Join(dir, "nfhelperd.yaml")
	write := func(rise int) {
		if err := os.WriteFile(config, fmt.Appendf(nil, healthTestYAML, dir, rise), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Slow to come back: the restart below must see the state it kept
	// before checks could change it.
	const riseSlow = 5
	write(riseSlow)
	const s1, s2 = "10.0.0.1:80", "10.0.0.2:80"
	d := startChild(t, ns, config, dir)
	if m := failOpen(t, ns, s1, s2); !m[s1] || !m[s2] {
		t.Fatalf("at the start the fail-open map names %v; log:\n%s", m, d.logs.String())
	}

	down := filepath.Join(dir, "down-10.0.0.1")
	if err := os.WriteFile(down, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if !eventually(5*time.Second, func() bool { return !failOpen(t, ns, s1)[s1] }) {
		t.Fatalf("%s still in the fail-open map; log:\n%s", s1, d.logs.String())
	}
	if want := `msg="server state" service=web server=10.0.0.1:80 state=down cause=exit`; !strings.Contains(d.logs.String(), want) {
		t.Errorf("log lacks %s:\n%s", want, d.logs.String())
	}
	client := ctl.NewClient(filepath.Join(dir, "sock"), 5*time.Second)
	if _, err := client.SetServer(context.Background(), ctl.ServerRequest{Service: "web", Address: netip.MustParseAddrPort(s2), Op: "down"}); err != nil {
		t.Fatalf("nfhelperctl server web %s down: %v", s2, err)
	}
	if m := failOpen(t, ns, s1, s2); m[s1] || m[s2] {
		t.Fatalf("after down the fail-open map names %v", m)
	}
	if _, err := client.SetServer(context.Background(), ctl.ServerRequest{Service: "web", Address: netip.MustParseAddrPort("10.0.0.3:80"), Op: "down"}); err == nil || !strings.Contains(err.Error(), "10.0.0.3:80") {
		t.Errorf("unknown server: %v", err)
	}

	d.kill(t)
	if m := failOpen(t, ns, s1, s2); m[s1] || m[s2] {
		t.Fatalf("after kill -9 the fail-open map names %v", m)
	}
	// The same file: the restart keeps s1's health (it would start up
	// otherwise, and come down after its first check) and s2's override.
	// s1 comes back after rise checks.
	os.Remove(down)
	d = startChild(t, ns, config, dir)
	if m := failOpen(t, ns, s1, s2); m[s1] || m[s2] {
		t.Fatalf("after the restart the fail-open map names %v; log:\n%s", m, d.logs.String())
	}
	if !eventually(5*time.Second, func() bool { return failOpen(t, ns, s1)[s1] }) {
		t.Fatalf("%s not back in the fail-open map; log:\n%s", s1, d.logs.String())
	}
	if failOpen(t, ns, s2)[s2] {
		t.Errorf("%s, forced down, back in the fail-open map", s2)
	}

	// A reload that changes the servers' entries (their check) clears
	// s2's override: it is back, its checks pass.
	write(riseSlow - 1)
	d.cmd.Process.Signal(syscall.SIGHUP)
	if !eventually(5*time.Second, func() bool { return failOpen(t, ns, s2)[s2] }) {
		t.Fatalf("%s not back in the fail-open map after a reload; log:\n%s", s2, d.logs.String())
	}
	// The reload logs what it cleared after its batch: the map may show
	// it first.
	want := `msg="override cleared: the server's entry in the file changed" service=web server=10.0.0.2:80`
	if !eventually(5*time.Second, func() bool { return strings.Contains(d.logs.String(), want) }) {
		t.Errorf("log lacks %s:\n%s", want, d.logs.String())
	}
}

// output is a command's output, whatever its status.
func output(b []byte, _ error) string { return string(b) }
