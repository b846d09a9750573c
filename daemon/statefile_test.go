package daemon

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/ctl"
)

// TestStateFileRoundTrip: the roster written is the roster read, and the
// write leaves no temporary file behind and a file only root reads.
func TestStateFileRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, stateFileName)
	w := 4
	since := time.Date(2026, 12, 7, 7, 0, 0, 0, time.UTC)
	ro := roster{
		web1: {up: false, since: since, override: &ctl.Override{Weight: &w, Down: true}, fingerprint: "abc"},
		web2: {up: true, since: since},
	}
	if err := writeState(path, ro.saved()); err != nil {
		t.Fatal(err)
	}
	st, err := readState(path)
	if err != nil {
		t.Fatal(err)
	}
	back := rosterOf(st)
	if s := back[web1]; s.up || !s.since.Equal(since) || s.fingerprint != "abc" || s.override == nil || *s.override.Weight != 4 || !s.override.Down {
		t.Errorf("web1 read back %+v", s)
	}
	if s := back[web2]; !s.up || s.override != nil {
		t.Errorf("web2 read back %+v", s)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("state directory holds %v", entries)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v (%v)", fi.Mode(), err)
	}
	// Replaced whole.
	if err := writeState(path, roster{}.saved()); err != nil {
		t.Fatal(err)
	}
	if st, err := readState(path); err != nil || len(st.Health)+len(st.Overrides) != 0 {
		t.Errorf("after an empty write: %+v, %v", st, err)
	}
}

// TestStateFileMissing: no file is no state, not an error.
func TestStateFileMissing(t *testing.T) {
	st, err := readState(filepath.Join(t.TempDir(), stateFileName))
	if err != nil || len(st.Overrides)+len(st.Health) != 0 {
		t.Errorf("%+v, %v", st, err)
	}
}

// TestStateFileCorrupt: a file that does not decode, or of another
// version, is a clear error, and the daemon starts without it (and the
// next write replaces it).
func TestStateFileCorrupt(t *testing.T) {
	for _, c := range []struct{ name, content, want string }{
		{"truncated", `{"version":1,"overrides":[{"serv`, "unexpected end"},
		{"garbage", "\x00\x01", "invalid character"},
		{"version", `{"version":7}`, "version 7, want 1"},
		{"bad address", `{"version":1,"health":[{"service":"web","address":"nowhere"}]}`, "not an ip:port"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, stateFileName)
			if err := os.WriteFile(path, []byte(c.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := readState(path)
			if !errors.Is(err, errStateFile) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("error %v, want one naming the file and %q", err, c.want)
			}
			var logs bytes.Buffer
			d := New(mustParse(t, rosterYAML), Options{StateDir: dir, Log: slog.New(slog.NewTextHandler(&logs, nil))})
			if ro := d.loadRoster(); len(ro) != 0 {
				t.Errorf("roster from a corrupt file: %v", ro)
			}
			if !strings.Contains(logs.String(), "starting without overrides") {
				t.Errorf("not logged:\n%s", logs.String())
			}
		})
	}
}

// TestStateFileUnwritable: a file that cannot be replaced is an error,
// and no temporary file is left behind.
func TestStateFileUnwritable(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, stateFileName)
	// A directory in the file's place: the rename fails, even for root.
	if err := os.MkdirAll(filepath.Join(path, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := writeState(path, roster{web1: {up: true}}.saved()); !errors.Is(err, errStateFile) || !strings.Contains(err.Error(), path) {
		t.Errorf("write over a directory: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("state directory holds %v", entries)
	}
}

// readFile is path's content; "" if it cannot be read.
func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}
