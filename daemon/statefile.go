package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// The state file keeps what the configuration file does not say and a
// restart or a hand-over must not forget: the operators' overrides
// (nfhelperctl server) and the servers' health states. It is rewritten
// whole, atomically, on every change.

// stateFileName is the state file's name in the state directory.
const stateFileName = "state.json"

// stateVersion is the layout written; a file of another version is not read.
const stateVersion = 1

// savedState is the state file's content.
type savedState struct {
	Version   int             `json:"version"`
	Overrides []savedOverride `json:"overrides,omitempty"`
	Health    []savedHealth   `json:"health,omitempty"`
}

// savedOverride is one server's override, with the fingerprint of the
// server's entry in the configuration file it was set against.
type savedOverride struct {
	Service     string         `json:"service"`
	Address     netip.AddrPort `json:"address"`
	Weight      *int           `json:"weight,omitempty"`
	Drained     bool           `json:"drained,omitempty"`
	Down        bool           `json:"down,omitempty"`
	Fingerprint string         `json:"fingerprint"`
}

// savedHealth is one server's health state.
type savedHealth struct {
	Service string         `json:"service"`
	Address netip.AddrPort `json:"address"`
	Up      bool           `json:"up"`
	Since   time.Time      `json:"since"`
}

// errStateFile wraps every reason a state file cannot be read.
var errStateFile = errors.New("state file")

// readState reads the state file at path; a missing file is an empty
// state. A file that cannot be read or decoded is an error wrapping
// errStateFile: the daemon starts without it rather than guess.
func readState(path string) (*savedState, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &savedState{Version: stateVersion}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errStateFile, err)
	}
	var s savedState
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("%w %s: %w", errStateFile, path, err)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("%w %s: version %d, want %d", errStateFile, path, s.Version, stateVersion)
	}
	return &s, nil
}

// writeState replaces the state file at path with s: a temporary file in
// the same directory, synced, renamed over it, and the directory synced,
// so that a crash leaves the old file or the new one, never a torn one.
func writeState(path string, s *savedState) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, stateFileName+".*")
	if err != nil {
		return fmt.Errorf("%w: %w", errStateFile, err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename, a no-op
	_, err = tmp.Write(append(data, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("%w %s: %w", errStateFile, path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
