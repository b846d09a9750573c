// Command reference runs the same FTP scenarios through three systems in the
// namespace topology of package topo, one after the other, and writes a
// markdown report: which scenario passes through which system, and each
// system's FTP session rate as a ratio to plain routing measured in the same
// run. Run it as root from the module root:
//
//	go run ./integration/reference [-out FILE] [-systems ipvs,nft,nfhelperd]
//
// make vmreport runs it on Debian's stock kernel (integration/vm), the only
// place IPVS exists here. The systems, each on the router namespace:
//
//	ipvs       IPVS in NAT (masquerading) mode with ip_vs_ftp, round robin
//	           over rs1 and rs2 (ipvsadm; the module must have been loaded with
//	           ports= naming 21 and the quirky server's port, 2321)
//	nft        nft DNAT (numgen round robin) with the kernel's FTP helpers
//	           nf_conntrack_ftp + nf_nat_ftp, assigned by an nft ct helper
//	           object in a prerouting chain at mangle priority
//	nfhelperd  the daemon balancing the same VIPs (NFH_DAEMON_BIN or built)
//
// A guard table in the router namespace, present for every system, drops
// packets from the client addressed to a real server directly and packets
// to the client that still carry a real server's address, so that an
// unrewritten 227 or an untranslated data connection fails instead of
// succeeding by plain routing. The rate baseline ("direct") runs without
// it: the client logs in to rs1 and rs2 directly, no NAT, no helper.
//
// With -health (the default) it then compares health checking: keepalived
// driving IPVS (with ipvs) and nfhelperd, each with TCP checks of the same
// timing, while sessions run: a real server stops and starts again, every
// server is down (with and without a sorry server), a server is drained
// (health.go).
//
// With -sched (the default) it compares scheduling: IPVS (with ipvs) and
// nfhelperd balance a plain TCP VIP over three weighted banner servers with
// rr, wrr, sh and mh; shares, clients kept on one server, and clients moved
// when a server is taken out (sched.go).
//
// The exit status is 1 when nfhelperd fails a scenario (the references are
// expected to fail some) or one of its health expectations, or a system
// could not be set up, 0 otherwise.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
)

type options struct {
	out      string
	systems  string
	bin      string
	duration time.Duration
	workers  int
	rounds   int
	command  string
	health   bool
	sched    bool
}

func main() {
	var o options
	flag.StringVar(&o.out, "out", "", "write the markdown report to this file too")
	flag.StringVar(&o.systems, "systems", "ipvs,nft,nfhelperd", "systems to run, in order")
	flag.StringVar(&o.bin, "bin", os.Getenv("NFH_DAEMON_BIN"), "nfhelperd binary (default $NFH_DAEMON_BIN, else go build ./cmd/nfhelperd)")
	flag.DurationVar(&o.duration, "rate-duration", 8*time.Second, "length of each session-rate run (0: no rates)")
	flag.IntVar(&o.workers, "rate-workers", 8, "concurrent sessions of the load generator")
	flag.IntVar(&o.rounds, "rate-rounds", 3, "rate rounds; each measures every system once; the report gives the median")
	flag.StringVar(&o.command, "command", "make vmreport", "the command named in the report as the way to reproduce it")
	flag.BoolVar(&o.health, "health", true, "compare health checking too: keepalived + IPVS (with ipvs) and nfhelperd")
	flag.BoolVar(&o.sched, "sched", true, "compare scheduling too: IPVS (with ipvs) and nfhelperd, rr, wrr, sh and mh over weighted servers")
	flag.Parse()
	if flag.NArg() > 0 || o.workers < 1 || o.rounds < 1 || o.duration < 0 || o.duration > 2*time.Minute {
		fmt.Fprintln(os.Stderr, "reference: bad arguments")
		os.Exit(2)
	}
	os.Exit(run(o))
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "reference: "+format+"\n", args...)
}

// A system is one way to balance FTP through the router.
type system struct {
	name  string // column title
	key   string // -systems name
	avail func(ctx context.Context) string
	up    func(ctx context.Context) error
	down  func(ctx context.Context)
	note  string // shown under the table
}

// A scenario is one FTP session through the VIP.
type scenario struct {
	name   string
	v6     bool
	port   int
	client string // "ftpget" or "curl"
	mode   string // pasv, epsv, port, eprt
	user   string // quirkyftpd's reply style (ftpget only)
}

type env struct {
	tp        *topo.Topo
	tools     map[string]string
	tmp       string
	daemonBin string
	daemon    *topo.Daemon
	datapath  string
}

func scenarios() []scenario {
	var s []scenario
	for _, c := range []string{"ftpget", "curl"} {
		for _, m := range []string{"pasv", "epsv", "port", "eprt"} {
			s = append(s, scenario{name: "vsftpd", port: 21, client: c, mode: m})
		}
		for _, m := range []string{"epsv", "eprt"} {
			s = append(s, scenario{name: "vsftpd", v6: true, port: 21, client: c, mode: m})
		}
	}
	for _, q := range []struct {
		user, mode string
		v6         bool
	}{
		{"anonymous", "pasv", false},
		{"anonymous", "port", false},
		{"split227", "pasv", false},
		{"split227crlf", "pasv", false},
		{"multi227", "pasv", false},
		{"multi227first", "pasv", false},
		{"split229", "epsv", false},
		{"split229", "epsv", true},
	} {
		s = append(s, scenario{name: "quirkyftpd " + q.user, v6: q.v6, port: topo.QuirkyPort, client: "ftpget", mode: q.mode, user: q.user})
	}
	return s
}

func (s scenario) label() string {
	fam := "IPv4"
	if s.v6 {
		fam = "IPv6"
	}
	return fmt.Sprintf("%s, %s, %s, %s", s.name, fam, strings.ToUpper(s.mode), s.client)
}

func vip(v6 bool) string {
	if v6 {
		return topo.VIP6
	}
	return topo.VIP4
}

func run(o options) int {
	began := time.Now()
	ctx, tmp, done, err := topo.StartTool("reference")
	if err != nil {
		fmt.Fprintln(os.Stderr, "reference:", err)
		return topo.ExitCode(err)
	}
	defer done()
	e, err := buildTools(ctx, tmp, o.bin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "reference:", err)
		return 1
	}
	tp, err := topo.New(topo.Options{Logf: logf, Timeout: 2 * time.Minute})
	if err != nil {
		fmt.Fprintln(os.Stderr, "reference: topology:", err)
		return 1
	}
	defer tp.Close()
	e.tp = tp
	if err := tp.StartQuirky(ctx, e.tools["quirkyftpd"]); err != nil {
		fmt.Fprintln(os.Stderr, "reference: quirkyftpd:", err)
		return 1
	}

	systems, err := pickSystems(e.systems(), o.systems)
	if err != nil {
		fmt.Fprintln(os.Stderr, "reference:", err)
		return 2
	}
	rep := &report{scenarios: scenarios(), results: map[string]map[string]outcome{}, unavailable: map[string]string{}}
	status := e.runScenarios(ctx, rep, systems)
	rep.datapath = e.datapath

	if o.duration > 0 && ctx.Err() == nil {
		rep.rates = e.measureRates(ctx, o, rep.systems)
	}
	if o.health && ctx.Err() == nil {
		rep.healthSystems = e.healthSystems(systems)
		var st int
		rep.health, rep.healthUnavailable, st = e.runHealth(ctx, rep.healthSystems)
		status = max(status, st)
	}
	if o.sched && ctx.Err() == nil {
		rep.schedSystems = e.schedSystems(systems)
		var st int
		rep.sched, rep.schedUnavailable, st = e.runSched(ctx, rep.schedSystems)
		status = max(status, st)
	}
	if ctx.Err() != nil {
		logf("interrupted")
		return 130
	}
	rep.took = time.Since(began)
	text := rep.markdown(ctx, o, e)
	fmt.Print(text)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(text), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "reference:", err)
			return 1
		}
		logf("report written to %s", o.out)
	}
	return status
}

// buildTools builds the clients, quirkyftpd and (unless bin names one) the
// daemon into tmp.
func buildTools(ctx context.Context, tmp, bin string) (*env, error) {
	e := &env{tmp: tmp, tools: map[string]string{}}
	for _, t := range []string{"integration/cmd/ftpget", "integration/cmd/quirkyftpd", "integration/cmd/ftpload", "integration/cmd/connbench", "cmd/nfhelperctl"} {
		p := filepath.Join(tmp, filepath.Base(t))
		if err := topo.GoBuild(ctx, p, "./"+t); err != nil {
			return nil, err
		}
		e.tools[filepath.Base(t)] = p
	}
	var err error
	e.daemonBin, err = topo.DaemonBinary(ctx, tmp, bin)
	return e, err
}

// pickSystems is the systems -systems names (keys, comma-separated), in
// its order.
func pickSystems(all []system, keys string) ([]system, error) {
	var systems []system
	for _, k := range strings.Split(keys, ",") {
		i := slices.IndexFunc(all, func(s system) bool { return s.key == strings.TrimSpace(k) })
		if i < 0 {
			return nil, fmt.Errorf("unknown system %q", k)
		}
		systems = append(systems, all[i])
	}
	return systems, nil
}

// runScenarios runs every scenario on each available system in turn,
// recording the outcomes in rep. Its status is 1 when a setup failed or
// nfhelperd failed a scenario.
func (e *env) runScenarios(ctx context.Context, rep *report, systems []system) int {
	status := 0
	for _, sys := range systems {
		if ctx.Err() != nil {
			break
		}
		if why := sys.avail(ctx); why != "" {
			logf("%s: not available: %s", sys.name, why)
			rep.unavailable[sys.name] = why
			continue
		}
		rep.systems = append(rep.systems, sys)
		res := map[string]outcome{}
		rep.results[sys.name] = res
		if err := e.up(ctx, sys); err != nil {
			logf("%s: setup failed: %v", sys.name, err)
			rep.unavailable[sys.name] = "setup failed: " + err.Error()
			status = 1
			e.down(ctx, sys)
			continue
		}
		for _, sc := range rep.scenarios {
			if ctx.Err() != nil {
				break
			}
			out := e.runScenario(ctx, sc)
			res[sc.label()] = out
			verdict := "pass"
			if !out.ok {
				verdict = "FAIL: " + out.why
				if sys.key == "nfhelperd" {
					status = 1
				}
			}
			logf("%-22s %-50s %s (%.1fs)", sys.name, sc.label(), verdict, out.took.Seconds())
		}
		e.down(ctx, sys)
	}
	return status
}

// guardRules keep the comparison honest (see the package comment).
const guardRules = `table inet nfhref_guard {
	chain pre {
		type filter hook prerouting priority raw - 10; policy accept;
		iifname "c0" ip daddr 10.0.0.0/24 drop
		iifname "c0" ip6 daddr fd00::/64 drop
	}
	chain post {
		type filter hook postrouting priority srcnat + 50; policy accept;
		oifname "c0" ip saddr 10.0.0.0/24 drop
		oifname "c0" ip6 saddr fd00::/64 drop
	}
}
`

func (e *env) nft(ctx context.Context, script string) error {
	c := e.tp.CommandContext(ctx, e.tp.Router, "nft", "-f", "-")
	c.Stdin = strings.NewReader(script)
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("nft -f: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (e *env) up(ctx context.Context, s system) error {
	_, _ = e.tp.Run(ctx, e.tp.Router, "conntrack", "-F")
	if err := e.nft(ctx, guardRules); err != nil {
		return err
	}
	return s.up(ctx)
}

func (e *env) down(ctx context.Context, s system) {
	s.down(ctx)
	_ = e.nft(context.Background(), "delete table inet nfhref_guard")
	_, _ = e.tp.Run(context.Background(), e.tp.Router, "conntrack", "-F")
}

const ipvsFTPPorts = "/sys/module/ip_vs_ftp/parameters/ports"

func (e *env) systems() []system {
	return []system{e.ipvsSystem(), e.nftSystem(), e.daemonSystem()}
}

// routerRun runs a command in the router's namespace.
func (e *env) routerRun(ctx context.Context, name string, args ...string) error {
	_, err := e.tp.Run(ctx, e.tp.Router, name, args...)
	return err
}

func (e *env) ipvsSystem() system {
	run := e.routerRun
	return system{
		name: "IPVS + ip_vs_ftp", key: "ipvs",
		avail: func(ctx context.Context) string {
			if _, err := exec.LookPath("ipvsadm"); err != nil {
				return "no ipvsadm (apt-get install ipvsadm)"
			}
			if err := run(ctx, "ipvsadm", "-Ln"); err != nil {
				return "no IPVS in this kernel (" + firstLine(err.Error()) + ")"
			}
			b, err := os.ReadFile(ipvsFTPPorts)
			if err != nil {
				return "ip_vs_ftp not loaded (modprobe ip_vs_ftp ports=21,2321)"
			}
			ports := strings.Split(strings.TrimSpace(string(b)), ",")
			if !slices.Contains(ports, "21") || !slices.Contains(ports, fmt.Sprint(topo.QuirkyPort)) {
				return fmt.Sprintf("ip_vs_ftp ports=%s, want 21 and %d", strings.TrimSpace(string(b)), topo.QuirkyPort)
			}
			return ""
		},
		up: func(ctx context.Context) error {
			// Conntrack entries for IPVS connections: what ip_vs_ftp's
			// mangling and expectations use.
			if err := run(ctx, "sysctl", "-qw", "net.ipv4.vs.conntrack=1"); err != nil {
				return err
			}
			for _, svc := range []struct {
				vip     string
				servers []string
			}{
				{net.JoinHostPort(topo.VIP4, "21"), []string{topo.RS1V4, topo.RS2V4}},
				{net.JoinHostPort(topo.VIP6, "21"), []string{topo.RS1V6, topo.RS2V6}},
				{net.JoinHostPort(topo.VIP4, fmt.Sprint(topo.QuirkyPort)), []string{topo.RS1V4}},
				{net.JoinHostPort(topo.VIP6, fmt.Sprint(topo.QuirkyPort)), []string{topo.RS1V6}},
			} {
				_, port, _ := net.SplitHostPort(svc.vip)
				if err := run(ctx, "ipvsadm", "-A", "-t", svc.vip, "-s", "rr"); err != nil {
					return err
				}
				for _, rs := range svc.servers {
					if err := run(ctx, "ipvsadm", "-a", "-t", svc.vip, "-r", net.JoinHostPort(rs, port), "-m"); err != nil {
						return err
					}
				}
			}
			return nil
		},
		down: func(ctx context.Context) { _ = run(ctx, "ipvsadm", "-C") },
		note: "`ipvsadm -A -t VIP:PORT -s rr`, real servers with `-m` (NAT), `net.ipv4.vs.conntrack=1`, `modprobe ip_vs_ftp ports=21,2321`. " +
			"ip_vs_ftp expects an active data connection from the port below the control port (RFC 959's L-1: 20 for vsftpd); " +
			"quirkyftpd connects from an ephemeral port, which is consistent with its PORT failure",
	}
}

func (e *env) nftSystem() system {
	return system{
		name: "nft DNAT + nf_nat_ftp", key: "nft",
		avail: func(ctx context.Context) string {
			// The helper must exist: a ct helper object of type "ftp"
			// loads (or finds) nf_conntrack_ftp.
			probe := "add table inet nfhref_probe\nadd ct helper inet nfhref_probe h { type \"ftp\" protocol tcp; l3proto inet; }\n"
			if err := e.nft(ctx, probe); err != nil {
				return "no in-kernel FTP helper: " + firstLine(err.Error())
			}
			_ = e.nft(ctx, "delete table inet nfhref_probe")
			return ""
		},
		up:   func(ctx context.Context) error { return e.nft(ctx, nftRules) },
		down: func(ctx context.Context) { _ = e.nft(ctx, "delete table inet nfhref") },
		note: "nft `dnat to numgen inc mod 2 map {...}`, `ct helper set` of an `ftp` ct helper object in a prerouting chain at mangle priority (nf_conntrack_ftp, nf_nat_ftp); ruleset in integration/reference",
	}
}

func (e *env) daemonSystem() system {
	return system{
		name: "nfhelperd", key: "nfhelperd",
		avail: func(ctx context.Context) string { return "" },
		up: func(ctx context.Context) error {
			cfg := filepath.Join(e.tmp, "nfhelperd.yaml")
			if err := os.WriteFile(cfg, []byte(daemonConfig), 0o644); err != nil {
				return err
			}
			d, err := e.tp.StartDaemon(e.daemonBin, cfg)
			if err != nil {
				return err
			}
			e.daemon, e.datapath = d, d.Datapath
			fmt.Printf("nfhelperd ready: datapath=%s\n", d.Datapath)
			return nil
		},
		down: func(ctx context.Context) {
			if e.daemon != nil {
				if res, err := e.daemon.Stop(); err != nil || res.ExitCode != 0 {
					logf("nfhelperd stop: %+v %v", res, err)
				}
				e.daemon = nil
			}
		},
		note: "services `ftp`/`ftp6` (rr over rs1, rs2) and `quirky`/`quirky6` (rs1), helper ftp",
	}
}

// nftRules: DNAT round robin, the kernel's FTP helper attached by a ct
// helper object after conntrack (mangle priority) and before DNAT.
var nftRules = strings.NewReplacer("{{vip4}}", topo.VIP4, "{{vip6}}", topo.VIP6,
	"{{rs1v4}}", topo.RS1V4, "{{rs2v4}}", topo.RS2V4, "{{rs1v6}}", topo.RS1V6, "{{rs2v6}}", topo.RS2V6,
	"{{qport}}", fmt.Sprint(topo.QuirkyPort)).Replace(`table inet nfhref {
	ct helper ftp-std {
		type "ftp" protocol tcp
		l3proto inet
	}
	chain helpers {
		type filter hook prerouting priority mangle; policy accept;
		ip daddr {{vip4}} tcp dport { 21, {{qport}} } ct helper set "ftp-std"
		ip6 daddr {{vip6}} tcp dport { 21, {{qport}} } ct helper set "ftp-std"
	}
	chain dstnat {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr {{vip4}} tcp dport 21 dnat ip to numgen inc mod 2 map { 0 : {{rs1v4}}, 1 : {{rs2v4}} }
		ip6 daddr {{vip6}} tcp dport 21 dnat ip6 to numgen inc mod 2 map { 0 : {{rs1v6}}, 1 : {{rs2v6}} }
		ip daddr {{vip4}} tcp dport {{qport}} dnat ip to {{rs1v4}}
		ip6 daddr {{vip6}} tcp dport {{qport}} dnat ip6 to {{rs1v6}}
	}
	chain srcnat {
		type nat hook postrouting priority srcnat; policy accept;
	}
}
`)

var daemonConfig = strings.NewReplacer("{{vip4}}", topo.VIP4, "{{vip6}}", topo.VIP6,
	"{{rs1v4}}", topo.RS1V4, "{{rs2v4}}", topo.RS2V4, "{{rs1v6}}", topo.RS1V6, "{{rs2v6}}", topo.RS2V6,
	"{{qport}}", fmt.Sprint(topo.QuirkyPort)).Replace(`services:
  - name: ftp
    vip: {{vip4}}:21
    scheduler: rr
    helper: ftp
    real_servers:
      - address: {{rs1v4}}:21
      - address: {{rs2v4}}:21
  - name: ftp6
    vip: "[{{vip6}}]:21"
    scheduler: rr
    helper: ftp
    real_servers:
      - address: "[{{rs1v6}}]:21"
      - address: "[{{rs2v6}}]:21"
  - name: quirky
    vip: {{vip4}}:{{qport}}
    helper: ftp
    real_servers:
      - address: {{rs1v4}}:{{qport}}
  - name: quirky6
    vip: "[{{vip6}}]:{{qport}}"
    helper: ftp
    real_servers:
      - address: "[{{rs1v6}}]:{{qport}}"
`)

type outcome struct {
	ok   bool
	why  string
	took time.Duration
}

// ftpgetResult mirrors integration/cmd/ftpget's JSON lines.
type ftpgetResult struct {
	File         string `json:"file"`
	Bytes        int64  `json:"bytes"`
	SHA256       string `json:"sha256"`
	DataPeer     string `json:"data_peer"`
	PassiveReply string `json:"passive_reply"`
}

func (e *env) runScenario(ctx context.Context, sc scenario) outcome {
	start := time.Now()
	var err error
	if sc.client == "curl" {
		err = e.runCurl(ctx, sc)
	} else {
		err = e.runFtpget(ctx, sc)
	}
	o := outcome{ok: err == nil, took: time.Since(start)}
	if err != nil {
		o.why = firstLine(err.Error())
	}
	return o
}

func (e *env) runFtpget(ctx context.Context, sc scenario) error {
	addr := net.JoinHostPort(vip(sc.v6), fmt.Sprint(sc.port))
	args := []string{"-addr", addr, "-mode", sc.mode, "-files", "small.bin,big.bin", "-n", "2", "-timeout", "6s", "-total", "20s"}
	if sc.user != "" {
		args = append(args, "-user", sc.user)
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c := e.tp.CommandContext(cctx, e.tp.Client, e.tools["ftpget"], args...)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		msg = strings.TrimPrefix(msg, "ftpget: ")
		if msg == "" {
			msg = err.Error()
		}
		return errors.New(msg)
	}
	var n int
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var r ftpgetResult
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return fmt.Errorf("bad ftpget output %q", line)
		}
		n++
		if r.SHA256 != e.tp.Files[r.File] {
			return fmt.Errorf("%s: wrong content (%d bytes)", r.File, r.Bytes)
		}
		switch sc.mode {
		case "pasv":
			if want := strings.ReplaceAll(topo.VIP4, ".", ","); !strings.Contains(r.PassiveReply, want) {
				return fmt.Errorf("227 reply %q does not name the VIP", r.PassiveReply)
			}
		case "port", "eprt":
			ap, err := netip.ParseAddrPort(r.DataPeer)
			if err != nil || ap.Addr().Unmap().String() != vip(sc.v6) {
				return fmt.Errorf("active data connection from %s, not the VIP", r.DataPeer)
			}
		}
	}
	if n != 2 {
		return fmt.Errorf("%d transfers, want 2", n)
	}
	return nil
}

func (e *env) runCurl(ctx context.Context, sc scenario) error {
	host := vip(sc.v6)
	if sc.v6 {
		host = "[" + host + "]"
	}
	out := filepath.Join(e.tmp, "curl.out")
	os.Remove(out)
	args := []string{"-sS", "-g", "--connect-timeout", "6", "--max-time", "20", "-o", out}
	switch sc.mode {
	case "pasv":
		args = append(args, "--disable-epsv", "--no-ftp-skip-pasv-ip")
	case "epsv":
		args = append(args, "--ftp-pasv")
	case "port":
		args = append(args, "-P", "-", "--disable-eprt")
	case "eprt":
		args = append(args, "-P", "-")
	}
	args = append(args, fmt.Sprintf("ftp://%s:%d/big.bin", host, sc.port))
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c := e.tp.CommandContext(cctx, e.tp.Client, "curl", args...)
	var stderr bytes.Buffer
	c.Stderr = &stderr
	if err := c.Run(); err != nil {
		msg := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(stderr.String()), "curl: "))
		if msg == "" {
			msg = err.Error()
		}
		return errors.New(msg)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return err
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != e.tp.Files["big.bin"] {
		return fmt.Errorf("big.bin: wrong content (%d bytes)", len(b))
	}
	return nil
}

// rate is one system's session rate.
type rate struct {
	system   string
	runs     []loadResult
	median   float64
	failures int64
	err      string
}

type loadResult struct {
	Sessions int64            `json:"sessions"`
	Failures int64            `json:"failures"`
	Rate     float64          `json:"sessions_per_s"`
	P50      float64          `json:"p50_ms"`
	P99      float64          `json:"p99_ms"`
	Errors   map[string]int64 `json:"errors"`
}

const directName = "direct (routed, no NAT)"

func (e *env) measureRates(ctx context.Context, o options, systems []system) []*rate {
	direct := system{
		name: directName, key: "direct",
		up: func(context.Context) error { return nil }, down: func(context.Context) {},
	}
	order := append([]system{direct}, systems...)
	rates := make([]*rate, len(order))
	for i, s := range order {
		rates[i] = &rate{system: s.name}
	}
	for round := 1; round <= o.rounds; round++ {
		for i, s := range order {
			if ctx.Err() != nil {
				return rates
			}
			addrs := net.JoinHostPort(topo.VIP4, "21")
			var err error
			if s.key == "direct" {
				addrs = net.JoinHostPort(topo.RS1V4, "21") + "," + net.JoinHostPort(topo.RS2V4, "21")
				err = s.up(ctx)
			} else {
				err = e.up(ctx, s)
			}
			var r loadResult
			if err == nil {
				r, err = e.load(ctx, o, addrs, s.key)
			}
			if s.key == "direct" {
				s.down(ctx)
			} else {
				e.down(ctx, s)
			}
			if err != nil {
				rates[i].err = firstLine(err.Error())
				logf("rate %s round %d: %v", s.name, round, err)
				continue
			}
			logf("rate %-24s round %d: %.1f sessions/s (%d failures %v, p50 %.1f ms, p99 %.1f ms)", s.name, round, r.Rate, r.Failures, r.Errors, r.P50, r.P99)
			rates[i].runs = append(rates[i].runs, r)
			rates[i].failures += r.Failures
		}
	}
	for _, r := range rates {
		var v []float64
		for _, x := range r.runs {
			v = append(v, x.Rate)
		}
		r.median = median(v)
	}
	return rates
}

func (e *env) load(ctx context.Context, o options, addrs, label string) (loadResult, error) {
	var r loadResult
	cctx, cancel := context.WithTimeout(ctx, o.duration+time.Minute)
	defer cancel()
	c := e.tp.CommandContext(cctx, e.tp.Client, e.tools["ftpload"], "-addr", addrs, "-mode", "pasv",
		"-file", "small.bin", "-size", fmt.Sprint(topo.SmallSize), "-workers", fmt.Sprint(o.workers),
		"-duration", o.duration.String(), "-label", label)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return r, fmt.Errorf("ftpload: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	if err := json.Unmarshal(bytes.TrimSpace(stdout.Bytes()), &r); err != nil {
		return r, fmt.Errorf("ftpload output %q: %w", stdout.String(), err)
	}
	if r.Sessions == 0 {
		return r, fmt.Errorf("no session completed (errors: %v)", r.Errors)
	}
	return r, nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

type report struct {
	scenarios   []scenario
	systems     []system
	results     map[string]map[string]outcome
	unavailable map[string]string
	rates       []*rate
	datapath    string
	took        time.Duration

	healthSystems     []healthSystem
	health            []*hcResult
	healthUnavailable map[string]string

	schedSystems     []schedSystem
	sched            []*schedResult
	schedUnavailable map[string]string
}

func (r *report) markdown(ctx context.Context, o options, e *env) string {
	var b strings.Builder
	r.intro(ctx, &b, o)
	r.resultTable(&b)
	if len(r.rates) > 0 {
		r.rateTable(&b, o)
	}
	if len(r.healthSystems) > 0 {
		r.healthSection(&b)
	}
	if len(r.schedSystems) > 0 {
		r.schedSection(&b)
	}
	fmt.Fprintf(&b, "\nThe run took %v.\n", r.took.Round(time.Second))
	return b.String()
}

// intro is the title and how the report was made: where, on what, how.
func (r *report) intro(ctx context.Context, b *strings.Builder, o options) {
	kernel := "unknown"
	if out, err := exec.CommandContext(ctx, "uname", "-r").Output(); err == nil {
		kernel = strings.TrimSpace(string(out))
	}
	b.WriteString("# nfhelperd and the kernel's FTP helpers, side by side\n\n")
	fmt.Fprintf(b, "Generated by `%s` (integration/reference", o.command)
	if os.Getenv("NFHVM") != "" {
		b.WriteString(", inside integration/vm")
	}
	fmt.Fprintf(b, ") on kernel %s, %s.", kernel, time.Now().UTC().Format("2006-01-02"))
	if r.datapath != "" {
		fmt.Fprintf(b, " nfhelperd datapath: `%s`.", r.datapath)
	}
	if os.Getenv("NFHVM") != "" {
		// The guest boots like a fresh router: what the kernel's systems
		// need beyond autoloading, their users load by hand too.
		loaded := os.Getenv("NFHVM_MODPROBE")
		if loaded == "" {
			loaded = "none"
		}
		fmt.Fprintf(b, " Modules loaded by hand before the run, as the users of IPVS and of the kernel's FTP helpers would: `%s`; "+
			"every other module came through the kernel's own autoloading (nothing else was preloaded).", loaded)
	}
	b.WriteString("\n\n")
	b.WriteString("Client 203.0.113.2 / 2001:db8:2::2, VIP 198.51.100.10 / 2001:db8:1::10 on the router, real servers " +
		"rs1 and rs2 (vsftpd on port 21, round robin; quirkyftpd on rs1, port 2321) behind it; every system runs on the router " +
		"namespace in turn, with a guard table that drops packets the client addresses to a real server directly and packets to " +
		"the client that still carry a real server's address (an unrewritten 227 or an untranslated data connection fails, " +
		"instead of working by plain routing). ftpget (integration/cmd/ftpget) fetches small.bin then big.bin (4 MiB) on one " +
		"control connection and checks both hashes, that each 227 names the VIP and that active data connections come from the " +
		"VIP; curl fetches big.bin and the hash is checked. quirkyftpd's reply styles are its USER names: split227 (the 227 in " +
		"two TCP segments, split inside the address), split227crlf (split between CR and LF), multi227 (`227-...` then " +
		"`227 (h1,...,p2)`), multi227first (the address on the first line), split229 (the 229 in two segments).\n\n")

}

// resultTable is every scenario's outcome per system, the failures' notes
// and each system's setup.
func (r *report) resultTable(b *strings.Builder) {
	b.WriteString("| scenario |")
	for _, s := range r.systems {
		fmt.Fprintf(b, " %s |", s.name)
	}
	b.WriteString("\n|---|")
	for range r.systems {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	var notes []string
	for _, sc := range r.scenarios {
		fmt.Fprintf(b, "| %s |", sc.label())
		for _, s := range r.systems {
			out, ok := r.results[s.name][sc.label()]
			switch {
			case !ok:
				b.WriteString(" not run |")
			case out.ok:
				b.WriteString(" pass |")
			default:
				notes = append(notes, fmt.Sprintf("%s / %s: %s", s.name, sc.label(), out.why))
				fmt.Fprintf(b, " **FAIL** [%d] |", len(notes))
			}
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
	for i, n := range notes {
		fmt.Fprintf(b, "%d. %s\n", i+1, strings.ReplaceAll(n, "|", "\\|"))
	}
	if len(notes) > 0 {
		b.WriteString("\n")
	}
	for _, s := range r.systems {
		fmt.Fprintf(b, "- %s: %s\n", s.name, s.note)
	}
	for name, why := range r.unavailable {
		fmt.Fprintf(b, "- %s: not measured: %s\n", name, why)
	}
}

// rateTable is the session rates ftpload measured.
func (r *report) rateTable(b *strings.Builder, o options) {
	fmt.Fprintf(b, "\n## Session rate\n\nintegration/cmd/ftpload in the client namespace, %d concurrent sessions, each: connect, "+
		"anonymous login, PASV, RETR small.bin (4 KiB), QUIT; %d round(s) of %v per system, alternating; median of the rounds. "+
		"The baseline, %q, logs in to rs1 and rs2 directly. Software-emulated CPUs (qemu TCG) when run by make vmreport: "+
		"compare the ratios, not the absolute numbers, and expect them to move by tens of percent from run to run when the "+
		"machine is shared.\n\n", o.workers, o.rounds, o.duration, directName)
	b.WriteString("| system | sessions/s (median) | rounds | ratio to direct | failed sessions | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|\n")
	base := r.rates[0].median
	for _, rt := range r.rates {
		if rt.err != "" && len(rt.runs) == 0 {
			fmt.Fprintf(b, "| %s | error: %s | | | | | |\n", rt.system, strings.ReplaceAll(rt.err, "|", "\\|"))
			continue
		}
		ratio := "n/a"
		if base > 0 {
			ratio = fmt.Sprintf("%.2f", rt.median/base)
		}
		var p50, p99 []float64
		var each []string
		for _, x := range rt.runs {
			p50, p99 = append(p50, x.P50), append(p99, x.P99)
			each = append(each, fmt.Sprintf("%.1f", x.Rate))
		}
		fmt.Fprintf(b, "| %s | %.1f | %s | %s | %d | %.1f | %.1f |\n", rt.system, rt.median, strings.Join(each, ", "), ratio, rt.failures, median(p50), median(p99))
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}
