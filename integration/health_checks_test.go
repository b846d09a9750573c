//go:build integration

package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// TestHealthHTTPCheck: an http check against python's http.server in a
// real server's namespace: up on 200 with the body wanted (from
// initial_state down, after rise checks), down when the path answers 404,
// when the body lacks the substring, and when the server stops.
func TestHealthHTTPCheck(t *testing.T) {
	e := needHealth(t)
	s := e.servers[2]
	dir := t.TempDir()
	page := filepath.Join(dir, "health.txt")
	setPage := func(body string) {
		t.Helper()
		if body == "" {
			if err := os.Remove(page); err != nil {
				t.Fatal(err)
			}
			return
		}
		if err := os.WriteFile(page, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	setPage("state: nfht-healthy\n")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	web := e.tp.Exec(s.NS, "python3", "-m", "http.server", "8080", "--bind", s.V4, "--directory", dir)
	var webLog topo.SyncBuffer
	web.Stdout, web.Stderr = &webLog, &webLog
	if err := e.tp.Start(web); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.tp.StopGroup(web, syscall.SIGKILL, 5*time.Second) })
	if err := topo.WaitListening(ctx, e.tp.Router, s.V4+":8080"); err != nil {
		t.Fatalf("http.server: %v\n%s", err, webLog.String())
	}

	check := "type: http\nport: 8080\npath: /health.txt\nstatus: 200\nbody: nfht-healthy\n" +
		fmt.Sprintf("interval: %v\ntimeout: %v\nrise: 2\nfall: 2\ninitial_state: down\n", topo.Scaled(200*time.Millisecond), topo.Scaled(150*time.Millisecond))
	d := e.start(hcConfig(hcService("hchttp", hcVIP+":21", "", check, s.addr())), "")
	addr := s.addr()
	_, took := d.waitState("hchttp", addr, "up", 5*time.Second)
	t.Logf("up from initial_state down after %v (rise 2 × 200 ms)", took.Round(time.Millisecond))
	if got := e.whichServer(hcVIP); got != s.Name {
		t.Errorf("a session through the VIP reached %q, want %s", got, s.Name)
	}
	steps := []struct {
		what        string
		break_, fix func()
	}{
		{"the path answers 404", func() { setPage("") }, func() { setPage("state: nfht-healthy\n") }},
		{"the body lacks the substring", func() { setPage("state: degraded\n") }, func() { setPage("state: nfht-healthy\n") }},
		{"the server stopped", func() { _ = e.tp.StopGroup(web, syscall.SIGTERM, 5*time.Second) }, nil},
	}
	for _, st := range steps {
		st.break_()
		rs, took := d.waitState("hchttp", addr, "down", 5*time.Second)
		t.Logf("%s: down after %v, cause %q", st.what, took.Round(time.Millisecond), rs.LastCause)
		if rs.LastCause == "" {
			t.Errorf("%s: down without a cause", st.what)
		}
		if st.fix != nil {
			st.fix()
			_, took = d.waitState("hchttp", addr, "up", 5*time.Second)
			t.Logf("repaired: up after %v", took.Round(time.Millisecond))
		}
	}
	if strings.Count(webLog.String(), "GET /health.txt") < 4 {
		t.Errorf("http.server logged few checks:\n%s", tailString(webLog.String(), 2000))
	}
}

// procInfo is what /proc tells of a process.
type procInfo struct {
	pid, ppid int
	state     byte
}

// procsWithEnv lists the processes whose environment holds entry.
func procsWithEnv(entry string) []procInfo {
	var out []procInfo
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil || !bytes.Contains(append(append([]byte{0}, env...), 0), []byte("\x00"+entry+"\x00")) {
			continue
		}
		if p, ok := procStat(pid); ok {
			out = append(out, p)
		}
	}
	return out
}

// zombiesOf lists the zombie children of ppid.
func zombiesOf(ppid int) []procInfo {
	var out []procInfo
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := procStat(pid); ok && p.ppid == ppid && p.state == 'Z' {
			out = append(out, p)
		}
	}
	return out
}

func procStat(pid int) (procInfo, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procInfo{}, false
	}
	// pid (comm) state ppid ...: comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return procInfo{}, false
	}
	ppid, _ := strconv.Atoi(f[1])
	return procInfo{pid: pid, ppid: ppid, state: f[0][0]}, true
}

// TestHealthExecHang: hs1's exec check hangs (a child sleeping in the
// background, the script itself sleeping): its timeout kills the whole
// process group, nothing is left behind (no process, no zombie), hs1 goes
// down, and the other servers' checks keep their 200 ms rhythm meanwhile.
func TestHealthExecHang(t *testing.T) {
	e := needHealth(t)
	dir := t.TempDir()
	runs := filepath.Join(dir, "runs.log")
	script := filepath.Join(dir, "check.sh")
	hung := e.servers[0]
	if err := os.WriteFile(script, []byte(`#!/bin/sh
echo "$(date +%s.%N) $NFHELPER_SERVER_ADDRESS $NFHELPER_SERVER_PORT" >> `+runs+`
if [ "$NFHELPER_SERVER_ADDRESS" = "`+hung.V4+`" ]; then
	sleep 3600 &
	sleep 3600
fi
exit 0
`), 0o755); err != nil {
		t.Fatal(err)
	}
	// Under emulation (integration/vm) the hang and the gap allowed grow
	// alike.
	interval, hangTimeout, maxGapAllowed := topo.Scaled(200*time.Millisecond), topo.Scaled(800*time.Millisecond), topo.Scaled(600*time.Millisecond)
	check := fmt.Sprintf("type: exec\ncommand: /bin/sh %s\ninterval: %v\ntimeout: %v\nrise: 1\nfall: 1\n", script, interval, topo.Scaled(150*time.Millisecond))
	servers := addrsOf(e.servers)
	servers[0] += fmt.Sprintf("\nhealth_check:\n  interval: %v\n  timeout: %v", hangTimeout+interval, hangTimeout)
	d := e.start(hcConfig(hcService("hcexec", hcVIP+":21", "", check, servers...)), "")

	rs, took := d.waitState("hcexec", hung.addr(), "down", 5*time.Second)
	t.Logf("%s down after %v, cause %q", hung.Name, took.Round(time.Millisecond), rs.LastCause)

	// Watch for 3 s: every process of the checks (found by the
	// NFHELPER_SERVICE its environment holds) lives no longer than the
	// timeout, and no zombie of the daemon lasts.
	marker := "NFHELPER_SERVICE=hcexec"
	type life struct{ first, last time.Time }
	lives, zombies := map[int]*life{}, map[int]*life{}
	note := func(m map[int]*life, ps []procInfo, now time.Time) {
		for _, p := range ps {
			if l := m[p.pid]; l != nil {
				l.last = now
			} else {
				m[p.pid] = &life{now, now}
			}
		}
	}
	watchFrom, watch := time.Now(), topo.Scaled(3*time.Second)
	for time.Since(watchFrom) < watch {
		now := time.Now()
		note(lives, procsWithEnv(marker), now)
		note(zombies, zombiesOf(d.Pid()), now)
		time.Sleep(25 * time.Millisecond)
	}
	if len(lives) == 0 {
		t.Fatalf("no process with %s seen in %v: do exec checks get NFHELPER_SERVICE?", marker, watch)
	}
	limit := hangTimeout + topo.Scaled(400*time.Millisecond)
	for pid, l := range lives {
		if l.last.Sub(l.first) > limit {
			t.Errorf("pid %d of the checks lived at least %v, beyond the timeout %v", pid, l.last.Sub(l.first).Round(time.Millisecond), hangTimeout)
		}
	}
	for pid, l := range zombies {
		if l.last.Sub(l.first) > 200*time.Millisecond {
			t.Errorf("zombie %d of the daemon for %v", pid, l.last.Sub(l.first).Round(time.Millisecond))
		}
	}
	t.Logf("%d check processes seen, none older than %v; %d short-lived zombies", len(lives), limit, len(zombies))

	// The rhythm of the others, from the script's own log.
	b, err := os.ReadFile(runs)
	if err != nil {
		t.Fatal(err)
	}
	at := map[string][]float64{}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err == nil && v >= float64(watchFrom.UnixNano())/1e9 {
			at[f[1]] = append(at[f[1]], v)
		}
	}
	for _, s := range e.servers[1:] {
		ts := at[s.V4]
		sort.Float64s(ts)
		var maxGap float64
		for i := 1; i < len(ts); i++ {
			maxGap = max(maxGap, ts[i]-ts[i-1])
		}
		t.Logf("%s: %d checks in %v, longest gap %.0f ms", s.Name, len(ts), watch, maxGap*1000)
		if len(ts) < 10 {
			t.Errorf("%s: only %d checks in %v at a %v interval", s.Name, len(ts), watch, interval)
		}
		// A scheduler that waited for the hung check would leave gaps of its
		// timeout.
		if maxGap > maxGapAllowed.Seconds() {
			t.Errorf("%s: a gap of %.0f ms between checks (interval %v, the hung check's timeout %v)", s.Name, maxGap*1000, interval, hangTimeout)
		}
		if st := d.server("hcexec", s.addr()); st.State != "up" {
			t.Errorf("%s: %s", s.Name, st.State)
		}
	}
	t.Logf("%s: %d runs of its check in %v", hung.Name, len(at[hung.V4]), watch)

	// A stopped daemon leaves no check behind.
	if res, err := d.Stop(); err != nil || res.ExitCode != 0 {
		t.Errorf("stop: %+v %v", res, err)
	}
	end := time.Now().Add(2 * time.Second)
	for len(procsWithEnv(marker)) > 0 && time.Now().Before(end) {
		time.Sleep(20 * time.Millisecond)
	}
	if left := procsWithEnv(marker); len(left) > 0 {
		t.Errorf("processes of the checks left after the daemon stopped: %+v", left)
		for _, p := range left {
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
	}
}

// TestHealthFlapping: an exec check whose result alternates pass, fail,
// pass... With rise 3 and fall 3 no server changes state, up (the
// default) or down (initial_state down); with rise 1 and fall 1 (hs3) the
// same check flips it, which shows the check did alternate.
func TestHealthFlapping(t *testing.T) {
	e := needHealth(t)
	dir := t.TempDir()
	script := filepath.Join(dir, "flap.sh")
	if err := os.WriteFile(script, []byte(`#!/bin/sh
f=`+dir+`/n.$NFHELPER_SERVER_ADDRESS
n=$(cat "$f" 2>/dev/null || echo 0)
echo $((n + 1)) > "$f"
[ $((n % 2)) -eq 0 ]
`), 0o755); err != nil {
		t.Fatal(err)
	}
	// A check killed at its timeout is a failure that breaks the
	// alternation: under emulation (integration/vm), where starting a
	// shell can take a few hundred milliseconds, the checks get a second.
	interval := 100 * time.Millisecond
	if topo.Scaled(1) > 1 {
		interval = time.Second
	}
	check := fmt.Sprintf("type: exec\ncommand: /bin/sh %s\ninterval: %v\ntimeout: %v\nrise: 3\nfall: 3\n", script, interval, interval)
	servers := addrsOf(e.servers)
	servers[1] += "\nhealth_check:\n  initial_state: down"
	servers[2] += "\nhealth_check:\n  rise: 1\n  fall: 1"
	d := e.start(hcConfig(hcService("hcflap", hcVIP+":21", "", check, servers...)), "")

	first, err := d.services()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{e.servers[0].addr(): "up", e.servers[1].addr(): "down"}
	hs3Changes := 0
	last3 := first["hcflap"][e.servers[2].addr()].State
	watch := 15 * interval
	for end := time.Now().Add(watch); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		all, err := d.services()
		if err != nil {
			t.Fatal(err)
		}
		for addr, st := range want {
			rs := all["hcflap"][addr]
			if rs.State != st || !rs.Since.Equal(first["hcflap"][addr].Since) {
				t.Fatalf("%s: %s since %v, want %s held since %v", addr, rs.State, rs.Since, st, first["hcflap"][addr].Since)
			}
		}
		if s := all["hcflap"][e.servers[2].addr()].State; s != last3 {
			hs3Changes++
			last3 = s
		}
	}
	for _, s := range e.servers {
		b, _ := os.ReadFile(filepath.Join(dir, "n."+s.V4))
		n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		t.Logf("%s: %d checks", s.Name, n)
		if n < 8 {
			t.Errorf("%s: only %d checks in %v at %v", s.Name, n, watch, interval)
		}
	}
	t.Logf("hs3 (rise 1, fall 1) changed state %d times", hs3Changes)
	if hs3Changes < 2 {
		t.Errorf("hs3 with rise 1 and fall 1 changed state %d times: did the check alternate?", hs3Changes)
	}
}
