package config

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// ECMPWarnings are the reasons why, behind ECMP (the file sets ecmp), a
// client's control and data connections might reach different real
// servers when they cross different routers; nil without ecmp. Only a
// hash of the client's address alone (sh without sh_port, mh) picks the
// same server on every router with the same file; the rest of a session's
// data connections crossing the router that did not see its control
// connection follow that hash. A valid configuration is assumed.
func (c *Config) ECMPWarnings() []string {
	if !c.ECMP {
		return nil
	}
	var out []string
	warn := func(s *Service, format string, args ...any) {
		out = append(out, fmt.Sprintf("service %q: ", s.Name)+fmt.Sprintf(format, args...))
	}
	hashed := map[netip.Addr]string{} // VIP address : its first hash-scheduled helped service
	for i := range c.Services {
		s := &c.Services[i]
		if s.Helper == "" {
			continue
		}
		if s.Protocol == "udp" {
			warn(s, "helper %s: the server's answer from a port of its own crosses its own gateway, which may not be the router that saw the request", s.Helper)
			continue
		}
		switch {
		case s.Scheduler == "sh" && s.SHPort:
			warn(s, "sh with sh_port hashes the client's port: a data connection crossing the other router may reach another server (drop sh_port)")
			continue
		case s.Scheduler != "sh" && s.Scheduler != "mh":
			what := "its counter"
			if s.Scheduler != "rr" && s.Scheduler != "wrr" {
				what = "its own connection counts"
			}
			tail := ""
			if s.Persistence != nil {
				tail = "; persistence templates are per router too"
			}
			warn(s, "scheduler %s picks by %s on each router: a data connection crossing the other router may reach another server (use mh or sh)%s", s.Scheduler, what, tail)
			continue
		}
		a := s.VIPAddr.Addr()
		if first, ok := hashed[a]; ok {
			warn(s, "vip address %s is service %q's too: data connections that crossed the other router follow %q's table", a, first, first)
			continue
		}
		hashed[a] = s.Name
	}
	return append(out, sharedServers(c)...)
}

// sharedServers warns about real servers in helped TCP services of several
// VIP addresses: the server's own active data connection (PORT, EPRT)
// that reaches a router which saw no channel cannot tell its VIP.
func sharedServers(c *Config) []string {
	vips := map[netip.Addr][]string{}
	for i := range c.Services {
		s := &c.Services[i]
		if s.Helper == "" || s.Protocol == "udp" {
			continue
		}
		for _, rs := range s.RealServers {
			a, v := rs.Addr.Addr(), s.VIPAddr.Addr().String()
			if !slices.Contains(vips[a], v) {
				vips[a] = append(vips[a], v)
			}
		}
	}
	var out []string
	for i := range c.Services {
		for _, rs := range c.Services[i].RealServers {
			a := rs.Addr.Addr()
			if len(vips[a]) > 1 {
				out = append(out, fmt.Sprintf("real server %s is in helped services of several VIPs (%s): its active data connections through a router that saw no channel cannot tell which VIP to come from", a, strings.Join(vips[a], ", ")))
				delete(vips, a)
			}
		}
	}
	return out
}
