// Package vrrp reads the router's role in a VRRP pair from the state file
// that keepalived's notify script (docs/ha/nfhelper-notify) writes on each
// transition: one line, `STATE NAME UNIX_TIME`. keepalived keeps no such
// file itself. The role is for operators (status, metrics); nothing in the
// daemon depends on it.
package vrrp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DefaultStateFile is where the notify script writes unless told otherwise.
const DefaultStateFile = "/run/nfhelper/vrrp-state"

// The states keepalived passes a notify script.
const (
	Master = "MASTER"
	Backup = "BACKUP"
	Fault  = "FAULT"
	Stop   = "STOP" // keepalived stopped
)

var (
	// ErrNoStateFile: the file does not exist (no notify script has run).
	ErrNoStateFile = errors.New("no state file")
	// ErrBadStateFile: the file is there but does not hold a state.
	ErrBadStateFile = errors.New("bad state file")
	// ErrStale: the file was written before this boot (on storage that
	// outlives one), so keepalived has reported nothing since.
	ErrStale = errors.New("stale state file")
)

// State is the last transition keepalived reported.
type State struct {
	Role  string    // Master, Backup, Fault or Stop
	Name  string    // the sync group's or instance's
	Since time.Time // when the notify script ran
}

// IsMaster reports whether the router holds the addresses.
func (s State) IsMaster() bool { return s.Role == Master }

// maxSize bounds what is read: the file holds one short line.
const maxSize = 4096

// Parse reads a state file's content.
func Parse(data []byte) (State, error) {
	line, rest, _ := bytes.Cut(data, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) != 3 || len(bytes.TrimSpace(rest)) > 0 {
		return State{}, fmt.Errorf("%w: want one line STATE NAME UNIX_TIME, have %q", ErrBadStateFile, firstLine(data))
	}
	switch f[0] {
	case Master, Backup, Fault, Stop:
	default:
		return State{}, fmt.Errorf("%w: state %q is not MASTER, BACKUP, FAULT or STOP", ErrBadStateFile, f[0])
	}
	sec, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil || sec <= 0 {
		return State{}, fmt.Errorf("%w: time %q is not a Unix time", ErrBadStateFile, f[2])
	}
	return State{Role: f[0], Name: f[1], Since: time.Unix(sec, 0).UTC()}, nil
}

func firstLine(data []byte) string {
	line, _, _ := bytes.Cut(data, []byte("\n"))
	if len(line) > 80 {
		line = line[:80]
	}
	return string(line)
}

// Read reads the state file at path; errors wrap ErrNoStateFile,
// ErrBadStateFile or ErrStale (which comes with the state read). Something else at path than a regular file
// (keepalived's notify_fifo, say) is a bad state file, not read: a fifo
// would block the reader.
func Read(path string) (State, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if errors.Is(err, os.ErrNotExist) {
		return State{}, fmt.Errorf("%w at %s", ErrNoStateFile, path)
	}
	if err != nil {
		return State{}, fmt.Errorf("%w: %w", ErrBadStateFile, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return State{}, fmt.Errorf("%w: %s is not a regular file", ErrBadStateFile, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSize+1))
	switch {
	case err != nil:
		return State{}, fmt.Errorf("%w: %w", ErrBadStateFile, err)
	case len(data) > maxSize:
		return State{}, fmt.Errorf("%w: %s is larger than %d bytes", ErrBadStateFile, path, maxSize)
	}
	st, err := Parse(data)
	if err != nil {
		return State{}, fmt.Errorf("%s: %w", path, err)
	}
	if boot, ok := bootTime(); ok && st.Since.Before(boot) {
		return st, fmt.Errorf("%w: %s says %s since %s, before this boot (%s)", ErrStale, path,
			st.Role, st.Since.Format(time.RFC3339), boot.UTC().Format(time.RFC3339))
	}
	return st, nil
}

// bootTime is when the system booted (/proc/stat's btime), to the second.
func bootTime() (time.Time, bool) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}, false
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			sec, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return time.Unix(sec, 0), err == nil
		}
	}
	return time.Time{}, false
}
