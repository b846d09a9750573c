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
	cfg, err := tp.WriteConfig()
	if err != nil {
		logf("%v", err)
		return 1
	}
	var mu sync.Mutex // guards d
	d, err := tp.StartDaemon(bin, cfg)
	if err != nil {
		logf("start: %v", err)
		return 1
	}

	run, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()
	var ok, failed atomic.Int64
	failures := make(chan session, 1024)
	var wg sync.WaitGroup
	for c := range o.clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(c), uint64(time.Now().UnixNano())))
			for run.Err() == nil {
				s := oneSession(run, tp, ftpget, rng)
				if run.Err() != nil && s.err != nil {
					return // cut off by the end of the run, not a failure
				}
				if s.err != nil {
					failed.Add(1)
					select {
					case failures <- s:
					default:
					}
				} else {
					ok.Add(1)
				}
			}
		})
	}

	reloads, restarts := 0, 0
	var events []event
	reload := tick(o.reloadEvery)
	restart := tick(o.restartE)
loop:
	for {
		select {
		case <-run.Done():
			break loop
		case <-reload:
			// Each reload changes a weight, so that it changes something.
			if err := toggleWeight(cfg); err != nil {
				logf("reload: %v", err)
				break
			}
			mu.Lock()
			err := syscall.Kill(d.Pid(), syscall.SIGHUP)
			mu.Unlock()
			if err != nil {
				logf("reload: %v", err)
			}
			reloads++
		case <-restart:
			mu.Lock()
			crash := o.crash && restarts%2 == 1
			if !crash {
				err = handOver(d)
			} else if err = d.Kill(); err == nil {
				// The outage runs from here to the restart's event.
				events = append(events, event{"SIGKILL", time.Now()})
				d, err = tp.StartDaemon(bin, cfg)
			}
			mu.Unlock()
			if err != nil {
				logf("restart: %v", err)
				cancel()
				break loop
			}
			restarts++
			events = append(events, event{map[bool]string{false: "SIGUSR2 hand-over", true: "SIGKILL restart"}[crash], time.Now()})
		}
	}
	wg.Wait()
	close(failures)
	mu.Lock()
	d.Stop()
	if failed.Load() > 0 {
		log := d.Log()
		logf("the last daemon's log (tail):\n%s", log[max(0, len(log)-4000):])
	}
	mu.Unlock()

	logf("%d sessions ok, %d failed; %d reloads, %d restarts (crashes: %v) in %s with %d clients",
		ok.Load(), failed.Load(), reloads, restarts, o.crash, o.duration, o.clients)
	for s := range failures {
		logf("failed at %s: %s %s: %v", s.at.Format("15:04:05.000"), s.mode, s.addr, s.err)
	}
	for _, e := range events {
		logf("%s at %s", e.what, e.at.Format("15:04:05.000"))
	}
	fmt.Printf("soak: %d passed, %d failed\n", ok.Load(), failed.Load())
	if failed.Load() > 0 {
		return 1
	}
	return 0
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
