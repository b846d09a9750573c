package vrrp

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// notifyScript is keepalived's notify script, whose state file Read reads.
const notifyScript = "../docs/ha/nfhelper-notify"

// notifyRun is a directory with a fake conntrackd that records its
// arguments (one call a line) and fails for the options in failing.
type notifyRun struct {
	t     *testing.T
	dir   string
	calls string // the fake's record
	state string // the state file, in a directory the script creates
	path  string // PATH for the script
}

func newNotifyRun(t *testing.T, failing ...string) *notifyRun {
	dir := t.TempDir()
	r := &notifyRun{t: t, dir: dir, calls: filepath.Join(dir, "calls"), state: filepath.Join(dir, "run", "nfhelper", "vrrp-state")}
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	fake := "#!/bin/sh\necho \"$*\" >>" + r.calls + "\n"
	for _, opt := range failing {
		fake += "[ \"$3\" = " + opt + " ] && { echo \"cannot connect\" >&2; exit 1; }\n"
	}
	fake += "exit 0\n"
	if err := os.WriteFile(filepath.Join(bin, "conntrackd"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	// The script's own tools (date, mkdir, mv...), without the real conntrackd.
	r.path = bin + ":/usr/bin:/bin"
	return r
}

// run runs the script with args and returns its exit status and stderr.
func (r *notifyRun) run(args ...string) (int, string) {
	r.t.Helper()
	cmd := exec.Command(notifyScript, args...)
	cmd.Env = []string{"PATH=" + r.path}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, stderr.String()
	case errors.As(err, &exit):
		return exit.ExitCode(), stderr.String()
	}
	r.t.Fatal(err)
	return 0, ""
}

// takeCalls returns the fake's calls so far and forgets them.
func (r *notifyRun) takeCalls() []string {
	r.t.Helper()
	data, err := os.ReadFile(r.calls)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		r.t.Fatal(err)
	}
	os.Remove(r.calls)
	return strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
}

// Each state runs conntrackd's primary-backup actions, in their order, and
// leaves a state file Read accepts, written whole (no temporary left).
func TestNotifyScript(t *testing.T) {
	r := newNotifyRun(t)
	conf := "/etc/conntrackd/conntrackd.conf"
	for _, c := range []struct {
		kind, name, state string
		calls             []string
	}{
		{"GROUP", "G", Master, []string{"-c", "-f", "-R", "-B"}},
		{"GROUP", "G", Backup, []string{"-t", "-n"}},
		{"GROUP", "G", Fault, []string{"-t"}},
		{"GROUP", "G", Stop, nil},
		{"INSTANCE", "VI_1", Master, []string{"-c", "-f", "-R", "-B"}},
	} {
		before := time.Now().Unix()
		if code, stderr := r.run("-c", conf, "-s", r.state, c.kind, c.name, c.state, "0"); code != 0 {
			t.Fatalf("%s %s: exit %d: %s", c.kind, c.state, code, stderr)
		}
		var want []string
		for _, opt := range c.calls {
			want = append(want, "-C "+conf+" "+opt)
		}
		if got := r.takeCalls(); !slices.Equal(got, want) {
			t.Errorf("%s %s: conntrackd calls %q, want %q", c.kind, c.state, got, want)
		}
		st, err := Read(r.state)
		if err != nil || st.Role != c.state || st.Name != c.name || st.Since.Unix() < before || st.Since.Unix() > time.Now().Unix() {
			t.Errorf("%s %s: state file %+v, %v", c.kind, c.state, st, err)
		}
	}
	entries, err := os.ReadDir(filepath.Dir(r.state))
	if err != nil || len(entries) != 1 {
		t.Errorf("state directory holds %v (%v), want the state file alone", entries, err)
	}
}

// keepalived's priority argument is optional; without -c no conntrackd runs.
func TestNotifyScriptWithoutConntrackd(t *testing.T) {
	r := newNotifyRun(t)
	if code, stderr := r.run("-s", r.state, "GROUP", "G", Master); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if calls := r.takeCalls(); calls != nil {
		t.Errorf("conntrackd ran without -c: %q", calls)
	}
	if st, err := Read(r.state); err != nil || !st.IsMaster() {
		t.Errorf("state file %+v, %v", st, err)
	}
}

// A failing or missing conntrackd is logged and does not stop the other
// actions or the state file: keepalived gets exit 0.
func TestNotifyScriptConntrackdFails(t *testing.T) {
	r := newNotifyRun(t, "-c", "-R")
	code, stderr := r.run("-c", "/x.conf", "-s", r.state, "GROUP", "G", Master, "0")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	if got, want := r.takeCalls(), []string{"-C /x.conf -c", "-C /x.conf -f", "-C /x.conf -R", "-C /x.conf -B"}; !slices.Equal(got, want) {
		t.Errorf("calls %q, want %q", got, want)
	}
	if !strings.Contains(stderr, "conntrackd -C /x.conf -c failed (exit 1)") || !strings.Contains(stderr, "cannot connect") ||
		!strings.Contains(stderr, "-R failed") || strings.Contains(stderr, "-f failed") {
		t.Errorf("stderr %q", stderr)
	}
	if st, err := Read(r.state); err != nil || !st.IsMaster() {
		t.Errorf("state file %+v, %v", st, err)
	}

	r.path = "/usr/bin:/bin" // no conntrackd at all (/usr/sbin left out)
	if code, stderr := r.run("-c", "/x.conf", "-s", r.state, "GROUP", "G", Backup, "0"); code != 0 || !strings.Contains(stderr, "-t failed") {
		t.Errorf("no conntrackd: exit %d, %q", code, stderr)
	}
	if st, err := Read(r.state); err != nil || st.Role != Backup {
		t.Errorf("state file %+v, %v", st, err)
	}
}

// Bad arguments are refused (exit 2) and change nothing; a state keepalived
// may add later is ignored (exit 0).
func TestNotifyScriptArguments(t *testing.T) {
	r := newNotifyRun(t)
	for _, args := range [][]string{
		{"GROUP", "G"},
		{"GROUP", "G", Master, "0", "extra"},
		{"VRRP", "G", Master},
		{"GROUP", "a b", Master},
		{"-x", "GROUP", "G", Master},
	} {
		if code, _ := r.run(append([]string{"-c", "/x.conf", "-s", r.state}, args...)...); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
	if code, stderr := r.run("-c", "/x.conf", "-s", r.state, "INSTANCE", "G", "DELETED", "0"); code != 0 {
		t.Errorf("DELETED: exit %d: %s", code, stderr)
	}
	if calls := r.takeCalls(); calls != nil {
		t.Errorf("conntrackd ran: %q", calls)
	}
	if _, err := Read(r.state); !errors.Is(err, ErrNoStateFile) {
		t.Errorf("state file written: %v", err)
	}
}
