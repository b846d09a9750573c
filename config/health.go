package config

import (
	"net/netip"
	"time"
)

// HealthCheck is a service's `health_check:` block, or a real server's,
// whose keys override the service's one by one (a server's block of
// another type takes none of the keys only the service's type takes).
type HealthCheck struct {
	Type     string         `yaml:"type"` // none (default), tcp, ftp, http, https, exec
	Interval *time.Duration `yaml:"interval"`
	Timeout  *time.Duration `yaml:"timeout"`
	Rise     *int           `yaml:"rise"`
	Fall     *int           `yaml:"fall"`
	// Port is checked instead of the real server's own.
	Port *int `yaml:"port"`
	// InitialState is a new server's state before its first checks: up
	// (default) or down.
	InitialState string `yaml:"initial_state"`

	// ftp: with User, log in and ask for a passive data channel.
	User            string `yaml:"user"`
	Password        string `yaml:"password"`
	CredentialsFile string `yaml:"credentials_file"` // "user:password" on its first line; mode 0600 or stricter

	// http, https
	Path   string `yaml:"path"`   // default /
	Status *int   `yaml:"status"` // default 200
	Body   string `yaml:"body"`   // a substring the body must hold
	Host   string `yaml:"host"`   // Host header (and TLS server name); default the server's address

	// exec: run by /bin/sh -c with NFHELPER_SERVICE, NFHELPER_SERVER_ADDRESS
	// and NFHELPER_SERVER_PORT set.
	Command string `yaml:"command"`
}

// Health check defaults. The timeout's is capped by the interval.
const (
	DefaultCheckInterval = 5 * time.Second
	DefaultCheckTimeout  = 3 * time.Second
	DefaultRise          = 2
	DefaultFall          = 3
)

// Check is a real server's health check: the service's block, the
// server's own keys over it, defaults applied. Type is "none" if neither
// sets one.
type Check struct {
	Type            string
	Interval        time.Duration
	Timeout         time.Duration
	Rise, Fall      int
	Port            uint16 // the port checked
	InitialUp       bool
	User, Password  string
	CredentialsFile string
	Path            string
	Status          int
	Body, Host      string
	Command         string
}

// CheckFor is r's health check in service s.
func (s *Service) CheckFor(r *RealServer) Check {
	var h HealthCheck
	if s.HealthCheck != nil {
		h = *s.HealthCheck
	}
	if o := r.HealthCheck; o != nil {
		h = h.over(o)
	}
	c := Check{Type: h.Type, Interval: DefaultCheckInterval, Timeout: DefaultCheckTimeout, Rise: DefaultRise, Fall: DefaultFall,
		Port: r.Addr.Port(), InitialUp: h.InitialState != "down", User: h.User, Password: h.Password,
		CredentialsFile: h.CredentialsFile, Path: h.Path, Status: 200, Body: h.Body, Host: h.Host, Command: h.Command}
	if c.Type == "" {
		c.Type = "none"
	}
	if h.Interval != nil {
		c.Interval = *h.Interval
	}
	if h.Timeout != nil {
		c.Timeout = *h.Timeout
	} else {
		// A check ends before the next starts: interval: 1s alone is fine.
		c.Timeout = min(c.Timeout, c.Interval)
	}
	if h.Rise != nil {
		c.Rise = *h.Rise
	}
	if h.Fall != nil {
		c.Fall = *h.Fall
	}
	if h.Port != nil {
		c.Port = uint16(*h.Port)
	}
	if c.Path == "" {
		c.Path = "/"
	}
	if h.Status != nil {
		c.Status = *h.Status
	}
	return c
}

// over is h with the keys o sets replaced.
func (h HealthCheck) over(o *HealthCheck) HealthCheck {
	if o.Type != "" && o.Type != h.Type {
		// Another type: the keys only h's type takes do not carry over.
		h = HealthCheck{Interval: h.Interval, Timeout: h.Timeout, Rise: h.Rise, Fall: h.Fall, Port: h.Port, InitialState: h.InitialState}
	}
	str := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	str(&h.Type, o.Type)
	str(&h.InitialState, o.InitialState)
	str(&h.User, o.User)
	str(&h.Password, o.Password)
	str(&h.CredentialsFile, o.CredentialsFile)
	str(&h.Path, o.Path)
	str(&h.Body, o.Body)
	str(&h.Host, o.Host)
	str(&h.Command, o.Command)
	if o.Interval != nil {
		h.Interval = o.Interval
	}
	if o.Timeout != nil {
		h.Timeout = o.Timeout
	}
	if o.Rise != nil {
		h.Rise = o.Rise
	}
	if o.Fall != nil {
		h.Fall = o.Fall
	}
	if o.Port != nil {
		h.Port = o.Port
	}
	if o.Status != nil {
		h.Status = o.Status
	}
	return h
}

// SorryAddr is the service's sorry server, if it has one.
func (s *Service) SorryAddr() (netip.AddrPort, bool) {
	return s.SorryServerAddr, s.SorryServerAddr.IsValid()
}
