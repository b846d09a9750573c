// Command tftpbench measures nfhelperd's TFTP helper side by side with the
// kernel's own, on this machine in one run (make bench-tftp). Run it as root
// from the module root:
//
//	go run ./integration/bench/tftpbench [-rounds 4] [-duration 5s] [-workers 8] [-bigsize 67108864] [-blksizes 1468,512] [-bigreps 2] [-server atftpd] [-beside=true] [-out DIR]
//
// It builds the namespace topology of package topo (without the FTP
// servers), starts one TFTP server (-server: atftpd by default, or
// tftpd-hpa; topo.StartTFTPD) on rs1 serving a file of -bigsize bytes and
// one of -smallsize bytes, and measures, for -rounds rounds (each starting
// one system later than the one before, so that none always runs first),
// reads through the VIP 198.51.100.10:69 with
//
//	a) the kernel's helper: a user table `inet nfhbench_tftp` in the router
//	   with `ct helper tftp` (nf_conntrack_tftp, nf_nat_tftp) assigned to
//	   new flows to VIP:69 in a prerouting filter chain at priority -150,
//	   and a nat prerouting chain DNATing VIP:69 to rs1:69; no daemon;
//	a') (-beside) the same with nfhelperd running beside it, its own TFTP
//	   service on another port (VIP:6969): what nfhelperd's table costs
//	   traffic that is not its own;
//	b) nfhelperd: a `protocol: udp` service with `helper: tftp` on VIP:69,
//	   rs1 its only real server; a fresh daemon per run, the user table gone.
//
// Per system and round:
//
//	big    the transfer time of an RRQ of the big file, lockstep, per block
//	       size of -blksizes (the blksize option; 512 sends none): the
//	       fastest of -bigreps (the machine's other work shows as slow
//	       outliers);
//	small  read requests of the small file (blksize -smallblk) by -workers
//	       concurrent clients for -duration after -warmup: transfers/s,
//	       latency, failures;
//	CPU    the machine's busy and softirq CPU time per transfer (/proc/stat:
//	       every namespace shares the machine, so the client, the server,
//	       the router's forwarding and NAT and anything else running count),
//	       nfhelperd's, the client's (this program's) and the TFTP server's
//	       (utime+stime, /proc/PID/stat) per transfer;
//	queued the packets the router queued to nfhelperd per transfer (NFQUEUE
//	       id_sequence, all queues).
//
// The client is built in (client.go): a minimal RRQ client, one fresh UDP
// port per transfer, every byte checked against the file. The report (a text
// table: per round, the ratios b/a per round, and medians) is printed and
// written to DIR/tftpbench.txt, the raw results to DIR/tftpbench.jsonl. It
// asserts nothing about speed. Everything runs inside the topology's
// namespaces and is removed at the end, also on Ctrl-C.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
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
	userTable  = "nfhbench_tftp"
	besidePort = 6969 // nfhelperd's own TFTP service while it runs beside the kernel's helper
	bigName    = "big.bin"
	smallName  = "small.bin"
)

type options struct {
	bin       string
	rounds    int
	duration  time.Duration
	warmup    time.Duration
	workers   int
	bigSize   int64
	blksizes  []int
	bigReps   int
	smallSize int
	smallBlk  int
	server    string
	out       string
	beside    bool
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", os.Getenv("NFH_DAEMON_BIN"), "nfhelperd binary (default $NFH_DAEMON_BIN, else go build ./cmd/nfhelperd)")
	flag.IntVar(&o.rounds, "rounds", 4, "rounds; each measures every system, in turn")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "measured time of each small-file run")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "unmeasured small-file load before each small-file run")
	flag.IntVar(&o.workers, "workers", 8, "concurrent clients of the small-file run")
	flag.Int64Var(&o.bigSize, "bigsize", 64<<20, "size of the big file in bytes")
	blks := flag.String("blksizes", "1468,512", "block sizes of the big transfer, each measured (512: no blksize option)")
	flag.IntVar(&o.bigReps, "bigreps", 2, "big transfers per block size, system and round; the fastest counts (the others are in the jsonl)")
	flag.IntVar(&o.smallSize, "smallsize", 4<<10, "size of the small file in bytes")
	flag.IntVar(&o.smallBlk, "smallblk", 1468, "block size of the small transfers (512: no blksize option)")
	flag.StringVar(&o.server, "server", topo.ATFTPD, "TFTP server on rs1: atftpd or tftpd-hpa")
	flag.BoolVar(&o.beside, "beside", true, "also measure the kernel's helper with nfhelperd running beside it (its own TFTP service on port 6969)")
	flag.StringVar(&o.out, "out", "", "directory for tftpbench.txt and tftpbench.jsonl (default: a new temporary directory)")
	flag.Parse()
	bad := flag.NArg() > 0
	for _, f := range strings.Split(*blks, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 8 || n > 65464 {
			bad = true
		}
		if !slices.Contains(o.blksizes, n) {
			o.blksizes = append(o.blksizes, n)
		}
	}
	if bad || o.rounds < 1 || o.rounds > 50 || o.duration <= 0 || o.duration > 5*time.Minute || o.warmup < 0 ||
		o.warmup > time.Minute || o.workers < 1 || o.workers > 1024 || o.bigSize < 1<<20 || o.bigSize > 1<<30 || o.bigReps < 1 || o.bigReps > 20 ||
		o.smallSize < 1 || o.smallSize > 16<<20 || o.smallBlk < 8 || o.smallBlk > 65464 ||
		(o.server != topo.ATFTPD && o.server != topo.TFTPDHPA) {
		fmt.Fprintln(os.Stderr, "tftpbench: bad arguments (rounds 1..50, duration <= 5m, warmup <= 1m, workers 1..1024, "+
			"bigsize 1 MiB..1 GiB, bigreps 1..20, smallsize <= 16 MiB, block sizes 8..65464, server atftpd or tftpd-hpa)")
		os.Exit(2)
	}
	os.Exit(run(o))
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "tftpbench: "+format+"\n", args...)
}

// The systems, in the order of the first round (kernel-beside with
// -beside).
var allSystems = []string{"kernel", "kernel-beside", "nfhelperd"}

var systemName = map[string]string{
	"kernel":        `a: nft DNAT + ct helper "tftp" (nf_conntrack_tftp/nf_nat_tftp)`,
	"kernel-beside": "a': the same, nfhelperd running beside it",
	"nfhelperd":     "b: nfhelperd, protocol udp, helper tftp",
}

// usesDaemon says whether nfhelperd runs while sys is measured.
func usesDaemon(sys string) bool { return sys != "kernel" }

// usesTable says whether the kernel helper's table is loaded for sys.
func usesTable(sys string) bool { return sys != "nfhelperd" }

// usage is machine CPU and daemon figures over one measured stretch.
type usage struct {
	HostBusy    float64 `json:"host_busy_s"`    // the machine's non-idle CPU time
	HostSoftirq float64 `json:"host_softirq_s"` // of which softirq
	Wall        float64 `json:"wall_s"`         // of that /proc/stat window
	DaemonCPU   float64 `json:"daemon_cpu_s"`   // nfhelperd's utime+stime (b only)
	ClientCPU   float64 `json:"client_cpu_s"`   // this program's (the TFTP client's) utime+stime
	ServerCPU   float64 `json:"server_cpu_s"`   // the TFTP server's (every process in rs1, children included)
	Queued      int64   `json:"queued"`         // packets queued to nfhelperd
}

// bigRes is one big transfer.
type bigRes struct {
	Blksize     int     `json:"blksize"` // asked for (512: no option)
	Rep         int     `json:"rep"`
	Granted     int     `json:"granted_blksize"`
	Bytes       int64   `json:"bytes"`
	Seconds     float64 `json:"seconds"`
	MBps        float64 `json:"mb_per_s"` // 1e6 bytes/s
	Retransmits int     `json:"retransmits"`
	Dups        int     `json:"dup_blocks"`
	Use         usage   `json:"usage"`
	Err         string  `json:"error,omitempty"`
}

// sample is one system's measurements in one round.
type sample struct {
	System string      `json:"system"`
	Round  int         `json:"round"`
	Order  int         `json:"order"` // its place in the round (1: first)
	Big    []bigRes    `json:"big"`
	Small  *loadResult `json:"small,omitempty"`
	// SmallUse covers the measured small-file run; WarmQueued are the
	// packets queued during its warm-up.
	SmallUse   usage    `json:"small_usage"`
	WarmQueued int64    `json:"warmup_queued"`
	Datapath   string   `json:"daemon_datapath,omitempty"`
	StopLine   string   `json:"daemon_stop_line,omitempty"`
	Errors     []string `json:"errors,omitempty"`
}

type bench struct {
	o         options
	tp        *topo.Topo
	tmp       string
	bin       string
	systems   []string
	cfg       string // nfhelperd's configuration
	besideCfg string // its configuration beside the kernel's helper
	rules     string // the kernel helper's table
	big       []byte
	small     []byte
	vip       netip.AddrPort
	daemon    *topo.Daemon
	startLoad string
}

func run(o options) int {
	ctx, tmp, done, err := topo.StartTool("tftpbench")
	if err != nil {
		logf("%v", err)
		return topo.ExitCode(err)
	}
	defer done()
	out, err := measure.OutDir(o.out, "nfhelper-tftpbench-")
	if err != nil {
		logf("%v", err)
		return 1
	}
	b := &bench{o: o, tmp: tmp, vip: netip.AddrPortFrom(netip.MustParseAddr(topo.VIP4), topo.TFTPPort)}
	for _, sys := range allSystems {
		if sys != "kernel-beside" || o.beside {
			b.systems = append(b.systems, sys)
		}
	}
	b.startLoad = loadAvg()
	if b.bin, err = topo.DaemonBinary(ctx, tmp, o.bin); err != nil {
		logf("%v", err)
		return 1
	}
	if _, err := topo.TFTPDBinary(ctx, o.server, logf); err != nil {
		logf("%v", err)
		return 1
	}
	tp, err := topo.New(topo.Options{Dir: filepath.Join(tmp, "topo"), NoServers: true, Logf: logf})
	if err != nil {
		logf("topology: %v", err)
		return 1
	}
	b.tp = tp
	defer tp.CloseLogged(logf)
	logf("topology %s up", tp.ID)
	if err := b.setup(ctx); err != nil {
		logf("setup: %v", err)
		return 1
	}
	start := time.Now()
	var samples []*sample
	for r := 1; r <= o.rounds && ctx.Err() == nil; r++ {
		// Each round starts with the next system: none always runs first.
		k := (r - 1) % len(b.systems)
		order := append(slices.Clone(b.systems[k:]), b.systems[:k]...)
		for i, sys := range order {
			if ctx.Err() != nil {
				break
			}
			s := b.round(ctx, sys, r)
			s.Order = i + 1
			samples = append(samples, s)
		}
	}
	if ctx.Err() != nil {
		logf("interrupted")
		return 130
	}
	report := b.report(samples, time.Since(start))
	fmt.Print(report)
	txt, jsonl, werr := measure.WriteResults(out, "tftpbench", report, samples)
	if werr != nil {
		logf("writing results: %v", werr)
		return 1
	}
	fmt.Printf("results: %s (raw: %s)\n", txt, jsonl)
	for _, s := range samples {
		if len(s.Errors) > 0 {
			return 1
		}
	}
	return 0
}

func (b *bench) setup(ctx context.Context) error {
	tp := b.tp
	dir := filepath.Join(b.tmp, "tftp-rs1")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// Deterministic content, kept in memory: the client checks every byte.
	for _, f := range []struct {
		name string
		size int64
		dst  *[]byte
	}{{bigName, b.o.bigSize, &b.big}, {smallName, int64(b.o.smallSize), &b.small}} {
		p := filepath.Join(dir, f.name)
		if _, err := topo.WritePatternFile(p, f.size, "tftpbench "+f.name); err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		*f.dst = data
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := tp.StartTFTPD(sctx, tp.RS1, b.o.server, dir, topo.RS1V4); err != nil {
		return fmt.Errorf("start %s on rs1: %w", b.o.server, err)
	}
	logf("%s serving %s on %s:%d (%s %d bytes, %s %d bytes)", b.o.server, dir, topo.RS1V4, topo.TFTPPort,
		bigName, b.o.bigSize, smallName, b.o.smallSize)

	b.cfg = filepath.Join(b.tmp, "nfhelperd-tftp.yaml")
	const cfg = `services:
  - name: tftp
    vip: %s:%d
    protocol: udp
    helper: tftp
    real_servers:
      - address: %s:%d
`
	if err := os.WriteFile(b.cfg, []byte(fmt.Sprintf(cfg, topo.VIP4, topo.TFTPPort, topo.RS1V4, topo.TFTPPort)), 0o644); err != nil {
		return err
	}
	b.besideCfg = filepath.Join(b.tmp, "nfhelperd-beside.yaml")
	if err := os.WriteFile(b.besideCfg, []byte(fmt.Sprintf(cfg, topo.VIP4, besidePort, topo.RS1V4, besidePort)), 0o644); err != nil {
		return err
	}
	// As integration/tftp_harness_test.go's kernelTFTPReference.
	b.rules = fmt.Sprintf(`table inet %[1]s {
	ct helper tftp {
		type "tftp" protocol udp;
		l3proto inet;
	}
	chain pre {
		type filter hook prerouting priority -150; policy accept;
		ip daddr %[2]s udp dport %[4]d ct state new ct helper set "tftp"
	}
	chain nat {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %[2]s udp dport %[4]d dnat ip to %[3]s
	}
}
`, userTable, topo.VIP4, topo.RS1V4, topo.TFTPPort)
	return nil
}

// up starts system sys after forgetting the router's connections.
func (b *bench) up(ctx context.Context, sys string) error {
	tp := b.tp
	_, _ = tp.Run(ctx, tp.Router, "conntrack", "-F")
	if b.daemon != nil {
		return errors.New("nfhelperd still running")
	}
	if out, err := tp.Run(ctx, tp.Router, "nft", "list", "tables"); err != nil || strings.Contains(string(out), userTable) {
		return fmt.Errorf("table inet %s still present (or nft failed: %v)", userTable, err)
	}
	if usesDaemon(sys) {
		cfg := b.cfg
		if usesTable(sys) {
			cfg = b.besideCfg
		}
		d, err := tp.StartDaemon(b.bin, cfg)
		if err != nil {
			return err
		}
		b.daemon = d
	}
	if !usesTable(sys) {
		return nil
	}
	p := filepath.Join(b.tmp, "kernel-tftp.nft")
	if err := os.WriteFile(p, []byte(b.rules), 0o644); err != nil {
		return err
	}
	_, err := tp.Run(ctx, tp.Router, "nft", "-f", p)
	return err
}

// down stops system sys; for nfhelperd it returns its "stopping" log line.
func (b *bench) down(sys string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var terr error
	if usesTable(sys) {
		if _, terr = b.tp.Run(ctx, b.tp.Router, "nft", "delete", "table", "inet", userTable); terr != nil {
			terr = fmt.Errorf("removing table inet %s: %w", userTable, terr)
		}
	}
	d := b.daemon
	if d == nil {
		return "", terr
	}
	b.daemon = nil
	st, err := d.Stop()
	var line string
	for _, l := range strings.Split(d.Log(), "\n") {
		if strings.Contains(l, "msg=stopping") {
			line = l
		}
	}
	if err == nil && (st.ExitCode != 0 || !st.TableGone) {
		err = fmt.Errorf("nfhelperd stop: exit code %d, table removed %v; log %s", st.ExitCode, st.TableGone, d.LogPath)
	}
	return line, errors.Join(terr, err)
}

// mark is a point of measurement: the machine's CPU, the daemon's CPU and
// the router's queued packets.
type mark struct {
	cpu            measure.Times
	at             time.Time
	daemon         float64
	client, server float64
	queued         int64
}

func (b *bench) mark(ctx context.Context) mark {
	m := mark{queued: measure.RouterQueued(ctx, b.tp), server: b.nsCPU(ctx, b.tp.RS1)}
	if b.daemon != nil {
		m.daemon, _ = measure.ProcCPU(b.daemon.Pid())
	}
	m.client, _ = measure.ProcCPU(os.Getpid())
	m.cpu, m.at = measure.HostTimes(), time.Now()
	return m
}

// since is the usage from m0 to now (the /proc/stat window closes first).
func (b *bench) since(ctx context.Context, m0 mark) usage {
	c1, t1 := measure.HostTimes(), time.Now()
	u := usage{HostBusy: c1.Busy - m0.cpu.Busy, HostSoftirq: c1.Softirq - m0.cpu.Softirq, Wall: t1.Sub(m0.at).Seconds()}
	cl, _ := measure.ProcCPU(os.Getpid())
	u.ClientCPU = cl - m0.client
	if b.daemon != nil {
		d1, _ := measure.ProcCPU(b.daemon.Pid())
		u.DaemonCPU = d1 - m0.daemon
	}
	u.ServerCPU = b.nsCPU(ctx, b.tp.RS1) - m0.server
	u.Queued = measure.RouterQueued(ctx, b.tp) - m0.queued
	return u
}

func (b *bench) round(ctx context.Context, sys string, r int) *sample {
	s := &sample{System: sys, Round: r}
	fail := func(what string, err error) {
		s.Errors = append(s.Errors, what+": "+firstLine(err.Error()))
		logf("round %d %s %s: %v", r, sys, what, err)
	}
	if err := b.up(ctx, sys); err != nil {
		fail("up", err)
		return s
	}
	if b.daemon != nil {
		s.Datapath = b.daemon.Datapath
	}
	defer func() {
		line, err := b.down(sys)
		s.StopLine = line
		if err != nil {
			fail("down", err)
		}
	}()

	for _, bs := range b.o.blksizes {
		for rep := 1; rep <= b.o.bigReps; rep++ {
			if ctx.Err() != nil {
				return s
			}
			s.Big = append(s.Big, b.bigOne(ctx, sys, r, bs, rep))
			if s.Big[len(s.Big)-1].Err != "" {
				s.Errors = append(s.Errors, fmt.Sprintf("big bs%d: %s", bs, s.Big[len(s.Big)-1].Err))
			}
		}
	}
	if ctx.Err() != nil {
		return s
	}
	q0 := measure.RouterQueued(ctx, b.tp)
	if b.o.warmup > 0 {
		if _, err := load(ctx, b.tp.Client, b.vip, smallName, b.smallOpt(), b.small, b.o.workers, b.o.warmup); err != nil {
			fail("warmup", err)
		}
	}
	s.WarmQueued = measure.RouterQueued(ctx, b.tp) - q0
	m0 := b.mark(ctx)
	res, err := load(ctx, b.tp.Client, b.vip, smallName, b.smallOpt(), b.small, b.o.workers, b.o.duration)
	s.SmallUse = b.since(ctx, m0)
	if err != nil {
		fail("small", err)
		if res.Transfers == 0 || ctx.Err() != nil {
			return s
		}
	}
	s.Small = &res
	logf("round %d %-13s small: %.0f transfers/s (%d, failures %d %v, retransmits %d, p50 %.2f ms, p99 %.2f ms), queued %d, host CPU %.2fs, nfhelperd CPU %.2fs",
		r, sys, res.Rate, res.Transfers, res.Failures, res.Errors, res.Retransmits, res.P50, res.P99,
		s.SmallUse.Queued, s.SmallUse.HostBusy, s.SmallUse.DaemonCPU)
	return s
}

// bigOne is one big transfer of blksize bs.
func (b *bench) bigOne(ctx context.Context, sys string, r, bs, rep int) bigRes {
	br := bigRes{Blksize: bs, Rep: rep}
	opt := bs
	if bs == 512 {
		opt = 0
	}
	m0 := b.mark(ctx)
	var x xfer
	// Lockstep: the time is mostly round trips; bound it generously.
	xctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	err := topo.Do(b.tp.Client, func() error {
		var err error
		x, err = get(xctx, b.vip, bigName, opt, b.big, make([]byte, 65540))
		return err
	})
	cancel()
	br.Use = b.since(ctx, m0)
	br.Granted, br.Bytes, br.Retransmits, br.Dups = x.blksize, x.bytes, x.retransmits, x.dups
	if err != nil {
		br.Err = err.Error()
		logf("round %d %s big bs%d #%d: %v", r, sys, bs, rep, err)
		return br
	}
	br.Seconds = x.elapsed.Seconds()
	br.MBps = float64(x.bytes) / br.Seconds / 1e6
	logf("round %d %-13s big bs%d #%d: %d bytes in %.3fs (%.1f MB/s), retransmits %d, queued %d, host CPU %.2fs, nfhelperd CPU %.2fs",
		r, sys, bs, rep, x.bytes, br.Seconds, br.MBps, x.retransmits, br.Use.Queued, br.Use.HostBusy, br.Use.DaemonCPU)
	return br
}

// best is the fastest complete big transfer of blksize bs (nil: none).
func (s *sample) best(bs int) *bigRes {
	var best *bigRes
	for i := range s.Big {
		r := &s.Big[i]
		if r.Blksize == bs && r.Err == "" && r.Seconds > 0 && (best == nil || r.Seconds < best.Seconds) {
			best = r
		}
	}
	return best
}

func (b *bench) smallOpt() int {
	if b.o.smallBlk == 512 {
		return 0
	}
	return b.o.smallBlk
}

// ---- /proc ----

// nsCPU is the CPU time (utime+stime, and that of waited-for children) of
// the processes in namespace ns: the TFTP server's (tftpd-hpa forks a child
// per request).
func (b *bench) nsCPU(ctx context.Context, ns string) float64 {
	out, err := exec.CommandContext(ctx, "ip", "netns", "pids", ns).Output()
	if err != nil {
		return 0
	}
	var sum float64
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		t, _ := measure.ProcCPUChildren(pid)
		sum += t
	}
	return sum
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// ---- report ----

// metric is one figure of the comparison: its value in a sample (ok false
// where the sample lacks it).
type metric struct {
	name, unit string
	format     string
	daemonOnly bool // a is 0 by construction: no ratio
	get        func(s *sample) (float64, bool)
}

func (b *bench) metrics() []metric {
	var ms []metric
	for _, bs := range b.o.blksizes {
		big := func(s *sample) (*bigRes, bool) {
			r := s.best(bs)
			return r, r != nil
		}
		ms = append(ms,
			metric{name: fmt.Sprintf("big RRQ bs%d: time", bs), unit: "s", format: "%.3f", get: func(s *sample) (float64, bool) {
				r, ok := big(s)
				if !ok {
					return 0, false
				}
				return r.Seconds, true
			}},
			metric{name: fmt.Sprintf("big RRQ bs%d: host CPU", bs), unit: "s", format: "%.2f", get: func(s *sample) (float64, bool) {
				r, ok := big(s)
				if !ok {
					return 0, false
				}
				return r.Use.HostBusy, true
			}},
			metric{name: fmt.Sprintf("big RRQ bs%d: softirq", bs), unit: "s", format: "%.2f", get: func(s *sample) (float64, bool) {
				r, ok := big(s)
				if !ok {
					return 0, false
				}
				return r.Use.HostSoftirq, true
			}},
			metric{name: fmt.Sprintf("big RRQ bs%d: nfhelperd CPU", bs), unit: "s", format: "%.2f", daemonOnly: true, get: func(s *sample) (float64, bool) {
				r, ok := big(s)
				if !ok {
					return 0, false
				}
				return r.Use.DaemonCPU, true
			}},
			metric{name: fmt.Sprintf("big RRQ bs%d: queued pkts", bs), unit: "", format: "%.0f", daemonOnly: true, get: func(s *sample) (float64, bool) {
				r, ok := big(s)
				if !ok {
					return 0, false
				}
				return float64(r.Use.Queued), true
			}},
		)
	}
	small := func(f func(s *sample) float64) func(s *sample) (float64, bool) {
		return func(s *sample) (float64, bool) {
			if s.Small == nil || s.Small.Transfers == 0 {
				return 0, false
			}
			return f(s), true
		}
	}
	per := func(v float64, s *sample) float64 { return v / float64(s.Small.Transfers) }
	ms = append(ms,
		metric{name: "small RRQ: transfers/s", format: "%.0f", get: small(func(s *sample) float64 { return s.Small.Rate })},
		metric{name: "small RRQ: latency p50", unit: "ms", format: "%.2f", get: small(func(s *sample) float64 { return s.Small.P50 })},
		metric{name: "small RRQ: latency p99", unit: "ms", format: "%.2f", get: small(func(s *sample) float64 { return s.Small.P99 })},
		metric{name: "small RRQ: host CPU/transfer", unit: "us", format: "%.0f", get: small(func(s *sample) float64 { return per(s.SmallUse.HostBusy, s) * 1e6 })},
		metric{name: "small RRQ: softirq/transfer", unit: "us", format: "%.0f", get: small(func(s *sample) float64 { return per(s.SmallUse.HostSoftirq, s) * 1e6 })},
		metric{name: "small RRQ: host busy", unit: "%", format: "%.0f", get: small(func(s *sample) float64 {
			if s.SmallUse.Wall == 0 {
				return 0
			}
			return s.SmallUse.HostBusy / s.SmallUse.Wall * 100
		})},
		metric{name: "small RRQ: client CPU/transfer", unit: "us", format: "%.0f", get: small(func(s *sample) float64 { return per(s.SmallUse.ClientCPU, s) * 1e6 })},
		metric{name: "small RRQ: server CPU/transfer", unit: "us", format: "%.0f", get: small(func(s *sample) float64 { return per(s.SmallUse.ServerCPU, s) * 1e6 })},
		metric{name: "small RRQ: nfhelperd CPU/transfer", unit: "us", format: "%.1f", daemonOnly: true, get: small(func(s *sample) float64 { return per(s.SmallUse.DaemonCPU, s) * 1e6 })},
		metric{name: "small RRQ: queued pkts/transfer", format: "%.3f", daemonOnly: true, get: small(func(s *sample) float64 { return per(float64(s.SmallUse.Queued), s) })},
	)
	return ms
}

func (b *bench) report(samples []*sample, took time.Duration) string {
	var sb strings.Builder
	host, _ := os.Hostname()
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Fprintf(&sb, "nfhelper TFTP benchmark (tftpbench), %s, took %v\n", time.Now().UTC().Format(time.RFC3339), took.Round(time.Second))
	fmt.Fprintf(&sb, "host %s, kernel %s, %d CPUs; load average %s at the start, %s at the end (other work on the machine shares the CPUs)\n",
		host, strings.TrimSpace(string(kernel)), runtime.NumCPU(), b.startLoad, loadAvg())
	fmt.Fprintf(&sb, "client (built-in RRQ client, a fresh UDP port per transfer, every byte checked) -> %s -> %s on rs1 (%s:%d)\n",
		b.vip, b.o.server, topo.RS1V4, topo.TFTPPort)
	fmt.Fprintf(&sb, "  %s: table inet %s (ct helper, prerouting filter -150, nat prerouting DNAT), no daemon\n", systemName["kernel"], userTable)
	if b.o.beside {
		fmt.Fprintf(&sb, "  %s (its own TFTP service on %s:%d, a fresh daemon per run)\n", systemName["kernel-beside"], topo.VIP4, besidePort)
	}
	fmt.Fprintf(&sb, "  %s: rs1 only, a fresh daemon per run\n", systemName["nfhelperd"])
	fmt.Fprintf(&sb, "big: RRQ of %d bytes, block sizes %v (512: no option), the fastest of %d per system and round; small: RRQ of %d bytes (blksize %d), %d clients, %v (+%v warm-up); %d rounds, order rotated per round\n\n",
		b.o.bigSize, b.o.blksizes, b.o.bigReps, b.o.smallSize, b.o.smallBlk, b.o.workers, b.o.duration, b.o.warmup, b.o.rounds)

	// Per round.
	tw := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', tabwriter.AlignRight)
	hdr := "round\tsystem\t"
	for _, bs := range b.o.blksizes {
		hdr += fmt.Sprintf("bs%d s\tMB/s\tCPU s\tqueued\t", bs)
	}
	hdr += "xfers/s\tfail\tretr\tp50 ms\tp99 ms\tbusy\tCPU us/xfer\tsoftirq us/xfer\tnfhelperd us/xfer\tqueued/xfer\t"
	fmt.Fprintln(tw, hdr)
	for _, s := range samples {
		line := fmt.Sprintf("%d\t%s\t", s.Round, s.System)
		for _, bs := range b.o.blksizes {
			if r := s.best(bs); r != nil {
				line += fmt.Sprintf("%.3f\t%.1f\t%.2f\t%d\t", r.Seconds, r.MBps, r.Use.HostBusy, r.Use.Queued)
			} else {
				line += "-\t-\t-\t-\t"
			}
		}
		if r := s.Small; r != nil && r.Transfers > 0 {
			n := float64(r.Transfers)
			d := "-"
			if usesDaemon(s.System) {
				d = fmt.Sprintf("%.1f", s.SmallUse.DaemonCPU/n*1e6)
			}
			busy := "-"
			if s.SmallUse.Wall > 0 {
				busy = fmt.Sprintf("%.0f%%", s.SmallUse.HostBusy/s.SmallUse.Wall*100)
			}
			line += fmt.Sprintf("%.0f\t%d\t%d\t%.2f\t%.2f\t%s\t%.0f\t%.0f\t%s\t%.3f\t", r.Rate, r.Failures, r.Retransmits, r.P50, r.P99,
				busy, s.SmallUse.HostBusy/n*1e6, s.SmallUse.HostSoftirq/n*1e6, d, float64(s.SmallUse.Queued)/n)
		} else {
			line += "-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t"
		}
		fmt.Fprintln(tw, line)
	}
	tw.Flush()
	for _, s := range samples {
		if len(s.Errors) > 0 {
			fmt.Fprintf(&sb, "  round %d %s: ERRORS %s\n", s.Round, s.System, strings.Join(s.Errors, "; "))
		}
		if s.Small != nil && len(s.Small.Errors) > 0 {
			fmt.Fprintf(&sb, "  round %d %s: failed transfers %v\n", s.Round, s.System, s.Small.Errors)
		}
	}

	// Ratios b/a per round, and medians.
	byRound := map[string]map[int]*sample{}
	for _, s := range samples {
		if byRound[s.System] == nil {
			byRound[s.System] = map[int]*sample{}
		}
		byRound[s.System][s.Round] = s
	}
	sb.WriteString("\nsummary: medians over rounds; b/a (a'/a) = the median of the per-round ratios of nfhelperd (a') over the kernel's helper in the same round\n")
	tw = tabwriter.NewWriter(&sb, 0, 0, 2, ' ', tabwriter.AlignRight)
	rh := "metric\tunit\ta kernel\t"
	if b.o.beside {
		rh += "a' beside\t"
	}
	rh += "b nfhelperd\tb/a\tmin-max\t"
	if b.o.beside {
		rh += "a'/a\t"
	}
	for r := 1; r <= b.o.rounds; r++ {
		rh += fmt.Sprintf("r%d b/a\t", r)
	}
	fmt.Fprintln(tw, rh)
	for _, m := range b.metrics() {
		// values: by system, per round (ok false: none).
		med := map[string]string{}
		ratios := map[string][]float64{}
		perRound := make([]string, b.o.rounds)
		// at is the metric of system sys in round r.
		at := func(sys string) func(r int) (float64, bool) {
			return func(r int) (float64, bool) {
				if s := byRound[sys][r]; s != nil {
					return m.get(s)
				}
				return 0, false
			}
		}
		for _, sys := range b.systems {
			var v []float64
			for r := 1; r <= b.o.rounds; r++ {
				if y, ok := at(sys)(r); ok {
					v = append(v, y)
				}
			}
			if sys != "kernel" && !m.daemonOnly {
				ratios[sys] = measure.Ratios(b.o.rounds, at(sys), at("kernel"))
				if sys == "nfhelperd" {
					for r := 1; r <= b.o.rounds; r++ {
						if x, ok := measure.Ratio(r, at(sys), at("kernel")); ok {
							perRound[r-1] = fmt.Sprintf("%.3f", x)
						}
					}
				}
			}
			med[sys] = "-"
			if len(v) > 0 && (sys != "kernel" || !m.daemonOnly) {
				med[sys] = fmt.Sprintf(m.format, measure.Median(v))
			}
		}
		for i := range perRound {
			if perRound[i] == "" {
				perRound[i] = "-"
			}
		}
		line := fmt.Sprintf("%s\t%s\t%s\t", m.name, m.unit, med["kernel"])
		if b.o.beside {
			line += med["kernel-beside"] + "\t"
		}
		ratio, rng := "-", "-"
		if rs := ratios["nfhelperd"]; len(rs) > 0 {
			ratio = fmt.Sprintf("%.3f", measure.Median(rs))
			rng = fmt.Sprintf("%.3f-%.3f", slices.Min(rs), slices.Max(rs))
		}
		line += fmt.Sprintf("%s\t%s\t%s\t", med["nfhelperd"], ratio, rng)
		if b.o.beside {
			rb := "-"
			if rs := ratios["kernel-beside"]; len(rs) > 0 {
				rb = fmt.Sprintf("%.3f", measure.Median(rs))
			}
			line += rb + "\t"
		}
		fmt.Fprintln(tw, line+strings.Join(perRound, "\t")+"\t")
	}
	tw.Flush()
	tot, failed := map[string]int64{}, map[string]int64{}
	for _, s := range samples {
		if s.Small != nil {
			tot[s.System] += s.Small.Transfers
			failed[s.System] += s.Small.Failures
		}
	}
	sb.WriteString("small transfers in all:")
	for _, sys := range b.systems {
		fmt.Fprintf(&sb, " %s %d (failed %d);", sys, tot[sys], failed[sys])
	}
	sb.WriteString("\n")
	sb.WriteString("\nnotes: CPU (host busy, softirq) comes from /proc/stat for the whole machine: the client, the TFTP\n" +
		"server, the router's forwarding/NAT/helpers, nfhelperd and anything else running; softirq is where the\n" +
		"router's netfilter work runs. nfhelperd CPU = utime+stime of its process (10 ms resolution); client CPU =\n" +
		"this program's (the TFTP clients); server CPU = the processes in rs1's namespace (with waited-for children).\n" +
		"Softirq work done on a process's time slice may count in both. queued =\n" +
		"packets the router queued to nfhelperd (NFQUEUE id_sequence, all queues); its warm-up's are left out.\n" +
		"A big transfer is lockstep (one DATA, one ACK): its time is round trips, not bandwidth.\n")
	fmt.Fprintf(&sb, "\nreproduce (as root, from the module root):\n  %s\n", b.command())
	return sb.String()
}

func (b *bench) command() string {
	var bs []string
	for _, n := range b.o.blksizes {
		bs = append(bs, strconv.Itoa(n))
	}
	args := fmt.Sprintf("-rounds %d -duration %v -warmup %v -workers %d -bigsize %d -blksizes %s -bigreps %d -smallsize %d -smallblk %d -server %s -beside=%v",
		b.o.rounds, b.o.duration, b.o.warmup, b.o.workers, b.o.bigSize, strings.Join(bs, ","), b.o.bigReps, b.o.smallSize, b.o.smallBlk, b.o.server, b.o.beside)
	cmd := fmt.Sprintf("make bench-tftp TFTPBENCH_ARGS='%s'", args)
	if b.o.bin != "" && b.o.bin != os.Getenv("NFH_DAEMON_BIN") {
		cmd = fmt.Sprintf("go run ./integration/bench/tftpbench %s -bin %s", args, b.o.bin)
	} else if os.Getenv("NFH_DAEMON_BIN") != "" {
		cmd = "NFH_DAEMON_BIN=" + os.Getenv("NFH_DAEMON_BIN") + " " + cmd
	}
	return cmd
}
