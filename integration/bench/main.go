// Command bench is nfhelper's end-to-end connection-rate benchmark. Run it as
// root from the module root (make bench-e2e):
//
//	go run ./integration/bench [-rounds 3] [-duration 5s] [-workers 64] [-scheds rr,wrr,sh,mh,lc,wlc] [-persist 100000] [-out DIR]
//
// It builds the namespace topology of package topo (without the FTP
// servers), starts integration/cmd/connbench as a banner server on port 8080
// of rs1 and rs2, and then, for -rounds rounds (each starting one system
// later than the one before, so that none always runs first), measures short
// TCP connections from the client (from -srcs source addresses in turn, so
// that sh and mh see many clients) to 198.51.100.10:8080 through
//
//	a) plain kernel DNAT: a table `ip nfhbench` in the router namespace with
//	   `dnat to numgen inc mod 2 map { 0 : rs1, 1 : rs2 }`, no daemon;
//	a') the same with nfhelperd running beside it (a service on port 8081,
//	   -beside): what its ruleset costs traffic that is not its own;
//	b) nfhelperd balancing the same VIP:port (service `bench`, no helper),
//	   once per scheduler of -scheds, a fresh daemon each, with the user
//	   table removed. rr, wrr, sh and mh are scheduled by nftables in the
//	   kernel, lc, wlc, sed and nq by the daemon from the queued SYN (the
//	   report says which by the packets queued per connection).
//
// It prints (and writes to DIR/bench-e2e.txt, raw results to
// DIR/bench-e2e.jsonl) the median connections/s and their spread, the ratio
// b/a per scheduler, latency p50/p99 of connect + first byte, the CPU time
// nfhelperd spent per connection (utime+stime from /proc/PID/stat), the
// whole host's busy CPU time per connection (/proc/stat, which also counts
// anything else running on the machine) and how many packets the router
// queued to nfhelperd per connection (NFQUEUE id_sequence). Then (-persist
// N, 0 skips) the memory of N persistent clients: see persist.go. It
// asserts nothing about speed. Everything runs inside the topology's
// namespaces and is removed at the end, also on Ctrl-C.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nfhelper/nfhelper/integration/bench/measure"
	"github.com/nfhelper/nfhelper/integration/topo"
)

const (
	port       = "8080"
	besidePort = 8081 // nfhelperd's service while it runs beside the user's DNAT
	userTable  = "nfhbench"
)

type options struct {
	bin      string
	rounds   int
	duration time.Duration
	warmup   time.Duration
	workers  int
	queues   int
	out      string
	scheds   []string
	srcs     int
	persist  int
	beside   bool
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", os.Getenv("NFH_DAEMON_BIN"), "nfhelperd binary (default $NFH_DAEMON_BIN, else go build ./cmd/nfhelperd)")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds; each measures kernel DNAT and nfhelperd with each scheduler, in turn")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "measured time of each run")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "unmeasured load before each run")
	flag.IntVar(&o.workers, "workers", 64, "concurrent connections of the load generator")
	flag.IntVar(&o.queues, "queues", 0, "nfhelperd queue count (config queue.count; 0: the daemon's default, one per CPU)")
	flag.StringVar(&o.out, "out", "", "directory for bench-e2e.txt and bench-e2e.jsonl (default: a new temporary directory)")
	scheds := flag.String("scheds", "rr,wrr,sh,mh,lc,wlc", "nfhelperd's schedulers, each measured against kernel DNAT in every round")
	flag.IntVar(&o.srcs, "srcs", 64, "client source addresses, used in turn (203.0.113.100 on)")
	flag.IntVar(&o.persist, "persist", 100000, "persistent clients whose memory is measured after the rounds (0: skip)")
	flag.BoolVar(&o.beside, "beside", true, "also measure kernel DNAT with nfhelperd running beside it (a service on another port): what its table costs traffic that is not its own")
	flag.Parse()
	for _, sc := range strings.Split(*scheds, ",") {
		switch sc = strings.TrimSpace(sc); sc {
		case "rr", "wrr", "sh", "mh", "lc", "wlc", "sed", "nq":
			o.scheds = append(o.scheds, sc)
		default:
			fmt.Fprintf(os.Stderr, "bench: -scheds: unknown scheduler %q\n", sc)
			os.Exit(2)
		}
	}
	if flag.NArg() > 0 || o.rounds < 1 || o.rounds > 50 || o.duration <= 0 || o.duration > 5*time.Minute ||
		o.warmup < 0 || o.warmup > time.Minute || o.workers < 1 || o.workers > 4096 || o.queues < 0 || o.queues > 64 ||
		len(o.scheds) == 0 || o.srcs < 1 || o.srcs > 150 || o.persist < 0 || o.persist > 1000000 {
		fmt.Fprintln(os.Stderr, "bench: bad arguments (rounds 1..50, duration <= 5m, warmup <= 1m, workers 1..4096, queues 0..64, srcs 1..150, persist 0..1000000, at least one scheduler)")
		os.Exit(2)
	}
	os.Exit(run(o))
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// sample is one measured run.
type sample struct {
	Mode  string  `json:"mode"`                // "dnat", "dnat-beside" or "nfhelperd"
	Sched string  `json:"scheduler,omitempty"` // nfhelperd's
	Round int     `json:"round"`
	Load  result  `json:"load"`
	Host  float64 `json:"host_busy_s"` // whole-host busy CPU time during the run
	Wall  float64 `json:"wall_s"`      // wall time of that /proc/stat window
	// Drops: increases of counters during the measured run (SYN
	// retransmissions, listen queue overflows, conntrack and NFQUEUE drops,
	// packets per NFQUEUE), those that are not zero.
	Drops map[string]int64 `json:"drops,omitempty"`
	// nfhelperd only:
	DaemonCPU float64 `json:"daemon_cpu_s,omitempty"`
	Queued    int64   `json:"queued"`                     // packets the router queued to the daemon during the measured run
	Packets   int64   `json:"daemon_packets,omitempty"`   // whole daemon life, warmup included
	Scheduled int64   `json:"daemon_scheduled,omitempty"` // idem
	StopLine  string  `json:"daemon_stop_line,omitempty"`
}

// key names the system measured: "dnat", "dnat-beside" or "nfhelperd
// <scheduler>".
func (s sample) key() string {
	if s.Mode != "nfhelperd" {
		return s.Mode
	}
	return "nfhelperd " + s.Sched
}

// result mirrors connbench's JSON line.
type result struct {
	Conns       int64            `json:"conns"`
	Failures    int64            `json:"failures"`
	Cut         int64            `json:"cut"`
	Elapsed     float64          `json:"elapsed_s"`
	ConnsPerSec float64          `json:"conns_per_s"`
	P50         float64          `json:"p50_us"`
	P90         float64          `json:"p90_us"`
	P99         float64          `json:"p99_us"`
	Max         float64          `json:"max_us"`
	Errors      map[string]int64 `json:"errors,omitempty"`
	ByBanner    map[string]int64 `json:"by_banner,omitempty"`
}

func run(o options) int {
	ctx, tmp, done, err := topo.StartTool("bench")
	if err != nil {
		logf("%v", err)
		return topo.ExitCode(err)
	}
	defer done()
	out, err := measure.OutDir(o.out, "nfhelper-bench-e2e-")
	if err != nil {
		logf("%v", err)
		return 1
	}

	build := func(dst, pkg string) error {
		logf("building %s", pkg)
		return topo.GoBuild(ctx, dst, pkg)
	}
	connbench := filepath.Join(tmp, "connbench")
	if err := build(connbench, "./integration/cmd/connbench"); err != nil {
		logf("%v", err)
		return 1
	}
	bin, err := topo.DaemonBinary(ctx, tmp, o.bin)
	if err != nil {
		logf("%v", err)
		return 1
	}

	tp, err := topo.New(topo.Options{Dir: filepath.Join(tmp, "topo"), NoServers: true, Logf: logf})
	if err != nil {
		logf("topology: %v", err)
		return 1
	}
	defer tp.CloseLogged(logf)
	logf("topology %s up", tp.ID)

	b := &bench{o: o, tp: tp, connbench: connbench, bin: bin, tmp: tmp, cfgPaths: map[string]string{}}
	samples, err := b.measure(ctx)
	var pm *persistResult
	if err == nil && o.persist > 0 {
		if pm, err = b.persistMemory(ctx); err != nil {
			logf("persistent clients: %v", err)
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			logf("interrupted")
			return 130
		}
		logf("%v", err)
		if len(samples) == 0 {
			return 1
		}
	}
	report := b.report(samples, pm, err)
	fmt.Print(report)
	txt, jsonl, werr := measure.WriteResults(out, "bench-e2e", report, samples)
	if werr != nil {
		logf("writing results: %v", werr)
		return 1
	}
	fmt.Printf("results: %s (raw: %s)\n", txt, jsonl)
	if err != nil {
		return 1
	}
	return 0
}

type bench struct {
	o         options
	tp        *topo.Topo
	connbench string
	bin       string
	tmp       string
	cfgPaths  map[string]string // by scheduler
	nftPath   string
	srcs      []string // the client's source addresses
}

func (b *bench) setup(ctx context.Context) error {
	tp := b.tp
	// The client makes tens of thousands of short connections: widen its
	// port range (its sockets close with a reset, leaving no TIME_WAIT).
	if _, err := tp.Run(ctx, tp.Client, "sysctl", "-qw",
		"net.ipv4.ip_local_port_range=1024 65535", "net.ipv4.tcp_tw_reuse=1"); err != nil {
		return err
	}
	for _, s := range []struct{ ns, name, addr string }{{tp.RS1, "rs1", topo.RS1V4}, {tp.RS2, "rs2", topo.RS2V4}} {
		f, err := os.Create(filepath.Join(b.tmp, "server-"+s.name+".log"))
		if err != nil {
			return err
		}
		c := tp.Exec(s.ns, b.connbench, "-serve", ":"+port, "-banner", s.name)
		c.Stdout, c.Stderr = f, f
		err = tp.Start(c)
		f.Close()
		if err != nil {
			return fmt.Errorf("start server on %s: %w", s.name, err)
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = topo.WaitListening(wctx, tp.Router, s.addr+":"+port)
		cancel()
		if err != nil {
			return fmt.Errorf("server on %s: %w", s.name, err)
		}
	}

	var batch strings.Builder
	for i := range b.o.srcs {
		a := fmt.Sprintf("203.0.113.%d", 100+i)
		b.srcs = append(b.srcs, a)
		fmt.Fprintf(&batch, "addr add %s/32 dev eth0\n", a)
	}
	c := tp.CommandContext(ctx, tp.Client, "ip", "-batch", "-")
	c.Stdin = strings.NewReader(batch.String())
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("client addresses: %w: %s", err, out)
	}
	for _, sched := range b.o.scheds {
		cfg := fmt.Sprintf(`services:
  - name: bench
    vip: %s:%s
    scheduler: %s
    real_servers:
      - address: %s:%s
      - address: %s:%s
`, topo.VIP4, port, sched, topo.RS1V4, port, topo.RS2V4, port)
		if b.o.queues > 0 {
			cfg += fmt.Sprintf("queue:\n  count: %d\n", b.o.queues)
		}
		p := filepath.Join(b.tmp, "nfhelperd-bench-"+sched+".yaml")
		if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
			return err
		}
		b.cfgPaths[sched] = p
	}
	beside := fmt.Sprintf("services:\n  - name: beside\n    vip: %s:%d\n    real_servers:\n      - address: %s:%d\n",
		topo.VIP4, besidePort, topo.RS1V4, besidePort)
	b.cfgPaths["beside"] = filepath.Join(b.tmp, "nfhelperd-beside.yaml")
	if err := os.WriteFile(b.cfgPaths["beside"], []byte(beside), 0o644); err != nil {
		return err
	}
	rules := fmt.Sprintf(`table ip %s {
	chain dstnat {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %s tcp dport %s dnat to numgen inc mod 2 map { 0 : %s, 1 : %s }
	}
}
`, userTable, topo.VIP4, port, topo.RS1V4, topo.RS2V4)
	b.nftPath = filepath.Join(b.tmp, "dnat.nft")
	return os.WriteFile(b.nftPath, []byte(rules), 0o644)
}

func (b *bench) measure(ctx context.Context) ([]sample, error) {
	if err := b.setup(ctx); err != nil {
		return nil, err
	}
	var samples []sample
	first := []string{"dnat"}
	if b.o.beside {
		first = append(first, "dnat-beside")
	}
	systems := append(first, b.o.scheds...)
	for r := 1; r <= b.o.rounds; r++ {
		// Each round starts one system later: none always runs first
		// (after the previous round's last) or last.
		k := (r - 1) % len(systems)
		for _, sched := range append(systems[k:len(systems):len(systems)], systems[:k]...) {
			if err := ctx.Err(); err != nil {
				return samples, err
			}
			var s sample
			var err error
			if sched == "dnat" || sched == "dnat-beside" {
				s, err = b.runDNAT(ctx, sched == "dnat-beside")
				s.Mode = sched
			} else {
				s, err = b.runDaemon(ctx, sched)
				s.Mode, s.Sched = "nfhelperd", sched
			}
			s.Round = r
			if err != nil {
				return samples, fmt.Errorf("round %d %s: %w", r, s.key(), err)
			}
			logf("round %d %-13s %8.0f conns/s  p50 %6.0fus  p99 %6.0fus  failures %d  queued %d  by server %v",
				r, s.key(), s.Load.ConnsPerSec, s.Load.P50, s.Load.P99, s.Load.Failures, s.Queued, s.Load.ByBanner)
			samples = append(samples, s)
		}
	}
	return samples, nil
}

// fresh forgets the router's connections of the previous run.
func (b *bench) fresh(ctx context.Context) {
	_, _ = b.tp.Run(ctx, b.tp.Router, "conntrack", "-F")
}

// runDNAT measures the user's DNAT; beside: with nfhelperd running a
// service on another port.
func (b *bench) runDNAT(ctx context.Context, beside bool) (sample, error) {
	tp := b.tp
	b.fresh(ctx)
	pid := 0
	if beside {
		d, err := tp.StartDaemon(b.bin, b.cfgPaths["beside"])
		if err != nil {
			return sample{}, err
		}
		pid = d.Pid()
		defer func() {
			if st, err := d.Stop(); err != nil || st.ExitCode != 0 {
				logf("nfhelperd (beside) stop: %+v %v (log %s)", st, err, d.LogPath)
			}
		}()
	}
	if _, err := tp.Run(ctx, tp.Router, "nft", "-f", b.nftPath); err != nil {
		return sample{}, err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := tp.Run(dctx, tp.Router, "nft", "delete", "table", "ip", userTable); err != nil {
			logf("removing table ip %s: %v", userTable, err)
		}
	}()
	if err := b.warm(ctx); err != nil {
		return sample{}, err
	}
	var s sample
	k0 := b.counters(ctx)
	var c0 float64
	if pid != 0 {
		c0, _ = measure.ProcCPU(pid)
	}
	h0, t0 := hostBusy()
	res, err := b.load(ctx, b.o.duration, "dnat")
	h1, t1 := hostBusy()
	if err != nil {
		return s, err
	}
	s.Load, s.Host, s.Wall = res, h1-h0, t1.Sub(t0).Seconds()
	s.Drops = delta(k0, b.counters(ctx))
	if pid != 0 {
		// Connections that are not its own must not wake it (conntrack
		// events are filtered by mark).
		c1, err := measure.ProcCPU(pid)
		if err != nil {
			return s, err
		}
		s.DaemonCPU, s.Queued = c1-c0, queuedOf(s.Drops)
	}
	return s, nil
}

var statRE = regexp.MustCompile(`(?:^|\s)(packets|scheduled)=(\d+)`)

func (b *bench) runDaemon(ctx context.Context, sched string) (sample, error) {
	tp := b.tp
	if out, err := tp.Run(ctx, tp.Router, "nft", "list", "tables"); err != nil || strings.Contains(string(out), userTable) {
		return sample{}, fmt.Errorf("table ip %s still present (or nft failed: %v)", userTable, err)
	}
	b.fresh(ctx)
	d, err := tp.StartDaemon(b.bin, b.cfgPaths[sched])
	if err != nil {
		return sample{}, err
	}
	stopped := false
	defer func() {
		if !stopped {
			_, _ = d.Stop()
		}
	}()
	if err := b.warm(ctx); err != nil {
		return sample{}, err
	}
	var s sample
	c0, err := measure.ProcCPU(d.Pid())
	if err != nil {
		return s, err
	}
	k0 := b.counters(ctx)
	h0, t0 := hostBusy()
	res, err := b.load(ctx, b.o.duration, "nfhelperd")
	h1, t1 := hostBusy()
	c1, cerr := measure.ProcCPU(d.Pid())
	if err = errors.Join(err, cerr); err != nil {
		return s, err
	}
	s.Load, s.Host, s.Wall, s.DaemonCPU = res, h1-h0, t1.Sub(t0).Seconds(), c1-c0
	s.Drops = delta(k0, b.counters(ctx))
	s.Queued = queuedOf(s.Drops)

	stopped = true
	st, err := d.Stop()
	if err != nil {
		return s, err
	}
	if st.ExitCode != 0 || !st.TableGone {
		return s, fmt.Errorf("nfhelperd stop: exit code %d, table removed %v; log %s", st.ExitCode, st.TableGone, d.LogPath)
	}
	for _, line := range strings.Split(d.Log(), "\n") {
		if !strings.Contains(line, "msg=stopping") {
			continue
		}
		s.StopLine = line
		for _, m := range statRE.FindAllStringSubmatch(line, -1) {
			n, _ := strconv.ParseInt(m[2], 10, 64)
			switch m[1] {
			case "packets":
				s.Packets = n
			case "scheduled":
				s.Scheduled = n
			}
		}
	}
	return s, nil
}

func (b *bench) warm(ctx context.Context) error {
	if b.o.warmup <= 0 {
		return nil
	}
	_, err := b.load(ctx, b.o.warmup, "warmup")
	return err
}

// load runs connbench in the client namespace.
func (b *bench) load(ctx context.Context, d time.Duration, label string) (result, error) {
	var res result
	cctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	out, err := b.tp.Run(cctx, b.tp.Client, b.connbench,
		"-addr", topo.VIP4+":"+port, "-workers", strconv.Itoa(b.o.workers),
		"-duration", d.String(), "-label", label, "-src", strings.Join(b.srcs, ","))
	if jerr := json.Unmarshal(lastLine(out), &res); jerr != nil {
		return res, errors.Join(err, fmt.Errorf("connbench output %q: %w", out, jerr))
	}
	if err != nil && res.Conns == 0 {
		return res, fmt.Errorf("no connection succeeded: %w (errors %v)", err, res.Errors)
	}
	return res, nil
}

func lastLine(b []byte) []byte {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return []byte(lines[len(lines)-1])
}

// counters reads loss counters of the topology's namespaces: SYN
// retransmissions, TCP listen queue overflows and drops, conntrack statistics of the
// router and, while the daemon runs, its NFQUEUE drops (queue full / netlink
// send failures) and packets per queue. A counter that cannot be read is
// left out.
func (b *bench) counters(ctx context.Context) map[string]int64 {
	tp := b.tp
	m := map[string]int64{}
	for _, rs := range []struct{ name, ns string }{{"rs1", tp.RS1}, {"rs2", tp.RS2}, {"client", tp.Client}} {
		out, err := tp.Run(ctx, rs.ns, "cat", "/proc/net/netstat")
		if err != nil {
			continue
		}
		lines := strings.Split(string(out), "\n")
		for i := 0; i+1 < len(lines); i += 2 {
			keys, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			if len(keys) == 0 || keys[0] != "TcpExt:" || len(vals) != len(keys) {
				continue
			}
			for j, k := range keys {
				if k == "ListenOverflows" || k == "ListenDrops" || k == "TCPSynRetrans" {
					n, _ := strconv.ParseInt(vals[j], 10, 64)
					m[rs.name+" "+k] = n
				}
			}
		}
	}
	if out, err := tp.Run(ctx, tp.Router, "conntrack", "-S"); err == nil {
		for _, f := range strings.Fields(string(out)) {
			k, v, ok := strings.Cut(f, "=")
			switch k {
			case "invalid", "insert_failed", "drop", "early_drop", "error":
				if n, err := strconv.ParseInt(v, 10, 64); ok && err == nil {
					m["router conntrack "+k] += n
				}
			}
		}
	}
	if qs, err := measure.ReadQueues(ctx, tp, tp.Router); err == nil {
		for _, q := range qs {
			m["router nfqueue queue_dropped"] += q.Dropped
			m["router nfqueue user_dropped"] += q.UserDropped
			// id_sequence: packets queued so far, per queue (how evenly
			// the queues share the load).
			m["router nfqueue "+q.Number+" packets"] = q.IDSequence
		}
	}
	return m
}

// queuedOf sums the packets queued to the daemon in counters' deltas.
func queuedOf(d map[string]int64) int64 {
	var n int64
	for k, v := range d {
		if strings.HasPrefix(k, "router nfqueue ") && strings.HasSuffix(k, " packets") {
			n += v
		}
	}
	return n
}

// delta is after-before of the counters that grew.
func delta(before, after map[string]int64) map[string]int64 {
	d := map[string]int64{}
	for k, v := range after {
		if n := v - before[k]; n != 0 {
			d[k] = n
		}
	}
	if len(d) == 0 {
		return nil
	}
	return d
}

// hostBusy is the machine's non-idle CPU time so far (all CPUs, seconds)
// from /proc/stat, and when it was read.
func hostBusy() (float64, time.Time) {
	now := time.Now()
	return measure.HostTimes().Busy, now
}

// ---- report ----

type stats struct {
	rate, p50, p99                   []float64
	conns, failures                  int64
	hostPerConn, daemonPerConn, busy []float64
	queuedPerConn                    []float64
	ratio                            []float64 // per round: conns/s over kernel DNAT's
	banners                          map[string]int64
}

// collect gathers the samples of one system (sample.key).
func collect(samples []sample, key string) *stats {
	st := &stats{banners: map[string]int64{}}
	dnat := map[int]float64{}
	for _, s := range samples {
		if s.Mode == "dnat" {
			dnat[s.Round] = s.Load.ConnsPerSec
		}
	}
	for _, s := range samples {
		if s.key() != key {
			continue
		}
		st.rate = append(st.rate, s.Load.ConnsPerSec)
		st.p50 = append(st.p50, s.Load.P50)
		st.p99 = append(st.p99, s.Load.P99)
		st.conns += s.Load.Conns
		st.failures += s.Load.Failures
		for k, v := range s.Load.ByBanner {
			st.banners[k] += v
		}
		if s.Load.Conns > 0 {
			st.hostPerConn = append(st.hostPerConn, s.Host/float64(s.Load.Conns)*1e6)
			if s.Mode != "dnat" {
				st.daemonPerConn = append(st.daemonPerConn, s.DaemonCPU/float64(s.Load.Conns)*1e6)
				st.queuedPerConn = append(st.queuedPerConn, float64(s.Queued)/float64(s.Load.Conns))
			}
		}
		if s.Wall > 0 {
			st.busy = append(st.busy, s.Host/s.Wall)
		}
		if d := dnat[s.Round]; d > 0 && s.Mode != "dnat" {
			st.ratio = append(st.ratio, s.Load.ConnsPerSec/d)
		}
	}
	return st
}

func (b *bench) report(samples []sample, pm *persistResult, runErr error) string {
	var sb strings.Builder
	host, _ := os.Hostname()
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Fprintf(&sb, "nfhelper end-to-end benchmark, %s\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&sb, "host %s, kernel %s, %d CPUs; client (%d source addresses in turn) -> %s:%s -> rs1/rs2 (banner server, connbench -serve)\n",
		host, strings.TrimSpace(string(kernel)), numCPU(), b.o.srcs, topo.VIP4, port)
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Fprintf(&sb, "load average at the end: %s (other work on the machine shares the CPUs with the benchmark)\n", strings.TrimSpace(string(la)))
	}
	fmt.Fprintf(&sb, "load: %d workers, connect + read banner + close with reset; %d rounds x %v (+%v warmup), a then each b in every round\n",
		b.o.workers, b.o.rounds, b.o.duration, b.o.warmup)
	fmt.Fprintf(&sb, "a = kernel DNAT (nft numgen inc mod 2, no daemon); a' = the same with nfhelperd running beside it (a service on port %d);\n"+
		"b = nfhelperd (service bench, no helper, queues %s), a fresh daemon per scheduler: %s\n\n",
		besidePort, queuesText(b.o.queues), strings.Join(b.o.scheds, ", "))

	tw := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "round\tsystem\tconns/s\tp50 us\tp99 us\tfailures\thost busy\thost CPU us/conn\tnfhelperd CPU us/conn\tqueued pkts/conn\t")
	for _, s := range samples {
		d, q := "-", "-"
		if s.Mode != "dnat" && s.Load.Conns > 0 {
			d = fmt.Sprintf("%.1f", s.DaemonCPU/float64(s.Load.Conns)*1e6)
			q = fmt.Sprintf("%.2f", float64(s.Queued)/float64(s.Load.Conns))
		}
		busy, hpc := "-", "-"
		if s.Wall > 0 {
			busy = fmt.Sprintf("%.0f%%", s.Host/s.Wall*100)
		}
		if s.Load.Conns > 0 {
			hpc = fmt.Sprintf("%.1f", s.Host/float64(s.Load.Conns)*1e6)
		}
		fmt.Fprintf(tw, "%d\t%s\t%.0f\t%.0f\t%.0f\t%d\t%s\t%s\t%s\t%s\t\n",
			s.Round, s.key(), s.Load.ConnsPerSec, s.Load.P50, s.Load.P99, s.Load.Failures, busy, hpc, d, q)
	}
	tw.Flush()
	for _, s := range samples {
		// The queues' packet counts are in queued pkts/conn: the rest are losses.
		losses := map[string]int64{}
		for k, n := range s.Drops {
			if !strings.HasSuffix(k, " packets") {
				losses[k] = n
			}
		}
		if len(losses) > 0 || len(s.Load.Errors) > 0 {
			fmt.Fprintf(&sb, "  round %d %s: errors [%s] counters [%s]\n", s.Round, s.key(), bannerText(s.Load.Errors), bannerText(losses))
		}
	}
	sb.WriteString("\n")

	tw = tabwriter.NewWriter(&sb, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "summary (medians over rounds)\tscheduled by\tconns/s\tspread\t÷ a, per round\tp50 us\tp99 us\tconns\tfailures\thost CPU us/conn\tnfhelperd CPU us/conn\tqueued pkts/conn\tby server\t")
	keys := []string{"dnat", "dnat-beside"}
	for _, sc := range b.o.scheds {
		keys = append(keys, "nfhelperd "+sc)
	}
	for _, k := range keys {
		st := collect(samples, k)
		if len(st.rate) == 0 {
			continue
		}
		name, by, ratio, d, q := "a kernel DNAT", "kernel", "1", "-", "-"
		if k != "dnat" {
			name = "b " + k
			if k == "dnat-beside" {
				name = "a' kernel DNAT, nfhelperd beside"
			}
			ratio = fmt.Sprintf("%.3f (%.3f-%.3f)", measure.Median(st.ratio), slices.Min(st.ratio), slices.Max(st.ratio))
		}
		if len(st.daemonPerConn) > 0 {
			d = fmt.Sprintf("%.1f", measure.Median(st.daemonPerConn))
			q = fmt.Sprintf("%.2f", measure.Median(st.queuedPerConn))
			// Who scheduled, as measured: a SYN the daemon schedules is queued.
			if by = "daemon"; measure.Median(st.queuedPerConn) < 0.1 {
				by = "kernel"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.1f%%\t%s\t%.0f\t%.0f\t%d\t%d\t%.1f\t%s\t%s\t%s\t\n",
			name, by, measure.Median(st.rate), measure.Spread(st.rate), ratio, measure.Median(st.p50), measure.Median(st.p99),
			st.conns, st.failures, measure.Median(st.hostPerConn), d, q, bannerText(st.banners))
	}
	tw.Flush()
	sb.WriteString("\nnotes: spread = (max-min)/median. host busy/CPU come from /proc/stat and include the load\n" +
		"generator, the servers, kernel NAT/softirq work and anything else running on the machine.\n" +
		"nfhelperd CPU = utime+stime of its process during the measured run (10 ms resolution).\n" +
		"queued pkts/conn = packets the router queued to the daemon during the measured run (NFQUEUE\n" +
		"id_sequence, all queues) / completed connections; scheduled by says kernel where it is below 0.1.\n")
	if pm != nil {
		sb.WriteString("\n")
		pm.report(&sb)
	}
	if runErr != nil {
		fmt.Fprintf(&sb, "\nINCOMPLETE: %v\n", runErr)
	}
	fmt.Fprintf(&sb, "\nreproduce (as root, from the module root):\n  %s\n", b.command())
	return sb.String()
}

func (b *bench) command() string {
	args := fmt.Sprintf("-rounds %d -duration %v -warmup %v -workers %d -scheds %s -srcs %d -persist %d -beside=%v",
		b.o.rounds, b.o.duration, b.o.warmup, b.o.workers, strings.Join(b.o.scheds, ","), b.o.srcs, b.o.persist, b.o.beside)
	if b.o.queues > 0 {
		args += fmt.Sprintf(" -queues %d", b.o.queues)
	}
	cmd := fmt.Sprintf("make bench-e2e BENCH_ARGS='%s'", args)
	if b.o.bin != "" && b.o.bin != os.Getenv("NFH_DAEMON_BIN") {
		cmd = fmt.Sprintf("go run ./integration/bench %s -bin %s", args, b.o.bin)
	} else if os.Getenv("NFH_DAEMON_BIN") != "" {
		cmd = "NFH_DAEMON_BIN=" + os.Getenv("NFH_DAEMON_BIN") + " " + cmd
	}
	return cmd
}

func queuesText(n int) string {
	if n == 0 {
		return fmt.Sprintf("default = %d", numCPU())
	}
	return strconv.Itoa(n)
}

func bannerText(m map[string]int64) string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}

func numCPU() int { return runtime.NumCPU() }
