// Command ftpload measures the FTP session rate through one address: each of
// -workers goroutines logs in (anonymous), fetches -file over one data
// connection (-mode pasv, epsv, port or eprt), checks its size (and
// -sha256), quits, and starts over until -duration has passed or -sessions
// sessions are done.
// -bind gives local addresses for the control connections, used in turn
// (the data connections follow them). A passive session fails whose data
// connection goes elsewhere than its control connection (a 227 that named a
// balancer's real server). It prints one JSON line:
//
//	{"label":"…","sessions":1234,"failures":0,"elapsed_s":10.0,"sessions_per_s":123.4,"p50_ms":…,"p99_ms":…,"longest_stall_ms":…,"errors":{…}}
//
// longest_stall_ms is the longest time between two sessions' successful
// ends: how long the service stopped (a router failing over, say).
// and each failure whole on stderr, with its time, the time the session
// started and its session number (the ports it names lead to the kernel's
// expectations and conntrack events). -trace writes each counted session's
// control and data connections' addresses to a file, for tests that look
// them up in conntrack. SIGTERM or SIGINT ends the run early
// (sessions cut off are not counted) and the result is printed as usual.
//
// Run it inside the client namespace (ip netns exec NS ftpload ...): the
// data connections are dialled from the process's own namespace. The
// reference report (integration/reference) uses it.
package main

import (
	"bufio"
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
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nfhelper/nfhelper/integration/ftpclient"
)

type result struct {
	Label    string           `json:"label,omitempty"`
	Sessions int64            `json:"sessions"`
	Failures int64            `json:"failures"`
	Elapsed  float64          `json:"elapsed_s"`
	Rate     float64          `json:"sessions_per_s"`
	P50      float64          `json:"p50_ms"`
	P99      float64          `json:"p99_ms"`
	Stall    float64          `json:"longest_stall_ms"`
	Errors   map[string]int64 `json:"errors,omitempty"`
}

func main() {
	addrs := flag.String("addr", "", "comma-separated host:port addresses, used in turn")
	mode := flag.String("mode", "pasv", "pasv, epsv, port or eprt")
	sessions := flag.Int64("sessions", 0, "stop after this many sessions (0: run for -duration)")
	bind := flag.String("bind", "", "comma-separated local addresses for the control connections, used in turn")
	file := flag.String("file", "small.bin", "file to fetch")
	size := flag.Int64("size", -1, "expected size of the file (-1: any)")
	sum := flag.String("sha256", "", "expected sha256 of the file, hex (empty: not checked)")
	workers := flag.Int("workers", 8, "concurrent sessions")
	duration := flag.Duration("duration", 10*time.Second, "how long to run")
	timeout := flag.Duration("timeout", 10*time.Second, "timeout of each protocol step")
	label := flag.String("label", "", "copied into the result")
	trace := flag.String("trace", "", "write one line per counted session to this file: control local and remote address, data local and remote address, ok or the error")
	flag.Parse()
	if *addrs == "" || *workers < 1 || *duration <= 0 || *duration > time.Hour || *sessions < 0 {
		fmt.Fprintln(os.Stderr, "ftpload: -addr required; workers >= 1; 0 < duration <= 1h; sessions >= 0")
		os.Exit(2)
	}
	m, err := ftpclient.ParseMode(*mode)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ftpload: -mode must be pasv, epsv, port or eprt")
		os.Exit(2)
	}
	locals, err := parseBind(*bind)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ftpload: -bind:", err)
		os.Exit(2)
	}
	l := &load{
		targets: strings.Split(*addrs, ","), locals: locals, mode: m,
		file: *file, size: *size, sum: strings.ToLower(*sum), timeout: *timeout, workers: *workers, sessions: *sessions,
		res: result{Label: *label, Errors: map[string]int64{}},
	}
	if *trace != "" {
		f, err := os.Create(*trace)
		if err != nil {
			fmt.Fprintln(os.Stderr, "ftpload: -trace:", err)
			os.Exit(2)
		}
		defer f.Close()
		l.trace = bufio.NewWriter(f)
		defer l.trace.Flush()
	}
	// A test that has seen what it needs stops the load with a signal.
	sigCtx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithTimeout(sigCtx, *duration)
	defer cancel()
	out, _ := json.Marshal(l.run(ctx))
	fmt.Println(string(out))
}

// parseBind reads -bind: local addresses, comma-separated ("": none).
func parseBind(s string) ([]net.IP, error) {
	var locals []net.IP
	if s == "" {
		return nil, nil
	}
	for _, a := range strings.Split(s, ",") {
		ip := net.ParseIP(a)
		if ip == nil {
			return nil, fmt.Errorf("%q is no address", a)
		}
		locals = append(locals, ip)
	}
	return locals, nil
}

// load is one run: what each session does, and the tally.
type load struct {
	targets  []string
	locals   []net.IP
	mode     ftpclient.Mode
	file     string
	size     int64
	sum      string // hex sha256, "" unchecked
	timeout  time.Duration
	workers  int
	sessions int64
	// started counts sessions begun, so that -sessions ends the run at
	// exactly that many.
	started atomic.Int64

	mu        sync.Mutex
	res       result
	latencies []time.Duration
	trace     *bufio.Writer // nil: no -trace
	ends      []time.Time   // of the successful sessions, in order
}

// run runs the workers' sessions until ctx's deadline (or -sessions) and
// returns the result.
func (l *load) run(ctx context.Context) result {
	end, _ := ctx.Deadline()
	// A step cut off by the deadline can return before ctx's own timer has
	// fired: the clock, not ctx.Err, decides whether a session counts.
	over := func() bool { return ctx.Err() != nil || !time.Now().Before(end) }
	start := time.Now()
	var wg sync.WaitGroup
	for w := range l.workers {
		wg.Go(func() { l.worker(ctx, w, over) })
	}
	wg.Wait()
	res := l.res
	res.Elapsed = time.Since(start).Seconds()
	res.Rate = float64(res.Sessions) / res.Elapsed
	if len(l.latencies) > 0 {
		slices.Sort(l.latencies)
		q := func(p float64) float64 {
			return float64(l.latencies[min(len(l.latencies)-1, int(p*float64(len(l.latencies))))].Microseconds()) / 1000
		}
		res.P50, res.P99 = q(0.50), q(0.99)
	}
	for i := 1; i < len(l.ends); i++ {
		res.Stall = max(res.Stall, float64(l.ends[i].Sub(l.ends[i-1]).Microseconds())/1000)
	}
	if len(res.Errors) == 0 {
		res.Errors = nil
	}
	return res
}

// worker w runs sessions w, w+workers, ... one after the other.
func (l *load) worker(ctx context.Context, w int, over func() bool) {
	for i := w; !over(); i += l.workers {
		if l.sessions > 0 && l.started.Add(1) > l.sessions {
			return
		}
		t0 := time.Now()
		d := &net.Dialer{}
		if len(l.locals) > 0 {
			d.LocalAddr = &net.TCPAddr{IP: l.locals[i%len(l.locals)]}
		}
		var tr sessionTrace
		err := session(ctx, l.targets[i%len(l.targets)], d, l.mode, l.file, l.size, l.sum, l.timeout, &tr)
		if over() {
			return // cut off by the end of the run: not counted
		}
		l.mu.Lock()
		if l.trace != nil {
			status := "ok"
			if err != nil {
				status = strconv.Quote(err.Error())
			}
			fmt.Fprintf(l.trace, "%s %s %s %s %s\n", or(tr.ctlLocal), or(tr.ctlRemote), or(tr.dataLocal), or(tr.dataPeer), status)
		}
		if err != nil {
			l.res.Failures++
			l.res.Errors[errKind(err)]++
			fmt.Fprintf(os.Stderr, "%s session %d (started %s): %v\n", time.Now().Format("15:04:05.000000"), i, t0.Format("15:04:05.000000"), err)
		} else {
			l.res.Sessions++
			now := time.Now()
			l.latencies = append(l.latencies, now.Sub(t0))
			l.ends = append(l.ends, now)
		}
		l.mu.Unlock()
	}
}

// sessionTrace is what -trace writes of a session: the addresses of its
// connections ("" where it got no such connection).
type sessionTrace struct{ ctlLocal, ctlRemote, dataLocal, dataPeer string }

func or(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func session(ctx context.Context, addr string, d *net.Dialer, mode ftpclient.Mode, file string, size int64, sum string, timeout time.Duration, tr *sessionTrace) error {
	// The greeting too is a step: a control connection that stalls before
	// it must not outlast -timeout (or a SIGTERM by ftpclient's default).
	dctx, cancel := context.WithTimeout(ctx, timeout)
	c, err := ftpclient.DialWith(dctx, addr, d)
	cancel()
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	tr.ctlLocal, tr.ctlRemote = c.LocalAddr().String(), c.RemoteAddr().String()
	defer func() { tr.dataLocal, tr.dataPeer = c.LastDataLocal, c.LastDataPeer }()
	c.Mode, c.Timeout = mode, timeout
	if err := c.Login(ctx, "", ""); err != nil {
		return fmt.Errorf("login: %w", err)
	}
	h := sha256.New()
	n, err := c.RetrTo(ctx, file, h)
	if err != nil {
		return fmt.Errorf("retr: %w", err)
	}
	if size >= 0 && n != size {
		return fmt.Errorf("retr: got %d bytes, want %d", n, size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); sum != "" && got != sum {
		return fmt.Errorf("retr: sha256 %s, want %s", got, sum)
	}
	// A 227 naming another host than the one the client talks to (a
	// balancer's real server) is a leak, even where that host answers.
	if mode.Passive() {
		if peer, err := netip.ParseAddrPort(c.LastDataPeer); err != nil || peer.Addr().Unmap() != netip.MustParseAddrPort(c.RemoteAddr().String()).Addr().Unmap() {
			return errors.New("retr: data connection not to the control connection's peer")
		}
	}
	return c.Quit(ctx)
}

// errKind shortens an error to its stage and its innermost cause, for
// counting ("dial: connection refused").
func errKind(err error) string {
	msg := err.Error()
	stage, _, _ := strings.Cut(msg, ":")
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		return stage + ": " + msg[i+2:]
	}
	return msg
}
