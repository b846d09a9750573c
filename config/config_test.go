package config_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/config"
	_ "github.com/nfhelper/nfhelper/helpers/ftp"
	_ "github.com/nfhelper/nfhelper/helpers/tftp"
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
		{"add-on without match", "helpers:\n  - name: h\n    helper: ftp", `helpers[0].match.destination: missing`},
		{"add-on unknown helper", "helpers:\n  - name: h\n    helper: sip\n    match:\n      destination: 198.51.100.20:21", `unknown helper "sip"`},
		{"add-on on a VIP", "services:\n  - name: a\n    vip: 198.51.100.10:21" + rs + "\nhelpers:\n  - name: h\n    helper: ftp\n    match:\n      destination: 198.51.100.10:21", `destination 198.51.100.10:21 already used by service "a" (line 3)`},
		{"add-on unknown key", "helpers:\n  - name: h\n    helper: ftp\n    match:\n      source: 198.51.100.20:21", "5:7: helpers[0].match.source: unknown key"},
		{"unknown key", "services:\n  - name: a\n    vip: 198.51.100.10:21\n    colour: red" + rs, "4:5: services[0].colour: unknown key"},
		{"bad vip", "services:\n  - name: a\n    vip: 198.51.100.300:21" + rs, `3:10: services[0].vip: "198.51.100.300:21" is not an address:port`},
		{"vip without port", "services:\n  - name: a\n    vip: 198.51.100.10" + rs, `"198.51.100.10" has no port`},
		{"duplicate vip", "services:\n  - name: a\n    vip: 198.51.100.10:21" + rs + "\n  - name: b\n    vip: 198.51.100.10:21" + rs, `services[1].vip: vip 198.51.100.10:21 already used by service "a" (line 3)`},
		{"duplicate name", "services:\n  - name: a\n    vip: 198.51.100.10:21" + rs + "\n  - name: a\n    vip: 198.51.100.11:21" + rs, `services[1].name: name "a" used twice (first at line 2)`},
		{"unknown helper", "services:\n  - name: a\n    vip: 198.51.100.10:21\n    helper: gopher" + rs, `services[0].helper: unknown helper "gopher"`},
		{"max pending requests", "services:\n  - name: a\n    vip: 198.51.100.10:69\n    protocol: udp\n    helper: tftp\n    max_pending_requests: 0" + rs, `services[0].max_pending_requests: 0 out of 1..65535`},
		{"tftp over tcp", "services:\n  - name: a\n    vip: 198.51.100.10:69\n    helper: tftp" + rs, `services[0].helper: helper "tftp" reads UDP requests; set protocol: udp`},
		{"ftp over udp", "services:\n  - name: a\n    vip: 198.51.100.10:21\n    protocol: udp\n    helper: ftp" + rs, `helper "ftp" reads TCP streams`},
		{"tftp add-on over tcp", "helpers:\n  - name: h\n    helper: tftp\n    match:\n      destination: 198.51.100.20:69", `helpers[0].helper: helper "tftp" reads UDP requests; set match.protocol: udp`},
		{"ftp add-on over udp", "helpers:\n  - name: h\n    helper: ftp\n    match:\n      destination: 198.51.100.20:21\n      protocol: udp", `helpers[0].helper: helper "ftp" reads TCP streams; a udp port forward has none`},
		{"add-on protocol", "helpers:\n  - name: h\n    helper: tftp\n    match:\n      destination: 198.51.100.20:69\n      protocol: sctp", `helpers[0].match.protocol: "sctp" is not a protocol (have tcp, udp)`},
		{"udp add-on on a udp VIP", "services:\n  - name: a\n    vip: 198.51.100.10:69\n    protocol: udp\n    helper: tftp" + rs + "\nhelpers:\n  - name: h\n    helper: tftp\n    match:\n      destination: 198.51.100.10:69\n      protocol: udp", `udp destination 198.51.100.10:69 already used by service "a" (line 3)`},
		{"unknown scheduler", "services:\n  - name: a\n    vip: 198.51.100.10:21\n    scheduler: fastest" + rs, `"fastest"`},
		{"no real servers", "services:\n  - name: a\n    vip: 198.51.100.10:21", "services[0].real_servers: missing"},
		{"family mismatch", "services:\n  - name: a\n    vip: \"[2001:db8::1]:21\"" + rs, "services[0].real_servers[0].address: 10.0.0.11:21 is not of the vip's address family"},
		{"negative weight", "services:\n  - name: a\n    vip: 198.51.100.10:21" + rs + "\n        weight: -1", "services[0].real_servers[0].weight: -1 out of 0..65535"},
		{"not yaml", "services: [", "1: YAML syntax: "},
		{"persistence without timeout", "services:\n  - name: a\n    vip: 198.51.100.10:21\n    persistence:\n      prefix4: 24" + rs, "services[0].persistence.timeout: missing"},
		{"persistence prefix", "services:\n  - name: a\n    vip: 198.51.100.10:21\n    persistence:\n      timeout: 5m\n      prefix4: 33" + rs, "services[0].persistence.prefix4: 33 out of 1..32"},
		{"udp with a helper", "services:\n  - name: a\n    vip: 198.51.100.10:53\n    protocol: udp\n    helper: ftp" + rs, "services[0].helper: helper \"ftp\" reads TCP streams; a udp service has none"},
		{"bad protocol", "services:\n  - name: a\n    vip: 198.51.100.10:53\n    protocol: sctp" + rs, `services[0].protocol: "sctp" is not a protocol`},
		{"duplicate udp vip", "services:\n  - name: a\n    vip: 198.51.100.10:53\n    protocol: udp" + rs + "\n  - name: b\n    vip: 198.51.100.10:53\n    protocol: udp" + rs, "udp vip 198.51.100.10:53 already used"},
		{"zero channels", "services:\n  - name: a\n    vip: 198.51.100.10:21\n    max_data_channels: 0" + rs, "services[0].max_data_channels: 0 out of 1..64"},
		{"bad timeout", "services:\n  - name: a\n    vip: 198.51.100.10:21\n    data_channel_timeout: 5" + rs, "services[0].data_channel_timeout: 5 is not a duration"},
		{"short timeout", "services:\n  - name: a\n    vip: 198.51.100.10:21\n    data_channel_timeout: 10ms" + rs, "services[0].data_channel_timeout: 10ms out of 1s..24h"},
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

// TestUDPAddOn: a gateway's UDP port forward with the tftp helper, beside
// an FTP add-on on the same address.
func TestUDPAddOn(t *testing.T) {
	c, err := config.Parse([]byte("helpers:\n  - name: gw-tftp\n    helper: tftp\n    max_pending_requests: 8\n    match:\n      destination: 203.0.113.1:69\n      protocol: udp\n" +
		"  - name: gw-ftp\n    helper: ftp\n    match:\n      destination: 203.0.113.1:69\n"))
	if err != nil {
		t.Fatal(err)
	}
	if h := c.Helpers[0]; h.Match.Protocol != "udp" || h.MatchAddr != netip.MustParseAddrPort("203.0.113.1:69") || h.Policy().MaxPending != 8 {
		t.Errorf("%+v", h)
	}
	if h := c.Helpers[1]; h.Match.Protocol != "tcp" {
		t.Errorf("default protocol %q, want tcp", h.Match.Protocol)
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

func TestMetrics(t *testing.T) {
	const svc = "services:\n  - name: a\n    vip: 198.51.100.10:21\n    real_servers:\n      - address: 10.0.0.11:21\n"
	c, err := config.Parse([]byte(svc + "metrics:\n  address: 127.0.0.1:9330\n"))
	if err != nil || c.Metrics.Address != "127.0.0.1:9330" || c.Metrics.AllowRemote {
		t.Fatalf("%+v %v", c, err)
	}
	if _, err := config.Parse([]byte(svc + "metrics:\n  address: 9330\n")); err == nil || !strings.Contains(err.Error(), "metrics.address") {
		t.Errorf("bad address: %v", err)
	}
}

func TestLoadNamesFile(t *testing.T) {
	if _, err := config.Load("testdata/missing.yaml"); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("err = %v", err)
	}
}

func TestErrorsAllSorted(t *testing.T) {
	// Decoding and validation errors together, in line order, each once.
	doc := "services:\n  - name: a\n    vip: 198.51.100.10:21\n    scheduler: nope\n    real_servers:\n      - address: 10.0.0.11:21\n        weight: x\n" +
		"  - name: a\n    vip: 198.51.100.10\n    colour: red\n    real_servers:\n      - address: 10.0.0.12:21\n"
	_, err := config.Parse([]byte(doc))
	want := `4:16: services[0].scheduler: unknown scheduler "nope" (have rr, wrr, lc, wlc, sed, nq, sh, mh)
7:17: services[0].real_servers[0].weight: "x" is not an integer
8:11: services[1].name: name "a" used twice (first at line 2)
9:10: services[1].vip: "198.51.100.10" has no port (want an address:port, IPv6 in brackets)
10:5: services[1].colour: unknown key (have name, vip, protocol, scheduler, mh_table_size, sh_port, helper, real_servers, persistence, loose, allow_low_ports, block_refused, max_data_channels, data_channel_timeout, max_pending_requests, health_check, on_down, sorry_server, notify)`
	if err == nil || err.Error() != want {
		t.Fatalf("err =\n%v\nwant\n%s", err, want)
	}
	var first *config.Error
	if !errors.As(err, &first) || first.Line != 4 || first.Column != 16 || first.Path != "services[0].scheduler" || first.File != "" {
		t.Errorf("first = %+v", first)
	}
	if !errors.Is(err, config.ErrInvalid) {
		t.Error("not ErrInvalid")
	}
}

func TestMergeKeys(t *testing.T) {
	c, err := config.Parse([]byte(`services:
  - &ftp
    name: ftp
    vip: 198.51.100.10:21
    scheduler: wrr
    helper: ftp
    max_data_channels: 2
    real_servers: &servers
      - address: 10.0.0.11:21
  - <<: *ftp
    name: ftp2
    vip: 198.51.100.11:21
    max_data_channels: 3
  - name: ftp3
    vip: 198.51.100.12:21
    real_servers: *servers
`))
	if err != nil {
		t.Fatal(err)
	}
	s := c.Services[1]
	if s.Name != "ftp2" || s.VIPAddr != netip.MustParseAddrPort("198.51.100.11:21") || s.Scheduler != "wrr" || s.Helper != "ftp" ||
		s.Policy().MaxChannels != 3 || len(s.RealServers) != 1 || s.RealServers[0].Addr != netip.MustParseAddrPort("10.0.0.11:21") {
		t.Errorf("merged %+v", s)
	}
	if c.Services[0].Policy().MaxChannels != 2 || len(c.Services[2].RealServers) != 1 {
		t.Errorf("services %+v", c.Services)
	}
}

func TestTooManyRealServers(t *testing.T) {
	var b strings.Builder
	b.WriteString("services:\n  - name: a\n    vip: 198.51.100.10:21\n    real_servers:\n")
	for i := range config.MaxRealServers {
		fmt.Fprintf(&b, "      - address: 10.0.%d.%d:21\n", i/250, i%250+1)
	}
	if _, err := config.Parse([]byte(b.String())); err != nil {
		t.Fatalf("%d servers: %v", config.MaxRealServers, err)
	}
	b.WriteString("helpers:\n  - name: h\n    helper: ftp\n    match:\n      destination: 198.51.100.20:21\n")
	_, err := config.Parse([]byte(b.String()))
	if want := fmt.Sprintf("%d:5: helpers[0]: more than %d real servers and helpers", config.MaxRealServers+6, config.MaxRealServers); err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("err = %v, want %q...", err, want)
	}
}

func TestLoadNamesFileInEachError(t *testing.T) {
	_, err := config.Load("testdata/errors/bad-weights.yaml")
	var list config.Errors
	if !errors.As(err, &list) || len(list) < 2 {
		t.Fatalf("err = %v", err)
	}
	for _, line := range strings.Split(err.Error(), "\n") {
		if !strings.HasPrefix(line, "testdata/errors/bad-weights.yaml:") {
			t.Errorf("line %q does not name the file", line)
		}
	}
}

// FuzzParse: any input yields a config or errors that each name a line, and
// never a panic.
func FuzzParse(f *testing.F) {
	for _, name := range []string{"testdata/reference.yaml", "testdata/errors/merge.yaml", "testdata/errors/wrong-types.yaml", "testdata/errors/bad-addresses.yaml"} {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := config.Parse(data)
		if err == nil {
			return
		}
		var list config.Errors
		if !errors.As(err, &list) || len(list) == 0 || !errors.Is(err, config.ErrInvalid) {
			t.Fatalf("err %T %v", err, err)
		}
		for _, e := range list {
			if e.Line < 1 {
				t.Fatalf("no line: %v", e)
			}
		}
	})
}

// TestDocExamples parses every YAML example in docs/config.md; the first is
// the reference configuration.
func TestDocExamples(t *testing.T) {
	doc, err := os.ReadFile("../docs/config.md")
	if err != nil {
		t.Skip(err)
	}
	blocks := strings.Split(string(doc), "```yaml\n")[1:]
	if len(blocks) < 3 {
		t.Fatalf("%d examples", len(blocks))
	}
	ref, err := os.ReadFile("testdata/reference.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range blocks {
		b, _, _ = strings.Cut(b, "```")
		if i == 0 && b != string(ref) {
			t.Errorf("the first example is not testdata/reference.yaml")
		}
		if _, err := config.Parse([]byte(b)); err != nil {
			t.Errorf("example %d: %v", i+1, err)
		}
	}
}

func TestSchedOptions(t *testing.T) {
	c, err := config.Parse([]byte("services:\n  - name: a\n    vip: 198.51.100.10:80\n    scheduler: mh\n    mh_table_size: 251\n    real_servers:\n      - address: 10.0.0.11:80\n" +
		"  - name: b\n    vip: 198.51.100.10:81\n    scheduler: sh\n    sh_port: true\n    real_servers:\n      - address: 10.0.0.11:80\n" +
		"  - name: c\n    vip: 198.51.100.10:82\n    scheduler: mh\n    real_servers:\n      - address: 10.0.0.11:80\n"))
	if err != nil {
		t.Fatal(err)
	}
	if a, b, c := c.Services[0], c.Services[1], c.Services[2]; a.MHSize() != 251 || !b.SHPort || c.MHSize() != config.DefaultMHTableSize {
		t.Errorf("mh sizes %d %d, sh_port %v", a.MHSize(), c.MHSize(), b.SHPort)
	}
}

func TestVRRPStateFile(t *testing.T) {
	const svc = "services:\n  - name: a\n    vip: 198.51.100.10:21\n    real_servers:\n      - address: 10.0.0.11:21\n"
	c, err := config.Parse([]byte(svc))
	if err != nil {
		t.Fatal(err)
	}
	if path, configured := c.VRRPStateFile(); path != "/run/nfhelper/vrrp-state" || configured {
		t.Errorf("default: %q, configured %v", path, configured)
	}
	c, err = config.Parse([]byte("vrrp_state_file: /var/lib/ha/role\n" + svc))
	if err != nil {
		t.Fatal(err)
	}
	if path, configured := c.VRRPStateFile(); path != "/var/lib/ha/role" || !configured {
		t.Errorf("set: %q, configured %v", path, configured)
	}
}
