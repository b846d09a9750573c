package daemon

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"

	"github.com/nfhelper/nfhelper/ctl"
	"github.com/nfhelper/nfhelper/health"
	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/kernel"
	"github.com/nfhelper/nfhelper/nft"
)

// syncBuffer is a log every goroutine can write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// controlled is a daemon for the configuration yaml as far as runtime
// control goes: roster, monitor (not running), engine and a ruleset whose
// batches go nowhere (their netlink messages are counted). Its state file is in stateDir.
func controlled(t *testing.T, yaml, stateDir string) (*Daemon, *syncBuffer, *int) {
	t.Helper()
	logs := &syncBuffer{}
	d := New(mustParse(t, yaml), Options{StateDir: stateDir, Log: slog.New(slog.NewTextHandler(logs, nil))})
	d.dp = newDatapath(kernel.DatapathCompat, d.log)
	if _, err := d.newMonitor(); err != nil {
		t.Fatal(err)
	}
	st := d.roster.standings(d.running)
	var err error
	if d.engine, err = ipvs.NewEngine(services(d.cfg, st), ipvs.Options{MarkMask: markMask}); err != nil {
		t.Fatal(err)
	}
	d.follower = &conntrackFollower{engine: d.engine}
	d.states = &stateFollower{engine: d.engine, follower: d.follower, log: d.log, wg: &d.background}
	batches := 0
	if d.nft, err = nftables.New(nftables.WithTestDial(func([]netlink.Message) ([]netlink.Message, error) {
		batches++
		return nil, nil
	})); err != nil {
		t.Fatal(err)
	}
	if d.ruleset, err = nft.Install(d.nft, specFor(d.cfg, d.engine.Services(), st)); err != nil {
		t.Fatal(err)
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	t.Cleanup(func() {
		d.cancel()
		d.background.Wait()
	})
	batches = 0
	return d, logs, &batches
}

// engineServer is the engine's real server k.
func engineServer(t *testing.T, d *Daemon, k health.Key) *ipvs.RealServer {
	t.Helper()
	for _, svc := range d.engine.Services() {
		for _, rs := range svc.Servers {
			if svc.Name == k.Service && rs.Addr == k.Addr {
				return rs
			}
		}
	}
	t.Fatalf("no server %v in the engine", k)
	return nil
}

// TestSetServerErrors: unknown services and servers, bad ops and weights
// are refused with ctl's sentinels, and change nothing.
func TestSetServerErrors(t *testing.T) {
	d, _, batches := controlled(t, rosterYAML, t.TempDir())
	for _, c := range []struct {
		req  ctl.ServerRequest
		want error
	}{
		{ctl.ServerRequest{Service: "ftp", Address: web1.Addr, Op: "down"}, ctl.ErrUnknownService},
		{ctl.ServerRequest{Service: "web", Address: web3.Addr, Op: "down"}, ctl.ErrUnknownServer},
		{ctl.ServerRequest{Service: "web", Address: netip.MustParseAddrPort("10.0.0.1:81"), Op: "down"}, ctl.ErrUnknownServer},
		{ctl.ServerRequest{Service: "web", Address: web1.Addr, Op: "weight", Weight: -1}, ctl.ErrBadRequest},
		{ctl.ServerRequest{Service: "web", Address: web1.Addr, Op: "weight", Weight: 65536}, ctl.ErrBadRequest},
		{ctl.ServerRequest{Service: "web", Address: web1.Addr, Op: "reboot"}, ctl.ErrBadRequest},
	} {
		err := d.SetServer(context.Background(), c.req)
		if !errors.Is(err, c.want) {
			t.Errorf("%+v: %v, want %v", c.req, err, c.want)
		}
	}
	if *batches != 0 || d.roster[web1].override != nil {
		t.Errorf("refused requests changed things: %d batches, override %+v", *batches, d.roster[web1].override)
	}
}

// TestSetServer: each op changes the override, the engine's server and
// the ruleset at once, is logged and saved; a restart reads it back.
func TestSetServer(t *testing.T) {
	dir := t.TempDir()
	d, logs, batches := controlled(t, rosterYAML, dir)
	rs := engineServer(t, d, web2)
	set := func(op string, weight int) {
		t.Helper()
		if err := d.SetServer(context.Background(), ctl.ServerRequest{Service: "web", Address: web2.Addr, Op: op, Weight: weight}); err != nil {
			t.Fatalf("%s: %v", op, err)
		}
	}
	check := func(op string, weight int, down bool, o *ctl.Override) {
		t.Helper()
		if rs.Weight != weight || rs.Down != down {
			t.Errorf("after %s: engine's server weight %d down %v, want %d %v", op, rs.Weight, rs.Down, weight, down)
		}
		st, ok := d.Standing("web", web2.Addr)
		switch {
		case !ok:
			t.Fatalf("after %s: no standing", op)
		case (st.Override == nil) != (o == nil) || o != nil && (st.Override.Drained != o.Drained || st.Override.Down != o.Down || (st.Override.Weight == nil) != (o.Weight == nil)):
			t.Errorf("after %s: override %+v, want %+v", op, st.Override, o)
		case st.ConfigWeight != 2 || st.Check != "tcp" || st.Health != "up":
			t.Errorf("after %s: standing %+v", op, st)
		}
	}
	seven := 7
	set("weight", 7)
	check("weight 7", 7, false, &ctl.Override{Weight: &seven})
	set("drain", 0)
	check("drain", 0, false, &ctl.Override{Weight: &seven, Drained: true})
	set("down", 0)
	check("down", 0, true, &ctl.Override{Weight: &seven, Drained: true, Down: true})
	set("undrain", 0)
	check("undrain", 7, true, &ctl.Override{Weight: &seven, Down: true})

	// A restart: the state file gives the override back.
	again, _, _ := controlled(t, rosterYAML, dir)
	if rs := engineServer(t, again, web2); rs.Weight != 7 || !rs.Down {
		t.Errorf("after a restart: weight %d down %v, want 7 true", rs.Weight, rs.Down)
	}

	set("up", 0)
	check("up", 7, false, &ctl.Override{Weight: &seven})
	set("weight", 2) // the file's: no override left
	check("weight 2", 2, false, nil)
	if *batches == 0 {
		t.Error("no ruleset batch")
	}
	for _, want := range []string{
		`msg="server override" service=web server=10.0.0.2:80 drained=false down=false weight=7 op=weight`,
		`msg="server state" service=web server=10.0.0.2:80 state=down cause="nfhelperctl down"`,
		`msg="server state" service=web server=10.0.0.2:80 state=up cause="nfhelperctl up"`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s:\n%s", want, logs.String())
		}
	}
	if d.StateChanges() != 2 {
		t.Errorf("%d state changes counted, want 2", d.StateChanges())
	}
}

// TestHealthChange: a check's change takes the server out of the engine
// and the fail-open map, is logged with its cause, runs the notify command
// and is saved; a forced-down server's health change is noted only.
func TestHealthChange(t *testing.T) {
	dir := t.TempDir()
	out := dir + "/notified"
	d, logs, batches := controlled(t, rosterYAML+"    notify: echo $NFHELPER_SERVICE $NFHELPER_SERVER $NFHELPER_STATE $NFHELPER_CAUSE >> "+out+"\n", dir)
	d.background.Go(func() { d.runNotices(d.ctx) })
	at := time.Now()
	d.healthChanged([]health.Change{{Key: web1, Up: false, Cause: "refused", At: at}})
	if rs := engineServer(t, d, web1); !rs.Down || rs.Weight != 1 {
		t.Errorf("engine's server down %v weight %d", rs.Down, rs.Weight)
	}
	if *batches == 0 {
		t.Error("no ruleset batch")
	}
	if st, _ := d.Standing("web", web1.Addr); st.Health != "down" || !st.Since.Equal(at) {
		t.Errorf("standing %+v", st)
	}
	if !strings.Contains(logs.String(), `msg="server state" service=web server=10.0.0.1:80 state=down cause=refused`) {
		t.Errorf("log:\n%s", logs.String())
	}
	// Forced down, then its checks pass: it stays down.
	if err := d.SetServer(context.Background(), ctl.ServerRequest{Service: "web", Address: web2.Addr, Op: "down"}); err != nil {
		t.Fatal(err)
	}
	d.healthChanged([]health.Change{{Key: web2, Up: false, Cause: "timeout", At: at}})
	if !strings.Contains(logs.String(), `msg="server health" service=web server=10.0.0.2:80 health=down cause=timeout`) {
		t.Errorf("log:\n%s", logs.String())
	}
	// A restart has web1 down from the start.
	again, _, _ := controlled(t, rosterYAML, dir)
	if rs := engineServer(t, again, web1); !rs.Down {
		t.Error("after a restart web1 is up")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(readFile(out), "web 10.0.0.2:80 down nfhelperctl down") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := readFile(out); got != "web 10.0.0.1:80 down refused\nweb 10.0.0.2:80 down nfhelperctl down\n" {
		t.Errorf("notified:\n%s", got)
	}
}

// TestReloadStandings: a reload keeps the override of a server whose entry
// stays, clears (and logs) that of one whose entry changed, and gives a new
// server its initial state; the engine and the state file follow.
func TestReloadStandings(t *testing.T) {
	dir := t.TempDir()
	d, logs, _ := controlled(t, rosterYAML, dir)
	for _, k := range []health.Key{web1, web2} {
		if err := d.SetServer(context.Background(), ctl.ServerRequest{Service: "web", Address: k.Addr, Op: "down"}); err != nil {
			t.Fatal(err)
		}
	}
	next := mustParse(t, strings.Replace(rosterYAML, "weight: 2", "weight: 3", 1)+`      - address: 10.0.0.3:80
        health_check:
          initial_state: down
`)
	if err := d.Reload(next); err != nil {
		t.Fatal(err)
	}
	if rs := engineServer(t, d, web1); !rs.Down {
		t.Error("web1's override lost in a reload that kept its entry")
	}
	if rs := engineServer(t, d, web2); rs.Down || rs.Weight != 3 {
		t.Errorf("web2 down %v weight %d, want its override cleared and the file's weight 3", rs.Down, rs.Weight)
	}
	if rs := engineServer(t, d, web3); !rs.Down {
		t.Error("web3 (initial_state down) up")
	}
	for _, want := range []string{
		`msg="override cleared: the server's entry in the file changed" service=web server=10.0.0.2:80`,
		`msg="server state" service=web server=10.0.0.2:80 state=up cause=reload`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s:\n%s", want, logs.String())
		}
	}
	st, err := readState(dir + "/" + stateFileName)
	if err != nil || len(st.Overrides) != 1 || st.Overrides[0].Address != web1.Addr || len(st.Health) != 3 {
		t.Errorf("state file after the reload: %+v, %v", st, err)
	}
}
