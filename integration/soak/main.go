// Command soak runs mixed FTP sessions through the demo topology's VIPs for
// a while, reloading nfhelperd now and then and restarting it (in place with
// SIGUSR2, and SIGKILL as a crash) now and then, and reports the sessions
// that failed.
// Run as root: go run ./integration/soak -duration 2m.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
)

type options struct {
	bin                   string
	duration              time.Duration
	clients               int
	reloadEvery, restartE time.Duration
	crash                 bool
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "", "nfhelperd binary (default: built from ./cmd/nfhelperd)")
	flag.DurationVar(&o.duration, "duration", time.Minute, "how long to run sessions")
	flag.IntVar(&o.clients, "clients", 6, "concurrent client loops")
	flag.DurationVar(&o.reloadEvery, "reload-every", 5*time.Second, "SIGHUP the daemon this often (0: never)")
	flag.DurationVar(&o.restartE, "restart-every", 20*time.Second, "restart the daemon in place (SIGUSR2 hand-over) this often (0: never)")
	flag.BoolVar(&o.crash, "crash", false, "alternate the restarts with kill -9 and a new start (sessions announcing a passive channel while no daemon runs fail: fail-open)")
	flag.Parse()
	os.Exit(run(o))
}

// session is one client run: a login, one file in one mode, quit.
type session struct {
	mode, addr string
	at         time.Time
	err        error
}

type event struct {
	what string
	at   time.Time
}

func run(o options) int {
	logf := func(format string, args ...any) { fmt.Printf("soak: "+format+"\n", args...) }
	ctx, tmp, done, err := topo.StartTool("soak")
	if err != nil {
		logf("%v", err)
		return topo.ExitCode(err)
	}
	defer done()
	ftpget := filepath.Join(tmp, "ftpget")
	if err := topo.GoBuild(ctx, ftpget, "./integration/cmd/ftpget"); err != nil {
		logf("%v", err)
		return 1
	}
	bin, err := topo.DaemonBinary(ctx, tmp, o.bin)
	if err != nil {
		logf("%v", err)
		return 1
	}
	tp, err := topo.New(topo.Options{Dir: filepath.Join(tmp, "topo"), Logf: logf})
	if err != nil {
		logf("topology: %v", err)
		return 1
	}
	defer tp.Close()
	d, cfg, err := tp.StartReference(bin)
	if err != nil {
		logf("start: %v", err)
		return 1
	}
	dis := &disturber{tp: tp, bin: bin, cfg: cfg, crash: o.crash, d: d, logf: logf}

	run, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()
	ss := sessions{failures: make(chan session, 1024)}
	var wg sync.WaitGroup
	ss.start(run, &wg, o.clients, tp, ftpget)
	dis.disturb(run, cancel, o)
	wg.Wait()
	close(ss.failures)
	dis.mu.Lock()
	dis.d.Stop()
	if ss.failed.Load() > 0 {
		log := dis.d.Log()
		logf("the last daemon's log (tail):\n%s", log[max(0, len(log)-4000):])
	}
	dis.mu.Unlock()

	logf("%d sessions ok, %d failed; %d reloads, %d restarts (crashes: %v) in %s with %d clients",
		ss.ok.Load(), ss.failed.Load(), dis.reloads, dis.restarts, o.crash, o.duration, o.clients)
	for s := range ss.failures {
		logf("failed at %s: %s %s: %v", s.at.Format("15:04:05.000"), s.mode, s.addr, s.err)
	}
	for _, e := range dis.events {
		logf("%s at %s", e.what, e.at.Format("15:04:05.000"))
	}
	fmt.Printf("soak: %d passed, %d failed\n", ss.ok.Load(), ss.failed.Load())
	if ss.failed.Load() > 0 {
		return 1
	}
	return 0
}

// sessions counts the clients' sessions and keeps the first failures.
type sessions struct {
	ok, failed atomic.Int64
	failures   chan session
}

// start runs n client loops of sessions until run ends.
func (ss *sessions) start(run context.Context, wg *sync.WaitGroup, n int, tp *topo.Topo, ftpget string) {
	for c := range n {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(c), uint64(time.Now().UnixNano())))
			for run.Err() == nil {
				s := oneSession(run, tp, ftpget, rng)
				if run.Err() != nil && s.err != nil {
					return // cut off by the end of the run, not a failure
				}
				if s.err != nil {
					ss.failed.Add(1)
					select {
					case ss.failures <- s:
					default:
					}
				} else {
					ss.ok.Add(1)
				}
			}
		})
	}
}

// disturber reloads and restarts the daemon under the clients' sessions.
type disturber struct {
	tp       *topo.Topo
	bin, cfg string
	crash    bool
	logf     func(format string, args ...any)

	mu                sync.Mutex // guards d
	d                 *topo.Daemon
	events            []event
	reloads, restarts int
}

// disturb reloads and restarts the daemon on their ticks until run ends; a
// failed restart ends the run.
func (s *disturber) disturb(run context.Context, cancel context.CancelFunc, o options) {
	reload := tick(o.reloadEvery)
	restart := tick(o.restartE)
	for {
		select {
		case <-run.Done():
			return
		case <-reload:
			s.reload()
		case <-restart:
			if err := s.restart(); err != nil {
				s.logf("restart: %v", err)
				cancel()
				return
			}
		}
	}
}

func (s *disturber) reload() {
	// Each reload changes a weight, so that it changes something.
	if err := toggleWeight(s.cfg); err != nil {
		s.logf("reload: %v", err)
		return
	}
	s.mu.Lock()
	err := syscall.Kill(s.d.Pid(), syscall.SIGHUP)
	s.mu.Unlock()
	if err != nil {
		s.logf("reload: %v", err)
	}
	s.reloads++
}

// restart hands the daemon over in place, or with -crash every other time
// kills it and starts a new one.
func (s *disturber) restart() error {
	s.mu.Lock()
	crash := s.crash && s.restarts%2 == 1
	var err error
	if !crash {
		err = handOver(s.d)
	} else if err = s.d.Kill(); err == nil {
		// The outage runs from here to the restart's event.
		s.events = append(s.events, event{"SIGKILL", time.Now()})
		s.d, err = s.tp.StartDaemon(s.bin, s.cfg)
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	s.restarts++
	s.events = append(s.events, event{map[bool]string{false: "SIGUSR2 hand-over", true: "SIGKILL restart"}[crash], time.Now()})
	return nil
}

// toggleWeight switches rs2's weight in the reference config between 2 and 1.
func toggleWeight(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(b)
	if strings.Contains(s, "weight: 2") {
		s = strings.Replace(s, "weight: 2", "weight: 1", 1)
	} else {
		s = strings.Replace(s, "weight: 1", "weight: 2", 1)
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func tick(every time.Duration) <-chan time.Time {
	if every <= 0 {
		return nil
	}
	return time.NewTicker(every).C
}

// oneSession fetches small.bin through a VIP in a random mode and family.
func oneSession(ctx context.Context, tp *topo.Topo, ftpget string, rng *rand.Rand) session {
	modes := []string{"pasv", "epsv", "port", "eprt"}
	s := session{mode: modes[rng.IntN(len(modes))], addr: net.JoinHostPort(topo.VIP4, "21"), at: time.Now()}
	if (s.mode == "epsv" || s.mode == "eprt") && rng.IntN(2) == 0 {
		s.addr = net.JoinHostPort(topo.VIP6, "21")
	}
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := tp.CommandContext(c, tp.Client, ftpget, "-addr", s.addr, "-mode", s.mode, "-files", "small.bin", "-timeout", "10s")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		s.err = fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
		return s
	}
	var r struct {
		SHA256 string `json:"sha256"`
	}
	line := strings.TrimSpace(string(out))
	if i := strings.LastIndexByte(line, '\n'); i >= 0 {
		line = line[i+1:]
	}
	if err := json.Unmarshal([]byte(line), &r); err != nil || r.SHA256 != tp.Files["small.bin"] {
		s.err = fmt.Errorf("sha256 %q (%v), want %s", r.SHA256, err, tp.Files["small.bin"])
	}
	return s
}

// handOver restarts d in place (SIGUSR2) and waits until it is ready again.
func handOver(d *topo.Daemon) error {
	readies := strings.Count(d.Log(), "msg=ready")
	if err := syscall.Kill(d.Pid(), syscall.SIGUSR2); err != nil {
		return err
	}
	for deadline := time.Now().Add(20 * time.Second); strings.Count(d.Log(), "msg=ready") == readies; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) || !d.Running() {
			return fmt.Errorf("not ready again after SIGUSR2 (running %v)", d.Running())
		}
	}
	return nil
}
