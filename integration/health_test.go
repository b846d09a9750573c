//go:build integration

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// hcService is one service of a health test's configuration (scheduler rr
// unless extra names one): extra holds more service keys (YAML lines,
// indented by 4), check the health_check block's keys (one a line), and
// each server its address, then its own keys on the lines after it.
func hcService(name, vip, extra, check string, servers ...string) string {
	var b strings.Builder
	if !strings.Contains(extra, "scheduler:") {
		extra = "    scheduler: rr\n" + extra
	}
	fmt.Fprintf(&b, "  - name: %s\n    vip: %s\n    helper: ftp\n%s", name, vip, extra)
	if check != "" {
		b.WriteString("    health_check:\n")
		for _, l := range strings.Split(strings.TrimSpace(check), "\n") {
			b.WriteString("      " + strings.TrimSpace(l) + "\n")
		}
	}
	b.WriteString("    real_servers:\n")
	for _, s := range servers {
		lines := strings.Split(strings.TrimSpace(s), "\n")
		b.WriteString("      - address: " + lines[0] + "\n")
		for _, l := range lines[1:] {
			b.WriteString("        " + strings.TrimRight(l, " ") + "\n")
		}
	}
	return b.String()
}

// hcConfig is a configuration of the services given.
func hcConfig(services ...string) string { return "services:\n" + strings.Join(services, "") }

// addrsOf lists the servers' FTP addresses.
func addrsOf(servers []*hcServer) []string {
	var out []string
	for _, s := range servers {
		out = append(out, s.addr())
	}
	return out
}

// The short rhythm of the tests: interval 300 ms (timeout 250 ms), rise 2,
// fall 2. Under emulation (integration/vm) a check's own round trips take
// longer: the times grow as the bounds do.
var hcInterval, hcTimeout = topo.Scaled(300 * time.Millisecond), topo.Scaled(250 * time.Millisecond)

const (
	hcRise = 2
	hcFall = 2
)

// hcSlack covers what the bounds do not: the poll (10 ms), a control
// request, the check's own round trip, the scheduler's jitter.
var hcSlack = topo.Scaled(250 * time.Millisecond)

// rhythm is the check keys of hcInterval, hcRise, hcFall.
func rhythm(typ string) string {
	return fmt.Sprintf("type: %s\ninterval: %v\ntimeout: %v\nrise: %d\nfall: %d\n", typ, hcInterval, hcTimeout, hcRise, hcFall)
}

// failover runs the scenario with ftpload's sessions going on
// through the service svc at vip:21: breakIt breaks the victim (hs2);
// within fall × interval + one interval it gets no new sessions and no
// session that starts after that fails; healIt repairs it and it gets
// sessions again after rise checks.
func failover(t *testing.T, e *hcEnv, d *hcDaemon, svc, vip string, breakIt, healIt func(*hcServer)) {
	for _, s := range e.servers {
		d.waitState(svc, s.addr(), "up", 5*time.Second)
	}
	victim := e.servers[1]
	others := []*hcServer{e.servers[0], e.servers[2]}
	base := connectCounts(e.servers)
	load := startLoad(t, vip+":21", 4, 2*time.Second)
	waitConnects(t, e.servers, base, 3, 10*time.Second)

	broken := time.Now()
	breakIt(victim)
	rs, took := d.waitState(svc, victim.addr(), "down", 10*time.Second)
	down := time.Now()
	bound := time.Duration(hcFall)*hcInterval + hcInterval
	t.Logf("%s down %v after it broke (bound fall × interval + interval = %v); cause %q, health %q",
		victim.Name, took.Round(time.Millisecond), bound, rs.LastCause, rs.Health)
	if took > bound+hcSlack {
		t.Errorf("%s went down %v after it broke, want within %v (+%v slack)", victim.Name, took, bound, hcSlack)
	}

	// The others take every new session meanwhile.
	waitConnects(t, others, connectCounts(others), 10, 10*time.Second)
	if now := d.server(svc, victim.addr()); now.Conns != rs.Conns {
		t.Errorf("%s got %d new connections while down", victim.Name, now.Conns-rs.Conns)
	}

	healed := time.Now()
	healIt(victim)
	_, took = d.waitState(svc, victim.addr(), "up", 10*time.Second)
	upBound := time.Duration(hcRise)*hcInterval + hcInterval
	t.Logf("%s up %v after it was repaired (bound rise × interval + interval = %v)", victim.Name, took.Round(time.Millisecond), upBound)
	if took > upBound+hcSlack {
		t.Errorf("%s came back %v after its repair, want within %v (+%v slack)", victim.Name, took, upBound, hcSlack)
	}
	waitConnects(t, []*hcServer{victim}, connectCounts([]*hcServer{victim}), 3, 10*time.Second)

	res, fails := load.stop()
	if res.Sessions < 20 {
		t.Errorf("ftpload completed only %d sessions", res.Sessions)
	}
	for _, f := range fails {
		// A session running on the victim when it broke may fail with it
		// (vsftpd stopped ends its sessions).
		switch {
		case f.at.Before(broken):
			t.Errorf("a session failed before %s broke: %s", victim.Name, f.line)
		case !f.started.Before(down):
			t.Errorf("a session failed that started %v after %s was seen down: %s", f.started.Sub(down), victim.Name, f.line)
		}
	}
	t.Logf("%d sessions failed, all started before the failover, %v after the break; the victim was repaired %v after the break",
		len(fails), down.Sub(broken).Round(time.Millisecond), healed.Sub(broken).Round(time.Millisecond))
}

// TestHealthTCPCheck: vsftpd stops on one of three servers while sessions
// run through the VIP; the tcp check takes it out and, once vsftpd runs
// again, back in. The service's notify command hears of both changes.
func TestHealthTCPCheck(t *testing.T) {
	e := needHealth(t)
	notes := filepath.Join(t.TempDir(), "notify.log")
	notify := "    notify: echo $NFHELPER_SERVICE $NFHELPER_SERVER $NFHELPER_STATE $NFHELPER_CAUSE >> " + notes + "\n"
	d := e.start(hcConfig(hcService("hc", hcVIP+":21", notify, rhythm("tcp"), addrsOf(e.servers)...)), "")
	failover(t, e, d, "hc", hcVIP, e.stopFTP, e.startFTP)

	// The notify command runs beside the monitor: wait for its lines.
	victim := e.servers[1].addr()
	want := []string{"hc " + victim + " down refused", "hc " + victim + " up"}
	var got string
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		b, _ := os.ReadFile(notes)
		if got = string(b); strings.Count(got, "\n") >= 2 {
			break
		}
	}
	lines := strings.Split(strings.TrimSpace(got), "\n")
	if len(lines) != 2 || lines[0] != want[0] || !strings.HasPrefix(lines[1], want[1]) {
		t.Errorf("notify command's lines:\n%s\nwant %q, then %q...", got, want[0], want[1])
	} else {
		t.Logf("notify: %q", lines)
	}
}

// TestHealthFTPCheckDataBroken: one server's passive data ports are
// filtered (its control connections still work: a PASV is answered). The
// ftp check that logs in and opens a data channel takes it out; the same
// check without a login (greeting only), on a second service of the same
// servers, keeps it up: why the login option exists.
func TestHealthFTPCheckDataBroken(t *testing.T) {
	e := needHealth(t)
	login := rhythm("ftp") + "user: anonymous\npassword: nfhelper@example.com\n"
	d := e.start(hcConfig(
		hcService("hcftp", hcVIP+":21", "", login, addrsOf(e.servers)...),
		hcService("hcgreet", hcVIP2+":21", "", rhythm("ftp"), addrsOf(e.servers)...),
	), "")
	var brokenAt time.Time
	breakData := func(s *hcServer) {
		brokenAt = time.Now()
		e.breakWith(s, "tcp dport 40000-40999 drop")
	}
	healData := func(s *hcServer) {
		// Meanwhile the greeting-only check found nothing wrong.
		rs := d.holdState("hcgreet", s.addr(), "up", time.Duration(hcFall+1)*hcInterval)
		if rs.LastFailure.After(brokenAt) {
			t.Errorf("the greeting-only check failed %s at %v (%s)", s.Name, rs.LastFailure, rs.LastCause)
		}
		e.heal(s)
	}
	failover(t, e, d, "hcftp", hcVIP, breakData, healData)
	if rs := d.server("hcgreet", e.servers[1].addr()); rs.State != "up" {
		t.Errorf("greeting-only check: %s is %s", e.servers[1].Name, rs.State)
	}
}
