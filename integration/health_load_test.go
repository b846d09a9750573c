//go:build integration

package integration

import (
	"context"
	"encoding/json"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// bgLoad is ftpload running sessions continuously through a VIP until
// stopped.
type bgLoad struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdout topo.SyncBuffer
	stderr topo.SyncBuffer
	exited chan struct{} // closed when ftpload has exited; err is its Wait's
	err    error
	cancel context.CancelFunc
}

// loadFailure is one failed session of ftpload's stderr.
type loadFailure struct {
	at, started time.Time
	line        string
}

// startLoad starts ftpload in the client namespace: workers sessions at a
// time through addr, PASV, each fetching small.bin (checked by size and
// hash), each step bounded by stepTimeout.
func startLoad(t *testing.T, addr string, workers int, stepTimeout time.Duration) *bgLoad {
	t.Helper()
	tp := harness.tp
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	l := &bgLoad{t: t, exited: make(chan struct{}), cancel: cancel}
	l.cmd = tp.CommandContext(ctx, tp.Client, needFtpload(t), "-addr", addr, "-mode", "pasv",
		"-workers", strconv.Itoa(workers), "-file", "small.bin", "-size", strconv.Itoa(topo.SmallSize),
		"-sha256", tp.Files["small.bin"], "-duration", "4m", "-timeout", stepTimeout.String())
	l.cmd.Stdout, l.cmd.Stderr = &l.stdout, &l.stderr
	if err := l.cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		l.err = l.cmd.Wait()
		close(l.exited)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-l.exited:
		case <-time.After(10 * time.Second):
		}
	})
	return l
}

// stop ends the run (SIGTERM: ftpload prints its result) and returns the
// result and the failures.
func (l *bgLoad) stop() (loadResult, []loadFailure) {
	t := l.t
	t.Helper()
	// ip netns exec execs ftpload: the pid is ftpload's.
	_ = l.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-l.exited:
		if l.err != nil {
			t.Fatalf("ftpload: %v\n%s", l.err, tailString(l.stderr.String(), 3000))
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("ftpload did not end 30 s after SIGTERM")
	}
	var r loadResult
	if err := json.Unmarshal([]byte(l.stdout.String()), &r); err != nil {
		t.Fatalf("ftpload output %q: %v", l.stdout.String(), err)
	}
	fails := parseLoadFailures(t, l.stderr.String())
	t.Logf("ftpload: %d sessions, %d failed, %.1f s, errors %v", r.Sessions, r.Failures, r.Elapsed, r.Errors)
	return r, fails
}

var loadFailRE = regexp.MustCompile(`^(\d\d:\d\d:\d\d\.\d{6}) session \d+ \(started (\d\d:\d\d:\d\d\.\d{6})\): `)

// parseLoadFailures reads ftpload's failure lines; their clock times are
// today's (a run across midnight is not expected).
func parseLoadFailures(t *testing.T, stderr string) []loadFailure {
	t.Helper()
	var out []loadFailure
	now := time.Now()
	day := func(s string) time.Time {
		c, err := time.ParseInLocation("15:04:05.000000", s, time.Local)
		if err != nil {
			t.Fatalf("ftpload time %q: %v", s, err)
		}
		return time.Date(now.Year(), now.Month(), now.Day(), c.Hour(), c.Minute(), c.Second(), c.Nanosecond(), time.Local)
	}
	for _, line := range strings.Split(stderr, "\n") {
		m := loadFailRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		out = append(out, loadFailure{at: day(m[1]), started: day(m[2]), line: line})
	}
	return out
}

// waitConnects polls until each server has logged at least n more client
// connections than in base (its counts when base was taken).
func waitConnects(t *testing.T, servers []*hcServer, base map[*hcServer]int, n int, limit time.Duration) {
	t.Helper()
	end := time.Now().Add(topo.Scaled(limit))
	for {
		short := ""
		for _, s := range servers {
			if got := clientConnects(s) - base[s]; got < n {
				short += " " + s.Name + "=" + strconv.Itoa(got)
			}
		}
		if short == "" {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("within %v, fewer than %d new client connections on:%s", limit, n, short)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// connectCounts is clientConnects of each server.
func connectCounts(servers []*hcServer) map[*hcServer]int {
	m := map[*hcServer]int{}
	for _, s := range servers {
		m[s] = clientConnects(s)
	}
	return m
}
