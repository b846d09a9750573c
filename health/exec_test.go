package health

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestExecCheck(t *testing.T) {
	k := Key{Service: "ftp-v4", Addr: netip.MustParseAddrPort("10.0.0.11:21")}
	for _, tc := range []struct {
		command string
		cause   string
	}{
		{command: "true"},
		{command: "exit 3", cause: "exit"},
		{command: `test "$NFHELPER_SERVICE" = ftp-v4 && test "$NFHELPER_SERVER_ADDRESS" = 10.0.0.11 && test "$NFHELPER_SERVER_PORT" = 2121`},
		{command: `test -n "$PATH"`}, // the daemon's environment is kept
		{command: "no-such-command-here", cause: "exit"},
		{command: "kill -9 $$", cause: "exit"},
	} {
		s := Spec{Type: "exec", Command: tc.command, Addr: netip.MustParseAddrPort("10.0.0.11:2121"), Timeout: 5 * time.Second}
		if err := Check(context.Background(), k, s); Cause(err) != tc.cause {
			t.Errorf("%s: %v, want cause %q", tc.command, err, tc.cause)
		}
	}
}

// A command that hangs, with a child of its own, is killed at the timeout
// with its whole process group; nothing is left behind.
func TestExecTimeoutKillsGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	start := time.Now()
	err := RunCommand(context.Background(), "echo $$ > "+pidFile+"; sleep 100 & sleep 100", nil, 300*time.Millisecond)
	if Cause(err) != "killed" {
		t.Fatalf("%v, want killed", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("returned after %v", d)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pgid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	// The shell was ours and is reaped at once. The rest of the group, killed
	// with it, is gone once the kernel has delivered the signal and init
	// has reaped the orphans.
	for _, p := range group(t, pgid) {
		if p.pid == pgid {
			t.Errorf("the shell %d is not reaped (state %s)", pgid, p.state)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(group(t, pgid)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("group %d still has %v", pgid, group(t, pgid))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type proc struct {
	pid   int
	state string
}

// group lists the processes in process group pgid, from /proc.
func group(t *testing.T, pgid int) []proc {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var ps []proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid pgrp ...; comm may hold anything but ')'.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 2 && f[2] == strconv.Itoa(pgid) {
			ps = append(ps, proc{pid, f[0]})
		}
	}
	return ps
}

// The monitor's context ending kills a running command too.
func TestExecCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- RunCommand(ctx, "sleep 100", nil, time.Hour) }()
	cancel()
	select {
	case err := <-done:
		if Cause(err) != "killed" {
			t.Errorf("%v, want killed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("not killed")
	}
}
