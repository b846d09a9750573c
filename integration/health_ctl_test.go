//go:build integration

package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/ctl"
	"github.com/nfhelper/nfhelper/integration/topo"
)

// heldClient logs in, fetches server.txt and prints its content, waits
// for a line on stdin, fetches small.bin, quits and prints the hash and
// the reply to QUIT.
const heldClient = `import ftplib, hashlib, json, sys
out = sys.stdout
sys.stdout = sys.stderr
ftp = ftplib.FTP(timeout=20)
ftp.connect(sys.argv[1], 21)
ftp.login()
b = bytearray()
ftp.retrbinary("RETR server.txt", b.extend)
out.write(json.dumps({"server": b.decode().strip()}) + "\n"); out.flush()
sys.stdin.readline()
h = hashlib.sha256()
ftp.retrbinary("RETR small.bin", h.update)
out.write(json.dumps({"sha256": h.hexdigest(), "quit": ftp.quit()}) + "\n"); out.flush()
`

// heldSession is one heldClient run.
type heldSession struct {
	server string
	stdin  io.WriteCloser
	lines  *bufio.Scanner
	trace  topo.SyncBuffer
}

func startHeld(t *testing.T, script, vip string) *heldSession {
	t.Helper()
	s := &heldSession{}
	s.stdin, s.lines = startScripted(t, 2*time.Minute, &s.trace, script, vip)
	var first struct{ Server string }
	s.next(t, &first)
	s.server = first.Server
	return s
}

func (s *heldSession) next(t *testing.T, v any) {
	t.Helper()
	if !s.lines.Scan() {
		t.Fatalf("held session ended: %v\n%s", s.lines.Err(), tailString(s.trace.String(), 2000))
	}
	if err := json.Unmarshal(s.lines.Bytes(), v); err != nil {
		t.Fatalf("held session: %q: %v", s.lines.Text(), err)
	}
}

// finish makes the session fetch small.bin (checked by hash), quit and
// exit.
func (s *heldSession) finish(t *testing.T) {
	t.Helper()
	io.WriteString(s.stdin, "go\n")
	var last struct{ SHA256, Quit string }
	s.next(t, &last)
	if last.SHA256 != harness.tp.Files["small.bin"] || !strings.HasPrefix(last.Quit, "221") {
		t.Errorf("held session on %s: sha256 %s (want %s), QUIT %q", s.server, last.SHA256, harness.tp.Files["small.bin"], last.Quit)
	}
	s.stdin.Close()
	for s.lines.Scan() { // until the client has exited
	}
}

// ctlServer runs nfhelperctl server ARGS against the health daemon.
func (e *hcEnv) ctlServer(args ...string) (int, string, string) {
	e.t.Helper()
	return nfhelperctl(e.t, e.tp.ControlSocket(), append([]string{"server"}, args...)...)
}

// mustCtl runs nfhelperctl server ARGS and fails unless it exits 0.
func (e *hcEnv) mustCtl(args ...string) string {
	e.t.Helper()
	code, out, errOut := e.ctlServer(args...)
	if code != 0 {
		e.t.Fatalf("nfhelperctl server %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// TestHealthDrainWait: nfhelperctl server ... drain --wait, started while
// two sessions run on hs1, returns once the last of them ended, not
// before; meanwhile new sessions go to hs2. undrain gives hs1 sessions
// again.
func TestHealthDrainWait(t *testing.T) {
	e := needHealth(t)
	hs1, hs2 := e.servers[0], e.servers[1]
	d := e.start(hcConfig(hcService("hc", hcVIP+":21", "", "", hs1.addr(), hs2.addr())), "")
	script := filepath.Join(t.TempDir(), "held.py")
	if err := os.WriteFile(script, []byte(heldClient), 0o644); err != nil {
		t.Fatal(err)
	}
	var on1 []*heldSession
	for range 4 {
		s := startHeld(t, script, hcVIP)
		if s.server == hs1.Name {
			on1 = append(on1, s)
		} else {
			defer s.finish(t)
		}
	}
	if len(on1) != 2 {
		t.Fatalf("rr gave hs1 %d of 4 sessions, want 2", len(on1))
	}
	before := d.server("hc", hs1.addr())
	if before.Active+before.Inactive == 0 {
		t.Fatalf("hs1 shows no connections with two sessions on it: %+v", before)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	drain := e.tp.CommandContext(ctx, e.tp.Router, needCtl(t), "server", "hc", hs1.addr(), "drain", "--wait")
	drain.Env = append(os.Environ(), ctl.EnvSocket+"="+e.tp.ControlSocket())
	var out topo.SyncBuffer
	drain.Stdout, drain.Stderr = &out, &out
	if err := drain.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- drain.Wait() }()
	stillWaiting := func(what string) {
		t.Helper()
		select {
		case err := <-done:
			t.Fatalf("drain --wait returned %s (%v):\n%s", what, err, out.String())
		case <-time.After(1500 * time.Millisecond):
		}
	}
	stillWaiting("with two sessions on hs1")
	if rs := d.server("hc", hs1.addr()); rs.Weight != 0 || rs.Override == nil || !rs.Override.Drained {
		t.Errorf("hs1 while draining: weight %d, override %+v", rs.Weight, rs.Override)
	}
	if seen := e.sessionsTo(hcVIP, 2); seen[hs2.Name] != 2 {
		t.Errorf("while hs1 drains, new sessions reached %v", seen)
	}
	on1[0].finish(t)
	stillWaiting("with one session left on hs1")
	on1[1].finish(t)
	ended := time.Now()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("drain --wait: %v\n%s", err, out.String())
		}
		t.Logf("drain --wait returned %v after the last session ended; output:\n%s", time.Since(ended).Round(time.Millisecond), out.String())
	case <-time.After(10 * time.Second):
		t.Errorf("drain --wait still waiting 10 s after the last session on hs1 ended; output:\n%s\nhs1: %+v",
			out.String(), d.server("hc", hs1.addr()))
	}

	e.mustCtl("hc", hs1.addr(), "undrain")
	if seen := e.sessionsTo(hcVIP, 2); seen[hs1.Name] != 1 || seen[hs2.Name] != 1 {
		t.Errorf("after undrain, sessions reached %v", seen)
	}
}

// TestHealthCtlServer: down, up and weight take effect for new sessions at
// once; unknown services and servers are refused with a clear message and
// exit status 1, a bad operation with the usage status 2.
func TestHealthCtlServer(t *testing.T) {
	e := needHealth(t)
	hs1, hs2 := e.servers[0], e.servers[1]
	// A tcp check keeps hs1 up: down must win over it.
	d := e.start(hcConfig(hcService("hc", hcVIP+":21", "    scheduler: wrr\n", quick, hs1.addr(), hs2.addr())), "")
	d.waitState("hc", hs1.addr(), "up", 5*time.Second)

	e.mustCtl("hc", hs1.addr(), "down")
	rs := d.server("hc", hs1.addr())
	if rs.State != "down" || rs.Override == nil || !rs.Override.Down {
		t.Errorf("after down: state %q override %+v", rs.State, rs.Override)
	}
	if seen := e.sessionsTo(hcVIP, 3); seen[hs2.Name] != 3 {
		t.Errorf("hs1 forced down: sessions reached %v", seen)
	}
	d.holdState("hc", hs1.addr(), "down", 600*time.Millisecond) // its passing checks do not bring it back

	e.mustCtl("hc", hs1.addr(), "up")
	d.waitState("hc", hs1.addr(), "up", 5*time.Second)
	e.mustCtl("hc", hs1.addr(), "weight", "3")
	if rs := d.server("hc", hs1.addr()); rs.Weight != 3 || rs.ConfigWeight != 1 || rs.Override == nil || rs.Override.Weight == nil || *rs.Override.Weight != 3 {
		t.Errorf("after weight 3: %+v (override %+v)", rs, rs.Override)
	}
	// wrr 3:1 gives 6 of 8 consecutive sessions to hs1 wherever its cycle
	// stood.
	if seen := e.sessionsTo(hcVIP, 8); seen[hs1.Name] != 6 || seen[hs2.Name] != 2 {
		t.Errorf("weights 3:1: 8 sessions reached %v, want hs1 6, hs2 2", seen)
	}
	e.mustCtl("hc", hs1.addr(), "weight", "0")
	if seen := e.sessionsTo(hcVIP, 2); seen[hs2.Name] != 2 {
		t.Errorf("hs1 at weight 0: sessions reached %v", seen)
	}

	for _, c := range []struct {
		args  []string
		code  int
		names string
	}{
		{[]string{"nosuch", hs1.addr(), "down"}, 1, "nosuch"},
		{[]string{"hc", "10.0.0.99:21", "down"}, 1, "10.0.0.99:21"},
		{[]string{"hc", hs1.addr(), "frobnicate"}, 2, "frobnicate"},
		{[]string{"hc", hs1.addr(), "weight", "many"}, 2, "many"},
	} {
		code, out, errOut := e.ctlServer(c.args...)
		t.Logf("nfhelperctl server %s: exit %d: %s", strings.Join(c.args, " "), code, strings.TrimSpace(errOut))
		if code != c.code {
			t.Errorf("nfhelperctl server %s: exit %d, want %d\n%s%s", strings.Join(c.args, " "), code, c.code, out, errOut)
		}
		if !strings.Contains(errOut, c.names) {
			t.Errorf("nfhelperctl server %s: the message does not name %q: %q", strings.Join(c.args, " "), c.names, errOut)
		}
	}
}

// TestHealthOverridesPersist: overrides (weight, down, drain) survive a
// SIGHUP, a restart (the state file in the test's state directory) and a
// hand-over in place; a
// reload that changes a server's entry in the file clears that server's
// override only.
func TestHealthOverridesPersist(t *testing.T) {
	e := needHealth(t)
	stateDir := t.TempDir()
	hs1, hs2, hs3 := e.servers[0], e.servers[1], e.servers[2]
	cfg := func(hs1Extra string) string {
		return hcConfig(hcService("hc", hcVIP+":21", "    scheduler: wrr\n", "", hs1.addr()+hs1Extra, hs2.addr(), hs3.addr()))
	}
	d := e.start(cfg(""), stateDir)
	e.mustCtl("hc", hs1.addr(), "weight", "3")
	e.mustCtl("hc", hs2.addr(), "down")
	e.mustCtl("hc", hs3.addr(), "drain")

	expect := func(when string, hs1Weight int, hs1Override bool) {
		t.Helper()
		all, err := d.services()
		if err != nil {
			t.Fatal(err)
		}
		s1, s2, s3 := all["hc"][hs1.addr()], all["hc"][hs2.addr()], all["hc"][hs3.addr()]
		if s1.Weight != hs1Weight || (s1.Override != nil) != hs1Override {
			t.Errorf("%s: hs1 weight %d override %+v, want weight %d, override %v", when, s1.Weight, s1.Override, hs1Weight, hs1Override)
		}
		if s2.State != "down" || s2.Override == nil || !s2.Override.Down {
			t.Errorf("%s: hs2 %s, override %+v, want forced down", when, s2.State, s2.Override)
		}
		if s3.Weight != 0 || s3.Override == nil || !s3.Override.Drained {
			t.Errorf("%s: hs3 weight %d, override %+v, want drained", when, s3.Weight, s3.Override)
		}
		if seen := e.sessionsTo(hcVIP, 2); seen[hs1.Name] != 2 {
			t.Errorf("%s: sessions reached %v, want hs1 only", when, seen)
		}
	}
	expect("set", 3, true)
	b, err := os.ReadFile(filepath.Join(stateDir, "state.json"))
	if err != nil {
		t.Fatalf("state file: %v", err)
	}
	var state any
	if err := json.Unmarshal(b, &state); err != nil || !strings.Contains(string(b), "10.0.0.22") {
		t.Errorf("state file %s: %v\n%s", filepath.Join(stateDir, "state.json"), err, b)
	}

	d.reload("")
	expect("after SIGHUP", 3, true)
	d.restart()
	expect("after a restart", 3, true)
	d.handOver()
	expect("after a hand-over (SIGUSR2)", 3, true)

	// hs1's entry changes: its override goes, the others stay.
	d.reload(cfg("\nweight: 2"))
	expect("after a reload changing hs1's entry", 2, false)
	d.restart()
	expect("after the next restart", 2, false)
}

// TestHealthStateSurvivesRestart: a server its checks took out (hs2: it
// still serves clients, only the checks are refused) is still out the
// moment a restarted or handed-over daemon is ready, since when it was
// before: sessions at once do not reach it, as they would in the fall ×
// interval a fresh start in initial_state up would take to find it down.
func TestHealthStateSurvivesRestart(t *testing.T) {
	e := needHealth(t)
	hs2 := e.servers[1]
	d := e.start(hcConfig(hcService("hc", hcVIP+":21", "", rhythm("tcp"), addrsOf(e.servers)...)), "")
	for _, s := range e.servers {
		d.waitState("hc", s.addr(), "up", 5*time.Second)
	}
	e.failChecksOf(hs2)
	down, _ := d.waitState("hc", hs2.addr(), "down", 5*time.Second)
	for _, how := range []string{"restart", "hand-over"} {
		if how == "restart" {
			d.restart()
		} else {
			d.handOver()
		}
		rs := d.server("hc", hs2.addr())
		if rs.State != "down" || !rs.Since.Equal(down.Since) {
			t.Errorf("after a %s: hs2 %s since %v, want down since %v", how, rs.State, rs.Since, down.Since)
		}
		if seen := e.sessionsTo(hcVIP, 6); seen[hs2.Name] != 0 {
			t.Errorf("right after a %s, sessions reached %v", how, seen)
		}
	}
}
