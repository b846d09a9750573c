package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/ctl"
	"github.com/nfhelper/nfhelper/ipvs"
)

func ctlRun(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

// daemon serves a small engine on a socket in a temp dir; its panics and
// backlogged counters are 5 and 6.
func daemon(t *testing.T, checks []ctl.Check) string {
	t.Helper()
	svc, err := ipvs.NewService("ftp", netip.MustParseAddrPort("198.51.100.10:21"), "rr", nil,
		[]*ipvs.RealServer{{Addr: netip.MustParseAddrPort("10.0.0.11:21"), Weight: 1}})
	if err != nil {
		t.Fatal(err)
	}
	e, err := ipvs.NewEngine([]*ipvs.Service{svc}, ipvs.Options{MarkMask: 0x00ff0000})
	if err != nil {
		t.Fatal(err)
	}
	e.Stats.Panics.Add(5)
	e.Stats.Backlogged.Add(6)
	s := &ctl.Server{Engine: e, Info: ctl.Info{Pid: 77, Started: time.Now(), Datapath: "dp", Table: "nfhelper", Queues: ctl.Queues{First: 100, Count: 1}},
		CheckFunc: func(context.Context) []ctl.Check { return checks },
		RulesFunc: func(context.Context) (ctl.Rules, error) {
			return ctl.Rules{Table: "inet nfhelper", Source: "test", Text: "table inet nfhelper {\n}"}, nil
		},
	}
	path := filepath.Join(t.TempDir(), "d.sock")
	if err := s.Listen(path); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return path
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"bogus"}, {"--nope", "status"}, {"status", "--nope"}, {"status", "extra"}, {"--socket", "", "status"}} {
		code, out, errOut := ctlRun(args...)
		if code != 2 || out != "" || !strings.Contains(errOut, "usage: nfhelperctl") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 2 and usage", args, code, out, errOut)
		}
	}
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}, {"status", "-h"}} {
		if code, out, _ := ctlRun(args...); code != 0 || !strings.Contains(out, "usage: nfhelperctl") {
			t.Errorf("%q: exit %d, stdout %q", args, code, out)
		}
	}
}

func TestNotRunning(t *testing.T) {
	path := filepath.Join(t.TempDir(), "none.sock")
	for _, args := range [][]string{{"--socket", path, "status"}, {"services", "--socket", path, "--json"}} {
		code, out, errOut := ctlRun(args...)
		want := "nfhelperctl: nfhelperd is not running (no socket at " + path + ")\n"
		if code != 1 || out != "" || errOut != want {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 1 and %q", args, code, out, errOut, want)
		}
	}
}

func TestSocketFromEnv(t *testing.T) {
	path := daemon(t, nil)
	t.Setenv(ctl.EnvSocket, path)
	code, out, errOut := ctlRun("status")
	if code != 0 || !strings.Contains(out, "nfhelperd pid 77") || !strings.Contains(out, "queues:      100-100 (1)") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	// --socket wins over the environment.
	if code, _, errOut := ctlRun("--socket", path+".x", "status"); code != 1 || !strings.Contains(errOut, "not running") {
		t.Errorf("--socket over env: exit %d, %q", code, errOut)
	}
}

func TestCommands(t *testing.T) {
	path := daemon(t, []ctl.Check{{Name: "table", Status: ctl.CheckOK, Detail: "installed"}})
	text := map[string]string{
		"status":   "datapath:    dp",
		"services": "TCP  198.51.100.10:21 rr  # ftp",
		"conns":    "pro expire state",
		"check":    "OK    table             installed",
		"rules":    "table inet nfhelper {\n}\n",
	}
	for cmd, want := range text {
		code, out, errOut := ctlRun("--socket", path, cmd)
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("%s: exit %d, stdout %q (want %q), stderr %q", cmd, code, out, want, errOut)
		}
		// --json before or after the command.
		for _, args := range [][]string{{"--socket", path, "--json", cmd}, {cmd, "--json", "--socket", path}} {
			code, out, errOut := ctlRun(args...)
			var v map[string]any
			if err := json.Unmarshal([]byte(out), &v); code != 0 || err != nil {
				t.Errorf("%q: exit %d, %v, stdout %q, stderr %q", args, code, err, out, errOut)
			}
		}
	}
}

func TestCheckFailedExit(t *testing.T) {
	path := daemon(t, []ctl.Check{{Name: "forwarding", Status: ctl.CheckFail, Detail: "off"}})
	code, out, _ := ctlRun("--socket", path, "check")
	if code != 1 || !strings.Contains(out, "FAIL  forwarding") {
		t.Errorf("exit %d, stdout %q", code, out)
	}
	code, out, _ = ctlRun("--socket", path, "check", "--json")
	var r ctl.CheckReport
	if err := json.Unmarshal([]byte(out), &r); code != 1 || err != nil || !r.Failed() {
		t.Errorf("json: exit %d, %v, %q", code, err, out)
	}
}

// TestStatusCounters: status shows every engine counter, panics and
// backlogged too, in text and JSON.
func TestStatusCounters(t *testing.T) {
	path := daemon(t, nil)
	code, out, errOut := ctlRun("--socket", path, "status")
	for _, want := range []string{"\n  panics                 5\n", "\n  backlogged             6\n", "\n  refused_bounce         0\n"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("exit %d, stdout lacks %q:\n%s\nstderr %q", code, want, out, errOut)
		}
	}
	code, out, errOut = ctlRun("--socket", path, "status", "--json")
	var st ctl.Status
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil {
		t.Fatalf("exit %d, %v, stdout %q, stderr %q", code, err, out, errOut)
	}
	if st.Stats["panics"] != 5 || st.Stats["backlogged"] != 6 || len(st.Stats) != len(ipvs.Counters()) {
		t.Errorf("stats %v", st.Stats)
	}
}

// TestUsageExact pins what each usage mistake and each request for help
// prints, byte for byte, and the exit status.
func TestUsageExact(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // stderr's first line
	}{
		{nil, "nfhelperctl: no command"},
		{[]string{"bogus", "-h"}, `nfhelperctl: unknown command "bogus"`},
		{[]string{"--nope", "status"}, "nfhelperctl: flag provided but not defined: -nope"},
		{[]string{"--timeout", "soon", "status"}, `nfhelperctl: invalid value "soon" for flag -timeout: parse error`},
		{[]string{"status", "--nope"}, "nfhelperctl: status: flag provided but not defined: -nope"},
		{[]string{"conns", "extra", "more"}, `nfhelperctl: conns: unexpected arguments ["extra" "more"]`},
		{[]string{"--socket", "", "rules"}, "nfhelperctl: --socket: empty path"},
		{[]string{"check", "--socket="}, "nfhelperctl: --socket: empty path"},
		{[]string{"status", "--wait"}, "nfhelperctl: status: flag provided but not defined: -wait"},
		{[]string{"server"}, "nfhelperctl: server: want SERVICE ADDRESS:PORT and one of weight N, drain [--wait], undrain, down, up"},
		{[]string{"server", "ftp", "10.0.0.11:21"}, "nfhelperctl: server: want SERVICE ADDRESS:PORT and one of weight N, drain [--wait], undrain, down, up"},
		{[]string{"server", "ftp", "10.0.0.11", "down"}, `nfhelperctl: server: "10.0.0.11" is not an address:port (IPv6 in brackets)`},
		{[]string{"server", "ftp", "10.0.0.11:0", "down"}, `nfhelperctl: server: "10.0.0.11:0" is not an address:port (IPv6 in brackets)`},
		{[]string{"server", "ftp", "10.0.0.11:21", "explode"}, `nfhelperctl: server: unknown operation "explode" (have weight N, drain, undrain, down, up)`},
		{[]string{"server", "ftp", "10.0.0.11:21", "weight"}, "nfhelperctl: server: weight: want a number 0..65535"},
		{[]string{"server", "ftp", "10.0.0.11:21", "weight", "65536"}, `nfhelperctl: server: weight: "65536" is not a number 0..65535`},
		{[]string{"server", "ftp", "10.0.0.11:21", "weight", "x"}, `nfhelperctl: server: weight: "x" is not a number 0..65535`},
		{[]string{"server", "ftp", "10.0.0.11:21", "weight", "-1"}, "nfhelperctl: server: flag provided but not defined: -1"},
		{[]string{"server", "ftp", "10.0.0.11:21", "down", "now"}, `nfhelperctl: server: unexpected arguments ["now"]`},
		{[]string{"server", "ftp", "10.0.0.11:21", "weight", "3", "4"}, `nfhelperctl: server: unexpected arguments ["4"]`},
		{[]string{"server", "--wait", "ftp", "10.0.0.11:21", "undrain"}, "nfhelperctl: server: --wait goes with drain only"},
		{[]string{"--socket", "", "server", "ftp", "10.0.0.11:21", "down"}, "nfhelperctl: --socket: empty path"},
	} {
		code, out, errOut := ctlRun(tc.args...)
		if want := tc.want + "\n" + usage; code != 2 || out != "" || errOut != want {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 2 and %q", tc.args, code, out, errOut, want)
		}
	}
	// Help wins over what follows it, and over an empty --socket.
	for _, args := range [][]string{{"help"}, {"help", "extra"}, {"--socket", "", "help"}, {"-h", "bogus"}, {"services", "--help", "extra"}, {"server", "ftp", "-h"}} {
		if code, out, errOut := ctlRun(args...); code != 0 || out != usage || errOut != "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 0 and usage", args, code, out, errOut)
		}
	}
}

// TestRulesExact pins a whole reply as text and as JSON.
func TestRulesExact(t *testing.T) {
	path := daemon(t, nil)
	if code, out, errOut := ctlRun("--socket", path, "rules"); code != 0 || out != "table inet nfhelper {\n}\n" || errOut != "" {
		t.Errorf("text: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	want := "{\n  \"table\": \"inet nfhelper\",\n  \"source\": \"test\",\n  \"text\": \"table inet nfhelper {\\n}\"\n}\n"
	if code, out, errOut := ctlRun("rules", "--socket", path, "--json"); code != 0 || out != want || errOut != "" {
		t.Errorf("json: exit %d, stdout %q, stderr %q; want %q", code, out, errOut, want)
	}
}
