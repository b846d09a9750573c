package main

import (
	"maps"
	"net/netip"
	"testing"
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
