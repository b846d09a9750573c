// Package config reads nfhelperd's YAML configuration.
package config

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/vrrp"
)

// Config is the whole file.
type Config struct {
	Services []Service `yaml:"services"`
	Helpers  []AddOn   `yaml:"helpers"`
	VRRPFile string    `yaml:"vrrp_state_file"` // see VRRPStateFile
	Queue    Queue     `yaml:"queue"`
	Metrics  Metrics   `yaml:"metrics"`
}

// VRRPStateFile is where keepalived's notify script writes the router's
// VRRP role: the file's vrrp_state_file, or vrrp.DefaultStateFile.
// configured says the key was set, so that a missing file is worth telling
// (a router not in a pair has none, and no key).
func (c *Config) VRRPStateFile() (path string, configured bool) {
	if c.VRRPFile == "" {
		return vrrp.DefaultStateFile, false
	}
	return c.VRRPFile, true
}

// Metrics is the Prometheus endpoint: off unless an address is set, and
// only on a loopback address unless AllowRemote.
type Metrics struct {
	Address     string `yaml:"address"` // host:port
	AllowRemote bool   `yaml:"allow_remote"`
}

// AddOn binds a helper to connections the user's own rules translate (a
// port forward, the user's own balancing): nfhelperd only helps them.
type AddOn struct {
	Name          string `yaml:"name"`
	Helper        string `yaml:"helper"`
	Match         Match  `yaml:"match"`
	ChannelPolicy `yaml:",inline"`

	MatchAddr netip.AddrPort `yaml:"-"`
}

// Persistence sends a client (by address prefix) back to the real server
// it had last, as ipvsadm -p and -M.
type Persistence struct {
	Timeout time.Duration `yaml:"timeout"`
	Prefix4 *int          `yaml:"prefix4"` // default 32
	Prefix6 *int          `yaml:"prefix6"` // default 128
}

// Prefixes returns the prefix lengths with defaults applied.
func (p *Persistence) Prefixes() (v4, v6 int) {
	v4, v6 = 32, 128
	if p.Prefix4 != nil {
		v4 = *p.Prefix4
	}
	if p.Prefix6 != nil {
		v6 = *p.Prefix6
	}
	return v4, v6
}

// Match selects an add-on's connections.
type Match struct {
	// Destination is the address and port clients connect to, before the
	// user's DNAT.
	Destination string `yaml:"destination"`
	// Protocol is tcp (the default, for stream helpers) or udp (for
	// datagram helpers: the user's UDP port forward).
	Protocol string `yaml:"protocol"`
}

// ChannelPolicy is the data-channel policy of a service or add-on (see
// ipvs.Policy).
type ChannelPolicy struct {
	Loose              bool           `yaml:"loose"`
	AllowLowPorts      bool           `yaml:"allow_low_ports"`
	BlockRefused       bool           `yaml:"block_refused"`
	MaxDataChannels    *int           `yaml:"max_data_channels"`    // default 1
	DataChannelTimeout *time.Duration `yaml:"data_channel_timeout"` // default 300s
	MaxPendingRequests *int           `yaml:"max_pending_requests"` // default 128 (tftp)
}

// Queue chooses the NFQUEUE numbers the daemon binds.
type Queue struct {
	First uint16 `yaml:"first"` // default 100
	Count uint16 `yaml:"count"` // default: one per CPU
}

// Service is one virtual service.
type Service struct {
	Name      string `yaml:"name"`
	VIP       string `yaml:"vip"`
	Protocol  string `yaml:"protocol"` // tcp (default) or udp
	Scheduler string `yaml:"scheduler"`
	// MHTableSize is the size of mh's lookup table, a prime (default
	// 65537, as IPVS).
	MHTableSize *int `yaml:"mh_table_size"`
	// SHPort: sh hashes the client's port with its address (ipvsadm's
	// sh-port).
	SHPort        bool         `yaml:"sh_port"`
	Helper        string       `yaml:"helper"`
	RealServers   []RealServer `yaml:"real_servers"`
	Persistence   *Persistence `yaml:"persistence"`
	ChannelPolicy `yaml:",inline"`
	HealthCheck   *HealthCheck `yaml:"health_check"`
	// OnDown is what happens to a down server's running connections:
	// keep (default) or reset.
	OnDown string `yaml:"on_down"`
	// SorryServer (address:port) gets new connections while no real
	// server can take them.
	SorryServer string `yaml:"sorry_server"`
	// Notify is run by /bin/sh -c on each server state change, with
	// NFHELPER_SERVICE, NFHELPER_SERVER, NFHELPER_STATE (up or down) and
	// NFHELPER_CAUSE set.
	Notify string `yaml:"notify"`

	VIPAddr         netip.AddrPort `yaml:"-"`
	SorryServerAddr netip.AddrPort `yaml:"-"` // set by validation
}

// Policy is the data-channel policy with defaults applied.
func (s *ChannelPolicy) Policy() ipvs.Policy {
	p := ipvs.DefaultPolicy
	p.Loose, p.AllowLowPorts, p.BlockRefused = s.Loose, s.AllowLowPorts, s.BlockRefused
	if s.MaxDataChannels != nil {
		p.MaxChannels = *s.MaxDataChannels
	}
	if s.DataChannelTimeout != nil {
		p.ChannelTimeout = *s.DataChannelTimeout
	}
	if s.MaxPendingRequests != nil {
		p.MaxPending = *s.MaxPendingRequests
	}
	return p
}

// RealServer is one backend.
type RealServer struct {
	Address string `yaml:"address"`
	Weight  *int   `yaml:"weight"` // default 1; 0 = quiesced
	// HealthCheck overrides the service's check, key by key.
	HealthCheck *HealthCheck `yaml:"health_check"`

	Addr netip.AddrPort `yaml:"-"`
}

// EffectiveWeight is Weight with its default applied.
func (r *RealServer) EffectiveWeight() int {
	if r.Weight == nil {
		return 1
	}
	return *r.Weight
}

// MaxRealServers is how many real servers the packet mark bits can name.
const MaxRealServers = 255

// Load reads and validates a file. A file that does not hold a valid
// configuration yields [Errors], naming path in each.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parse(path, data)
}

// Parse decodes strictly (unknown keys are errors) and validates. Its
// errors are [Errors], without a file name.
func Parse(data []byte) (*Config, error) {
	return parse("", data)
}

func parse(file string, data []byte) (*Config, error) {
	var c Config
	r := newReport(file)
	if decode(data, &c, r) {
		c.validate(r)
	}
	if err := r.err(); err != nil {
		return nil, err
	}
	return &c, nil
}

// parseAddrPort parses the address:port at path, which must have a port and
// no zone; IPv4-mapped IPv6 addresses are taken as IPv4.
func parseAddrPort(r *report, path, s string) (netip.AddrPort, bool) {
	if s == "" {
		r.at(path, "missing (want an address:port)")
		return netip.AddrPort{}, false
	}
	ap, err := netip.ParseAddrPort(s)
	switch {
	case err != nil:
		if _, err := netip.ParseAddr(s); err == nil {
			r.at(path, "%q has no port (want an address:port, IPv6 in brackets)", s)
		} else {
			r.at(path, "%q is not an address:port", s)
		}
		return netip.AddrPort{}, false
	case ap.Port() == 0:
		r.at(path, "%q: port 0", s)
		return netip.AddrPort{}, false
	case ap.Addr().Zone() != "":
		r.at(path, "%q: zones are not supported", s)
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

// owner is who holds an address first: a service or an add-on.
type owner struct {
	kind, name string
	line       int
}

func (o owner) String() string {
	return fmt.Sprintf("%s %q (line %d)", o.kind, o.name, o.line)
}

// validate checks what decoding cannot, reports every problem in r, and
// fills the fields computed from others (VIPAddr, Addr, MatchAddr) and the
// defaults of Protocol and Scheduler.
func (c *Config) validate(r *report) {
	if len(c.Services) == 0 && len(c.Helpers) == 0 {
		r.at("", "no services and no helpers")
	}
	if p := c.VRRPFile; p != "" && (!filepath.IsAbs(p) || strings.ContainsAny(p, "\x00\n")) {
		r.at("vrrp_state_file", "%q is not an absolute path", p)
	}
	v := validator{
		r:       r,
		names:   map[string]int{},
		vips:    map[netip.AddrPort]owner{},
		udpVIPs: map[netip.AddrPort]owner{},
	}
	for i := range c.Services {
		v.service(&c.Services[i], index("services", i))
	}
	for i := range c.Helpers {
		v.addOn(&c.Helpers[i], index("helpers", i))
	}
	if a := c.Metrics.Address; a != "" {
		if _, _, err := net.SplitHostPort(a); err != nil {
			r.at("metrics.address", "%q is not host:port", a)
		}
	}
	if q := c.Queue; q.Count > 0 {
		first := cmp.Or(q.First, 100)
		if int(first)+int(q.Count)-1 > 65535 {
			r.at("queue.count", "queues %d..%d: past 65535", first, int(first)+int(q.Count)-1)
		}
	}
}

// validator is what checking one entry needs to know of the entries
// before it.
type validator struct {
	r       *report
	names   map[string]int           // name -> line
	vips    map[netip.AddrPort]owner // TCP VIPs and add-on destinations
	udpVIPs map[netip.AddrPort]owner
	total   int // real servers and helpers so far
}

func (v *validator) claimName(path, name string) {
	np := child(path, "name")
	if name == "" {
		v.r.at(np, "missing: each entry needs a name")
		return
	}
	if line, dup := v.names[name]; dup {
		v.r.at(np, "name %q used twice (first at line %d)", name, line)
		return
	}
	v.names[name] = v.r.line(np)
}

func (v *validator) countServer(path string) {
	if v.total++; v.total == MaxRealServers+1 {
		v.r.at(path, "more than %d real servers and helpers together (the packet mark names each)", MaxRealServers)
	}
}

func (v *validator) service(s *Service, sp string) {
	r := v.r
	v.claimName(sp, s.Name)
	switch s.Protocol {
	case "":
		s.Protocol = "tcp"
	case "tcp", "udp":
	default:
		r.at(child(sp, "protocol"), "%q is not a protocol (have tcp, udp)", s.Protocol)
	}
	vp := child(sp, "vip")
	if ap, ok := parseAddrPort(r, vp, s.VIP); ok {
		s.VIPAddr = ap
		taken := v.vips
		what := "vip"
		if s.Protocol == "udp" {
			taken, what = v.udpVIPs, "udp vip"
		}
		if o, dup := taken[ap]; dup {
			r.at(vp, "%s %s already used by %s", what, ap, o)
		} else {
			taken[ap] = owner{"service", s.Name, r.line(vp)}
		}
	}
	if s.Scheduler == "" {
		s.Scheduler = "rr"
	}
	if _, err := ipvs.NewScheduler(s.Scheduler); err != nil {
		r.at(child(sp, "scheduler"), "%v", err)
	}
	s.validateSchedOptions(r, sp)
	if s.Helper != "" {
		hp := child(sp, "helper")
		_, stream := ipvs.LookupHelper(s.Helper)
		_, datagram := ipvs.LookupDatagramHelper(s.Helper)
		switch {
		case !stream && !datagram:
			r.at(hp, "unknown helper %q (have %s)", s.Helper, strings.Join(ipvs.HelperNames(), ", "))
		case stream && s.Protocol == "udp":
			r.at(hp, "helper %q reads TCP streams; a udp service has none", s.Helper)
		case datagram && s.Protocol != "udp":
			r.at(hp, "helper %q reads UDP requests; set protocol: udp", s.Helper)
		}
	}
	s.ChannelPolicy.validate(r, sp)
	if p := s.Persistence; p != nil {
		p.validate(r, child(sp, "persistence"))
	}
	v.realServers(s, child(sp, "real_servers"))
	v.healthChecks(s, sp)
	v.serviceExtras(s, sp)
}

func (p *Persistence) validate(r *report, pp string) {
	v4, v6 := p.Prefixes()
	if p.Timeout < time.Second || p.Timeout > 30*24*time.Hour {
		if p.Timeout == 0 {
			r.at(child(pp, "timeout"), "missing: persistence needs a timeout in 1s..720h")
		} else {
			r.at(child(pp, "timeout"), "%s out of 1s..720h", p.Timeout)
		}
	}
	if v4 < 1 || v4 > 32 {
		r.at(child(pp, "prefix4"), "%d out of 1..32", v4)
	}
	if v6 < 1 || v6 > 128 {
		r.at(child(pp, "prefix6"), "%d out of 1..128", v6)
	}
}

// realServers checks s's real servers (at rp), after its VIP.
func (v *validator) realServers(s *Service, rp string) {
	r := v.r
	if len(s.RealServers) == 0 {
		what := "missing"
		if r.values[rp] != nil {
			what = "empty"
		}
		r.at(rp, "%s: a service needs at least one real server", what)
	}
	seen := map[netip.AddrPort]int{}
	for j := range s.RealServers {
		rs := &s.RealServers[j]
		ip := index(rp, j)
		v.countServer(ip)
		ap := child(ip, "address")
		if a, ok := parseAddrPort(r, ap, rs.Address); ok {
			rs.Addr = a
			if s.VIPAddr.IsValid() && a.Addr().Is4() != s.VIPAddr.Addr().Is4() {
				r.at(ap, "%s is not of the vip's address family (vip %s)", a, s.VIPAddr)
			} else if line, dup := seen[a]; dup {
				r.at(ap, "real server %s listed twice (first at line %d)", a, line)
			} else {
				seen[a] = r.line(ap)
			}
		}
		if w := rs.EffectiveWeight(); w < 0 || w > 65535 {
			r.at(child(ip, "weight"), "%d out of 0..65535", w)
		}
	}
}

func (v *validator) addOn(h *AddOn, hp string) {
	r := v.r
	v.countServer(hp)
	v.claimName(hp, h.Name)
	pp := child(hp, "match.protocol")
	switch h.Match.Protocol {
	case "":
		h.Match.Protocol = "tcp"
	case "tcp", "udp":
	default:
		r.at(pp, "%q is not a protocol (have tcp, udp)", h.Match.Protocol)
	}
	udp := h.Match.Protocol == "udp"
	switch {
	case h.Helper == "":
		r.at(child(hp, "helper"), "missing (have %s)", strings.Join(ipvs.HelperNames(), ", "))
	default:
		_, stream := ipvs.LookupHelper(h.Helper)
		_, datagram := ipvs.LookupDatagramHelper(h.Helper)
		switch {
		case !stream && !datagram:
			r.at(child(hp, "helper"), "unknown helper %q (have %s)", h.Helper, strings.Join(ipvs.HelperNames(), ", "))
		case datagram && !udp:
			r.at(child(hp, "helper"), "helper %q reads UDP requests; set match.protocol: udp", h.Helper)
		case stream && udp:
			r.at(child(hp, "helper"), "helper %q reads TCP streams; a udp port forward has none", h.Helper)
		}
	}
	dp := child(hp, "match.destination")
	if a, ok := parseAddrPort(r, dp, h.Match.Destination); ok {
		h.MatchAddr = a
		taken, what := v.vips, "destination"
		if udp {
			taken, what = v.udpVIPs, "udp destination"
		}
		if o, dup := taken[a]; dup {
			r.at(dp, "%s %s already used by %s", what, a, o)
		} else {
			taken[a] = owner{"add-on", h.Name, r.line(dp)}
		}
	}
	h.ChannelPolicy.validate(r, hp)
}

func (p *ChannelPolicy) validate(r *report, path string) {
	if m := p.MaxDataChannels; m != nil && (*m < 1 || *m > 64) {
		r.at(child(path, "max_data_channels"), "%d out of 1..64", *m)
	}
	if d := p.DataChannelTimeout; d != nil && (*d < time.Second || *d > 24*time.Hour) {
		r.at(child(path, "data_channel_timeout"), "%s out of 1s..24h", *d)
	}
	if m := p.MaxPendingRequests; m != nil && (*m < 1 || *m > 65535) {
		r.at(child(path, "max_pending_requests"), "%d out of 1..65535", *m)
	}
}
