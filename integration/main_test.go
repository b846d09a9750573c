//go:build integration

// Package integration holds nfhelper's end-to-end tests: a client, a router
// running nfhelperd and two vsftpd real servers, each in a network namespace
// (see package topo). Run as root:
//
//	go test -tags integration -v ./integration/
//
// Set NFH_DAEMON_BIN to test a prebuilt nfhelperd instead of building
// ./cmd/nfhelperd. The tests share one topology (built in TestMain) and one
// daemon, which needDaemon starts when none runs; a test that stops or kills
// it leaves the next one to start it again, and a test that leaves state in
// the kernel beyond itself removes it when it ends. So they run in any
// order: make integration runs them with -shuffle on.
package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// harness is the state shared by all tests of one test binary run.
var harness struct {
	skip string // set when the whole suite cannot run here

	modRoot   string
	binDir    string
	ftpget    string // the Go client binary
	pyScript  string // testdata/ftpget.py
	daemonBin string // "" when cmd/nfhelperd does not exist yet
	noDaemon  string // why daemonBin is empty
	tp        *topo.Topo
	config    string
	quirkyBin string // integration/cmd/quirkyftpd
	ctexpect  string // integration/cmd/ctexpect

	// Why a server kind is not running ("" when it is).
	noProFTPD, noPureFTPD, noQuirky string
	// Why the add-on helpers (addonConfig) are left out of the config ("" when
	// they are in it).
	noAddon string

	mu      sync.Mutex
	daemon  *topo.Daemon
	dErr    error
	stopped bool // the shutdown test took the daemon down on purpose
}

var requiredTools = []string{"ip", "nft", "vsftpd", "curl", "lftp", "python3"}

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Geteuid() != 0 {
		harness.skip = "integration tests need root (network namespaces, nftables, vsftpd)"
		fmt.Println("SKIP:", harness.skip)
		return m.Run()
	}
	var missing []string
	for _, tool := range requiredTools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: integration tests need %s in PATH (apt-get install iproute2 nftables vsftpd curl lftp python3)\n", strings.Join(missing, ", "))
		return 1
	}

	var cleanupOnce sync.Once
	cleanup := func() {
		cleanupOnce.Do(func() {
			harness.mu.Lock()
			d := harness.daemon
			harness.mu.Unlock()
			if d != nil && d.Running() {
				if res, err := d.Stop(); err != nil || res.ExitCode != 0 {
					fmt.Fprintf(os.Stderr, "nfhelperd at teardown: %+v %v\n", res, err)
				}
			}
			if harness.tp != nil {
				if err := harness.tp.Close(); err != nil {
					fmt.Fprintln(os.Stderr, "topology teardown:", err)
				}
			}
			if harness.binDir != "" {
				os.RemoveAll(harness.binDir)
			}
		})
	}
	defer cleanup()
	// Ctrl-C or a go test -timeout kill: tear down before dying. (A panic or
	// SIGKILL is handled by the topology's reaper process.)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "integration: %v, tearing down\n", s)
		cleanup()
		os.Exit(130)
	}()

	if err := buildBinaries(); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	if harness.noDaemon != "" {
		fmt.Println("NOTE:", harness.noDaemon, "- tests through the VIP will be skipped")
	}

	var opts topo.Options
	// NFH_TOPO_TIMEOUT (a Go duration) gives building the topology longer
	// than its default, for an emulated VM on a busy host.
	if d, err := time.ParseDuration(os.Getenv("NFH_TOPO_TIMEOUT")); err == nil {
		opts.Timeout = d
	}
	tp, err := topo.New(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: build topology:", err)
		return 1
	}
	harness.tp = tp
	startExtraServers(tp)
	harness.config = filepath.Join(tp.Dir, "nfhelper-test.yaml")
	config := testConfig + addonConfig + metricsConfig
	switch strings.ToLower(os.Getenv("NFH_ADDON")) {
	case "0", "no", "off", "false":
		harness.noAddon = "add-on helpers left out of the test config (NFH_ADDON=" + os.Getenv("NFH_ADDON") + ")"
		config = testConfig + metricsConfig
		fmt.Println("NOTE:", harness.noAddon, "- tests through the WAN addresses will be skipped")
	}
	if strings.TrimSpace(os.Getenv("NFHELPER_DATAPATH")) == "kernel" && harness.noAddon == "" {
		// nfhelperd refuses to run add-on helpers on the kernel datapath;
		// probing picks the compat datapath for a configuration with them.
		harness.noAddon = "add-on helpers run on the compat datapath only, and this run forces the kernel datapath"
		config = testConfig + metricsConfig
		fmt.Println("NOTE:", harness.noAddon, "- tests through the WAN addresses will be skipped")
	}
	if err := os.WriteFile(harness.config, []byte(config), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	return m.Run()
}

// testConfig is the reference configuration plus a service for each other
// server kind (the reference file itself stays as the demo uses it).
const testConfig = topo.ReferenceConfig + `  - name: proftpd
    vip: 198.51.100.10:2121
    helper: ftp
    real_servers:
      - address: 10.0.0.11:2121
      - address: 10.0.0.12:2121
  - name: proftpd6
    vip: "[2001:db8:1::10]:2121"
    helper: ftp
    real_servers:
      - address: "[fd00::11]:2121"
  - name: pureftpd
    vip: 198.51.100.10:2221
    helper: ftp
    real_servers:
      - address: 10.0.0.11:2221
      - address: 10.0.0.12:2221
  - name: pureftpd6
    vip: "[2001:db8:1::10]:2221"
    helper: ftp
    real_servers:
      - address: "[fd00::11]:2221"
  - name: quirky
    vip: 198.51.100.10:2321
    helper: ftp
    block_refused: true # quirkyftpd accepts any PORT: refused ones must not reach it
    real_servers:
      - address: 10.0.0.11:2321
  - name: quirky6
    vip: "[2001:db8:1::10]:2321"
    helper: ftp
    block_refused: true
    real_servers:
      - address: "[fd00::11]:2321"
  - name: echo-udp
    vip: 198.51.100.10:7
    protocol: udp
    scheduler: rr
    real_servers:
      - address: 10.0.0.11:7
      - address: 10.0.0.12:7
  - name: echo-tcp
    vip: 198.51.100.10:7
    scheduler: lc
    real_servers:
      - address: 10.0.0.11:7
      - address: 10.0.0.12:7
`

// metricsConfig turns on the Prometheus endpoint, on the router's loopback.
const metricsConfig = `metrics:
  address: 127.0.0.1:9330
`

// addonConfig is the add-on part of the test config: nfhelperd only helps FTP
// control connections that the user's own ruleset port-forwards from the
// router's WAN addresses (topo.WAN4, topo.WAN6) to rs2 (see wan_addon_test.go)
// and from its client-side addresses' ports 2121 and 2123 (see
// wan_fixedport_test.go).
// NFH_ADDON=0 leaves it out (for a daemon without add-on mode).
const addonConfig = `helpers:
  - name: router-ftp
    helper: ftp
    match:
      destination: 198.51.100.20:21
  - name: router-ftp6
    helper: ftp
    match:
      destination: "[2001:db8:1::20]:21"
  - name: router-ftp-2121
    helper: ftp
    match:
      destination: 203.0.113.1:2121
  - name: router-ftp6-2121
    helper: ftp
    match:
      destination: "[2001:db8:2::1]:2121"
  - name: router-ftp-2123
    helper: ftp
    match:
      destination: 203.0.113.1:2123
  - name: router-ftp6-2123
    helper: ftp
    match:
      destination: "[2001:db8:2::1]:2123"
`

// addOnHelpers is how many add-on helpers addonConfig binds.
var addOnHelpers = strings.Count(addonConfig, "\n  - name: ")

// startExtraServers starts proftpd, pure-ftpd and quirkyftpd next to vsftpd.
// A server that cannot run here is noted in harness.no*: its tests skip
// with that reason.
func startExtraServers(tp *topo.Topo) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	logf := func(format string, args ...any) { fmt.Printf("integration: "+format+"\n", args...) }
	if bin, err := topo.FTPDBinary(ctx, "NFH_PROFTPD", "proftpd-core", "proftpd", logf); err != nil {
		harness.noProFTPD = "proftpd unavailable: " + err.Error()
	} else if err := tp.StartProFTPD(ctx, bin); err != nil {
		harness.noProFTPD = "proftpd did not start: " + err.Error()
	}
	if bin, err := topo.FTPDBinary(ctx, "NFH_PUREFTPD", "pure-ftpd", "pure-ftpd", logf); err != nil {
		harness.noPureFTPD = "pure-ftpd unavailable: " + err.Error()
	} else if err := tp.StartPureFTPD(ctx, bin); err != nil {
		harness.noPureFTPD = "pure-ftpd did not start: " + err.Error()
	}
	if err := tp.StartQuirky(ctx, harness.quirkyBin); err != nil {
		harness.noQuirky = "quirkyftpd did not start: " + err.Error()
	}
	for _, s := range []string{harness.noProFTPD, harness.noPureFTPD, harness.noQuirky} {
		if s != "" {
			fmt.Println("NOTE:", s)
		}
	}
}

func buildBinaries() error {
	var err error
	if harness.modRoot, err = topo.ModuleRoot(); err != nil {
		return err
	}
	harness.pyScript = filepath.Join(harness.modRoot, "integration", "testdata", "ftpget.py")
	if harness.binDir, err = topo.MkdirTemp("bin"); err != nil {
		return err
	}
	harness.ftpget = filepath.Join(harness.binDir, "ftpget")
	if err := goBuild(harness.ftpget, "./integration/cmd/ftpget"); err != nil {
		return err
	}
	harness.quirkyBin = filepath.Join(harness.binDir, "quirkyftpd")
	if err := goBuild(harness.quirkyBin, "./integration/cmd/quirkyftpd"); err != nil {
		return err
	}
	harness.ctexpect = filepath.Join(harness.binDir, "ctexpect")
	if err := goBuild(harness.ctexpect, "./integration/cmd/ctexpect"); err != nil {
		return err
	}

	if bin := os.Getenv("NFH_DAEMON_BIN"); bin != "" {
		// A prebuilt daemon instead of building ./cmd/nfhelperd.
		harness.daemonBin, err = filepath.Abs(bin)
		return err
	}
	if !hasGoFiles(filepath.Join(harness.modRoot, "cmd", "nfhelperd")) {
		harness.noDaemon = "cmd/nfhelperd does not exist yet (no Go files)"
		return nil
	}
	bin := filepath.Join(harness.binDir, "nfhelperd")
	if err := goBuild(bin, "./cmd/nfhelperd"); err != nil {
		return err
	}
	harness.daemonBin = bin
	return nil
}

func hasGoFiles(dir string) bool {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		n := e.Name()
		if !e.IsDir() && strings.HasSuffix(n, ".go") && !strings.HasSuffix(n, "_test.go") {
			return true
		}
	}
	return false
}

func goBuild(out, pkg string) error { return topo.GoBuild(context.Background(), out, pkg) }

// needTopo skips when the suite cannot run and returns the topology.
func needTopo(t *testing.T) *topo.Topo {
	t.Helper()
	if harness.skip != "" {
		t.Skip(harness.skip)
	}
	if harness.tp == nil {
		t.Fatal("no topology")
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("vsftpd logs (tail):\n%s", harness.tp.Logs())
		}
	})
	return harness.tp
}

// needDaemon returns the running nfhelperd, starting it on first use.
func needDaemon(t *testing.T) *topo.Daemon {
	t.Helper()
	tp := needTopo(t)
	if harness.daemonBin == "" {
		t.Skip(harness.noDaemon)
	}
	harness.mu.Lock()
	defer harness.mu.Unlock()
	switch {
	case harness.dErr != nil:
		t.Fatalf("nfhelperd did not start: %v", harness.dErr)
	case harness.daemon != nil && !harness.daemon.Running() && !harness.stopped:
		t.Fatalf("nfhelperd exited unexpectedly; log:\n%s", harness.daemon.Log())
	case harness.daemon == nil || !harness.daemon.Running():
		d, err := tp.StartDaemon(harness.daemonBin, harness.config)
		if err != nil {
			harness.dErr = err
			t.Fatalf("nfhelperd did not start: %v", err)
		}
		harness.daemon, harness.stopped = d, false
		resetRefusals()
		reportDatapath(t, d)
	}
	d := harness.daemon
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		harness.mu.Lock()
		cur := harness.daemon
		harness.mu.Unlock()
		t.Logf("nfhelperd log (tail, %s):\n%s", cur.LogPath, tailString(cur.Log(), 6000))
	})
	return d
}

func reportDatapath(t *testing.T, d *topo.Daemon) {
	t.Logf("nfhelperd (pid %d) ready: datapath=%s", d.Pid(), d.Datapath)
	fmt.Printf("nfhelperd ready: datapath=%s\n", d.Datapath)
}

func tailString(s string, n int) string {
	if len(s) > n {
		return "...\n" + s[len(s)-n:]
	}
	return s
}

// execIn runs name in ns with a timeout and returns stdout and stderr.
// The timeout is topo.Scaled: a command's first use of a kernel feature in
// the VM waits for the module's autoloading.
func execIn(t *testing.T, timeout time.Duration, ns string, env []string, name string, args ...string) (stdout, stderr []byte, err error) {
	t.Helper()
	timeout = topo.Scaled(timeout)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c := harness.tp.CommandContext(ctx, ns, name, args...)
	if env != nil {
		c.Env = append(os.Environ(), env...)
	}
	var o, e bytes.Buffer
	c.Stdout, c.Stderr = &o, &e
	err = c.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (timeout %v)", err, timeout)
	}
	return o.Bytes(), e.Bytes(), err
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
