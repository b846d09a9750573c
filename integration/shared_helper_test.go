//go:build integration

package integration

import (
	"net"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/integration/topo"
	"github.com/nfhelper/nfhelper/kernel"
)

// TestKernelHelperSharedByTwoRouters (kernel datapath only): two routers
// in two network namespaces of one kernel, each with its own client and
// real servers and an nfhelperd with the same configuration, share the
// kernel-wide conntrack helper registration. The second daemon adopts it;
// sessions through both are helped; when one daemon stops, the
// registration stays and the other router's sessions are still helped.
// Then the other way round: the second daemon starts again (adopting what
// the stop left) and the suite's daemon stops.
func TestKernelHelperSharedByTwoRouters(t *testing.T) {
	d1 := needDaemon(t)
	if !kernelDatapath() {
		t.Skip("compat datapath: no conntrack helper")
	}
	var opts topo.Options
	opts.Prefix = "nfh2-"
	if d, err := time.ParseDuration(os.Getenv("NFH_TOPO_TIMEOUT")); err == nil {
		opts.Timeout = d
	}
	tp2, err := topo.New(opts)
	if err != nil {
		t.Fatalf("second router's topology: %v", err)
	}
	t.Cleanup(func() {
		if err := tp2.Close(); err != nil {
			t.Logf("second topology teardown: %v", err)
		}
	})
	d2, err := tp2.StartDaemon(harness.daemonBin, harness.config)
	if err != nil {
		t.Fatalf("second router's daemon: %v", err)
	}
	if d2.Datapath != kernel.DatapathKernel {
		t.Fatalf("second router's daemon runs datapath %s", d2.Datapath)
	}
	adopted := regexp.MustCompile(`(?m)^.*conntrack helper registration adopted.*$`)
	if !adopted.MatchString(d2.Log()) {
		t.Errorf("the second daemon did not adopt the registration:\n%s", tailString(d2.Log(), 3000))
	}
	router1 := harness.tp

	helped(t, "router 1", router1)
	helped(t, "router 2", tp2)

	res, err := d2.Stop()
	if err != nil {
		t.Fatalf("stop router 2's daemon: %v", err)
	}
	checkStopped(t, "router 2's daemon", res)
	noErrors(t, "router 2's daemon", d2.Log())
	left := regexp.MustCompile(`(?m)^.*conntrack helper registration left in the kernel.*$`)
	if !left.MatchString(d2.Log()) {
		t.Errorf("router 2's daemon does not say it left the registration:\n%s", tailString(d2.Log(), 2000))
	}
	registered(t)
	helped(t, "router 1 after router 2's daemon stopped", router1)
	// The other way round: router 2's daemon again (adopting), router 1's
	// stops.
	d2, err = tp2.StartDaemon(harness.daemonBin, harness.config)
	if err != nil {
		t.Fatalf("router 2's daemon again: %v", err)
	}
	defer func() {
		if _, err := d2.Stop(); err != nil {
			t.Errorf("stop router 2's daemon: %v", err)
		}
	}()
	if !adopted.MatchString(d2.Log()) {
		t.Errorf("router 2's daemon did not adopt the registration left:\n%s", tailString(d2.Log(), 3000))
	}
	helped(t, "router 2 again", tp2)
	harness.mu.Lock()
	harness.stopped = true
	harness.mu.Unlock()
	before := len(d1.Log()) // it may have logged errors in earlier tests
	res, err = d1.Stop()
	if err != nil {
		t.Fatalf("stop router 1's daemon: %v", err)
	}
	checkStopped(t, "router 1's daemon", res)
	noErrors(t, "router 1's daemon", d1.Log()[before:])
	registered(t)
	helped(t, "router 2 after router 1's daemon stopped", tp2)
}

// vipPASV is the VIP as a 227 reply names it.
var vipPASV = strings.ReplaceAll(topo.VIP4, ".", ",") + ","

// helped runs two passive transfers on one control connection through the
// router of tp: each 227 must name the VIP and each file arrive whole.
func helped(t *testing.T, what string, tp *topo.Topo) {
	t.Helper()
	r := runFtpget(t, tp.Client, net.JoinHostPort(topo.VIP4, "21"), "pasv", "small.bin", 2)
	for i, res := range r.results {
		if !strings.Contains(res.PassiveReply, vipPASV) {
			t.Errorf("%s, transfer %d: 227 %q does not name the VIP", what, i, res.PassiveReply)
		}
		if res.SHA256 != tp.Files["small.bin"] {
			t.Errorf("%s, transfer %d: sha256 %s, want %s", what, i, res.SHA256, tp.Files["small.bin"])
		}
	}
}

// registered checks that the helper stays registered for both families.
func registered(t *testing.T) {
	t.Helper()
	ch, err := kernel.DialCthelper()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	list, err := ch.List()
	if err != nil {
		t.Fatal(err)
	}
	fams := map[uint8]bool{}
	for _, h := range list {
		if h.Name == "nfh-ftp" && h.Proto == unix.IPPROTO_TCP && h.Enabled {
			fams[h.Family] = true
		}
	}
	if !fams[unix.AF_INET] || !fams[unix.AF_INET6] {
		t.Errorf("nfh-ftp no longer registered for both families: %+v", list)
	}
}

// noErrors fails on a level=ERROR line in a daemon's log.
func noErrors(t *testing.T, what, log string) {
	t.Helper()
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "level=ERROR") {
			t.Errorf("%s logged an error: %s", what, line)
		}
	}
}
