package topo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DaemonReadyTimeout bounds how long StartDaemon waits for the ready line.
var DaemonReadyTimeout = Scaled(30 * time.Second)

// Scaled is d, or four times d inside integration/vm: there the first use
// of a kernel feature on the freshly booted guest makes the kernel autoload
// its modules, each through modprobe over the 9p root under software
// emulation, which a bound sized for a real machine does not allow for.
func Scaled(d time.Duration) time.Duration {
	if os.Getenv("NFHVM") != "" {
		return 4 * d
	}
	return d
}

// Daemon is a running nfhelperd in the router namespace.
type Daemon struct {
	// Datapath is the value of datapath= on the ready line.
	Datapath string
	// LogPath holds the daemon's stdout and stderr.
	LogPath string

	t    *Topo
	ns   string // the namespace it runs in
	cmd  *exec.Cmd
	out  *SyncBuffer
	done chan struct{}
}

// StopResult tells how the daemon ended.
type StopResult struct {
	ExitCode  int    // -1 if killed by a signal
	Signal    string // the signal that killed it, if any
	TableGone bool   // `nft list table inet nfhelper` fails in the router ns
	Table     string // the table listing when it was not gone
}

var (
	readyRE    = regexp.MustCompile(`(^|\s)msg=("?)ready("|\s|$)`)
	datapathRE = regexp.MustCompile(`(?:^|\s)datapath=("(?:[^"\\]|\\.)*"|\S+)`)
)

// StartReference writes ReferenceConfig (WriteConfig) and starts the
// daemon bin with it: the demo's and the soak's daemon. It returns the
// configuration's path too, for restarts.
func (t *Topo) StartReference(bin string) (d *Daemon, config string, err error) {
	if config, err = t.WriteConfig(); err != nil {
		return nil, "", err
	}
	d, err = t.StartDaemon(bin, config)
	return d, config, err
}

// StartDaemon starts bin --config config in the router namespace and waits
// until it logs a line containing msg=ready; the datapath= attribute of that
// line is returned in Daemon.Datapath.
func (t *Topo) StartDaemon(bin, config string) (*Daemon, error) {
	return t.startDaemon(t.Router, bin, config, t.ControlSocket(), t.StateDir())
}

// startDaemon is StartDaemon in namespace ns, with its own control socket
// and state directory.
func (t *Topo) startDaemon(ns, bin, config, socket, stateDir string) (*Daemon, error) {
	t.mu.Lock()
	n := len(t.procs)
	t.mu.Unlock()
	d := &Daemon{
		t:       t,
		ns:      ns,
		out:     &SyncBuffer{},
		done:    make(chan struct{}),
		LogPath: filepath.Join(t.Dir, fmt.Sprintf("nfhelperd-%d.log", n)),
	}
	f, err := os.Create(d.LogPath)
	if err != nil {
		return nil, err
	}
	c := t.Exec(ns, bin, "--config", config)
	// The control socket and the state file go below Dir, never to the
	// host's default paths (a server forced down in one test must not stay
	// down in the next run's).
	c.Env = append(append(os.Environ(), "NFHELPER_SOCKET="+socket, "NFHELPER_STATE_DIR="+stateDir), t.DaemonEnv...)
	w := io.MultiWriter(f, d.out)
	c.Stdout, c.Stderr = w, w
	if err := t.Start(c); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	d.cmd = c
	go func() {
		<-t.Exited(c)
		f.Close()
		close(d.done)
	}()

	deadline := time.NewTimer(DaemonReadyTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		if line, ok := d.readyLine(); ok {
			if m := datapathRE.FindStringSubmatch(line); m != nil {
				d.Datapath = m[1]
				if s, err := strconv.Unquote(m[1]); err == nil {
					d.Datapath = s
				}
			}
			return d, nil
		}
		select {
		case <-d.done:
			return nil, fmt.Errorf("nfhelperd exited before ready (%v); output:\n%s", d.cmd.ProcessState, d.Log())
		case <-deadline.C:
			_ = d.Kill()
			return nil, fmt.Errorf("nfhelperd not ready after %v; output:\n%s", DaemonReadyTimeout, d.Log())
		case <-tick.C:
		}
	}
}

func (d *Daemon) readyLine() (string, bool) {
	for _, line := range strings.Split(d.out.String(), "\n") {
		if readyRE.MatchString(line) {
			return line, true
		}
	}
	return "", false
}

// ControlSocket is the control socket path StartDaemon gives the daemon
// (NFHELPER_SOCKET) unless DaemonEnv sets another: below Dir, so that a
// test daemon never touches the host's /run/nfhelper.
func (t *Topo) ControlSocket() string { return filepath.Join(t.Dir, "nfhelperd.sock") }

// StateDir is the state directory StartDaemon gives the daemon
// (NFHELPER_STATE_DIR) unless DaemonEnv sets another: below Dir, shared by
// the daemons of one topology (a restart keeps its state).
func (t *Topo) StateDir() string { return filepath.Join(t.Dir, "nfhelper-state") }

// Log returns what the daemon printed so far.
func (d *Daemon) Log() string { return d.out.String() }

// Pid is the daemon's process id.
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// Running reports whether the process has not exited yet.
func (d *Daemon) Running() bool {
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

// Stop sends SIGTERM, waits up to 15s (then SIGKILLs), and reports the exit
// status and whether the inet nfhelper table is gone.
func (d *Daemon) Stop() (StopResult, error) {
	return d.stop(syscall.SIGTERM, 15*time.Second)
}

// Kill simulates a crash: SIGKILL, wait. The table is left as the daemon left it.
func (d *Daemon) Kill() error {
	_, err := d.stop(syscall.SIGKILL, 5*time.Second)
	return err
}

func (d *Daemon) stop(sig syscall.Signal, wait time.Duration) (StopResult, error) {
	var res StopResult
	if d.Running() {
		_ = d.cmd.Process.Signal(sig)
	}
	select {
	case <-d.done:
	case <-time.After(wait):
		_ = d.cmd.Process.Kill()
		<-d.done
		return res, fmt.Errorf("nfhelperd did not exit within %v of %v; killed", wait, sig)
	}
	ps := d.cmd.ProcessState
	if ps == nil {
		return res, errors.New("nfhelperd: no exit status")
	}
	res.ExitCode = ps.ExitCode()
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		res.Signal = ws.Signal().String()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	exists, listing, err := d.t.tableExistsIn(ctx, d.ns)
	if err != nil {
		return res, err
	}
	res.TableGone, res.Table = !exists, listing
	return res, nil
}

// TableExists lists table inet nfhelper in the router namespace.
func (t *Topo) TableExists(ctx context.Context) (bool, string, error) {
	return t.tableExistsIn(ctx, t.Router)
}

func (t *Topo) tableExistsIn(ctx context.Context, ns string) (bool, string, error) {
	var stdout, stderr bytes.Buffer
	c := t.CommandContext(ctx, ns, "nft", "list", "table", "inet", "nfhelper")
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return true, stdout.String(), nil
	case errors.As(err, &ee):
		return false, stderr.String(), nil
	default:
		return false, "", err
	}
}

// SyncBuffer is a process's output, read while the process runs.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
