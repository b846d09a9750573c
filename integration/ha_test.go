//go:build integration

package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/integration/ftpclient"
	"github.com/nfhelper/nfhelper/integration/topo"
)

// haConfig is the nfhelperd configuration both routers run: the same file.
const haConfig = `services:
  - name: ftp
    vip: 192.0.2.100:21
    scheduler: rr
    helper: ftp
    real_servers:
      - address: 10.0.0.11:21
      - address: 10.0.0.12:21
  - name: quirky
    vip: 192.0.2.100:2321
    helper: ftp
    block_refused: true # quirkyftpd accepts any PORT
    real_servers:
      - address: 10.0.0.11:2321
`

// haKernelRuleset is the baseline both routers run instead of nfhelperd:
// DNAT and the kernel's own FTP helper, and what nfhelperd's ruleset does
// with invalid packets.
const haKernelRuleset = `table ip nfht_ha {
	ct helper ftp {
		type "ftp" protocol tcp
	}
	chain helpers_pre {
		type filter hook prerouting priority mangle; policy accept;
		# A connection the new master has not committed yet (TCP pickup
		# off) must neither reach its stack (a reset) nor leave un-NATed.
		ip daddr 192.0.2.100 ct state invalid drop
		ip saddr { 10.0.0.11, 10.0.0.12 } ct state invalid drop
		ip daddr 192.0.2.100 tcp dport { 21, 2321 } ct state new ct helper set "ftp"
	}
	chain nat_pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 192.0.2.100 tcp dport 21 dnat to numgen inc mod 2 map { 0 : 10.0.0.11, 1 : 10.0.0.12 }
		ip daddr 192.0.2.100 tcp dport 2321 dnat to 10.0.0.11
	}
	chain nat_post {
		type nat hook postrouting priority srcnat; policy accept;
	}
}
`

// haHostOrVM is host, or vm inside integration/vm: its emulated guest is
// an order of magnitude slower than the host.
func haHostOrVM[T any](host, vm T) T {
	if os.Getenv("NFHVM") != "" {
		return vm
	}
	return host
}

var (
	// haModes are the data modes of the continuous load; in the VM one
	// passive and one active (the lengthened session goes through all four).
	haModes = haHostOrVM([]string{"pasv", "epsv", "port", "eprt"}, []string{"pasv", "port"})
	// haStepTimeout bounds each FTP step: a session the failover broke
	// fails within it.
	haStepTimeout = topo.Scaled(6 * time.Second)
	// haWorkers is ftpload's concurrency per mode.
	haWorkers = haHostOrVM(3, 2)
	// haGatedRate (bytes/s) paces the huge transfer until the failover is
	// over, so that it is in flight across it.
	haGatedRate = haHostOrVM[int64](8<<20, 1<<20)
)

// TestHAFailover: two routers with keepalived and conntrackd configured by
// docs/ha/keepalived.conf and docs/ha/conntrackd.conf (and keepalived's
// notify script docs/ha/nfhelper-notify); the master fails, once with its
// links cut, once with its keepalived, conntrackd (and nfhelperd) killed,
// while FTP sessions run through the service address in every data mode,
// a huge passive transfer is in flight, and a control connection whose
// 227 the router lengthened waits. Each failover is run for the kernel's
// FTP helper (DNAT + ct helper "ftp", reported only: seqadj offsets are
// not carried, so its lengthened session hangs) and for nfhelperd on both
// routers, which must lose nothing (issue 17).
func TestHAFailover(t *testing.T) {
	if harness.skip != "" {
		t.Skip(harness.skip)
	}
	if os.Getenv("NFHVM") != "" && strings.TrimSpace(os.Getenv("NFHELPER_DATAPATH")) != "kernel" {
		// Three minutes of emulation for what the host's own run of the
		// compat datapath (make test) already covers on a real kernel.
		t.Skip("in integration/vm only on the kernel datapath; the compat datapath's run is the host's")
	}
	for _, p := range []string{"keepalived", "conntrackd", "conntrack"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("%s not installed (make deps)", p)
		}
	}
	docs := filepath.Join(harness.modRoot, "docs", "ha")
	for _, f := range []string{"keepalived.conf", "conntrackd.conf", "nfhelper-notify"} {
		if _, err := os.Stat(filepath.Join(docs, f)); err != nil {
			t.Fatalf("docs/ha/%s: %v", f, err)
		}
	}
	ftpload := needFtpload(t)

	h, err := topo.NewHA(topo.Options{Logf: t.Logf})
	if err != nil {
		t.Fatalf("HA topology: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server logs (tail):\n%s", h.Logs())
		}
		if err := h.Close(); err != nil {
			t.Logf("HA topology teardown: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), topo.Scaled(3*time.Minute))
	defer cancel()
	if err := h.StartQuirky(ctx, harness.quirkyBin); err != nil {
		t.Fatal(err)
	}
	notify := filepath.Join(h.Dir, "nfhelper-notify")
	copyFile(t, filepath.Join(docs, "nfhelper-notify"), notify, 0o755)
	routers := make([]*haRouter, 2)
	for i, r := range h.Routers {
		routers[i] = newHARouter(t, h, r, docs, notify)
	}
	config := filepath.Join(h.Dir, "nfhelper-ha.yaml")
	if err := os.WriteFile(config, []byte(haConfig), 0o644); err != nil {
		t.Fatal(err)
	}

	systems := []haSystem{{name: "kernel-ftp", user: "anonymous"}}
	if harness.daemonBin != "" {
		systems = append(systems, haSystem{name: "nfhelperd", user: "bare227", daemon: harness.daemonBin, config: config})
	} else {
		t.Logf("nfhelperd left out: %s", harness.noDaemon)
	}
	var runs []*haRun
	for _, sys := range systems {
		for _, failure := range []string{"cut", "kill"} {
			run := &haRun{system: sys.name, failure: failure}
			runs = append(runs, run)
			ok := t.Run(sys.name+"/"+failure, func(t *testing.T) {
				e := &haEnv{t: t, h: h, routers: routers, sys: sys, ftpload: ftpload}
				defer e.teardown()
				e.failover(run)
				run.report(t, sys)
			})
			if !ok && sys.daemon == "" {
				t.Errorf("%s/%s: the baseline itself failed", sys.name, failure)
			}
		}
	}
	logHATable(t, runs)
}

// haSystem is what helps FTP on both routers.
type haSystem struct {
	name string
	// user is quirkyftpd's user of the lengthened session: bare227 for
	// nfhelperd; the kernel's helper looks for the "(" of a 227, so it gets
	// the plain one, lengthened too.
	user           string
	daemon, config string // nfhelperd; "" for the kernel's helper
}

// haRouter is one router's daemons and their configuration files.
type haRouter struct {
	r                                *topo.HARouter
	kaConf, ctConf, stateFile        string
	keepalived, conntrackd           *exec.Cmd
	daemon                           *topo.Daemon
	kaPid, kaVrrpPid, ctLock, ctSock string
}

// newHARouter writes router r's keepalived and conntrackd configuration:
// the docs' files with only r's priority, addresses and paths changed.
// Every change must find what it replaces: the docs are what is tested.
func newHARouter(t *testing.T, h *topo.HA, r *topo.HARouter, docs, notify string) *haRouter {
	t.Helper()
	hr := &haRouter{
		r:         r,
		kaConf:    filepath.Join(r.Dir, "keepalived.conf"),
		ctConf:    filepath.Join(r.Dir, "conntrackd.conf"),
		stateFile: filepath.Join(r.Dir, "vrrp-state"),
		kaPid:     filepath.Join(r.Dir, "keepalived.pid"),
		kaVrrpPid: filepath.Join(r.Dir, "keepalived-vrrp.pid"),
		ctLock:    filepath.Join(r.Dir, "conntrackd.lock"),
		ctSock:    filepath.Join(r.Dir, "conntrackd.ctl"),
	}
	ka := readFile(t, filepath.Join(docs, "keepalived.conf"))
	ka = replaceIn(t, ka, "notify path", "/usr/share/nfhelper/nfhelper-notify ", notify+" ", 1)
	ka = replaceIn(t, ka, "conntrackd.conf path", "-c /etc/conntrackd/conntrackd.conf", "-c "+hr.ctConf, 1)
	ka = replaceIn(t, ka, "state file path", "-s /run/nfhelper/vrrp-state", "-s "+hr.stateFile, 1)
	ct := readFile(t, filepath.Join(docs, "conntrackd.conf"))
	ct = replaceIn(t, ct, "log path", "LogFile /var/log/conntrackd.log", "LogFile "+filepath.Join(r.Dir, "conntrackd.log"), 1)
	ct = replaceIn(t, ct, "lock path", "LockFile /var/lock/conntrackd.lock", "LockFile "+hr.ctLock, 1)
	ct = replaceIn(t, ct, "socket path", "Path /var/run/conntrackd.ctl", "Path "+hr.ctSock, 1)
	for _, want := range []string{"Interface " + topo.HASyncIf, "interface " + topo.HAUpIf, "interface " + topo.HALANIf,
		topo.HAVIP4 + "/24 dev " + topo.HAUpIf, topo.HALANVIP4 + "/24 dev " + topo.HALANIf} {
		if !strings.Contains(ka+ct, want) {
			t.Fatalf("docs/ha: no %q (the test topology has it)", want)
		}
	}
	if r.Index == 2 {
		ka = replaceIn(t, ka, "router_id", "router_id nfh-r1\n", "router_id nfh-r2\n", 1)
		ka = replaceIn(t, ka, "priority", "priority 150\n", "priority 100\n", 2)
		peer := h.Routers[0]
		ct = replaceIn(t, ct, "sync address", "IPv4_address "+peer.SyncV4+"\n", "IPv4_address "+r.SyncV4+"\n", 1)
		ct = replaceIn(t, ct, "sync destination", "IPv4_Destination_Address "+r.SyncV4+"\n", "IPv4_Destination_Address "+peer.SyncV4+"\n", 1)
		ct = replaceIn(t, ct, "own upstream address", "IPv4_address "+peer.UpV4+"\n", "IPv4_address "+r.UpV4+"\n", 1)
		ct = replaceIn(t, ct, "own LAN address", "IPv4_address "+peer.LANV4+"\n", "IPv4_address "+r.LANV4+"\n", 1)
	}
	for p, s := range map[string]string{hr.kaConf: ka, hr.ctConf: ct} {
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return hr
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(to, []byte(readFile(t, from)), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(to, mode); err != nil {
		t.Fatal(err)
	}
}

// replaceIn replaces old, which must occur exactly n times in s.
func replaceIn(t *testing.T, s, what, old, new string, n int) string {
	t.Helper()
	if got := strings.Count(s, old); got != n {
		t.Fatalf("docs/ha: %s: %q occurs %d times, want %d", what, old, got, n)
	}
	return strings.ReplaceAll(s, old, new)
}

// haEnv is one failover of one system.
type haEnv struct {
	t       *testing.T
	h       *topo.HA
	routers []*haRouter
	sys     haSystem
	ftpload string
}

// haRun is what one failover measured.
type haRun struct {
	system, failure string
	takeover        time.Duration
	loads           map[string]loadResult
	failedBefore    map[string]int // failed sessions that had started before the failure
	huge            string         // "ok" or what went wrong
	lengthenedSync  string         // "" or why router 2 lacked the lengthened session
	lengthened      []string       // per command after the failover: "PASV ok" or its error
}

// start starts conntrackd, the system, keepalived on both routers, and waits
// until router 1 is master and router 2 backup.
func (e *haEnv) start(ctx context.Context) {
	t := e.t
	for _, hr := range e.routers {
		c := e.h.Exec(hr.r.NS, "conntrackd", "-C", hr.ctConf)
		hr.conntrackd = e.startLogged(c, filepath.Join(hr.r.Dir, "conntrackd.out"))
	}
	for _, hr := range e.routers {
		hr := hr
		if err := haPoll(ctx, func() error {
			_, err := e.h.Run(ctx, hr.r.NS, "conntrackd", "-C", hr.ctConf, "-s")
			return err
		}); err != nil {
			t.Fatalf("conntrackd on router %d not answering: %v", hr.r.Index, err)
		}
	}
	for _, hr := range e.routers {
		if e.sys.daemon == "" {
			c := e.h.Exec(hr.r.NS, "nft", "-f", "-")
			c.Stdin = strings.NewReader(haKernelRuleset)
			if out, err := c.CombinedOutput(); err != nil {
				t.Fatalf("baseline ruleset on router %d: %v: %s", hr.r.Index, err, out)
			}
			continue
		}
		d, err := e.h.StartDaemon(hr.r, e.sys.daemon, e.sys.config)
		if err != nil {
			t.Fatalf("nfhelperd on router %d: %v", hr.r.Index, err)
		}
		hr.daemon = d
		t.Logf("nfhelperd on router %d ready: datapath=%s", hr.r.Index, d.Datapath)
	}
	r1, r2 := e.routers[0], e.routers[1]
	for _, hr := range e.routers {
		c := e.h.Exec(hr.r.NS, "keepalived", "--dont-fork", "--log-console", "--log-detail", "--vrrp",
			"-f", hr.kaConf, "-p", hr.kaPid, "-r", hr.kaVrrpPid)
		hr.keepalived = e.startLogged(c, filepath.Join(hr.r.Dir, "keepalived.out"))
		if hr != r1 {
			continue
		}
		// Router 2 joins a pair whose master is router 1: with nopreempt,
		// two keepalived starting together under emulation may elect
		// router 2 first and keep it.
		if err := haPoll(ctx, func() error {
			if s := vrrpState(r1); s != "MASTER" {
				return fmt.Errorf("router 1 state %q", s)
			}
			return nil
		}); err != nil {
			t.Fatalf("router 1 alone did not become master: %v", err)
		}
	}
	if err := haPoll(ctx, func() error {
		if s := vrrpState(r1); s != "MASTER" {
			return fmt.Errorf("router 1 state %q", s)
		}
		if s := vrrpState(r2); s != "BACKUP" {
			return fmt.Errorf("router 2 state %q", s)
		}
		for _, a := range []string{topo.HAVIP4, topo.HALANVIP4} {
			if ok, err := e.h.HasAddress(ctx, r1.r, a); err != nil || !ok {
				return fmt.Errorf("router 1 lacks %s (%v)", a, err)
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("router 1 did not become master: %v", err)
	}
}

func (e *haEnv) startLogged(c *exec.Cmd, log string) *exec.Cmd {
	f, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	c.Stdout, c.Stderr = f, f
	if err := e.h.Start(c); err != nil {
		e.t.Fatalf("start %s: %v", c.Args[4], err)
	}
	return c
}

// syncState is where the connections matching match are (all of them
// when match is ""): router 1's kernel table and conntrackd's internal
// cache, router 2's external cache; and both conntrackd's counters.
func (e *haEnv) syncState(match string) string {
	ctx, cancel := context.WithTimeout(context.Background(), topo.Scaled(10*time.Second))
	defer cancel()
	r1, r2 := e.routers[0], e.routers[1]
	var b strings.Builder
	for _, q := range []struct {
		what string
		hr   *haRouter
		args []string
	}{
		{"router 1 conntrack -L", r1, []string{"conntrack", "-L"}},
		{"router 1 conntrackd -i ct", r1, []string{"conntrackd", "-C", r1.ctConf, "-i", "ct"}},
		{"router 2 conntrackd -e ct", r2, []string{"conntrackd", "-C", r2.ctConf, "-e", "ct"}},
		{"router 1 conntrackd -s", r1, []string{"conntrackd", "-C", r1.ctConf, "-s"}},
		{"router 2 conntrackd -s", r2, []string{"conntrackd", "-C", r2.ctConf, "-s"}},
	} {
		out, err := e.h.Run(ctx, q.hr.r.NS, q.args[0], q.args[1:]...)
		s := string(out)
		if match != "" && q.args[len(q.args)-1] != "-s" {
			var keep []string
			for _, l := range strings.Split(s, "\n") {
				if strings.Contains(l, match) {
					keep = append(keep, l)
				}
			}
			s = strings.Join(keep, "\n")
		}
		fmt.Fprintf(&b, "%s (%v):\n%s\n", q.what, err, tailString(s, 2500))
	}
	return b.String()
}

// conntrackdStat is the line of conntrackd -s output that names stat,
// its blanks squeezed.
func conntrackdStat(out, stat string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, stat) {
			return strings.Join(strings.Fields(l), " ")
		}
	}
	return "no " + stat + " line"
}

// vrrpState is the state the notify script last wrote for hr ("" if none).
func vrrpState(hr *haRouter) string {
	b, err := os.ReadFile(hr.stateFile)
	if err != nil {
		return ""
	}
	s, _, _ := strings.Cut(string(b), " ")
	return s
}

// haPoll polls f every 10 ms until it succeeds or ctx ends, and then
// tells f's last error from before the end (the end kills f's commands).
func haPoll(ctx context.Context, f func() error) error {
	var last error
	for {
		err := f()
		if err == nil {
			return nil
		}
		if ctx.Err() == nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// teardown stops everything on both routers and leaves them as NewHA did.
func (e *haEnv) teardown() {
	t := e.t
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, hr := range e.routers {
		if t.Failed() {
			for _, f := range []string{"keepalived.out", "conntrackd.out", "conntrackd.log"} {
				b, _ := os.ReadFile(filepath.Join(hr.r.Dir, f))
				t.Logf("router %d %s (tail):\n%s", hr.r.Index, f, tailString(string(b), 2500))
			}
			if hr.daemon != nil {
				t.Logf("router %d nfhelperd (tail):\n%s", hr.r.Index, tailString(hr.daemon.Log(), 4000))
			}
		}
		for _, c := range []*exec.Cmd{hr.keepalived, hr.conntrackd} {
			if c != nil {
				_ = e.h.StopGroup(c, syscall.SIGKILL, 5*time.Second)
			}
		}
		if hr.daemon != nil {
			_ = hr.daemon.Kill()
		}
		hr.keepalived, hr.conntrackd, hr.daemon = nil, nil, nil
		_ = e.h.SetLinks(ctx, hr.r, true)
		for _, a := range []struct{ addr, dev string }{{topo.HAVIP4, topo.HAUpIf}, {topo.HALANVIP4, topo.HALANIf}} {
			_, _ = e.h.Run(ctx, hr.r.NS, "ip", "addr", "del", a.addr+"/24", "dev", a.dev)
		}
		for _, tbl := range []string{"ip nfht_ha", "inet nfhelper"} {
			_, _ = e.h.Run(ctx, hr.r.NS, "nft", append([]string{"delete", "table"}, strings.Fields(tbl)...)...)
		}
		_, _ = e.h.Run(ctx, hr.r.NS, "conntrack", "-F")
		_, _ = e.h.Run(ctx, hr.r.NS, "conntrack", "-F", "expect")
		for _, p := range []string{hr.stateFile, hr.kaPid, hr.kaVrrpPid, hr.ctLock, hr.ctSock} {
			os.Remove(p)
		}
	}
}

// failover runs one failover under load and fills run.
func (e *haEnv) failover(run *haRun) {
	t := e.t
	ctx, cancel := context.WithTimeout(context.Background(), topo.Scaled(90*time.Second))
	defer cancel()
	e.start(ctx)
	r1, r2 := e.routers[0], e.routers[1]
	vip := func(port int) string { return net.JoinHostPort(topo.HAVIP4, strconv.Itoa(port)) }

	// The lengthened session: one PASV transfer now (its 227 lengthened by
	// the router), the other commands after the failover.
	ls, err := dialHA(ctx, e.h, vip(topo.QuirkyPort), e.sys.user)
	if err != nil {
		t.Fatalf("lengthened session: %v", err)
	}
	defer ls.c.Close()
	if err := ls.retr(ctx, e.h, ftpclient.PASV, "small.bin", e.h.Files["small.bin"]); err != nil {
		t.Fatalf("lengthened session before the failover: %v", err)
	}
	t.Logf("lengthened session: %s", ls.c.LastPassiveReply)
	if !strings.Contains(ls.c.LastPassiveReply, strings.ReplaceAll(topo.HAVIP4, ".", ",")) {
		t.Errorf("227 %q does not name the service address", ls.c.LastPassiveReply)
	}

	// The huge transfer, paced until the failover is over.
	gate := &gatedWriter{open: make(chan struct{}), rate: haGatedRate, start: time.Now()}
	hugeDone := make(chan error, 1)
	go func() { hugeDone <- e.hugeTransfer(ctx, vip(21), gate) }()

	loads := map[string]*bgLoad{}
	for _, m := range haModes {
		loads[m] = e.startLoad(t, vip(21), m)
	}

	// Fail once conntrackd has carried some of the load to router 2, and
	// the lengthened session (a session it never carries is reported, and
	// the failover goes on for the figures).
	syncCtx, syncCancel := context.WithTimeout(ctx, topo.Scaled(30*time.Second))
	defer syncCancel()
	if err := haPoll(syncCtx, func() error {
		if n := gate.n.Load(); n < topo.HugeSize/12 {
			return fmt.Errorf("the huge transfer is at %d of %d MiB", n>>20, topo.HugeSize>>20)
		}
		out, err := e.h.Run(syncCtx, r2.r.NS, "conntrackd", "-C", r2.ctConf, "-e", "ct")
		if err != nil {
			return err
		}
		if n := strings.Count(string(out), "dport=21 "); n < 8 {
			return fmt.Errorf("router 2's external cache holds %d connections to port 21", n)
		}
		return nil
	}); err != nil {
		t.Fatalf("sync to router 2: %v\n%s", err, e.syncState(""))
	}
	lengthened := fmt.Sprintf("sport=%d dport=%d", ls.c.LocalAddr().(*net.TCPAddr).Port, topo.QuirkyPort)
	lctx, lcancel := context.WithTimeout(ctx, topo.Scaled(5*time.Second))
	defer lcancel()
	if err := haPoll(lctx, func() error {
		out, err := e.h.Run(lctx, r2.r.NS, "conntrackd", "-C", r2.ctConf, "-e", "ct")
		if err == nil && !strings.Contains(string(out), lengthened) {
			err = errors.New("router 2's external cache lacks the lengthened session")
		}
		return err
	}); err != nil {
		run.lengthenedSync = err.Error()
		t.Logf("the lengthened session (%s): %v\n%s", lengthened, err, e.syncState(lengthened))
	}

	// A netlink overrun makes conntrackd dump the kernel's table, and a
	// dump carries seqadj records that events do not.
	if out, err := e.h.Run(ctx, r1.r.NS, "conntrackd", "-C", r1.ctConf, "-s", "runtime"); err == nil {
		t.Logf("router 1 conntrackd before the failure: %s", conntrackdStat(string(out), "netlink overrun"))
	}

	failedAt := time.Now()
	switch run.failure {
	case "cut":
		if err := e.h.SetLinks(ctx, r1.r, false); err != nil {
			t.Fatal(err)
		}
	case "kill":
		for _, c := range []*exec.Cmd{r1.keepalived, r1.conntrackd} {
			if err := e.h.StopGroup(c, syscall.SIGKILL, 5*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		if r1.daemon != nil {
			if err := r1.daemon.Kill(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := haPoll(ctx, func() error {
		if s := vrrpState(r2); s != "MASTER" {
			return fmt.Errorf("router 2 state %q", s)
		}
		return nil
	}); err != nil {
		t.Fatalf("router 2 did not take over: %v", err)
	}
	run.takeover = time.Since(failedAt)
	close(gate.open)

	for _, m := range []ftpclient.Mode{ftpclient.PASV, ftpclient.EPSV, ftpclient.PORT, ftpclient.EPRT} {
		err := ls.retr(ctx, e.h, m, "small.bin", e.h.Files["small.bin"])
		if err != nil {
			run.lengthened = append(run.lengthened, fmt.Sprintf("%v: %v", m, err))
			break
		}
		run.lengthened = append(run.lengthened, fmt.Sprintf("%v ok", m))
	}
	if err := <-hugeDone; err != nil {
		run.huge = err.Error()
	} else {
		run.huge = "ok"
	}
	// A session the failover broke fails within a step's timeout of it.
	if wait := time.Until(failedAt.Add(haStepTimeout + 1500*time.Millisecond)); wait > 0 {
		time.Sleep(wait)
	}
	run.loads, run.failedBefore = map[string]loadResult{}, map[string]int{}
	for _, l := range loads { // at once: each ends its sessions' steps in progress
		_ = l.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, m := range haModes {
		r, fails := loads[m].stop()
		run.loads[m] = r
		for _, f := range fails {
			if f.started.Before(failedAt) {
				run.failedBefore[m]++
			}
			t.Logf("%s failed: %s", m, f.line)
		}
	}
}

// startLoad is ftpload in mode through addr until stopped.
func (e *haEnv) startLoad(t *testing.T, addr, mode string) *bgLoad {
	d := topo.Scaled(2 * time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	l := &bgLoad{t: t, exited: make(chan struct{}), cancel: cancel}
	l.cmd = e.h.CommandContext(ctx, e.h.Client, e.ftpload, "-addr", addr, "-mode", mode,
		"-workers", strconv.Itoa(haWorkers), "-file", "small.bin", "-size", strconv.Itoa(topo.SmallSize),
		"-sha256", e.h.Files["small.bin"], "-duration", d.String(), "-timeout", haStepTimeout.String(), "-label", mode)
	l.cmd.Stdout, l.cmd.Stderr = &l.stdout, &l.stderr
	if err := l.cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		l.err = l.cmd.Wait()
		close(l.exited)
	}()
	t.Cleanup(func() {
		cancel()
		<-l.exited
	})
	return l
}

// hugeTransfer fetches huge.bin over PASV through addr into gate.
func (e *haEnv) hugeTransfer(ctx context.Context, addr string, gate *gatedWriter) error {
	s, err := dialHA(ctx, e.h, addr, "anonymous")
	if err != nil {
		return err
	}
	defer s.c.Close()
	s.c.Timeout = topo.Scaled(20 * time.Second)
	hs := sha256.New()
	gate.w = hs
	err = topo.Do(e.h.Client, func() error {
		n, err := s.c.RetrTo(ctx, "huge.bin", gate)
		if err == nil && n != topo.HugeSize {
			err = fmt.Errorf("%d bytes, want %d", n, topo.HugeSize)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("huge.bin after %d MiB: %w", gate.n.Load()>>20, err)
	}
	if got := hex.EncodeToString(hs.Sum(nil)); got != e.h.Files["huge.bin"] {
		return fmt.Errorf("huge.bin sha256 %s, want %s", got, e.h.Files["huge.bin"])
	}
	return nil
}

// haSession is a control connection from the client namespace.
type haSession struct{ c *ftpclient.Client }

func dialHA(ctx context.Context, h *topo.HA, addr, user string) (*haSession, error) {
	s := &haSession{}
	err := topo.Do(h.Client, func() error {
		c, err := ftpclient.Dial(ctx, addr)
		if err != nil {
			return err
		}
		c.Timeout = haStepTimeout
		s.c = c
		return c.Login(ctx, user, "")
	})
	if err != nil && s.c != nil {
		s.c.Close()
	}
	return s, err
}

// retr fetches name in mode on the session's control connection (its data
// connections made in the client namespace) and checks its hash.
func (s *haSession) retr(ctx context.Context, h *topo.HA, mode ftpclient.Mode, name, sum string) error {
	return topo.Do(h.Client, func() error {
		s.c.Mode = mode
		_, got, err := s.c.RetrSHA256(ctx, name)
		if err != nil {
			return err
		}
		if hex.EncodeToString(got) != sum {
			return fmt.Errorf("%s: sha256 %x, want %s", name, got, sum)
		}
		return nil
	})
}

// gatedWriter passes writes on to w at rate bytes/s until open is closed,
// then at full speed.
type gatedWriter struct {
	w     io.Writer
	n     atomic.Int64
	open  chan struct{}
	rate  int64
	start time.Time
}

func (g *gatedWriter) Write(p []byte) (int, error) {
	n, err := g.w.Write(p)
	total := g.n.Add(int64(n))
	select {
	case <-g.open:
	default:
		if ahead := time.Duration(total*int64(time.Second)/g.rate) - time.Since(g.start); ahead > 0 {
			select {
			case <-g.open:
			case <-time.After(ahead):
			}
		}
	}
	return n, err
}

// report logs run and, for nfhelperd, asserts issue 17's goal.
func (run *haRun) report(t *testing.T, sys haSystem) {
	t.Logf("%s/%s: takeover %v; huge transfer: %s; lengthened session after the failover: %s",
		run.system, run.failure, run.takeover.Round(time.Millisecond), run.huge, strings.Join(run.lengthened, ", "))
	for _, m := range haModes {
		r := run.loads[m]
		if r.Sessions == 0 {
			t.Errorf("%s: no session completed", m)
		}
	}
	if sys.daemon == "" {
		return
	}
	if run.lengthenedSync != "" {
		t.Errorf("before the failure: %s", run.lengthenedSync)
	}
	if run.huge != "ok" {
		t.Errorf("huge transfer across the failover: %s", run.huge)
	}
	if len(run.lengthened) != 4 || strings.Contains(strings.Join(run.lengthened, ""), ":") {
		t.Errorf("lengthened session after the failover: %s", strings.Join(run.lengthened, ", "))
	}
	// Sessions in flight at the failure can fail with either system: an
	// active data connection's SYN lost with the cut router (425 from the
	// server), a session carried half-open. They are reported; what is
	// asserted is what only carried state gives: the transfer and the
	// lengthened session go on (above). Killed daemons also leave the old
	// master failing open while it holds the addresses (issue 17's open
	// gap): its running sessions' 227 pass unrewritten.
	for _, m := range haModes {
		if f := run.loads[m].Failures; f > 0 {
			t.Logf("%s: %d sessions failed, %d of them started before the failure", m, f, run.failedBefore[m])
		}
	}
}

func logHATable(t *testing.T, runs []*haRun) {
	var b strings.Builder
	fmt.Fprintf(&b, "%-10s %-5s %-9s %-5s %8s %7s %14s %14s\n", "system", "fail", "takeover", "mode", "sessions", "failed", "failed(before)", "longest stall")
	for _, run := range runs {
		if run.loads == nil {
			continue // not run (-run) or stopped before its load
		}
		for _, m := range haModes {
			r, ok := run.loads[m]
			if !ok {
				continue
			}
			fmt.Fprintf(&b, "%-10s %-5s %-9s %-5s %8d %7d %14d %12.0fms\n", run.system, run.failure,
				run.takeover.Round(10*time.Millisecond), m, r.Sessions, r.Failures, run.failedBefore[m], r.Stall)
		}
		fmt.Fprintf(&b, "%-10s %-5s   huge: %s; lengthened: %s\n", run.system, run.failure, run.huge, strings.Join(run.lengthened, ", "))
	}
	t.Logf("failovers:\n%s", b.String())
}
