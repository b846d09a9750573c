// Command connbench is a small TCP connection-rate load generator and the
// matching test server, for the end-to-end benchmark (integration/bench).
// Run it inside a network namespace (ip netns exec NS connbench ...).
//
// Client (default): -workers goroutines each connect to -addr, read the
// server's banner (or, with -mode echo, write -size bytes and read them back;
// with -mode connect, do nothing), close with SO_LINGER 0 (a reset, so that
// neither side keeps TIME_WAIT state) and start over, until -duration has
// passed or -n connections were made. It prints one JSON line: connections/s,
// failures by kind, latency percentiles of connect + first byte, and how many
// connections each banner (real server) answered. With -src each worker
// binds its connections to those local addresses in turn.
//
//	connbench -addr 198.51.100.10:8080 -workers 64 -duration 5s
//
// Server (-serve ADDR): accepts connections; -mode banner (default) writes
// -banner and a newline and closes, -mode echo reads once, writes back what
// it read and closes. It runs until killed.
//
//	connbench -serve :8080 -banner rs1
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// maxDuration bounds every client run, whatever -duration or -n say.
const maxDuration = 10 * time.Minute

func main() {
	var (
		serve    = flag.String("serve", "", "run the test server on this address instead of the client")
		banner   = flag.String("banner", "hello", "server: banner to send")
		addr     = flag.String("addr", "", "client: address to connect to (host:port)")
		workers  = flag.Int("workers", 32, "client: concurrent connections")
		duration = flag.Duration("duration", 5*time.Second, "client: how long to run (at most "+maxDuration.String()+")")
		count    = flag.Int64("n", 0, "client: stop after this many connections (0: only -duration bounds the run)")
		timeout  = flag.Duration("timeout", 3*time.Second, "client: per-connection timeout")
		mode     = flag.String("mode", "banner", "banner, echo or connect (client); banner or echo (server)")
		size     = flag.Int("size", 16, "client, -mode echo: bytes to write")
		label    = flag.String("label", "", "client: copied into the JSON result")
		src      = flag.String("src", "", "client: comma-separated local addresses; each worker uses them in turn, one per connection (schedulers that hash the source see many clients)")
	)
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "connbench: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	if *serve != "" {
		// runServer serves until it fails.
		fmt.Fprintln(os.Stderr, "connbench:", runServer(*serve, *mode, *banner))
		os.Exit(1)
	}
	cfg := clientConfig{
		addr: *addr, workers: *workers, duration: *duration, count: *count,
		timeout: *timeout, mode: *mode, size: *size, label: *label,
	}
	for _, a := range strings.Split(*src, ",") {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		ip := net.ParseIP(a)
		if ip == nil {
			fmt.Fprintf(os.Stderr, "connbench: -src %q: not an address\n", a)
			os.Exit(2)
		}
		cfg.srcs = append(cfg.srcs, &net.TCPAddr{IP: ip})
	}
	if err := cfg.check(); err != nil {
		fmt.Fprintln(os.Stderr, "connbench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res := runClient(ctx, cfg)
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
	if res.Conns == 0 {
		os.Exit(1)
	}
}

// ---- server ----

func runServer(addr, mode, banner string) error {
	if mode != "banner" && mode != "echo" {
		return fmt.Errorf("server -mode %q: want banner or echo", mode)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	msg := []byte(banner + "\n")
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if errors.Is(err, syscall.ECONNABORTED) {
				continue
			}
			return err
		}
		go serveConn(c, mode, msg)
	}
}

func serveConn(c net.Conn, mode string, msg []byte) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	switch mode {
	case "banner":
		_, _ = c.Write(msg)
	case "echo":
		buf := make([]byte, 4096)
		n, err := c.Read(buf)
		if n > 0 {
			_, _ = c.Write(buf[:n])
		}
		_ = err
	}
}

// ---- client ----

type clientConfig struct {
	addr     string
	workers  int
	duration time.Duration
	count    int64
	timeout  time.Duration
	mode     string
	size     int
	label    string
	srcs     []*net.TCPAddr // local addresses, in turn; none: the kernel's choice
}

func (c *clientConfig) check() error {
	switch {
	case c.addr == "":
		return errors.New("-addr is required (or -serve for the server)")
	case c.workers < 1 || c.workers > 10000:
		return fmt.Errorf("-workers %d: want 1..10000", c.workers)
	case c.duration <= 0 || c.duration > maxDuration:
		return fmt.Errorf("-duration %v: want > 0 and <= %v", c.duration, maxDuration)
	case c.count < 0:
		return errors.New("-n must not be negative")
	case c.timeout <= 0:
		return errors.New("-timeout must be positive")
	case c.size < 1 || c.size > 4096:
		return fmt.Errorf("-size %d: want 1..4096", c.size)
	}
	switch c.mode {
	case "banner", "echo", "connect":
	default:
		return fmt.Errorf("-mode %q: want banner, echo or connect", c.mode)
	}
	return nil
}

// Result is the JSON line the client prints.
type Result struct {
	Label       string           `json:"label,omitempty"`
	Addr        string           `json:"addr"`
	Mode        string           `json:"mode"`
	Workers     int              `json:"workers"`
	Elapsed     float64          `json:"elapsed_s"`
	Conns       int64            `json:"conns"`    // completed successfully
	Failures    int64            `json:"failures"` // failed before the end of the run
	Cut         int64            `json:"cut"`      // in flight when the run ended, not counted
	ConnsPerSec float64          `json:"conns_per_s"`
	P50         float64          `json:"p50_us"` // connect + first byte (connect only in -mode connect)
	P90         float64          `json:"p90_us"`
	P99         float64          `json:"p99_us"`
	Max         float64          `json:"max_us"`
	Errors      map[string]int64 `json:"errors,omitempty"`
	ByBanner    map[string]int64 `json:"by_banner,omitempty"`
}

type worker struct {
	lat      []time.Duration
	errs     map[string]int64
	banners  map[string]int64
	conns    int64
	failures int64
	cut      int64
}

func runClient(parent context.Context, cfg clientConfig) Result {
	start := time.Now()
	end := start.Add(cfg.duration)
	ctx, cancel := context.WithDeadline(parent, end)
	defer cancel()

	// The end is checked on the clock too: a dial or read whose deadline
	// (the end) has passed fails at once, possibly before ctx says so.
	ended := func() bool { return ctx.Err() != nil || !time.Now().Before(end) }
	var issued atomic.Int64
	take := func() bool {
		if ended() {
			return false
		}
		if cfg.count > 0 && issued.Add(1) > cfg.count {
			return false
		}
		return true
	}
	payload := []byte(strings.Repeat("x", cfg.size))
	ws := make([]*worker, cfg.workers)
	var wg sync.WaitGroup
	for i := range ws {
		w := &worker{errs: map[string]int64{}, banners: map[string]int64{}}
		ws[i] = w
		wg.Go(func() {
			d := net.Dialer{Timeout: cfg.timeout}
			buf := make([]byte, 4096)
			for k := i; take(); k++ {
				if len(cfg.srcs) > 0 {
					d.LocalAddr = cfg.srcs[k%len(cfg.srcs)]
				}
				lat, banner, err := w.one(ctx, &d, cfg, payload, buf)
				switch {
				case err == nil:
					w.conns++
					w.lat = append(w.lat, lat)
					if banner != "" {
						w.banners[banner]++
					}
				case ended():
					w.cut++
				default:
					w.failures++
					w.errs[errKind(err)]++
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if cfg.count == 0 || elapsed > cfg.duration {
		// Connections still in flight at the deadline are not counted, so
		// the rate is over the nominal duration.
		elapsed = min(elapsed, cfg.duration)
	}

	res := Result{Label: cfg.label, Addr: cfg.addr, Mode: cfg.mode, Workers: cfg.workers, Elapsed: elapsed.Seconds(),
		Errors: map[string]int64{}, ByBanner: map[string]int64{}}
	var all []time.Duration
	for _, w := range ws {
		res.Conns += w.conns
		res.Failures += w.failures
		res.Cut += w.cut
		all = append(all, w.lat...)
		for k, v := range w.errs {
			res.Errors[k] += v
		}
		for k, v := range w.banners {
			res.ByBanner[k] += v
		}
	}
	if elapsed > 0 {
		res.ConnsPerSec = float64(res.Conns) / elapsed.Seconds()
	}
	slices.Sort(all)
	res.P50, res.P90, res.P99 = pct(all, 0.50), pct(all, 0.90), pct(all, 0.99)
	if len(all) > 0 {
		res.Max = us(all[len(all)-1])
	}
	return res
}

// one makes one connection. lat is connect + first byte.
func (w *worker) one(ctx context.Context, d *net.Dialer, cfg clientConfig, payload, buf []byte) (lat time.Duration, banner string, err error) {
	t0 := time.Now()
	c, err := d.DialContext(ctx, "tcp", cfg.addr)
	if err != nil {
		return 0, "", fmt.Errorf("dial: %w", err)
	}
	tc := c.(*net.TCPConn)
	// A reset on close: no TIME_WAIT on either side, no FIN exchange.
	defer func() {
		_ = tc.SetLinger(0)
		_ = tc.Close()
	}()
	dl := t0.Add(cfg.timeout)
	if e, ok := ctx.Deadline(); ok && e.Before(dl) {
		dl = e
	}
	_ = tc.SetDeadline(dl)
	switch cfg.mode {
	case "connect":
		return time.Since(t0), "", nil
	case "echo":
		if _, err := tc.Write(payload); err != nil {
			return 0, "", fmt.Errorf("write: %w", err)
		}
		n, err := io.ReadAtLeast(tc, buf, 1)
		if err != nil {
			return 0, "", fmt.Errorf("read: %w", err)
		}
		lat = time.Since(t0)
		got := n
		for got < len(payload) {
			m, err := tc.Read(buf[got:])
			got += m
			if err != nil {
				return 0, "", fmt.Errorf("read: %w", err)
			}
		}
		if string(buf[:len(payload)]) != string(payload) {
			return 0, "", errors.New("echo: wrong bytes")
		}
		return lat, "", nil
	default: // banner: read the first byte, then until EOF
		n, err := tc.Read(buf)
		if n == 0 {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, "", fmt.Errorf("read: %w", err)
		}
		lat = time.Since(t0)
		for err == nil && n < len(buf) {
			var m int
			m, err = tc.Read(buf[n:])
			n += m
		}
		if err != nil && err != io.EOF {
			return 0, "", fmt.Errorf("read: %w", err)
		}
		return lat, strings.TrimSpace(string(buf[:n])), nil
	}
}

// errKind names an error briefly: "dial: connection refused", "read: i/o timeout".
func errKind(err error) string {
	op := strings.SplitN(err.Error(), ":", 2)[0]
	var errno syscall.Errno
	var ne net.Error
	switch {
	case errors.As(err, &errno):
		return op + ": " + errno.Error()
	case errors.As(err, &ne) && ne.Timeout():
		return op + ": timeout"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return op + ": unexpected EOF"
	}
	return op + ": other"
}

func pct(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return us(sorted[max(0, min(i, len(sorted)-1))])
}

func us(d time.Duration) float64 { return math.Round(float64(d)/float64(time.Microsecond)*10) / 10 }
