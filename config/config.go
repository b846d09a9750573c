// Package config reads nfhelperd's YAML configuration.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/nfhelper/nfhelper/ipvs"
)

// ErrInvalid wraps every validation failure.
var ErrInvalid = errors.New("invalid configuration")

// Config is the whole file.
type Config struct {
	Services []Service `yaml:"services"`
	Helpers  []AddOn   `yaml:"helpers"`
	Queue    Queue     `yaml:"queue"`
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
}

// ChannelPolicy is the data-channel policy of a service or add-on (see
// ipvs.Policy).
type ChannelPolicy struct {
	Loose              bool           `yaml:"loose"`
	AllowLowPorts      bool           `yaml:"allow_low_ports"`
	MaxDataChannels    *int           `yaml:"max_data_channels"`    // default 1
	DataChannelTimeout *time.Duration `yaml:"data_channel_timeout"` // default 300s
}

// Queue chooses the NFQUEUE numbers the daemon binds.
type Queue struct {
	First uint16 `yaml:"first"` // default 100
	Count uint16 `yaml:"count"` // default: one per CPU
}

// Service is one virtual service.
type Service struct {
	Name          string       `yaml:"name"`
	VIP           string       `yaml:"vip"`
	Protocol      string       `yaml:"protocol"` // tcp (default) or udp
	Scheduler     string       `yaml:"scheduler"`
	Helper        string       `yaml:"helper"`
	RealServers   []RealServer `yaml:"real_servers"`
	Persistence   *Persistence `yaml:"persistence"`
	ChannelPolicy `yaml:",inline"`

	VIPAddr netip.AddrPort `yaml:"-"`
}

// Policy is the data-channel policy with defaults applied.
func (s *ChannelPolicy) Policy() ipvs.Policy {
	p := ipvs.DefaultPolicy
	p.Loose, p.AllowLowPorts = s.Loose, s.AllowLowPorts
	if s.MaxDataChannels != nil {
		p.MaxChannels = *s.MaxDataChannels
	}
	if s.DataChannelTimeout != nil {
		p.ChannelTimeout = *s.DataChannelTimeout
	}
	return p
}

// RealServer is one backend.
type RealServer struct {
	Address string `yaml:"address"`
	Weight  *int   `yaml:"weight"` // default 1; 0 = quiesced

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

// Load reads and validates a file.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse decodes strictly (unknown keys are errors) and validates.
func Parse(data []byte) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	// An empty document decodes as io.EOF: report what is missing instead.
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
	}
	if len(c.Services) == 0 && len(c.Helpers) == 0 {
		return bad("no services and no helpers")
	}
	names := map[string]bool{}
	vips := map[netip.AddrPort]string{} // TCP VIPs and add-on matches
	udpVIPs := map[netip.AddrPort]string{}
	total := 0
	for i := range c.Services {
		s := &c.Services[i]
		if s.Name == "" {
			return bad("services[%d]: name is empty", i)
		}
		if names[s.Name] {
			return bad("service %s: name used twice", s.Name)
		}
		names[s.Name] = true
		ap, err := netip.ParseAddrPort(s.VIP)
		if err != nil || ap.Port() == 0 || ap.Addr().Zone() != "" {
			return bad("service %s: vip %q is not an address:port", s.Name, s.VIP)
		}
		s.VIPAddr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		switch s.Protocol {
		case "":
			s.Protocol = "tcp"
		case "tcp", "udp":
		default:
			return bad("service %s: protocol %q (have tcp, udp)", s.Name, s.Protocol)
		}
		if s.Protocol == "udp" {
			if other, dup := udpVIPs[s.VIPAddr]; dup {
				return bad("service %s: udp vip %s already used by service %s", s.Name, s.VIPAddr, other)
			}
			udpVIPs[s.VIPAddr] = s.Name
			if s.Helper != "" {
				return bad("service %s: helper %q reads TCP streams; a udp service has none", s.Name, s.Helper)
			}
		} else {
			if other, dup := vips[s.VIPAddr]; dup {
				return bad("service %s: vip %s already used by service %s", s.Name, s.VIPAddr, other)
			}
			vips[s.VIPAddr] = s.Name
		}
		if s.Scheduler == "" {
			s.Scheduler = "rr"
		}
		if _, err := ipvs.NewScheduler(s.Scheduler); err != nil {
			return bad("service %s: %v", s.Name, err)
		}
		if s.Helper != "" {
			if _, ok := ipvs.LookupHelper(s.Helper); !ok {
				return bad("service %s: unknown helper %q (have %v)", s.Name, s.Helper, ipvs.HelperNames())
			}
		}
		if err := s.ChannelPolicy.validate(); err != nil {
			return bad("service %s: %v", s.Name, err)
		}
		if p := s.Persistence; p != nil {
			v4, v6 := p.Prefixes()
			switch {
			case p.Timeout < time.Second || p.Timeout > 30*24*time.Hour:
				return bad("service %s: persistence timeout %s out of 1s..720h", s.Name, p.Timeout)
			case v4 < 1 || v4 > 32:
				return bad("service %s: persistence prefix4 %d out of 1..32", s.Name, v4)
			case v6 < 1 || v6 > 128:
				return bad("service %s: persistence prefix6 %d out of 1..128", s.Name, v6)
			}
		}
		if len(s.RealServers) == 0 {
			return bad("service %s: no real_servers", s.Name)
		}
		seen := map[netip.AddrPort]bool{}
		for j := range s.RealServers {
			r := &s.RealServers[j]
			ap, err := netip.ParseAddrPort(r.Address)
			if err != nil || ap.Port() == 0 || ap.Addr().Zone() != "" {
				return bad("service %s: real server %q is not an address:port", s.Name, r.Address)
			}
			r.Addr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
			if r.Addr.Addr().Is4() != s.VIPAddr.Addr().Is4() {
				return bad("service %s: real server %s is not of the vip's address family", s.Name, r.Addr)
			}
			if seen[r.Addr] {
				return bad("service %s: real server %s listed twice", s.Name, r.Addr)
			}
			seen[r.Addr] = true
			if w := r.EffectiveWeight(); w < 0 || w > 65535 {
				return bad("service %s: real server %s: weight %d out of 0..65535", s.Name, r.Addr, w)
			}
			total++
		}
	}
	if total+len(c.Helpers) > MaxRealServers {
		return bad("%d real servers and %d helpers; at most %d together", total, len(c.Helpers), MaxRealServers)
	}
	for i := range c.Helpers {
		h := &c.Helpers[i]
		if h.Name == "" {
			return bad("helpers[%d]: name is empty", i)
		}
		if names[h.Name] {
			return bad("helper %s: name used twice", h.Name)
		}
		names[h.Name] = true
		if _, ok := ipvs.LookupHelper(h.Helper); !ok {
			return bad("helper %s: unknown helper %q (have %v)", h.Name, h.Helper, ipvs.HelperNames())
		}
		ap, err := netip.ParseAddrPort(h.Match.Destination)
		if err != nil || ap.Port() == 0 || ap.Addr().Zone() != "" {
			return bad("helper %s: match destination %q is not an address:port", h.Name, h.Match.Destination)
		}
		h.MatchAddr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if other, dup := vips[h.MatchAddr]; dup {
			return bad("helper %s: destination %s already used by %s", h.Name, h.MatchAddr, other)
		}
		vips[h.MatchAddr] = h.Name
		if err := h.ChannelPolicy.validate(); err != nil {
			return bad("helper %s: %v", h.Name, err)
		}
	}
	return nil
}

func (p *ChannelPolicy) validate() error {
	if m := p.MaxDataChannels; m != nil && (*m < 1 || *m > 64) {
		return fmt.Errorf("max_data_channels %d out of 1..64", *m)
	}
	if d := p.DataChannelTimeout; d != nil && (*d < time.Second || *d > 24*time.Hour) {
		return fmt.Errorf("data_channel_timeout %s out of 1s..24h", *d)
	}
	return nil
}
