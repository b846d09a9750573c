package config_test

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/config"
	_ "github.com/nfhelper/nfhelper/helpers/ftp"
	"github.com/nfhelper/nfhelper/ipvs"
)

func TestReference(t *testing.T) {
	c, err := config.Load("testdata/reference.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Services) != 2 {
		t.Fatalf("%d services", len(c.Services))
	}
	ftp, ftp6 := c.Services[0], c.Services[1]
	if ftp.VIPAddr != netip.MustParseAddrPort("198.51.100.10:21") || ftp.Helper != "ftp" || ftp.Scheduler != "rr" {
		t.Errorf("ftp: %+v", ftp)
	}
	if w := ftp.RealServers[0].EffectiveWeight(); w != 1 {
		t.Errorf("default weight %d", w)
	}
	if w := ftp.RealServers[1].EffectiveWeight(); w != 2 {
		t.Errorf("weight %d", w)
	}
	if ftp6.VIPAddr != netip.MustParseAddrPort("[2001:db8:1::10]:21") || ftp6.RealServers[0].Addr != netip.MustParseAddrPort("[fd00::11]:21") {
		t.Errorf("ftp6: %+v", ftp6)
	}
}

func TestInvalid(t *testing.T) {
	const rs = "\n    real_servers:\n      - address: 10.0.0.11:21"
	cases := []struct{ name, yaml, want string }{
		{"empty", "", "no services and no helpers"},
		{"add-on without match", "helpers:\n  - name: h\n    helper: ftp", `match destination ""`},
		{"add-on unknown helper", "helpers:\n  - name: h\n    helper: sip\n    match:\n      destination: 198.51.100.20:21", `unknown helper "sip"`},
		{"add-on on a VIP", "services:\n  - name: a\n    vip: 198.51.100.10:21" + rs + "\nhelpers:\n  - name: h\n    helper: ftp\n    match:\n      destination: 198.51.100.10:21", "already used by a"},
		{"add-on unknown key", "helpers:\n  - name: h\n    helper: ftp\n    match:\n      source: 198.51.100.20:21", "field source not found"},
		{"unknown key", "services:\n  - name: a\n    vip: 198.51.100.10:21\n    colour: red" + rs, "field colour not found"},
		{"bad vip", "services:\n  - name: a\n    vip: 198.51.100.300:21" + rs, `vip "198.51.100.300:21"`},
		{"vip without port", "services:\n  - name: a\n    vip: 198.51.100.10" + rs, "not an address:port"},
		{"duplicate vip", "services:\n  - name: a\n    vip: 198.51.100.10:21" + rs + "\n  - name: b\n    vip: 198.51.100.10:21" + rs, "already used by service a"},
		{"duplicate name", "services:\n  - name: a\n    vip: 198.51.100.10:21" + rs + "\n  - name: a\n    vip: 198.51.100.11:21" + rs, "name used twice"},
		{"unknown helper", "services:\n  - name: a\n    vip: 198.51.100.10:21\n    helper: tftp" + rs, `unknown helper "tftp"`},
		{"unknown scheduler", "services:\n  - name: a\n    vip: 198.51.100.10:21\n    scheduler: fastest" + rs, `"fastest"`},
		{"no real servers", "services:\n  - name: a\n    vip: 198.51.100.10:21", "no real_servers"},
		{"family mismatch", "services:\n  - name: a\n    vip: \"[2001:db8::1]:21\"" + rs, "address family"},
		{"negative weight", "services:\n  - name: a\n    vip: 198.51.100.10:21" + rs + "\n        weight: -1", "weight -1"},
		{"not yaml", "services: [", "invalid configuration"},
		{"persistence without timeout", "services:\n  - name: a\n    vip: 198.51.100.10:21\n    persistence:\n      prefix4: 24" + rs, "persistence timeout 0s"},
		{"persistence prefix", "services:\n  - name: a\n    vip: 198.51.100.10:21\n    persistence:\n      timeout: 5m\n      prefix4: 33" + rs, "prefix4 33"},
		{"udp with a helper", "services:\n  - name: a\n    vip: 198.51.100.10:53\n    protocol: udp\n    helper: ftp" + rs, "a udp service has none"},
		{"bad protocol", "services:\n  - name: a\n    vip: 198.51.100.10:53\n    protocol: sctp" + rs, `protocol "sctp"`},
		{"duplicate udp vip", "services:\n  - name: a\n    vip: 198.51.100.10:53\n    protocol: udp" + rs + "\n  - name: b\n    vip: 198.51.100.10:53\n    protocol: udp" + rs, "udp vip 198.51.100.10:53 already used"},
		{"zero channels", "services:\n  - name: a\n    vip: 198.51.100.10:21\n    max_data_channels: 0" + rs, "max_data_channels 0"},
		{"bad timeout", "services:\n  - name: a\n    vip: 198.51.100.10:21\n    data_channel_timeout: 5" + rs, "into time.Duration"},
		{"short timeout", "services:\n  - name: a\n    vip: 198.51.100.10:21\n    data_channel_timeout: 10ms" + rs, "out of 1s..24h"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := config.Parse([]byte(c.yaml))
			if !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("err = %v, want one containing %q", err, c.want)
			}
		})
	}
}

func TestPolicy(t *testing.T) {
	c, err := config.Parse([]byte("services:\n  - name: a\n    vip: 198.51.100.10:21\n    loose: true\n    allow_low_ports: true\n" +
		"    max_data_channels: 4\n    data_channel_timeout: 90s\n    real_servers:\n      - address: 10.0.0.11:21\n"))
	if err != nil {
		t.Fatal(err)
	}
	p := c.Services[0].Policy()
	if !p.Loose || !p.AllowLowPorts || p.MaxChannels != 4 || p.ChannelTimeout != 90*time.Second {
		t.Errorf("policy %+v", p)
	}
	ref, _ := config.Load("testdata/reference.yaml")
	if p := ref.Services[0].Policy(); p != ipvs.DefaultPolicy {
		t.Errorf("default policy %+v", p)
	}
}

func TestAddOn(t *testing.T) {
	// As issue 4 writes it, alone and beside services.
	const addOn = `helpers:
  - name: router-ftp
    helper: ftp
    match:
      destination: 198.51.100.20:21   # the address and port the user's own rules DNAT
`
	ref, err := os.ReadFile("testdata/reference.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for name, doc := range map[string]string{"alone": addOn, "beside services": string(ref) + addOn} {
		c, err := config.Parse([]byte(doc))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		h := c.Helpers[0]
		if h.Name != "router-ftp" || h.Helper != "ftp" || h.MatchAddr != netip.MustParseAddrPort("198.51.100.20:21") || h.Policy() != ipvs.DefaultPolicy {
			t.Errorf("%s: %+v", name, h)
		}
	}
}

func TestUDPBesideTCP(t *testing.T) {
	c, err := config.Parse([]byte("services:\n  - name: dns\n    vip: 198.51.100.10:53\n    protocol: udp\n    real_servers:\n      - address: 10.0.0.11:53\n" +
		"  - name: dnstcp\n    vip: 198.51.100.10:53\n    real_servers:\n      - address: 10.0.0.11:53\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Services[0].Protocol != "udp" || c.Services[1].Protocol != "tcp" {
		t.Errorf("protocols %q %q", c.Services[0].Protocol, c.Services[1].Protocol)
	}
}

func TestLoadNamesFile(t *testing.T) {
	if _, err := config.Load("testdata/missing.yaml"); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("err = %v", err)
	}
}
