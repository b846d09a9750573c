// Command queuebench measures the NFQUEUE path alone: how many packets per
// second a queue consumer answers. Run it as root from the module root
// (make bench-queue):
//
//	go run ./integration/bench/queuebench [-rounds 5] [-duration 3s] [-impls c,c-batch,nfq,...] [-queues 1,2]
//
// In a network namespace of its own (created with `ip netns add`, deleted at
// the end, also on failure or Ctrl-C) a sender floods 127.0.0.1:9999 with
// 64-byte UDP datagrams from 16 loopback source addresses. A table
// `ip queuebench` sends them from the output hook to NFQUEUE through the
// xtables target (as nfhelperd does; no fail-open, no bypass: what the
// consumer does not answer in time is dropped) and counts, in the input
// hook, every packet the consumer accepted. The rate is that counter's
// growth over -duration, after -warmup.
//
// Consumers (-impls): c and c-batch (integration/bench/cqueue on
// libnetfilter_queue, one verdict per packet or nfq_set_verdict_batch), nfq
// (package nfq, plain accept through the daemon's Handler contract),
// nfq-recvfrom (one recvfrom per datagram instead of recvmmsg),
// nfq-nobatch (no NFQNL_MSG_VERDICT_BATCH), nfq-rewrite (every packet
// accepted with an altered payload: one byte changed, UDP checksum
// cleared). With -queues 2 the rule balances over two queues by address
// hash and two consumer processes run. (Up to commit 2ee1734 there was also
// go-nfqueue: github.com/florianl/go-nfqueue/v2, the library package nfq
// used before, verdict from its callback; docs/BENCHMARKS.md has its
// figures.)
//
// Rounds alternate the consumers; the report gives, per consumer and queue
// count, the median packets/s, the spread (min-max) and the per-round
// ratios to c and c-mmsg with the same queue count, and the same for
// packets per CPU-second of the consumer processes (see report). With one
// queue the sender runs on CPU 0 and the consumer on CPU 1 (-pin).
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unsafe"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/nfq"
)

const (
	dstPort  = 9999
	table    = "queuebench"
	sources  = 16
	firstNum = 0
)

func main() {
	role := flag.String("role", "", "internal: consumer or sender")
	impl := flag.String("impl", "nfq", "internal: consumer implementation")
	num := flag.Int("queue", 0, "internal: queue number")
	rounds := flag.Int("rounds", 5, "rounds")
	duration := flag.Duration("duration", 3*time.Second, "measured time of each run")
	warmup := flag.Duration("warmup", time.Second, "unmeasured load before each run")
	impls := flag.String("impls", "c,c-batch,nfq,nfq-recvfrom,nfq-nobatch,nfq-rewrite", "consumers to measure, comma-separated")
	queues := flag.String("queues", "1,2", "queue counts to measure, comma-separated")
	cq := flag.String("cqueue", "", "the C consumer binary (default: built from integration/bench/cqueue into a temporary directory)")
	pin := flag.Bool("pin", true, "with one queue: sender on CPU 0, consumer on CPU 1")
	verbose := flag.Bool("v", false, "print the kernel's queue table and each consumer's count after each run")
	flag.Parse()
	switch *role {
	case "consumer":
		os.Exit(consume(*impl, uint16(*num)))
	case "sender":
		os.Exit(send())
	case "":
	default:
		fmt.Fprintln(os.Stderr, "queuebench: unknown role")
		os.Exit(2)
	}
	if *rounds < 1 || *duration <= 0 {
		fmt.Fprintln(os.Stderr, "queuebench: bad arguments")
		os.Exit(2)
	}
	o := options{rounds: *rounds, duration: *duration, warmup: *warmup, cqueue: *cq, pin: *pin && runtime.NumCPU() >= 2, verbose: *verbose}
	o.impls = strings.Split(*impls, ",")
	for _, s := range strings.Split(*queues, ",") {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 8 {
			fmt.Fprintln(os.Stderr, "queuebench: -queues: 1..8")
			os.Exit(2)
		}
		o.queues = append(o.queues, n)
	}
	os.Exit(run(o))
}

type options struct {
	rounds           int
	duration, warmup time.Duration
	impls            []string
	queues           []int
	cqueue           string
	pin              bool
	verbose          bool
}

type key struct {
	impl   string
	queues int
}

func run(o options) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "queuebench: needs root")
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tmp, err := os.MkdirTemp("", "queuebench")
	if err != nil {
		fmt.Fprintln(os.Stderr, "queuebench:", err)
		return 1
	}
	defer os.RemoveAll(tmp)
	if o.cqueue == "" {
		o.cqueue = filepath.Join(tmp, "cqueue")
		out, err := exec.Command("cc", "-O2", "-Wall", "-o", o.cqueue, "integration/bench/cqueue/cqueue.c", "-lnetfilter_queue").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "queuebench: building the C consumer (apt-get install build-essential libnetfilter-queue-dev): %v\n%s", err, out)
			return 1
		}
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "queuebench:", err)
		return 1
	}
	ns := fmt.Sprintf("nfqbench%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "queuebench: ip netns add: %v %s", err, out)
		return 1
	}
	defer exec.Command("ip", "netns", "delete", ns).Run()
	b := &bench{o: o, ns: ns, self: self}
	if err := b.setup(); err != nil {
		fmt.Fprintln(os.Stderr, "queuebench:", err)
		return 1
	}
	defer b.conn.CloseLasting()

	fmt.Printf("queuebench: %d rounds, %v each after %v warm-up, %d CPUs, kernel %s\n", o.rounds, o.duration, o.warmup, runtime.NumCPU(), kernel())
	results := map[key][]float64{}
	cpus := map[key][]float64{} // consumer CPU µs per packet
	for r := range o.rounds {
		for _, nq := range o.queues {
			for _, impl := range o.impls {
				if ctx.Err() != nil {
					return 1
				}
				if err := b.setQueues(nq); err != nil {
					fmt.Fprintln(os.Stderr, "queuebench:", err)
					return 1
				}
				pps, err := b.measure(ctx, impl, nq)
				if err != nil {
					fmt.Fprintf(os.Stderr, "queuebench: %s, %d queue(s): %v\n", impl, nq, err)
					return 1
				}
				fmt.Printf("round %d  %-13s queues %d  %9.0f packets/s  consumer CPU %4.2f  %5.2f µs/packet\n", r+1, impl, nq, pps, b.lastCPU, b.lastCPU/pps*1e6)
				k := key{impl, nq}
				results[k] = append(results[k], pps)
				cpus[k] = append(cpus[k], b.lastCPU/pps*1e6)
			}
		}
	}
	report(os.Stdout, o, results, cpus)
	return 0
}

func kernel() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "?"
	}
	return unix.ByteSliceToString(u.Release[:])
}

type bench struct {
	o    options
	ns   string
	self string
	conn *nftables.Conn
	out  *nftables.Chain
	in   *nftables.Chain
	tbl  *nftables.Table
	// lastCPU is the CPU time the consumers used in the last run, per
	// second of it (1 = one CPU busy).
	lastCPU float64
}

// cpuTime is the CPU time in seconds (user and system) the processes used.
func cpuTime(ps []*proc) float64 {
	var ticks uint64
	for _, p := range ps {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
		if err != nil {
			continue
		}
		// Fields after the command name (which ends with the last ')'):
		// utime and stime are the 12th and 13th.
		s := string(data)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 12 {
			u, _ := strconv.ParseUint(f[11], 10, 64)
			st, _ := strconv.ParseUint(f[12], 10, 64)
			ticks += u + st
		}
	}
	return float64(ticks) / 100 // USER_HZ
}

// setup brings up loopback and creates the table in the namespace.
func (b *bench) setup() error {
	if out, err := exec.Command("ip", "-n", b.ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("lo up: %v %s", err, out)
	}
	f, err := os.Open("/run/netns/" + b.ns)
	if err != nil {
		return err
	}
	defer f.Close()
	b.conn, err = nftables.New(nftables.WithNetNSFd(int(f.Fd())), nftables.AsLasting())
	if err != nil {
		return err
	}
	b.tbl = b.conn.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: table})
	pol := nftables.ChainPolicyAccept
	b.out = b.conn.AddChain(&nftables.Chain{Name: "out", Table: b.tbl, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &pol})
	b.in = b.conn.AddChain(&nftables.Chain{Name: "in", Table: b.tbl, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &pol})
	b.conn.AddRule(&nftables.Rule{Table: b.tbl, Chain: b.in, Exprs: append(matchUDP(),
		&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})})
	return b.conn.Flush()
}

// matchUDP matches UDP to dstPort.
func matchUDP() []expr.Any {
	port := make([]byte, 2)
	binary.BigEndian.PutUint16(port, dstPort)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port},
	}
}

// setQueues replaces the output rule: to queues 0..n-1 by the xtables
// NFQUEUE target (queue number, count, flags in host byte order).
func (b *bench) setQueues(n int) error {
	b.conn.FlushChain(b.out)
	info := make(xt.Unknown, 6)
	binary.NativeEndian.PutUint16(info[0:], firstNum)
	binary.NativeEndian.PutUint16(info[2:], uint16(n))
	binary.NativeEndian.PutUint16(info[4:], 0)
	b.conn.AddRule(&nftables.Rule{Table: b.tbl, Chain: b.out, Exprs: append(matchUDP(),
		&expr.Target{Name: "NFQUEUE", Rev: 3, Info: &info})})
	return b.conn.Flush()
}

// accepted reads the input counter.
func (b *bench) accepted() (uint64, error) {
	rules, err := b.conn.GetRules(b.tbl, b.in)
	if err != nil {
		return 0, err
	}
	for _, r := range rules {
		for _, e := range r.Exprs {
			if c, ok := e.(*expr.Counter); ok {
				return c.Packets, nil
			}
		}
	}
	return 0, errors.New("no counter")
}

// proc is a process in the namespace.
type proc struct {
	cmd *exec.Cmd
	out *bufio.Reader
}

func (b *bench) start(cpu int, args ...string) (*proc, error) {
	full := []string{"netns", "exec", b.ns}
	if cpu >= 0 {
		full = append(full, "taskset", "-c", strconv.Itoa(cpu))
	}
	cmd := exec.Command("ip", append(full, args...)...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &proc{cmd: cmd, out: bufio.NewReader(out)}, nil
}

// stop ends p and returns what it printed last.
func (p *proc) stop() string {
	p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	var last string
	go func() {
		defer close(done)
		rest, _ := io.ReadAll(p.out)
		last = strings.TrimSpace(string(rest))
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
	p.cmd.Wait()
	return last
}

func (b *bench) measure(ctx context.Context, impl string, nq int) (float64, error) {
	senderCPU, consumerCPU := -1, -1
	if b.o.pin && nq == 1 {
		senderCPU, consumerCPU = 0, 1
	}
	var consumers []*proc
	defer func() {
		for _, c := range consumers {
			c.stop()
		}
	}()
	for i := range nq {
		var args []string
		switch impl {
		case "c":
			args = []string{b.o.cqueue, strconv.Itoa(firstNum + i)}
		case "c-batch":
			args = []string{b.o.cqueue, strconv.Itoa(firstNum + i), "batch"}
		case "c-mmsg":
			args = []string{b.o.cqueue, strconv.Itoa(firstNum + i), "mmsg"}
		default:
			args = []string{b.self, "-role", "consumer", "-impl", impl, "-queue", strconv.Itoa(firstNum + i)}
		}
		p, err := b.start(consumerCPU, args...)
		if err != nil {
			return 0, err
		}
		consumers = append(consumers, p)
		line, err := p.out.ReadString('\n')
		if strings.TrimSpace(line) != "ready" {
			return 0, fmt.Errorf("consumer did not start: %q %v", line, err)
		}
	}
	sender, err := b.start(senderCPU, b.self, "-role", "sender")
	if err != nil {
		return 0, err
	}
	defer sender.stop()
	select {
	case <-time.After(b.o.warmup):
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	c0, err := b.accepted()
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	cpu0 := cpuTime(consumers)
	select {
	case <-time.After(b.o.duration):
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	c1, err := b.accepted()
	if err != nil {
		return 0, err
	}
	el := time.Since(t0)
	b.lastCPU = (cpuTime(consumers) - cpu0) / el.Seconds()
	if b.o.verbose {
		st, _ := exec.Command("ip", "netns", "exec", b.ns, "cat", nfq.ProcQueueStats).Output()
		fmt.Printf("  kernel queues: %s", st)
		for _, c := range consumers {
			fmt.Printf("  consumer: %s\n", c.stop())
		}
		consumers = nil
	}
	return float64(c1-c0) / el.Seconds(), nil
}

// report prints two tables. Packets/s: what the consumer answered per
// second of the run. Packets per CPU-second: the same divided by the CPU
// time the consumer processes used (user and system time, which includes
// the kernel's verdict and reinjection work done in their system calls):
// the rate one fully available CPU would give, the figure that stays
// comparable when other load on the machine takes CPU time from the
// consumer. Ratios are per round, to the C consumers of the same round and
// queue count; min/max are over the rounds.
func report(w io.Writer, o options, results, cpus map[key][]float64) {
	capacity := map[key][]float64{}
	for k, v := range results {
		for i := range v {
			capacity[k] = append(capacity[k], v[i]/(cpus[k][i]*v[i]/1e6)) // packets per CPU-second
		}
	}
	table := func(title string, m map[key][]float64) {
		fmt.Fprintf(w, "\n%s\n", title)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "consumer\tqueues\tmedian\tmin\tmax\tto c: median\tmin\tmax\tto c-mmsg: median\tmin\tmax\t")
		for _, nq := range o.queues {
			for _, impl := range o.impls {
				v := m[key{impl, nq}]
				if len(v) == 0 {
					continue
				}
				line := fmt.Sprintf("%s\t%d\t%.0f\t%.0f\t%.0f\t", impl, nq, median(v), slices.Min(v), slices.Max(v))
				for _, ref := range []string{"c", "c-mmsg"} {
					base := m[key{ref, nq}]
					if len(base) != len(v) {
						line += "-\t-\t-\t"
						continue
					}
					ratios := make([]float64, len(v))
					for i := range v {
						ratios[i] = v[i] / base[i]
					}
					line += fmt.Sprintf("%.2f\t%.2f\t%.2f\t", median(ratios), slices.Min(ratios), slices.Max(ratios))
				}
				fmt.Fprintln(tw, line)
			}
		}
		tw.Flush()
	}
	table("packets/s", results)
	table("packets per consumer CPU-second", capacity)
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// consume is a consumer process: bind, print "ready", answer until
// SIGTERM, print how many packets it answered.
func consume(impl string, num uint16) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var answered uint64
	cfg := nfq.Config{Num: num, MaxLen: 4096}
	switch impl {
	case "nfq-recvfrom":
		cfg.NoRecvmmsg = true
	case "nfq-nobatch":
		cfg.NoBatchVerdict = true
	}
	q, err := nfq.Open(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var h nfq.Handler
	switch impl {
	case "nfq", "nfq-recvfrom", "nfq-nobatch":
		h = func(id uint32, pkt []byte, mark uint32) {
			answered++
			q.Accept(id, false, 0, nil)
		}
	case "nfq-rewrite":
		buf := make([]byte, 0, 0xffff)
		h = func(id uint32, pkt []byte, mark uint32) {
			answered++
			buf = append(buf[:0], pkt...)
			if len(buf) >= 29 && buf[9] == unix.IPPROTO_UDP {
				ihl := int(buf[0]&0xf) * 4
				if len(buf) > ihl+8 {
					buf[ihl+8] ^= 0xff            // first payload byte
					buf[ihl+6], buf[ihl+7] = 0, 0 // no UDP checksum
				}
			}
			q.Accept(id, false, 0, buf)
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown consumer", impl)
		return 2
	}
	done, err := q.Start(ctx, h)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	err = <-done
	fmt.Printf("answered %d read_errors %d verdict_errors %d\n", answered, q.ReadErrors.Load(), q.VerdictErrors.Load())
	q.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// send floods 127.0.0.1:dstPort from 127.0.0.2.. with sendmmsg until
// SIGTERM.
func send() int {
	var fds []int
	for i := range sources {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		src := netip.AddrFrom4([4]byte{127, 0, 0, byte(2 + i)})
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src.As4()}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: dstPort}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fds = append(fds, fd)
	}
	type mmsghdr struct {
		Hdr unix.Msghdr
		Len uint32
	}
	const batch = 32
	payload := make([]byte, 64)
	iov := unix.Iovec{Base: &payload[0]}
	iov.SetLen(len(payload))
	msgs := make([]mmsghdr, batch)
	for i := range msgs {
		msgs[i].Hdr.Iov = &iov
		msgs[i].Hdr.SetIovlen(1)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	fmt.Println("ready")
	for i := 0; ; i++ {
		if i%1024 == 0 {
			select {
			case <-sig:
				return 0
			default:
			}
		}
		fd := fds[i%len(fds)]
		unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), batch, 0, 0, 0)
	}
}
