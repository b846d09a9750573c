// Package health checks real servers and tells the daemon when one goes
// down or comes back: tcp, ftp, http(s) and exec checks, scheduled by one
// goroutine with jitter, with rise/fall hysteresis.
//
// It imports only the standard library: checks run from the daemon's own
// network stack and need nothing of the kernel's interfaces.
package health

import (
	"net/netip"
	"time"
)

// Key names a real server as configured.
type Key struct {
	Service string
	Addr    netip.AddrPort
}

// Spec is one server's check; the daemon fills it from config.Check.
type Spec struct {
	Type           string         // "none", "tcp", "ftp", "http", "https", "exec"
	Addr           netip.AddrPort // where to check: the server's address, the check's port
	Interval       time.Duration  // a shorter one than 1 ms counts as 1 ms
	Timeout        time.Duration  // if not > 0: Interval
	Rise, Fall     int
	User, Password string // ftp: log in and open a passive data channel
	Path           string // http(s)
	Status         int
	Body, Host     string // Host: the Host header and TLS server name
	// Command is run by /bin/sh -c with NFHELPER_SERVICE,
	// NFHELPER_SERVER_ADDRESS and NFHELPER_SERVER_PORT (of Addr) set.
	Command string
}

// Target is a server to check. Up and Since are its state if its Key is new
// to the monitor; a Key it already checks keeps its own.
type Target struct {
	Key   Key
	Spec  Spec
	Up    bool
	Since time.Time
}

// Change is a server going up or down. Cause is the last failure's cause
// when it goes down, empty when it comes up.
type Change struct {
	Key   Key
	Up    bool
	Cause string
	At    time.Time
}

// Status is a server's state and check statistics, for reports.
type Status struct {
	Type        string
	Up          bool
	Since       time.Time
	Checks      uint64
	LastLatency time.Duration // of the last check, passed or failed
	LastFailure time.Time
	LastCause   string
	Failures    map[string]uint64 // by cause, a copy
}

// interval is s's interval, at least a millisecond: a zero one would
// check back to back.
func (s Spec) interval() time.Duration { return max(s.Interval, time.Millisecond) }

// timeout bounds each of s's checks.
func (s Spec) timeout() time.Duration {
	if s.Timeout > 0 {
		return s.Timeout
	}
	return s.interval()
}
