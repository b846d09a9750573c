//go:build integration

package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/ctl"
	"github.com/nfhelper/nfhelper/integration/topo"
)

// tool is a program of this module the tests build once, on first use.
type tool struct {
	name, pkg string
	once      sync.Once
	path      string
	err       error
}

func (b *tool) need(t *testing.T) string {
	t.Helper()
	b.once.Do(func() {
		b.path = filepath.Join(harness.binDir, b.name)
		b.err = goBuild(b.path, b.pkg)
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

var ctlTool = tool{name: "nfhelperctl", pkg: "./cmd/nfhelperctl"}

// needCtl builds cmd/nfhelperctl once.
func needCtl(t *testing.T) string { return ctlTool.need(t) }

// nfhelperctl runs nfhelperctl in the router namespace against socket and
// returns its exit code, stdout and stderr.
func nfhelperctl(t *testing.T, socket string, args ...string) (int, string, string) {
	t.Helper()
	stdout, stderr, err := execIn(t, 30*time.Second, harness.tp.Router, []string{ctl.EnvSocket + "=" + socket}, needCtl(t), args...)
	code := 0
	if err != nil {
		code = -1
		if ee, ok := err.(interface{ ExitCode() int }); ok {
			code = ee.ExitCode()
		}
	}
	return code, string(stdout), string(stderr)
}

// ctlJSON runs nfhelperctl --json cmd and decodes its output into v.
func ctlJSON(t *testing.T, socket, cmd string, v any) {
	t.Helper()
	// The table may still hold TestQueueFlood's tens of thousands of UDP
	// flows: listing them takes seconds under software emulation (the VM).
	code, out, errOut := nfhelperctl(t, socket, "--timeout", "60s", "--json", cmd)
	if code != 0 {
		t.Fatalf("nfhelperctl --json %s: exit %d\nstdout:\n%s\nstderr:\n%s", cmd, code, out, errOut)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("nfhelperctl --json %s: %v\n%s", cmd, err, out)
	}
}

func TestCtl(t *testing.T) {
	d := needDaemon(t)
	tp := harness.tp
	sock := tp.ControlSocket()
	vip := net.JoinHostPort(topo.VIP4, "21")

	t.Run("services", func(t *testing.T) {
		// Two control connections: rr gives each real server one.
		for range 2 {
			r := runFtpget(t, tp.Client, vip, "pasv", "small.bin", 1)
			if r.results[0].SHA256 != tp.Files["small.bin"] {
				t.Fatalf("small.bin sha256 %s, want %s", r.results[0].SHA256, tp.Files["small.bin"])
			}
		}
		code, out, errOut := nfhelperctl(t, sock, "services")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		t.Logf("nfhelperctl services:\n%s", out)
		for _, want := range []string{"Prot LocalAddress:Port Scheduler Flags", "TCP  198.51.100.10:21 rr helper ftp  # ftp",
			"  -> 10.0.0.11:21 ", "  -> 10.0.0.12:21 ", "UDP  198.51.100.10:7 rr  # echo-udp"} {
			if !strings.Contains(out, want) {
				t.Errorf("services lacks %q", want)
			}
		}
		var svcs ctl.Services
		ctlJSON(t, sock, "services", &svcs)
		var ftp *ctl.Service
		for i := range svcs.Services {
			if svcs.Services[i].VIP == netip.MustParseAddrPort(vip) {
				ftp = &svcs.Services[i]
			}
		}
		if ftp == nil || ftp.Scheduler != "rr" || ftp.Helper != "ftp" || len(ftp.Servers) != 2 {
			t.Fatalf("service %s: %+v", vip, ftp)
		}
		for _, rs := range ftp.Servers {
			if rs.Conns == 0 {
				t.Errorf("real server %s: conns 0 after traffic", rs.Address)
			}
			t.Logf("%s weight %d conns %d active %d inactive %d packets %d bytes %d",
				rs.Address, rs.Weight, rs.Conns, rs.Active, rs.Inactive, rs.Packets, rs.Bytes)
		}
		if harness.noAddon == "" {
			if len(svcs.Helpers) != addOnHelpers || svcs.Helpers[0].Name != "router-ftp" ||
				svcs.Helpers[0].Match != netip.MustParseAddrPort(topo.WAN4+":21") {
				t.Errorf("helpers %+v", svcs.Helpers)
			}
			if !strings.Contains(out, "Add-on helpers") || !strings.Contains(out, "# router-ftp") {
				t.Errorf("services lacks the add-on helpers")
			}
		}
	})

	t.Run("conns", func(t *testing.T) {
		f := dialRaw(t, vip)
		f.login("anonymous")
		_, msg := f.cmd("PASV", 2)
		client := netip.MustParseAddrPort(f.c.LocalAddr().String())
		t.Logf("control connection from %s, PASV: %s", client, msg)

		var cs ctl.Conns
		ctlJSON(t, sock, "conns", &cs)
		var got *ctl.Conn
		for i := range cs.Conns {
			if cs.Conns[i].Client == client && cs.Conns[i].Protocol == "TCP" {
				got = &cs.Conns[i]
			}
		}
		if got == nil {
			t.Fatalf("control connection from %s not in conns: %+v", client, cs.Conns)
		}
		if got.Protocol != "TCP" || got.State != "ESTABLISHED" || got.VIP.String() != vip || got.Service != "ftp" ||
			got.Helper != "ftp" || got.ExpiresIn < 5*86400-100 || got.ExpiresIn > 5*86400 ||
			(got.Server.String() != "10.0.0.11:21" && got.Server.String() != "10.0.0.12:21") {
			t.Errorf("conn %+v", got)
		}
		if len(got.Channels) != 1 || got.Channels[0].Kind != "passive" || got.Channels[0].VIP.Addr().String() != topo.VIP4 ||
			got.Channels[0].Server.Addr() != got.Server.Addr() || got.Channels[0].ExpiresIn < 200 {
			t.Errorf("channels %+v, want one passive channel to %s", got.Channels, got.Server.Addr())
		}

		code, out, errOut := nfhelperctl(t, sock, "conns")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		t.Logf("nfhelperctl conns (head):\n%s", headLines(out, 30))
		var line, child bool
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "TCP ") && strings.Contains(l, client.String()) && strings.Contains(l, "ESTABLISHED") {
				line = true
			}
			if line && strings.Contains(l, "`- passive "+client.Addr().String()+":* -> "+topo.VIP4+":") {
				child = true
			}
		}
		if !line || !child {
			t.Errorf("conns text: connection line %v, passive channel child %v", line, child)
		}
		f.cmd("QUIT", 2)
	})

	t.Run("status", func(t *testing.T) {
		code, out, errOut := nfhelperctl(t, sock, "status")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		t.Logf("nfhelperctl status:\n%s", out)
		for _, want := range []string{fmt.Sprintf("nfhelperd pid %d,", d.Pid()), "datapath:    " + d.Datapath,
			"table:       inet nfhelper", "config:      " + harness.config, "packets"} {
			if !strings.Contains(out, want) {
				t.Errorf("status lacks %q", want)
			}
		}
		var st ctl.Status
		ctlJSON(t, sock, "status", &st)
		if st.Pid != d.Pid() || st.Datapath != d.Datapath || st.Services == 0 || st.Queues.Count == 0 || st.Stats["packets"] == 0 {
			t.Errorf("status JSON %+v", st)
		}
		if harness.noAddon == "" && st.Helpers != addOnHelpers {
			t.Errorf("status JSON: %d helpers, want %d", st.Helpers, addOnHelpers)
		}
	})

	t.Run("rules", func(t *testing.T) {
		code, out, errOut := nfhelperctl(t, sock, "rules")
		if code != 0 || !strings.Contains(out, "table inet nfhelper") || !strings.Contains(out, "chain raw_prerouting") {
			t.Errorf("exit %d, stderr %q, stdout:\n%s", code, errOut, out)
		}
		var r ctl.Rules
		ctlJSON(t, sock, "rules", &r)
		if r.Table != "inet nfhelper" || r.Source != "nft" || !strings.Contains(r.Text, "table inet nfhelper") {
			t.Errorf("rules JSON %+v", r)
		}
	})

	t.Run("check", func(t *testing.T) {
		code, out, errOut := nfhelperctl(t, sock, "check")
		t.Logf("nfhelperctl check (exit %d):\n%s", code, out)
		if code != 0 {
			t.Errorf("exit %d, stderr %q", code, errOut)
		}
		var r ctl.CheckReport
		ctlJSON(t, sock, "check", &r)
		status := map[string]string{}
		for _, c := range r.Checks {
			if c.Name != "forwarding" && c.Name != "ruleset" {
				status[c.Name] = c.Status
			}
			if c.Status == ctl.CheckFail {
				t.Errorf("failed check %+v", c)
			}
		}
		for name, want := range map[string]string{"table": "ok", "queue": "ok", "conntrack-events": "ok"} {
			if status[name] != want {
				t.Errorf("check %s: %q, want %q", name, status[name], want)
			}
		}
		if s := status["nft-queue"]; s != ctl.CheckOK && s != ctl.CheckInfo {
			t.Errorf("check nft-queue: %q", s)
		}
		// The probe leaves nothing behind.
		tables, err := tp.Run(t.Context(), tp.Router, "nft", "list", "tables")
		if err != nil || strings.Contains(string(tables), "nfhelper_probe") {
			t.Errorf("tables after check: %s %v", tables, err)
		}
	})

	t.Run("check-ct-helper-at-raw", func(t *testing.T) {
		// A user table that assigns a conntrack helper before conntrack
		// exists: nothing happens, and check says so. (Only a port nobody
		// uses is matched; the table goes again at once.)
		const ruleset = `table inet nfhelper_ctltest {
	ct helper ftp-test { type "ftp" protocol tcp; }
	chain raw_pre { type filter hook prerouting priority raw; tcp dport 65021 ct helper set "ftp-test"; }
	chain late_pre { type filter hook prerouting priority filter; tcp dport 65021 ct helper set "ftp-test"; }
}
`
		c := tp.Exec(tp.Router, "nft", "-f", "-")
		c.Stdin = strings.NewReader(ruleset)
		if out, err := c.CombinedOutput(); err != nil {
			t.Skipf("cannot install a ct helper object here (no FTP conntrack helper in this kernel?): %v %s", err, out)
		}
		defer func() {
			if _, err := tp.Run(t.Context(), tp.Router, "nft", "delete", "table", "inet", "nfhelper_ctltest"); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}()
		var r ctl.CheckReport
		ctlJSON(t, sock, "check", &r)
		var found []ctl.Check
		for _, c := range r.Checks {
			if c.Name == "ruleset" && c.Status == ctl.CheckWarn {
				found = append(found, c)
			}
		}
		if len(found) != 1 || !strings.Contains(found[0].Detail, "table inet nfhelper_ctltest chain raw_pre") {
			t.Errorf("ruleset findings %+v, want one for raw_pre", found)
		}
	})

	t.Run("not-running", func(t *testing.T) {
		bogus := filepath.Join(t.TempDir(), "bogus.sock")
		code, out, errOut := nfhelperctl(t, bogus, "status")
		want := "nfhelperd is not running (no socket at " + bogus + ")"
		if code != 1 || out != "" || !strings.Contains(errOut, want) {
			t.Errorf("exit %d, stdout %q, stderr %q; want 1 and %q", code, out, errOut, want)
		}
		code, _, errOut = nfhelperctl(t, sock, "frobnicate")
		if code != 2 || !strings.Contains(errOut, "usage:") {
			t.Errorf("unknown command: exit %d, stderr %q", code, errOut)
		}
	})
}

// headLines is the first n lines of s.
func headLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines[n] = "..."
	}
	return strings.Join(lines, "\n")
}
