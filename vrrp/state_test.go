package vrrp

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	st, err := Parse([]byte("MASTER G 1796671166\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := State{Role: Master, Name: "G", Since: time.Unix(1796671166, 0).UTC()}
	if st != want || !st.IsMaster() {
		t.Errorf("got %+v, want %+v", st, want)
	}
	if st, err := Parse([]byte("BACKUP UP 1796671166")); err != nil || st.IsMaster() || st.Name != "UP" {
		t.Errorf("no newline: %+v, %v", st, err)
	}
	for _, bad := range []string{
		"",
		"\n",
		"MASTER G\n",
		"MASTER G 1796671166 extra\n",
		"MASTER G 1796671166\nBACKUP G 1796671167\n",
		"master G 1796671166\n",
		"DELETED G 1796671166\n",
		"MASTER G soon\n",
		"MASTER G -5\n",
		"MASTER\n",
	} {
		if st, err := Parse([]byte(bad)); !errors.Is(err, ErrBadStateFile) {
			t.Errorf("%q: %+v, %v", bad, st, err)
		}
	}
}

func TestRead(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vrrp-state")
	if _, err := Read(path); !errors.Is(err, ErrNoStateFile) || !strings.Contains(err.Error(), path) {
		t.Errorf("absent: %v", err)
	}
	now := time.Now().Unix()
	write(t, path, "FAULT G "+strconv.FormatInt(now, 10)+"\n")
	if st, err := Read(path); err != nil || st.Role != Fault || st.Since.Unix() != now {
		t.Errorf("fresh: %+v, %v", st, err)
	}
	write(t, path, "MASTER G 1000000000\n") // 2001: before any boot of this machine
	st, err := Read(path)
	if !errors.Is(err, ErrStale) || st.Role != Master {
		t.Errorf("stale: %+v, %v", st, err)
	}
	write(t, path, "garbage\n")
	if _, err := Read(path); !errors.Is(err, ErrBadStateFile) || !strings.Contains(err.Error(), path) {
		t.Errorf("garbage: %v", err)
	}
	write(t, path, strings.Repeat("x", maxSize+1))
	if _, err := Read(path); !errors.Is(err, ErrBadStateFile) {
		t.Errorf("huge: %v", err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// Returns at once: a fifo nobody writes is not waited on.
	if _, err := Read(fifo); !errors.Is(err, ErrBadStateFile) {
		t.Errorf("fifo: %v", err)
	}
	if _, err := Read(dir); !errors.Is(err, ErrBadStateFile) {
		t.Errorf("directory: %v", err)
	}
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}
