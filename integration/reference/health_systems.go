package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nfhelper/nfhelper/ctl"
	"github.com/nfhelper/nfhelper/integration/topo"
)

// The health comparison's addresses: three VIPs on the router's lo over
// the same two real servers, the first with a sorry server, the second
// without, the third checked by a script (keepalived's MISC_CHECK,
// nfhelperd's exec) instead of a TCP connect.
const (
	hcVIPSorry   = "198.51.100.50"
	hcVIPNoSorry = "198.51.100.51"
	hcVIPExec    = "198.51.100.52"
	hcSvcSorry   = "hca" // nfhelperd's service names
	hcSvcNoSorry = "hcb"
	hcSvcExec    = "hcc"
)

// hcScript is the script check: a TCP connect by bash's /dev/tcp, $1:$2.
const hcScript = "#!/bin/bash\nexec 3<>\"/dev/tcp/$1/$2\"\n"

// hcServers are the real servers' names and addresses; the last is the
// sorry server.
var hcServers = []struct{ name, v4 string }{{"hk1", "10.0.0.31"}, {"hk2", "10.0.0.32"}, {"hksorry", "10.0.0.39"}}

// The checks' timing, the same for both systems: one check a second,
// down after two failures in a row. nfhelperd also waits for two passes
// before a server is up again; keepalived's TCP_CHECK has no such setting.
const (
	hcInterval = time.Second
	hcFall     = 2
	hcRise     = 2
)

// A healthSystem balances the health comparison's VIPs and checks the
// real servers.
type healthSystem struct {
	name, key string
	avail     func(ctx context.Context) string
	start     func(ctx context.Context) error
	stop      func()
	// view is the servers that take new connections through vip:21 now,
	// by address (10.0.0.31:21), with their weights; the sorry server is
	// listed only while it takes them.
	view    func(ctx context.Context, vip string) (map[string]int, error)
	drain   func(ctx context.Context, addr string) (cmd string, err error)
	undrain func(ctx context.Context, addr string) error
	config  string // shown under the table
}

func (e *env) keepalivedHealth() healthSystem {
	var kc *exec.Cmd
	dir := filepath.Join(e.tmp, "keepalived")
	script := filepath.Join(e.tmp, "check.sh")
	conf := keepalivedConfig(script)
	return healthSystem{
		name: "keepalived + IPVS", key: "keepalived",
		avail: func(ctx context.Context) string {
			if _, err := exec.LookPath("keepalived"); err != nil {
				return "no keepalived (apt-get install keepalived)"
			}
			if _, err := exec.LookPath("ipvsadm"); err != nil {
				return "no ipvsadm (apt-get install ipvsadm)"
			}
			if err := e.routerRun(ctx, "ipvsadm", "-Ln"); err != nil {
				return "no IPVS in this kernel (" + firstLine(err.Error()) + ")"
			}
			if _, err := os.Stat(ipvsFTPPorts); err != nil {
				return "ip_vs_ftp not loaded (modprobe ip_vs_ftp ports=21,2321)"
			}
			return ""
		},
		start: func(ctx context.Context) error {
			if err := e.routerRun(ctx, "sysctl", "-qw", "net.ipv4.vs.conntrack=1"); err != nil {
				return err
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(script, []byte(hcScript), 0o755); err != nil {
				return err
			}
			cf := filepath.Join(dir, "keepalived.conf")
			if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
				return err
			}
			logf, err := os.Create(filepath.Join(dir, "keepalived.log"))
			if err != nil {
				return err
			}
			defer logf.Close()
			// Per-namespace pid files; -C: the checker process only (no VRRP).
			kc = e.tp.Exec(e.tp.Router, "keepalived", "--dont-fork", "--log-console", "-C", "-f", cf,
				"-p", filepath.Join(dir, "keepalived.pid"), "-r", filepath.Join(dir, "vrrp.pid"), "-c", filepath.Join(dir, "checkers.pid"))
			kc.Stdout, kc.Stderr = logf, logf
			return e.tp.Start(kc)
		},
		stop: func() {
			if kc != nil {
				if err := e.tp.StopGroup(kc, syscall.SIGTERM, 10*time.Second); err != nil {
					logf("keepalived: %v", err)
					_ = e.tp.StopGroup(kc, syscall.SIGKILL, 5*time.Second)
				}
				kc = nil
			}
			_ = e.routerRun(context.Background(), "ipvsadm", "-C")
		},
		view: func(ctx context.Context, vip string) (map[string]int, error) {
			// /proc/net/ip_vs, not ipvsadm: a process per poll costs
			// hundreds of milliseconds under emulation, which would
			// count against keepalived.
			var b []byte
			err := topo.Do(e.tp.Router, func() error {
				var err error
				b, err = os.ReadFile("/proc/thread-self/net/ip_vs")
				return err
			})
			if err != nil {
				return nil, err
			}
			return parseProcIPVS(string(b), netip.AddrPortFrom(netip.MustParseAddr(vip), 21)), nil
		},
		drain: func(ctx context.Context, addr string) (string, error) {
			args := []string{"-e", "-t", net.JoinHostPort(hcVIPSorry, "21"), "-r", addr, "-m", "-w", "0"}
			return "ipvsadm " + strings.Join(args, " "), e.routerRun(ctx, "ipvsadm", args...)
		},
		undrain: func(ctx context.Context, addr string) error {
			return e.routerRun(ctx, "ipvsadm", "-e", "-t", net.JoinHostPort(hcVIPSorry, "21"), "-r", addr, "-m", "-w", "1")
		},
		config: "keepalived 2.2.7's checker process alone (`keepalived --dont-fork -C -f CONF -p/-r/-c PIDFILES` in the router's namespace), " +
			"three `virtual_server` blocks (`lb_algo rr`, `lb_kind NAT`, `delay_loop 1`; the first with `sorry_server`), each real server " +
			"with `TCP_CHECK { connect_timeout 1 retry 1 delay_before_retry 1 }` (down after 2 failed checks 1 s apart), " +
			"in the third `MISC_CHECK { misc_path \"check.sh ADDR 21\" misc_timeout 1 retry 1 delay_before_retry 1 }` instead " +
			"(check.sh: a TCP connect by bash's /dev/tcp); ip_vs_ftp loaded, `net.ipv4.vs.conntrack=1`",
	}
}

// keepalivedConfig: one check a second, down after 1 + retry failures.
func keepalivedConfig(script string) string {
	var b strings.Builder
	// MISC_CHECK's script runs as root; keepalived wants that said.
	b.WriteString("global_defs {\n    router_id nfhref\n    script_user root\n    enable_script_security\n}\n")
	sec := int(hcInterval / time.Second)
	for _, vs := range []struct {
		vip   string
		sorry bool
		check string
	}{
		{hcVIPSorry, true, fmt.Sprintf("TCP_CHECK {\n            connect_timeout %d\n", sec)},
		{hcVIPNoSorry, false, fmt.Sprintf("TCP_CHECK {\n            connect_timeout %d\n", sec)},
		{hcVIPExec, false, fmt.Sprintf("MISC_CHECK {\n            misc_path \"%s %%s 21\"\n            misc_timeout %d\n", script, sec)},
	} {
		fmt.Fprintf(&b, "virtual_server %s 21 {\n    delay_loop %d\n    lb_algo rr\n    lb_kind NAT\n    protocol TCP\n", vs.vip, sec)
		if vs.sorry {
			fmt.Fprintf(&b, "    sorry_server %s 21\n", hcServers[2].v4)
		}
		for _, rs := range hcServers[:2] {
			check := strings.Replace(vs.check, "%s", rs.v4, 1)
			fmt.Fprintf(&b, "    real_server %s 21 {\n        weight 1\n        %s            retry %d\n            delay_before_retry %d\n        }\n    }\n",
				rs.v4, check, hcFall-1, sec)
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// parseProcIPVS reads the IPv4 destinations of TCP service vip from
// /proc/net/ip_vs, whose addresses are hex:
//
//	TCP  C6336432:0015 rr
//	  -> 0A00001F:0015      Masq    1      0          0
func parseProcIPVS(text string, vip netip.AddrPort) map[string]int {
	m := map[string]int{}
	in := false
	for _, l := range strings.Split(text, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 2 && f[0] == "TCP":
			a, ok := hexAddrPort(f[1])
			in = ok && a == vip
		case in && len(f) >= 4 && f[0] == "->":
			a, ok := hexAddrPort(f[1])
			w, err := strconv.Atoi(f[3])
			if ok && err == nil {
				m[a.String()] = w
			}
		}
	}
	return m
}

// hexAddrPort parses "0A00001F:0015".
func hexAddrPort(s string) (netip.AddrPort, bool) {
	a, p, ok := strings.Cut(s, ":")
	ip, err1 := strconv.ParseUint(a, 16, 32)
	port, err2 := strconv.ParseUint(p, 16, 16)
	if !ok || len(a) != 8 || err1 != nil || err2 != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(ip >> 24), byte(ip >> 16), byte(ip >> 8), byte(ip)}), uint16(port)), true
}

func (e *env) nfhelperdHealth() healthSystem {
	var d *topo.Daemon
	client := ctl.NewClient(e.tp.ControlSocket(), 5*time.Second)
	ctlBin := e.tools["nfhelperctl"]
	svcOf := map[string]string{hcVIPSorry: hcSvcSorry, hcVIPNoSorry: hcSvcNoSorry, hcVIPExec: hcSvcExec}
	script := filepath.Join(e.tmp, "check.sh")
	return healthSystem{
		name: "nfhelperd", key: "nfhelperd",
		avail: func(ctx context.Context) string { return "" },
		start: func(ctx context.Context) error {
			if err := os.WriteFile(script, []byte(hcScript), 0o755); err != nil {
				return err
			}
			cfg := filepath.Join(e.tmp, "nfhelperd-health.yaml")
			if err := os.WriteFile(cfg, []byte(nfhelperdHealthConfig(script)), 0o644); err != nil {
				return err
			}
			var err error
			d, err = e.tp.StartDaemon(e.daemonBin, cfg)
			return err
		},
		stop: func() {
			if d != nil {
				if res, err := d.Stop(); err != nil || res.ExitCode != 0 {
					logf("nfhelperd stop: %+v %v", res, err)
				}
				d = nil
			}
		},
		view: func(ctx context.Context, vip string) (map[string]int, error) {
			v, err := client.Services(ctx)
			if err != nil {
				return nil, err
			}
			m := map[string]int{}
			for _, s := range v.Services {
				if s.Name != svcOf[vip] {
					continue
				}
				for _, rs := range s.Servers {
					if !rs.Sorry && rs.State == "up" {
						m[rs.Address.String()] = rs.Weight
					}
				}
			}
			return m, nil
		},
		drain: func(ctx context.Context, addr string) (string, error) {
			args := []string{"server", hcSvcSorry, addr, "drain"}
			return "nfhelperctl " + strings.Join(args, " "), e.ctl(ctx, ctlBin, args...)
		},
		undrain: func(ctx context.Context, addr string) error {
			return e.ctl(ctx, ctlBin, "server", hcSvcSorry, addr, "undrain")
		},
		config: fmt.Sprintf("`health_check: {type: tcp, interval: 1s, timeout: 1s, fall: %d, rise: %d}` per service, "+
			"the first with `sorry_server`, the third `{type: exec, command: check.sh $NFHELPER_SERVER_ADDRESS $NFHELPER_SERVER_PORT}` instead; rr, helper ftp", hcFall, hcRise),
	}
}

// ctl runs nfhelperctl against the topology's daemon.
func (e *env) ctl(ctx context.Context, bin string, args ...string) error {
	c := exec.CommandContext(ctx, bin, append([]string{"--socket", e.tp.ControlSocket()}, args...)...)
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("nfhelperctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func nfhelperdHealthConfig(script string) string {
	var b strings.Builder
	b.WriteString("services:\n")
	for _, s := range []struct {
		name, vip, check string
		sorry            bool
	}{
		{hcSvcSorry, hcVIPSorry, "type: tcp", true},
		{hcSvcNoSorry, hcVIPNoSorry, "type: tcp", false},
		{hcSvcExec, hcVIPExec, "type: exec\n      command: " + script + " $NFHELPER_SERVER_ADDRESS $NFHELPER_SERVER_PORT", false},
	} {
		fmt.Fprintf(&b, "  - name: %s\n    vip: %s:21\n    scheduler: rr\n    helper: ftp\n", s.name, s.vip)
		fmt.Fprintf(&b, "    health_check:\n      %s\n      interval: %v\n      timeout: %v\n      fall: %d\n      rise: %d\n",
			s.check, hcInterval, hcInterval, hcFall, hcRise)
		if s.sorry {
			fmt.Fprintf(&b, "    sorry_server: %s:21\n", hcServers[2].v4)
		}
		b.WriteString("    real_servers:\n")
		for _, rs := range hcServers[:2] {
			fmt.Fprintf(&b, "      - address: %s:21\n", rs.v4)
		}
	}
	return b.String()
}
