package health_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/health"
	_ "github.com/nfhelper/nfhelper/helpers/ftp"
	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/nfq/nfqtest"
	"github.com/nfhelper/nfhelper/nfq/packet"
)

// benchTargets is the benchmark's number of real servers, each with a 1 s
// tcp check to a listener of its own.
const benchTargets = 1000

// listenersEnv makes the test binary, run again, serve the listeners: the
// accepting side then costs this process nothing, and its CPU time is the
// monitor's (and the Go runtime's under it).
const listenersEnv = "NFHELPER_HEALTH_BENCH_LISTENERS"

func TestMain(m *testing.M) {
	if n, err := strconv.Atoi(os.Getenv(listenersEnv)); err == nil {
		serveListeners(n)
		return
	}
	os.Exit(m.Run())
}

// serveListeners opens n listeners on 127.0.0.1, prints their ports, and
// accepts and closes connections until its standard input ends.
func serveListeners(n int) {
	w := bufio.NewWriter(os.Stdout)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Fprintln(w, l.Addr().(*net.TCPAddr).Port)
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	w.Flush()
	bufio.NewReader(os.Stdin).ReadString('\n') // until EOF
}

var (
	listenOnce  sync.Once
	listenAddrs []netip.AddrPort
	listenErr   error
	// listenStdin is held open: the process ends when it closes.
	listenStdin io.WriteCloser
)

// listeners starts the listener process once for the whole run (it ends
// with the test binary, when its standard input closes).
func listeners(b *testing.B) []netip.AddrPort {
	listenOnce.Do(func() {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), listenersEnv+"="+strconv.Itoa(benchTargets))
		cmd.Stderr = os.Stderr
		if listenStdin, listenErr = cmd.StdinPipe(); listenErr != nil {
			return
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			listenErr = err
			return
		}
		if listenErr = cmd.Start(); listenErr != nil {
			return
		}
		sc := bufio.NewScanner(out)
		for len(listenAddrs) < benchTargets && sc.Scan() {
			p, err := strconv.Atoi(sc.Text())
			if err != nil {
				listenErr = err
				return
			}
			listenAddrs = append(listenAddrs, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(p)))
		}
		if len(listenAddrs) < benchTargets {
			listenErr = fmt.Errorf("listener process: %d ports of %d: %v", len(listenAddrs), benchTargets, sc.Err())
		}
	})
	if listenErr != nil {
		b.Fatal(listenErr)
	}
	return listenAddrs
}

// monitor runs a monitor of 1 s tcp checks to every listener until the
// returned func is called, after a warm-up: the first checks are spread
// over the first interval.
func monitor(b *testing.B) (*health.Monitor, func()) {
	var targets []health.Target
	for i, a := range listeners(b) {
		k := health.Key{Service: "bench", Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 21)}
		targets = append(targets, health.Target{Key: k, Up: true, Spec: health.Spec{
			Type: "tcp", Addr: a, Interval: time.Second, Timeout: time.Second, Rise: 2, Fall: 3}})
	}
	m := health.New(func(c health.Change) { b.Errorf("change %+v", c) })
	m.Set(targets)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	time.Sleep(1500 * time.Millisecond)
	return m, func() { cancel(); <-done }
}

func checks(m *health.Monitor) (n uint64) {
	m.Each(func(_ health.Key, s health.Status) { n += s.Checks })
	return n
}

// cpuTime is this process's user and system CPU time so far.
func cpuTime() (user, sys time.Duration) {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

// BenchmarkMonitorCPU: the CPU time (user + system, this process) the
// monitor of 1,000 targets with 1 s tcp checks costs per second of wall
// time. Each iteration is one second: -benchtime 5x measures five.
func BenchmarkMonitorCPU(b *testing.B) {
	m, stop := monitor(b)
	defer stop()
	user0, sys0 := cpuTime()
	n0, t0 := checks(m), time.Now()
	for b.Loop() {
		time.Sleep(time.Second)
	}
	user, sys := cpuTime()
	wall := time.Since(t0).Seconds()
	perSecond := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / wall }
	b.ReportMetric(perSecond(user+sys-user0-sys0), "cpu-ms/s")
	b.ReportMetric(perSecond(sys-sys0), "sys-ms/s")
	b.ReportMetric(float64(checks(m)-n0)/wall, "checks/s")
}

// BenchmarkProcessWithChecks runs the per-packet verdict path (a client ACK
// on an established connection through the VIP, as ipvs's
// BenchmarkProcess/plain) without and with the monitor of
// BenchmarkMonitorCPU running, in one run so that the two compare.
func BenchmarkProcessWithChecks(b *testing.B) {
	w, pkt := plainPath(b)
	listeners(b)
	loop := func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			w.Process(pkt, 0)
		}
	}
	b.Run("without", loop)
	b.Run("with", func(b *testing.B) {
		_, stop := monitor(b)
		defer stop()
		loop(b)
	})
}

// plainPath is a worker with an FTP control connection through the VIP,
// and a client ACK on it with nothing to rewrite.
func plainPath(b *testing.B) (*ipvs.Worker, []byte) {
	var (
		client = netip.MustParseAddrPort("203.0.113.2:40000")
		vip    = netip.MustParseAddrPort("198.51.100.10:21")
		rs     = netip.MustParseAddrPort("10.0.0.11:21")
	)
	const isn, ack = 5000, packet.FlagACK
	seg := func(src, dst netip.AddrPort, seq, ackn uint32, flags uint8, payload string) []byte {
		return nfqtest.Build(nfqtest.Segment{Src: src, Dst: dst, Seq: seq, Ack: ackn, Flags: flags, Payload: []byte(payload)})
	}
	h, _ := ipvs.LookupHelper("ftp")
	svc, err := ipvs.NewService("ftp", vip, "rr", h, []*ipvs.RealServer{{Addr: rs, Weight: 1, Mark: 1 << 16}})
	if err != nil {
		b.Fatal(err)
	}
	e, err := ipvs.NewEngine([]*ipvs.Service{svc}, ipvs.Options{MarkMask: 0x00ff0000, Datapath: ipvs.DatapathCompat})
	if err != nil {
		b.Fatal(err)
	}
	w := e.NewWorker()
	w.Process(seg(client, vip, 100, 0, packet.FlagSYN, ""), 0)
	w.Process(seg(rs, client, isn, 101, packet.FlagSYN|ack, ""), 0)
	w.Process(seg(client, rs, 101, isn+1, packet.FlagPSH|ack, "NOOP\r\n"), 0)
	w.Process(seg(rs, client, isn+1, 107, packet.FlagPSH|ack, "200 NOOP ok.\r\n"), 0)
	return w, seg(client, rs, 107, isn+16, ack, "")
}
