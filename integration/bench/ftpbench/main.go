// Command ftpbench measures nfhelperd side by side with what a user would
// pick instead, on this machine in one run (make bench-ftp, part of make
// bench-all). Run it as root from the module root:
//
//	go run ./integration/bench/ftpbench [-rounds 5] [-duration 5s] [-workers 8] [-out FILE] [-doc docs/BENCHMARKS.md]
//
// It builds the namespace topology of package topo (client, router, rs1 and
// rs2 with vsftpd) and, alternating the systems within each round, measures
//
//	sessions   FTP sessions/s through the VIP (integration/cmd/ftpload: login,
//	           PASV, RETR small.bin (4 KiB), QUIT), nfhelperd (rr: scheduled
//	           by nftables in the kernel; and lc: scheduled by the daemon from
//	           the queued SYN) vs nft DNAT with the kernel's nf_conntrack_ftp
//	           + nf_nat_ftp; the daemon's CPU time per session
//	           (/proc/PID/stat), the packets it was handed per session
//	           (NFQUEUE id_sequence of the router) and the machine's CPU time
//	           per session (/proc/stat: busy, and softirq, where the router's
//	           forwarding, NAT and helpers run; the client's and servers'
//	           network stacks too, every namespace shares the machine);
//	throughput one passive RETR of a sparse file of -bigsize bytes, nfhelperd,
//	           the kernel helper and plain DNAT without any helper (VIP:21 and
//	           VIP:1024-65535 to rs1, the client dials the VIP at the port of
//	           the 227);
//	rtt        NOOP -> 200 and PASV -> 227 round trips on one logged-in
//	           control connection, p50/p99, all three systems;
//	memory     (once, after the rounds) nfhelperd's RSS when idle and with
//	           -conns TCP connections held open through the VIP to a plain
//	           (non-FTP) service on port 8080 of rs1/rs2.
//
// It writes a Markdown report (-out, default stdout) and asserts nothing
// about speed. Everything runs inside the topology's namespaces and is
// removed at the end, also on failure or Ctrl-C.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/ctl"
	"github.com/nfhelper/nfhelper/integration/bench/measure"
	"github.com/nfhelper/nfhelper/integration/ftpclient"
	"github.com/nfhelper/nfhelper/integration/topo"
)

const (
	holdPort  = 8080
	userTable = "nfhftpbench"
)

type options struct {
	bin      string
	rounds   int
	duration time.Duration
	warmup   time.Duration
	workers  int
	bigSize  int64
	rtt      int
	conns    string
	out      string
	doc      string
	noMicro  bool
}

func main() {
	if len(os.Args) == 7 && os.Args[1] == "-hold-dial" {
		n, _ := strconv.Atoi(os.Args[6])
		os.Exit(holdDial(os.Args[2], os.Args[4], n))
	}
	var o options
	flag.StringVar(&o.bin, "bin", os.Getenv("NFH_DAEMON_BIN"), "nfhelperd binary (default $NFH_DAEMON_BIN, else go build ./cmd/nfhelperd)")
	flag.IntVar(&o.rounds, "rounds", 5, "rounds; each runs every system")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "measured time of each session-rate run")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "unmeasured load before each session-rate run")
	flag.IntVar(&o.workers, "workers", 8, "concurrent FTP sessions of the load generator")
	flag.Int64Var(&o.bigSize, "bigsize", 256<<20, "size of the large file (sparse) for the throughput run")
	flag.IntVar(&o.rtt, "rtt", 300, "round trips of each kind (NOOP, PASV) per system and round")
	flag.StringVar(&o.conns, "conns", "10000,100000", "memory: connection counts held through the VIP (empty: skip)")
	flag.StringVar(&o.out, "out", "", "write the Markdown report here (default: stdout only)")
	flag.StringVar(&o.doc, "doc", "", "also put the report into this file between the lines "+beginMark+" and "+endMark)
	flag.BoolVar(&o.noMicro, "nomicro", false, "skip the go test micro-benchmarks")
	flag.Parse()
	if flag.NArg() > 0 || o.rounds < 1 || o.rounds > 20 || o.duration <= 0 || o.workers < 1 || o.bigSize < 1<<20 || o.rtt < 10 {
		fmt.Fprintln(os.Stderr, "ftpbench: bad arguments")
		os.Exit(2)
	}
	os.Exit(run(o))
}

func logf(format string, args ...any) { fmt.Fprintf(os.Stderr, "ftpbench: "+format+"\n", args...) }

type system struct {
	key, name    string
	sessions     bool // in the session-rate comparison
	sessionsOnly bool // only there (no round trips, no throughput)
}

var systems = []system{
	{"nfhelperd", "nfhelperd, rr (kernel-scheduled)", true, false},
	{"nfhelperd-lc", "nfhelperd, lc (daemon-scheduled)", true, true},
	{"kernel", "nft DNAT + nf_conntrack_ftp/nf_nat_ftp", true, false},
	{"dnat", "nft DNAT, no helper (fixed port mapping)", false, false},
	{"direct", "direct to the real servers (routed, no NAT)", true, false},
}

// isDaemon says whether the system is an nfhelperd.
func isDaemon(key string) bool { return strings.HasPrefix(key, "nfhelperd") }

type sessRes struct {
	Sessions int64            `json:"sessions"`
	Failures int64            `json:"failures"`
	Elapsed  float64          `json:"elapsed_s"`
	Rate     float64          `json:"sessions_per_s"`
	P50      float64          `json:"p50_ms"`
	P99      float64          `json:"p99_ms"`
	Errors   map[string]int64 `json:"errors,omitempty"`
}

// sample is one system's measurements in one round.
type sample struct {
	sys, round int
	sess       *sessRes
	daemonCPU  float64 // seconds during the measured session run
	queued     int64   // packets queued during the measured session run
	queuedWarm int64   // packets queued during warm-up (for the per-session figure's check)
	hostCPU    float64 // the machine's busy CPU seconds during the measured session run
	softirq    float64 // of which softirq
	ctrlC2S    int64   // control-connection packets forwarded client to server during the measured run
	ctrlS2C    int64   // and server to client
	mbps       float64 // throughput MB/s (1e6)
	noop, pasv []time.Duration
	rssIdle    int64 // kB, nfhelperd only
	rssAfter   int64
	err        []string
}

type bench struct {
	o       options
	tp      *topo.Topo
	tmp     string
	bin     string
	ftpload string
	cfgs    map[string]string // nfhelperd's configuration by system key
	rules   map[string]string
	daemon  *topo.Daemon
}

func run(o options) int {
	ctx, tmp, done, err := topo.StartTool("ftpbench")
	if err != nil {
		logf("%v", err)
		return topo.ExitCode(err)
	}
	defer done()
	b := &bench{o: o, tmp: tmp, cfgs: map[string]string{}}
	var mic *micro
	if !o.noMicro {
		mic = runMicro(ctx)
	}
	b.ftpload = filepath.Join(tmp, "ftpload")
	logf("building ftpload")
	if err := topo.GoBuild(ctx, b.ftpload, "./integration/cmd/ftpload"); err != nil {
		logf("%v", err)
		return 1
	}
	if b.bin, err = topo.DaemonBinary(ctx, tmp, o.bin); err != nil {
		logf("%v", err)
		return 1
	}
	tp, err := topo.New(topo.Options{Dir: filepath.Join(tmp, "topo"), Logf: logf})
	if err != nil {
		logf("topology: %v", err)
		return 1
	}
	b.tp = tp
	defer tp.CloseLogged(logf)
	if err := b.setup(ctx); err != nil {
		logf("setup: %v", err)
		return 1
	}
	start := time.Now()
	var samples []*sample
	for r := 1; r <= o.rounds && ctx.Err() == nil; r++ {
		for i := range systems {
			if ctx.Err() != nil {
				break
			}
			s := b.round(ctx, i, r)
			samples = append(samples, s)
		}
	}
	var mem *memResult
	if o.conns != "" && ctx.Err() == nil {
		mem = b.memory(ctx)
	}
	if ctx.Err() != nil {
		logf("interrupted")
		return 130
	}
	report := b.report(samples, mem, time.Since(start))
	if mic != nil {
		report = mic.markdown() + report
	}
	fmt.Print(report)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(report), 0o644); err != nil {
			logf("%v", err)
			return 1
		}
		logf("report written to %s", o.out)
	}
	if o.doc != "" {
		if err := updateDoc(o.doc, report); err != nil {
			logf("%v", err)
			return 1
		}
		logf("%s updated", o.doc)
	}
	return 0
}

func (b *bench) setup(ctx context.Context) error {
	tp := b.tp
	// The large file, sparse, on both servers.
	for _, s := range tp.Servers {
		f, err := os.Create(filepath.Join(s.Root, "large.bin"))
		if err != nil {
			return err
		}
		err = f.Truncate(b.o.bigSize)
		f.Close()
		if err != nil {
			return err
		}
	}
	if _, err := tp.Run(ctx, tp.Client, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535", "net.ipv4.tcp_tw_reuse=1"); err != nil {
		return err
	}
	const cfg = `services:
  - name: ftp
    vip: %[1]s:21
    scheduler: %[5]s
    helper: ftp
    real_servers:
      - address: %[2]s:21
      - address: %[3]s:21
  - name: hold
    vip: %[1]s:%[4]d
    scheduler: rr
    real_servers:
      - address: %[2]s:%[4]d
      - address: %[3]s:%[4]d
`
	for key, sched := range map[string]string{"nfhelperd": "rr", "nfhelperd-lc": "lc"} {
		p := filepath.Join(b.tmp, key+".yaml")
		if err := os.WriteFile(p, []byte(fmt.Sprintf(cfg, topo.VIP4, topo.RS1V4, topo.RS2V4, holdPort, sched)), 0o644); err != nil {
			return err
		}
		b.cfgs[key] = p
	}
	r := strings.NewReplacer("{{t}}", userTable, "{{vip}}", topo.VIP4, "{{rs1}}", topo.RS1V4, "{{rs2}}", topo.RS2V4)
	b.rules = map[string]string{
		// The kernel's FTP helpers, as integration/reference sets them up.
		"kernel": r.Replace(`table ip {{t}} {
	ct helper ftp-std {
		type "ftp" protocol tcp
		l3proto ip
	}
	chain helpers {
		type filter hook prerouting priority mangle; policy accept;
		ip daddr {{vip}} tcp dport 21 ct helper set "ftp-std"
	}
	chain dstnat {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr {{vip}} tcp dport 21 dnat to numgen inc mod 2 map { 0 : {{rs1}}, 1 : {{rs2}} }
	}
}
`),
		// No helper: control and every high port to rs1; the client
		// dials the VIP at the port the 227 names.
		"dnat": r.Replace(`table ip {{t}} {
	chain dstnat {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr {{vip}} tcp dport { 21, 1024-65535 } dnat to {{rs1}}
	}
}
`),
	}
	return nil
}

func (b *bench) up(ctx context.Context, key string) error {
	_, _ = b.tp.Run(ctx, b.tp.Router, "conntrack", "-F")
	if key == "direct" {
		return nil
	}
	if isDaemon(key) {
		d, err := b.tp.StartDaemon(b.bin, b.cfgs[key])
		if err != nil {
			return err
		}
		b.daemon = d
		return nil
	}
	p := filepath.Join(b.tmp, key+".nft")
	if err := os.WriteFile(p, []byte(b.rules[key]), 0o644); err != nil {
		return err
	}
	_, err := b.tp.Run(ctx, b.tp.Router, "nft", "-f", p)
	return err
}

func (b *bench) down(key string) {
	if key == "direct" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if isDaemon(key) {
		if b.daemon != nil {
			if st, err := b.daemon.Stop(); err != nil || st.ExitCode != 0 {
				logf("nfhelperd stop: %+v %v (log %s)", st, err, b.daemon.LogPath)
			}
			b.daemon = nil
		}
		return
	}
	if _, err := b.tp.Run(ctx, b.tp.Router, "nft", "delete", "table", "ip", userTable); err != nil {
		logf("removing table ip %s: %v", userTable, err)
	}
}

func (b *bench) round(ctx context.Context, i, r int) *sample {
	sys := systems[i]
	s := &sample{sys: i, round: r}
	fail := func(what string, err error) {
		s.err = append(s.err, what+": "+firstLine(err.Error()))
		logf("round %d %s %s: %v", r, sys.key, what, err)
	}
	if err := b.up(ctx, sys.key); err != nil {
		fail("up", err)
		return s
	}
	defer b.down(sys.key)
	if sys.key == "nfhelperd" {
		time.Sleep(200 * time.Millisecond)
		s.rssIdle = rssKB(b.daemon.Pid())
	}

	// Round trips first, on a quiet machine.
	if !sys.sessionsOnly {
		noop, pasv, err := b.rtt(ctx, sys.key)
		if err != nil {
			fail("rtt", err)
		} else {
			s.noop, s.pasv = noop, pasv
			logf("round %d %-9s rtt NOOP p50 %v p99 %v, PASV p50 %v p99 %v", r, sys.key,
				quant(noop, .5), quant(noop, .99), quant(pasv, .5), quant(pasv, .99))
		}
		if mbps, err := b.throughput(ctx, sys.key); err != nil {
			fail("throughput", err)
		} else {
			s.mbps = mbps
			logf("round %d %-9s throughput %.0f MB/s", r, sys.key, mbps)
		}
	}
	if sys.sessions {
		q0 := measure.RouterQueued(ctx, b.tp)
		if _, err := b.load(ctx, b.o.warmup, "warmup-"+sys.key); err != nil {
			fail("warmup", err)
		}
		q1 := measure.RouterQueued(ctx, b.tp)
		counting := b.countStart(ctx)
		var c0 float64
		if b.daemon != nil {
			c0, _ = measure.ProcCPU(b.daemon.Pid())
		}
		h0 := measure.HostTimes()
		res, err := b.load(ctx, b.o.duration, sys.key)
		h1 := measure.HostTimes()
		q2 := measure.RouterQueued(ctx, b.tp)
		if counting {
			s.ctrlC2S, s.ctrlS2C = b.countEnd(ctx)
		}
		if err != nil {
			fail("sessions", err)
		} else {
			s.sess = res
			s.queued, s.queuedWarm = q2-q1, q1-q0
			s.hostCPU, s.softirq = h1.Busy-h0.Busy, h1.Softirq-h0.Softirq
			if b.daemon != nil {
				c1, _ := measure.ProcCPU(b.daemon.Pid())
				s.daemonCPU = c1 - c0
			}
			logf("round %d %-9s %.0f sessions/s (failures %d %v, p50 %.1f ms, p99 %.1f ms) queued %d daemon CPU %.2fs",
				r, sys.key, res.Rate, res.Failures, res.Errors, res.P50, res.P99, s.queued, s.daemonCPU)
		}
	}
	if b.daemon != nil {
		s.rssAfter = rssKB(b.daemon.Pid())
	}
	return s
}

const countTable = "nfhftpcount"

// countStart adds a table to the router that counts the forwarded packets of
// control connections (original destination port 21) by direction.
func (b *bench) countStart(ctx context.Context) bool {
	rules := fmt.Sprintf(`table ip %s {
	counter c2s { }
	counter s2c { }
	chain count {
		type filter hook forward priority filter; policy accept;
		meta l4proto tcp ct original proto-dst 21 ct direction original counter name "c2s"
		meta l4proto tcp ct original proto-dst 21 ct direction reply counter name "s2c"
	}
}
`, countTable)
	p := filepath.Join(b.tmp, "count.nft")
	if err := os.WriteFile(p, []byte(rules), 0o644); err != nil {
		return false
	}
	if _, err := b.tp.Run(ctx, b.tp.Router, "nft", "-f", p); err != nil {
		logf("counting table: %v", err)
		return false
	}
	return true
}

var counterRE = regexp.MustCompile(`counter (c2s|s2c) \{\s*packets (\d+)`)

// countEnd reads and removes the counting table.
func (b *bench) countEnd(ctx context.Context) (c2s, s2c int64) {
	out, err := b.tp.Run(ctx, b.tp.Router, "nft", "list", "counters", "table", "ip", countTable)
	if err == nil {
		for _, m := range counterRE.FindAllStringSubmatch(string(out), -1) {
			n, _ := strconv.ParseInt(m[2], 10, 64)
			if m[1] == "c2s" {
				c2s = n
			} else {
				s2c = n
			}
		}
	}
	if _, err := b.tp.Run(ctx, b.tp.Router, "nft", "delete", "table", "ip", countTable); err != nil {
		logf("removing counting table: %v", err)
	}
	return c2s, s2c
}

func (b *bench) load(ctx context.Context, d time.Duration, label string) (*sessRes, error) {
	cctx, cancel := context.WithTimeout(ctx, d+time.Minute)
	defer cancel()
	addr := net.JoinHostPort(topo.VIP4, "21")
	if label == "direct" || label == "warmup-direct" {
		addr = net.JoinHostPort(topo.RS1V4, "21") + "," + net.JoinHostPort(topo.RS2V4, "21")
	}
	out, err := b.tp.Run(cctx, b.tp.Client, b.ftpload, "-addr", addr, "-mode", "pasv",
		"-file", "small.bin", "-size", fmt.Sprint(topo.SmallSize), "-workers", fmt.Sprint(b.o.workers),
		"-duration", d.String(), "-label", label)
	if err != nil {
		return nil, err
	}
	var r sessRes
	if err := json.Unmarshal(bytes.TrimSpace(out), &r); err != nil {
		return nil, fmt.Errorf("ftpload output %q: %w", out, err)
	}
	if r.Sessions == 0 {
		return &r, fmt.Errorf("no session completed (errors %v)", r.Errors)
	}
	return &r, nil
}

// ---- a minimal FTP client in the client namespace ----

type ctrl struct {
	c net.Conn
	r *bufio.Reader
}

func (b *bench) login(ctx context.Context, key string) (*ctrl, error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	addr := net.JoinHostPort(topo.VIP4, "21")
	if key == "direct" {
		addr = net.JoinHostPort(topo.RS1V4, "21")
	}
	c, err := topo.DialIn(dctx, b.tp.Client, "tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	f := &ctrl{c: c, r: bufio.NewReader(c)}
	if _, _, err := f.reply(); err != nil {
		c.Close()
		return nil, err
	}
	if code, msg, err := f.cmd("USER anonymous"); err != nil || code != 331 && code != 230 {
		c.Close()
		return nil, fmt.Errorf("USER: %d %s %v", code, msg, err)
	} else if code == 331 {
		if code, msg, err := f.cmd("PASS bench@"); err != nil || code != 230 {
			c.Close()
			return nil, fmt.Errorf("PASS: %d %s %v", code, msg, err)
		}
	}
	return f, nil
}

func (f *ctrl) reply() (int, string, error) {
	line, err := f.r.ReadString('\n')
	if err != nil {
		return 0, "", err
	}
	if len(line) < 4 {
		return 0, line, fmt.Errorf("short reply %q", line)
	}
	code, err := strconv.Atoi(line[:3])
	if err != nil {
		return 0, line, fmt.Errorf("reply %q", line)
	}
	if line[3] == '-' { // multi-line: up to "code "
		for {
			l, err := f.r.ReadString('\n')
			if err != nil {
				return 0, "", err
			}
			if strings.HasPrefix(l, line[:3]+" ") {
				break
			}
		}
	}
	return code, strings.TrimSpace(line[4:]), nil
}

func (f *ctrl) cmd(s string) (int, string, error) {
	if _, err := io.WriteString(f.c, s+"\r\n"); err != nil {
		return 0, "", err
	}
	return f.reply()
}

func (b *bench) rtt(ctx context.Context, key string) (noop, pasv []time.Duration, err error) {
	f, err := b.login(ctx, key)
	if err != nil {
		return nil, nil, fmt.Errorf("login: %w", err)
	}
	defer f.c.Close()
	for range 20 { // warm
		if _, _, err := f.cmd("NOOP"); err != nil {
			return nil, nil, err
		}
	}
	for range b.o.rtt {
		t0 := time.Now()
		code, msg, err := f.cmd("NOOP")
		if err != nil || code != 200 {
			return nil, nil, fmt.Errorf("NOOP: %d %s %v", code, msg, err)
		}
		noop = append(noop, time.Since(t0))
	}
	for range b.o.rtt {
		t0 := time.Now()
		code, msg, err := f.cmd("PASV")
		if err != nil || code != 227 {
			return nil, nil, fmt.Errorf("PASV: %d %s %v", code, msg, err)
		}
		pasv = append(pasv, time.Since(t0))
	}
	_, _, _ = f.cmd("QUIT")
	return noop, pasv, nil
}

// throughput fetches large.bin over one passive data connection; without a
// helper (dnat) it dials the VIP at the 227's port instead of its address.
func (b *bench) throughput(ctx context.Context, key string) (float64, error) {
	f, err := b.login(ctx, key)
	if err != nil {
		return 0, fmt.Errorf("login: %w", err)
	}
	defer f.c.Close()
	if code, msg, err := f.cmd("TYPE I"); err != nil || code != 200 {
		return 0, fmt.Errorf("TYPE: %d %s %v", code, msg, err)
	}
	code, msg, err := f.cmd("PASV")
	if err != nil || code != 227 {
		return 0, fmt.Errorf("PASV: %d %s %v", code, msg, err)
	}
	target, err := ftpclient.ParsePASV(msg)
	if err != nil {
		return 0, err
	}
	switch key {
	case "direct":
	case "dnat":
		target = netip.AddrPortFrom(netip.MustParseAddr(topo.VIP4), target.Port())
	default:
		if target.Addr().String() == topo.VIP4 {
			break
		}
		return 0, fmt.Errorf("227 names %v, not the VIP (not rewritten)", target)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	data, err := topo.DialIn(dctx, b.tp.Client, "tcp", target.String())
	cancel()
	if err != nil {
		return 0, fmt.Errorf("data connection to %v: %w", target, err)
	}
	defer data.Close()
	if _, err := io.WriteString(f.c, "RETR large.bin\r\n"); err != nil {
		return 0, err
	}
	t0 := time.Now()
	if code, msg, err := f.reply(); err != nil || code != 150 && code != 125 {
		return 0, fmt.Errorf("RETR: %d %s %v", code, msg, err)
	}
	_ = data.SetDeadline(time.Now().Add(2 * time.Minute))
	n, err := io.CopyBuffer(io.Discard, data, make([]byte, 256<<10))
	el := time.Since(t0)
	if err != nil {
		return 0, err
	}
	if n != b.o.bigSize {
		return 0, fmt.Errorf("got %d bytes, want %d", n, b.o.bigSize)
	}
	if code, msg, err := f.reply(); err != nil || code != 226 {
		return 0, fmt.Errorf("after RETR: %d %s %v", code, msg, err)
	}
	return float64(n) / el.Seconds() / 1e6, nil
}

// ---- memory ----

type memPoint struct {
	target, open, tracked int
	rssKB                 int64
	took                  time.Duration
}

type memResult struct {
	points []memPoint
	err    string
}

// Connections one dialer process holds (the file limit is 20000 here and
// cannot be raised without CAP_SYS_RESOURCE).
const perDialer = 16000

// memory starts a fresh daemon and holds connections open through the VIP to
// port 8080 of rs1/rs2. The servers' side never accepts: the connections
// wait, established, in the accept queues of listeners with a backlog of
// 65535 (net.core.somaxconn raised in rs1/rs2), so they take no file
// descriptors; the clients' side is held by dialer processes (this program
// with -hold-dial) of perDialer connections each, each from its own source
// address 203.0.113.10+.
func (b *bench) memory(ctx context.Context) *memResult {
	m := &memResult{}
	targets, err := parseConns(b.o.conns)
	if err != nil {
		m.err = err.Error()
		return m
	}
	self, err := os.Executable()
	if err != nil {
		m.err = err.Error()
		return m
	}
	fds, err := b.holdListeners(ctx)
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	if err != nil {
		m.err = err.Error()
		return m
	}
	if err := b.up(ctx, "nfhelperd"); err != nil {
		m.err = err.Error()
		return m
	}
	defer b.down("nfhelperd")
	cl := ctl.NewClient(b.tp.ControlSocket(), 10*time.Second)
	tracked := func() int {
		st, err := cl.Status(ctx)
		if err != nil {
			return -1
		}
		return st.Connections
	}
	time.Sleep(300 * time.Millisecond)
	m.points = append(m.points, memPoint{target: 0, tracked: tracked(), rssKB: rssKB(b.daemon.Pid())})
	logf("memory: idle RSS %d kB", m.points[0].rssKB)
	ds := &dialers{b: b, self: self}
	defer ds.kill()
	for _, n := range targets {
		t0 := time.Now()
		errs := ds.grow(ctx, n)
		took := time.Since(t0)
		time.Sleep(2 * time.Second) // let the table settle
		p := memPoint{target: n, open: ds.open, tracked: tracked(), rssKB: rssKB(b.daemon.Pid()), took: took}
		logf("memory: %d connections opened (%v), daemon tracks %d, RSS %d kB", p.open, took.Round(time.Millisecond), p.tracked, p.rssKB)
		m.points = append(m.points, p)
		if len(errs) > 0 {
			m.err = fmt.Sprintf("at %d connections: %v", ds.open, errors.Join(errs...))
			logf("memory: %s", m.err)
			break
		}
	}
	return m
}

// parseConns reads -conns: connection counts, ascending.
func parseConns(s string) ([]int, error) {
	var targets []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 120000 {
			return nil, errors.New("bad -conns " + s + " (1..120000 each)")
		}
		targets = append(targets, n)
	}
	slices.Sort(targets)
	return targets, nil
}

// holdListeners opens the never-accepting listeners on holdPort in rs1 and
// rs2, with room for the connections in their backlogs. The caller closes
// the returned sockets, also on error.
func (b *bench) holdListeners(ctx context.Context) ([]int, error) {
	var fds []int
	for _, ns := range []string{b.tp.RS1, b.tp.RS2} {
		if _, err := b.tp.Run(ctx, ns, "sysctl", "-qw", "net.core.somaxconn=65535", "net.ipv4.tcp_max_syn_backlog=65535"); err != nil {
			return fds, err
		}
		var fd int
		err := topo.Do(ns, func() error {
			var err error
			if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
				return err
			}
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			if err := unix.Bind(fd, &unix.SockaddrInet4{Port: holdPort}); err != nil {
				return err
			}
			return unix.Listen(fd, 65535)
		})
		if err != nil {
			return fds, errors.New("listener: " + err.Error())
		}
		fds = append(fds, fd)
	}
	return fds, nil
}

// dialers are the -hold-dial processes in the client namespace that hold
// the connections open, each from its own source address.
type dialers struct {
	b          *bench
	self       string // this program
	cmds       []*exec.Cmd
	open, nsrc int // connections held, source addresses used
}

// grow starts dialers until open reaches n and waits until each says it
// holds its connections.
func (ds *dialers) grow(ctx context.Context, n int) []error {
	tp := ds.b.tp
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for ds.open < n {
		k := min(perDialer, n-ds.open)
		src := fmt.Sprintf("203.0.113.%d", 10+ds.nsrc)
		ds.nsrc++
		if _, err := tp.Run(ctx, tp.Client, "ip", "addr", "add", src+"/32", "dev", "eth0"); err != nil {
			errs = append(errs, err)
			break
		}
		c := tp.Exec(tp.Client, ds.self, "-hold-dial", net.JoinHostPort(topo.VIP4, strconv.Itoa(holdPort)), "-hold-src", src, "-hold-n", strconv.Itoa(k))
		stdout, err := c.StdoutPipe()
		if err != nil {
			errs = append(errs, err)
			break
		}
		stdin, _ := c.StdinPipe()
		_ = stdin // held open: the dialer holds its connections until stdin closes or it is killed
		c.Stderr = os.Stderr
		if err := tp.Start(c); err != nil {
			errs = append(errs, err)
			break
		}
		ds.cmds = append(ds.cmds, c)
		ds.open += k
		wg.Add(1)
		go func() {
			defer wg.Done()
			line, err := bufio.NewReader(stdout).ReadString('\n')
			if err != nil || !strings.HasPrefix(line, "held ") {
				mu.Lock()
				errs = append(errs, fmt.Errorf("dialer from %s: %q %v", src, line, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errs
}

func (ds *dialers) kill() {
	for _, d := range ds.cmds {
		_ = d.Process.Kill()
	}
}

// holdDial is the -hold-dial mode: open n connections to addr from src with
// 16 dialers, print "held n", then hold them until stdin closes.
func holdDial(addr, src string, n int) int {
	var (
		mu    sync.Mutex
		conns []net.Conn
		errs  []error
		wg    sync.WaitGroup
		next  int
	)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
			for {
				mu.Lock()
				if next >= n || len(errs) > 0 {
					mu.Unlock()
					return
				}
				next++
				mu.Unlock()
				c, err := d.Dial("tcp4", addr)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					conns = append(conns, c)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		fmt.Printf("failed after %d: %v\n", len(conns), errs[0])
		return 1
	}
	fmt.Printf("held %d\n", len(conns))
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// ---- /proc ----

func rssKB(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n
			}
		}
	}
	return 0
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

const (
	beginMark = "<!-- ftpbench:begin (generated by integration/bench/ftpbench; do not edit by hand) -->"
	endMark   = "<!-- ftpbench:end -->"
)

// updateDoc replaces what lies between the markers in path.
func updateDoc(path, report string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(data)
	i, j := strings.Index(s, beginMark), strings.Index(s, endMark)
	if i < 0 || j < i {
		return fmt.Errorf("%s: markers %q and %q not found", path, beginMark, endMark)
	}
	s = s[:i+len(beginMark)] + "\n\n" + report + "\n" + s[j:]
	return os.WriteFile(path, []byte(s), 0o644)
}
