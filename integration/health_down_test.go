//go:build integration

package integration

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// quick is a check that reacts to one result: tcp every 200 ms, rise 1,
// fall 1.
var quick = fmt.Sprintf("type: tcp\ninterval: %v\ntimeout: %v\nrise: 1\nfall: 1\n", topo.Scaled(200*time.Millisecond), topo.Scaled(150*time.Millisecond))

// TestHealthAllDown: every real server down. Service hcsorry sends new
// sessions to its sorry server (a fourth vsftpd; files by hash); service
// hcrefuse, without one, refuses new connections at once (a reset: the
// connect fails with ECONNREFUSED in well under a second). A server back
// up takes the new sessions again.
func TestHealthAllDown(t *testing.T) {
	e := needHealth(t)
	two := addrsOf(e.servers[:2])
	d := e.start(hcConfig(
		hcService("hcsorry", hcVIP+":21", "    sorry_server: "+e.sorry.addr()+"\n", quick, two...),
		hcService("hcrefuse", hcVIP2+":21", "", quick, two...),
	), "")
	for _, svc := range []string{"hcsorry", "hcrefuse"} {
		for _, a := range two {
			d.waitState(svc, a, "up", 5*time.Second)
		}
	}
	if got := e.whichServer(hcVIP); got != "hs1" && got != "hs2" {
		t.Errorf("with its servers up, a session reached %s", got)
	}

	e.stopFTP(e.servers[0])
	e.stopFTP(e.servers[1])
	for _, svc := range []string{"hcsorry", "hcrefuse"} {
		for _, a := range two {
			d.waitState(svc, a, "down", 5*time.Second)
		}
	}
	if seen := e.sessionsTo(hcVIP, 3); seen["hsorry"] != 3 {
		t.Errorf("all servers down: sessions reached %v, want the sorry server only", seen)
	}
	all, err := d.services()
	if err != nil {
		t.Fatal(err)
	}
	if rs, ok := all["hcsorry"][e.sorry.addr()]; !ok || !rs.Sorry {
		t.Errorf("nfhelperctl services does not show the sorry server %s (sorry: true): %+v", e.sorry.addr(), all["hcsorry"])
	}

	var slowest time.Duration
	for range 3 {
		c, took, err := e.dialVIP(hcVIP2+":21", 5*time.Second)
		if err == nil {
			c.Close()
			t.Fatalf("all servers down, no sorry server: a connection to %s:21 was accepted", hcVIP2)
		}
		if !isRefused(err) {
			t.Errorf("all servers down, no sorry server: connect took %v and failed with %v, want connection refused", took, err)
		}
		slowest = max(slowest, took)
	}
	t.Logf("all servers down, no sorry server: connect refused in %v at most", slowest)
	if slowest > 500*time.Millisecond {
		t.Errorf("refusal took %v, want well under a second", slowest)
	}

	e.startFTP(e.servers[0])
	for _, svc := range []string{"hcsorry", "hcrefuse"} {
		d.waitState(svc, e.servers[0].addr(), "up", 5*time.Second)
	}
	if seen := e.sessionsTo(hcVIP, 2); seen["hs1"] != 2 {
		t.Errorf("hs1 back up: sessions reached %v, want hs1 only (not the sorry server)", seen)
	}
	if got := e.whichServer(hcVIP2); got != "hs1" {
		t.Errorf("hs1 back up: a session through %s reached %s", hcVIP2, got)
	}
}

// TestHealthOnDownReset: a control connection to a server whose checks
// fail (the server itself still serves it: only the router's own
// connections are refused) goes on by default, and ends with a reset the
// next time its client sends with on_down: reset.
func TestHealthOnDownReset(t *testing.T) {
	e := needHealth(t)
	hs1 := e.servers[0]
	d := e.start(hcConfig(
		hcService("hckeep", hcVIP+":21", "", quick, hs1.addr()),
		hcService("hcreset", hcVIP2+":21", "    on_down: reset\n", quick, hs1.addr()),
	), "")
	for _, svc := range []string{"hckeep", "hcreset"} {
		d.waitState(svc, hs1.addr(), "up", 5*time.Second)
	}
	keep := dialRaw(t, hcVIP+":21")
	keep.login("anonymous")
	reset := dialRaw(t, hcVIP2+":21")
	reset.login("anonymous")

	e.failChecksOf(hs1)
	for _, svc := range []string{"hckeep", "hcreset"} {
		d.waitState(svc, hs1.addr(), "down", 5*time.Second)
	}
	keep.cmd("NOOP", 2)
	// The state shows down a moment before the daemon has deleted the
	// connections: wait until the router's conntrack table lost the one
	// to hcreset's VIP.
	vip2 := netip.MustParseAddrPort(hcVIP2 + ":21")
	for end := time.Now().Add(3 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		left := 0
		for _, c := range conntrackTCP(t, e.tp.Router) {
			if c.origDst == vip2 && strings.Contains(c.line, "ESTABLISHED") {
				left++
			}
		}
		if left == 0 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("on_down reset: %d established connections to %s still in the router's conntrack table 3 s after hs1 went down", left, vip2)
		}
	}

	reset.send("NOOP\r\n")
	_ = reset.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	code, msg, err := reset.r.ReadResponse(0)
	switch {
	case err == nil:
		t.Errorf("on_down reset: the connection to the down server answered %d %q", code, msg)
	case errors.Is(err, syscall.ECONNRESET):
		t.Logf("on_down reset: the next command got a reset after %v", time.Since(start).Round(time.Millisecond))
	default:
		t.Errorf("on_down reset: the next command got %v after %v, want a reset", err, time.Since(start).Round(time.Millisecond))
	}

	e.heal(hs1)
	d.waitState("hckeep", hs1.addr(), "up", 5*time.Second)
	keep.cmd("NOOP", 2)
	keep.cmd("QUIT", 2)
}

// slotServerRE reads the value of an element of a kernel-scheduled
// service's slot map as nft lists it: slots : server . port.
var slotServerRE = regexp.MustCompile(`: (\d+\.\d+\.\d+\.\d+) \. (\d+)`)

// fallbackServers counts the slot-map elements of the kernel-scheduled
// service vip:21 by server: the kernel's scheduling, the same whether the
// daemon runs or not.
func fallbackServers(t *testing.T, vip string) (map[string]int, string) {
	t.Helper()
	name := fmt.Sprintf("slots_tcp_%x_21", netip.MustParseAddr(vip).AsSlice())
	// -nn: ports as numbers.
	out, stderr, err := execIn(t, 10*time.Second, harness.tp.Router, nil, "nft", "-nn", "list", "map", "inet", "nfhelper", name)
	if err != nil {
		t.Fatalf("nft list map inet nfhelper %s: %v %s", name, err, stderr)
	}
	n := map[string]int{}
	for _, m := range slotServerRE.FindAllStringSubmatch(string(out), -1) {
		n[m[1]+":"+m[2]]++
	}
	return n, string(out)
}

// TestHealthKillWithServerDown: hs2's checks fail (it still serves
// clients: only the router's own connections are refused, so a slot
// naming it would show as sessions reaching it). The service's slot map
// stops naming it; after kill -9 of the daemon it still does not, and new
// sessions (the kernel's scheduling, with or without the daemon) reach hs1
// and hs3 only.
func TestHealthKillWithServerDown(t *testing.T) {
	e := needHealth(t)
	hs2 := e.servers[1]
	d := e.start(hcConfig(hcService("hc", hcVIP+":21", "", quick, addrsOf(e.servers)...)), "")
	for _, s := range e.servers {
		d.waitState("hc", s.addr(), "up", 5*time.Second)
	}
	if fb, list := fallbackServers(t, hcVIP); fb[hs2.addr()] == 0 || len(fb) != 3 {
		t.Fatalf("fail-open buckets with all servers up: %v\n%s", fb, list)
	}
	e.failChecksOf(hs2)
	d.waitState("hc", hs2.addr(), "down", 5*time.Second)
	// The map follows the state change: poll briefly.
	var fb map[string]int
	var list string
	for end := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if fb, list = fallbackServers(t, hcVIP); fb[hs2.addr()] == 0 || time.Now().After(end) {
			break
		}
	}
	t.Logf("fail-open buckets with hs2 down: %v", fb)
	if fb[hs2.addr()] != 0 || len(fb) != 2 {
		t.Errorf("with hs2 down the fail-open map still names it: %v\n%s", fb, list)
	}

	if err := d.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("datapath %s: daemon killed (SIGKILL)", d.Datapath)
	if fb, list := fallbackServers(t, hcVIP); fb[hs2.addr()] != 0 || len(fb) != 2 {
		t.Errorf("after kill -9 the fail-open map names %v\n%s", fb, list)
	}
	seen := e.sessionsTo(hcVIP, 12)
	t.Logf("12 sessions with the daemon dead: %v", seen)
	if seen["hs2"] != 0 {
		t.Errorf("with the daemon dead, %d of 12 new sessions reached the down server hs2", seen["hs2"])
	}
}
