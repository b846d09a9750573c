package config

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"
)

// CheckTypes are the health check types.
var CheckTypes = []string{"none", "tcp", "ftp", "http", "https", "exec"}

// Check limits (the messages spell them out).
const (
	MinCheckInterval = 100 * time.Millisecond
	MaxCheckInterval = time.Hour
	MinCheckTimeout  = 10 * time.Millisecond
	MaxRiseFall      = 100
)

// keyError is a problem with one key of a health_check block.
type keyError struct{ key, msg string }

// typeKeys are the keys that only some check types take.
var typeKeys = []struct {
	key   string
	types []string
	set   func(*HealthCheck) bool
}{
	{"user", []string{"ftp"}, func(h *HealthCheck) bool { return h.User != "" }},
	{"password", []string{"ftp"}, func(h *HealthCheck) bool { return h.Password != "" }},
	{"credentials_file", []string{"ftp"}, func(h *HealthCheck) bool { return h.CredentialsFile != "" }},
	{"path", []string{"http", "https"}, func(h *HealthCheck) bool { return h.Path != "" }},
	{"status", []string{"http", "https"}, func(h *HealthCheck) bool { return h.Status != nil }},
	{"body", []string{"http", "https"}, func(h *HealthCheck) bool { return h.Body != "" }},
	{"host", []string{"http", "https"}, func(h *HealthCheck) bool { return h.Host != "" }},
	{"command", []string{"exec"}, func(h *HealthCheck) bool { return h.Command != "" }},
}

// checkErrors are the problems of the block h, whose effective check (with
// defaults) is c, in a service of protocol proto.
func checkErrors(h *HealthCheck, c Check, proto string) []keyError {
	var errs []keyError
	add := func(key, format string, args ...any) {
		errs = append(errs, keyError{key, fmt.Sprintf(format, args...)})
	}
	if !slices.Contains(CheckTypes, c.Type) {
		add("type", "%q is not a check type (have %s)", c.Type, strings.Join(CheckTypes, ", "))
		return errs // the other keys mean nothing without a type
	}
	if c.Interval < MinCheckInterval || c.Interval > MaxCheckInterval {
		add("interval", "%s out of 100ms..1h", c.Interval)
	} else if c.Timeout < MinCheckTimeout {
		add("timeout", "%s is shorter than 10ms", c.Timeout)
	} else if c.Timeout > c.Interval {
		add("timeout", "%s is longer than the interval (%s): a check must end before the next starts", c.Timeout, c.Interval)
	}
	if c.Rise < 1 || c.Rise > MaxRiseFall {
		add("rise", "%d out of 1..%d", c.Rise, MaxRiseFall)
	}
	if c.Fall < 1 || c.Fall > MaxRiseFall {
		add("fall", "%d out of 1..%d", c.Fall, MaxRiseFall)
	}
	if h.Port != nil && (*h.Port < 1 || *h.Port > 65535) {
		add("port", "%d out of 1..65535", *h.Port)
	}
	switch h.InitialState {
	case "", "up", "down":
	default:
		add("initial_state", "%q is not a state (have up, down)", h.InitialState)
	}
	for _, k := range typeKeys {
		if k.set(h) && !slices.Contains(k.types, c.Type) {
			add(k.key, "%s is for %s checks, not %s", k.key, strings.Join(k.types, " and "), c.Type)
		}
	}
	if proto == "udp" {
		switch {
		case c.Type == "tcp" && h.Port == nil:
			add("port", "missing: a tcp check of a udp service needs a port (a udp port takes no connections)")
		case c.Type != "none" && c.Type != "exec" && c.Type != "tcp":
			add("type", "a udp service is checked by exec, or by tcp to a port given; not %s", c.Type)
		}
	}
	switch c.Type {
	case "http", "https":
		if !strings.HasPrefix(c.Path, "/") {
			add("path", "%q does not start with /", c.Path)
		}
		if c.Status < 100 || c.Status > 599 {
			add("status", "%d out of 100..599", c.Status)
		}
	case "exec":
		if strings.TrimSpace(c.Command) == "" {
			add("command", "missing: an exec check runs a command")
		}
	case "ftp":
		errs = append(errs, ftpCredentialErrors(h)...)
	}
	return errs
}

// ftpCredentialErrors checks an ftp check's login: user and password in
// the file, or a credentials file readable by root only.
func ftpCredentialErrors(h *HealthCheck) []keyError {
	switch {
	case h.CredentialsFile != "" && (h.User != "" || h.Password != ""):
		return []keyError{{"credentials_file", "give either credentials_file or user and password, not both"}}
	case h.Password != "" && h.User == "":
		return []keyError{{"password", "a password without a user"}}
	case h.CredentialsFile != "":
		if _, _, err := ReadCredentials(h.CredentialsFile); err != nil {
			return []keyError{{"credentials_file", err.Error()}}
		}
	}
	return nil
}

// ReadCredentials reads an ftp check's credentials file: a regular file,
// mode 0600 or stricter (no group or other bits), whose first line is
// user:password.
func ReadCredentials(path string) (user, password string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", "", err
	}
	if !fi.Mode().IsRegular() {
		return "", "", fmt.Errorf("%s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", "", fmt.Errorf("%s has mode %04o: others may read the password; want 0600 or stricter (chmod 600 %s)", path, perm, path)
	}
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return "", "", fmt.Errorf("%s: %w", path, err)
		}
		return "", "", fmt.Errorf("%s is empty; want user:password on its first line", path)
	}
	user, password, ok := strings.Cut(strings.TrimSuffix(sc.Text(), "\r"), ":")
	if !ok || user == "" {
		return "", "", fmt.Errorf("%s: its first line is not user:password", path)
	}
	return user, password, nil
}

// healthChecks checks s's health_check blocks: the service's at its path,
// each real server's merged over it at the server's (problems the
// service's block has already are not told again). Run after the real
// servers' addresses are known.
func (v *validator) healthChecks(s *Service, sp string) {
	var base HealthCheck
	var baseErrs []keyError
	if s.HealthCheck != nil {
		base = *s.HealthCheck
		probe := RealServer{Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), 1)}
		baseErrs = checkErrors(&base, s.CheckFor(&probe), s.Protocol)
		for _, e := range baseErrs {
			v.r.at(child(child(sp, "health_check"), e.key), "%s", e.msg)
		}
	}
	rp := child(sp, "real_servers")
	for j := range s.RealServers {
		rs := &s.RealServers[j]
		if rs.HealthCheck == nil {
			continue
		}
		merged := base.over(rs.HealthCheck)
		hp := child(index(rp, j), "health_check")
		for _, e := range checkErrors(&merged, s.CheckFor(rs), s.Protocol) {
			if !slices.Contains(baseErrs, e) {
				v.r.at(child(hp, e.key), "%s", e.msg)
			}
		}
	}
}

// serviceExtras checks on_down, sorry_server and notify, after the real
// servers, and sets SorryServerAddr.
func (v *validator) serviceExtras(s *Service, sp string) {
	r := v.r
	switch s.OnDown {
	case "", "keep", "reset":
	default:
		r.at(child(sp, "on_down"), "%q is not what to do with a down server's connections (have keep, reset)", s.OnDown)
	}
	if np := child(sp, "notify"); r.values[np] != nil && strings.TrimSpace(s.Notify) == "" {
		r.at(np, "empty: give a command, or leave notify out")
	}
	sp2 := child(sp, "sorry_server")
	if r.values[sp2] == nil && s.SorryServer == "" {
		return
	}
	v.countServer(sp2) // it has a mark of its own
	a, ok := parseAddrPort(r, sp2, s.SorryServer)
	if !ok {
		return
	}
	switch {
	case !s.VIPAddr.IsValid():
	case a.Addr().Is4() != s.VIPAddr.Addr().Is4():
		r.at(sp2, "%s is not of the vip's address family (vip %s)", a, s.VIPAddr)
		return
	case a == s.VIPAddr:
		r.at(sp2, "%s is the vip itself", a)
		return
	}
	for _, rs := range s.RealServers {
		if rs.Addr == a {
			r.at(sp2, "%s is one of the service's real servers: the sorry server takes over when they are all down", a)
			return
		}
	}
	s.SorryServerAddr = a
}
