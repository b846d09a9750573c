package main

import (
	"maps"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParseProcIPVS(t *testing.T) {
	text := `IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  C6336432:0015 rr 
  -> 0A00001F:0015      Masq    1      0          0         
  -> 0A000020:0015      Masq    0      2          1         
TCP  C6336433:0015 rr 
  -> 0A000027:0015      Masq    1      0          0         
TCP  [2001:0db8:0001:0000:0000:0000:0000:0010]:0015 rr 
  -> [fd00:0000:0000:0000:0000:0000:0000:0011]:0015      Masq    1      0          0         
`
	got := parseProcIPVS(text, netip.MustParseAddrPort("198.51.100.50:21"))
	want := map[string]int{"10.0.0.31:21": 1, "10.0.0.32:21": 0}
	if !maps.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	got = parseProcIPVS(text, netip.MustParseAddrPort("198.51.100.51:21"))
	if want := map[string]int{"10.0.0.39:21": 1}; !maps.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestHealthDifferences(t *testing.T) {
	sec := func(f float64) span { return span{d: time.Duration(f * float64(time.Second)), ok: true} }
	k := &hcResult{system: "keepalived + IPVS", out: sec(1.5), outExec: sec(2), back: sec(0.3), backExec: sec(0.3), sorry: sec(1.6),
		noSorry: "refused (ICMP port unreachable) after 9.6 ms"}
	n := &hcResult{system: "nfhelperd", out: sec(1.5), outExec: sec(2.1), back: sec(1.8), backExec: sec(1.2), sorry: span{limit: time.Minute},
		noSorry: "refused (TCP reset) after 6.8 ms"}
	got := strings.Join(healthDifferences([]*hcResult{k, n}), "\n")
	for _, want := range []string{
		"A server that starts again is back: keepalived is 1.5 s sooner (keepalived 0.3 s, nfhelperd 1.8 s).",
		"The sorry server takes over: keepalived 1.6 s, nfhelperd not within 1m0s.",
		"refused (ICMP port unreachable) after 9.6 ms through keepalived + IPVS and refused (TCP reset) after 6.8 ms through nfhelperd",
		"Within one check interval (1s) of each other, keepalived's first: a stopped server is taken out (1.5 s, 1.5 s); " +
			"a stopped server is taken out by a script check (2.0 s, 2.1 s). Each",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in:\n%s", want, got)
		}
	}
	if healthDifferences([]*hcResult{k}) != nil {
		t.Error("differences with one system")
	}
}
