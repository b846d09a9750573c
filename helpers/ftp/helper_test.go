package ftp

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/nfhelper/nfhelper/ipvs"
)

var (
	session4 = ipvs.Session{
		Client: netip.MustParseAddrPort("203.0.113.2:40000"),
		VIP:    netip.MustParseAddrPort("198.51.100.10:21"),
		Server: netip.MustParseAddrPort("10.0.0.11:21"),
	}
	session6 = ipvs.Session{
		Client: netip.MustParseAddrPort("[2001:db8:2::2]:40000"),
		VIP:    netip.MustParseAddrPort("[2001:db8:1::10]:21"),
		Server: netip.MustParseAddrPort("[fd00::11]:21"),
	}
)

func channel(kind ipvs.ChannelKind, client, server, vip string) ipvs.Channel {
	return ipvs.Channel{
		Kind:   kind,
		Client: netip.MustParseAddrPort(client),
		Server: netip.MustParseAddrPort(server),
		VIP:    netip.MustParseAddrPort(vip),
	}
}

// apply returns payload with the edits of r made, as the datapath would.
func apply(payload []byte, r *ipvs.Result) []byte {
	var out []byte
	last := 0
	for _, e := range r.Edits {
		out = append(out, payload[last:e.Off]...)
		out = append(out, e.New...)
		last = e.Off + e.Len
	}
	return append(out, payload[last:]...)
}

func TestRegistered(t *testing.T) {
	if h, ok := ipvs.LookupHelper("ftp"); !ok || h.Name() != "ftp" {
		t.Fatalf(`LookupHelper("ftp") = %v, %v`, h, ok)
	}
}

func TestInspect(t *testing.T) {
	pasv4 := channel(ipvs.ChannelPassive, "203.0.113.2:0", "10.0.0.11:40000", "198.51.100.10:40000")
	active4 := channel(ipvs.ChannelActive, "203.0.113.2:40000", "10.0.0.11:0", "198.51.100.10:0")
	for _, tc := range []struct {
		name     string
		s        *ipvs.Session
		dir      ipvs.Direction
		payload  string
		want     string // payload after edits; "" means unchanged
		delta    int
		channels []ipvs.Channel
	}{
		{
			name:     "227 rewritten",
			s:        &session4,
			dir:      ipvs.FromServer,
			payload:  "227 Entering Passive Mode (10,0,0,11,156,64).\r\n",
			want:     "227 Entering Passive Mode (198,51,100,10,156,64).\r\n",
			delta:    4,
			channels: []ipvs.Channel{pasv4},
		},
		{
			name:     "227 without parentheses, bare LF",
			s:        &session4,
			dir:      ipvs.FromServer,
			payload:  "227 Entering passive mode. 10,0,0,11,156,64\n",
			want:     "227 Entering passive mode. 198,51,100,10,156,64\n",
			delta:    4,
			channels: []ipvs.Channel{pasv4},
		},
		{
			name:     "227 after another line",
			s:        &session4,
			dir:      ipvs.FromServer,
			payload:  "200 Switching to Binary mode.\r\n227 Entering Passive Mode (10,0,0,11,156,64).\r\n",
			want:     "200 Switching to Binary mode.\r\n227 Entering Passive Mode (198,51,100,10,156,64).\r\n",
			delta:    4,
			channels: []ipvs.Channel{pasv4},
		},
		{
			name:    "two 227 replies",
			s:       &session4,
			dir:     ipvs.FromServer,
			payload: "227 (10,0,0,11,156,64)\r\n227 (10,0,0,11,4,51)\r\n",
			want:    "227 (198,51,100,10,156,64)\r\n227 (198,51,100,10,4,51)\r\n",
			delta:   8,
			channels: []ipvs.Channel{pasv4,
				channel(ipvs.ChannelPassive, "203.0.113.2:0", "10.0.0.11:1075", "198.51.100.10:1075")},
		},
		{
			name:    "227 bounce to another address",
			s:       &session4,
			dir:     ipvs.FromServer,
			payload: "227 Entering Passive Mode (10,0,0,12,156,64).\r\n",
		},
		{
			name:    "227 invalid numbers",
			s:       &session4,
			dir:     ipvs.FromServer,
			payload: "227 x 1216,256,2,127,127,127\r\n",
		},
		{
			name:    "227 inside a line",
			s:       &session4,
			dir:     ipvs.FromServer,
			payload: "150 see 227 Entering Passive Mode (10,0,0,11,156,64).\r\n",
		},
		{
			name:    "227 incomplete line",
			s:       &session4,
			dir:     ipvs.FromServer,
			payload: "227 Entering Passive Mode (10,0,0,11,156,64).",
		},
		{
			name:     "complete 227 then incomplete one",
			s:        &session4,
			dir:      ipvs.FromServer,
			payload:  "227 (10,0,0,11,156,64)\r\n227 (10,0,0,11,4,51)\r",
			want:     "227 (198,51,100,10,156,64)\r\n227 (10,0,0,11,4,51)\r",
			delta:    4,
			channels: []ipvs.Channel{pasv4},
		},
		{
			name:    "227 from the client",
			s:       &session4,
			dir:     ipvs.FromClient,
			payload: "227 Entering Passive Mode (10,0,0,11,156,64).\r\n",
		},
		{
			name:    "227 with IPv6 session",
			s:       &session6,
			dir:     ipvs.FromServer,
			payload: "227 Entering Passive Mode (10,0,0,11,156,64).\r\n",
		},
		{
			name: "227 already naming the VIP",
			s: &ipvs.Session{
				Client: session4.Client,
				VIP:    session4.VIP,
				Server: netip.MustParseAddrPort("198.51.100.10:21"),
			},
			dir:     ipvs.FromServer,
			payload: "227 Entering Passive Mode (198,51,100,10,156,64).\r\n",
			channels: []ipvs.Channel{
				channel(ipvs.ChannelPassive, "203.0.113.2:0", "198.51.100.10:40000", "198.51.100.10:40000")},
		},
		{
			name:    "229 IPv4",
			s:       &session4,
			dir:     ipvs.FromServer,
			payload: "229 Entering Extended Passive Mode (|||6446|)\r\n",
			channels: []ipvs.Channel{
				channel(ipvs.ChannelPassive, "203.0.113.2:0", "10.0.0.11:6446", "198.51.100.10:6446")},
		},
		{
			name:    "229 IPv6",
			s:       &session6,
			dir:     ipvs.FromServer,
			payload: "229 Extended Passive mode OK (|||6446|)\r\n",
			channels: []ipvs.Channel{
				channel(ipvs.ChannelPassive, "[2001:db8:2::2]:0", "[fd00::11]:6446", "[2001:db8:1::10]:6446")},
		},
		{
			name:    "229 port too large",
			s:       &session4,
			dir:     ipvs.FromServer,
			payload: "229 Entering Extended Passive Mode (|||65536|)\r\n",
		},
		{
			name:     "PORT",
			s:        &session4,
			dir:      ipvs.FromClient,
			payload:  "PORT 203,0,113,2,156,64\r\n",
			channels: []ipvs.Channel{active4},
		},
		{
			name:     "lowercase port after another command",
			s:        &session4,
			dir:      ipvs.FromClient,
			payload:  "TYPE I\r\nport 203,0,113,2,156,64\r\n",
			channels: []ipvs.Channel{active4},
		},
		{
			name:    "PORT lowest unprivileged port",
			s:       &session4,
			dir:     ipvs.FromClient,
			payload: "PORT 203,0,113,2,4,0\r\n",
			channels: []ipvs.Channel{
				channel(ipvs.ChannelActive, "203.0.113.2:1024", "10.0.0.11:0", "198.51.100.10:0")},
		},
		{
			name:    "PORT bounce to another address",
			s:       &session4,
			dir:     ipvs.FromClient,
			payload: "PORT 10,0,0,12,156,64\r\n",
		},
		{
			name:    "PORT bounce to a privileged port",
			s:       &session4,
			dir:     ipvs.FromClient,
			payload: "PORT 203,0,113,2,3,255\r\n",
		},
		{
			name:    "PORT invalid port byte",
			s:       &session4,
			dir:     ipvs.FromClient,
			payload: "PORT 203,0,113,2,256,22\r\n",
		},
		{
			name:    "PORT from the server",
			s:       &session4,
			dir:     ipvs.FromServer,
			payload: "PORT 203,0,113,2,156,64\r\n",
		},
		{
			name:    "PORT in IPv6 session",
			s:       &session6,
			dir:     ipvs.FromClient,
			payload: "PORT 203,0,113,2,156,64\r\n",
		},
		{
			name:     "EPRT IPv4",
			s:        &session4,
			dir:      ipvs.FromClient,
			payload:  "EPRT |1|203.0.113.2|40000|\r\n",
			channels: []ipvs.Channel{active4},
		},
		{
			name:     "EPRT IPv4-mapped in IPv4 session",
			s:        &session4,
			dir:      ipvs.FromClient,
			payload:  "EPRT |2|::ffff:203.0.113.2|40000|\r\n",
			channels: []ipvs.Channel{active4},
		},
		{
			name:    "EPRT IPv6",
			s:       &session6,
			dir:     ipvs.FromClient,
			payload: "eprt |2|2001:DB8:2:0::2|40000|\r\n",
			channels: []ipvs.Channel{
				channel(ipvs.ChannelActive, "[2001:db8:2::2]:40000", "[fd00::11]:0", "[2001:db8:1::10]:0")},
		},
		{
			name:    "EPRT IPv6 bounce",
			s:       &session6,
			dir:     ipvs.FromClient,
			payload: "EPRT |2|2001:db8:2::3|40000|\r\n",
		},
		{
			name:    "EPRT IPv6 privileged port",
			s:       &session6,
			dir:     ipvs.FromClient,
			payload: "EPRT |2|2001:db8:2::2|22|\r\n",
		},
		{
			name:    "EPRT family mismatch",
			s:       &session4,
			dir:     ipvs.FromClient,
			payload: "EPRT |1|2001:db8:2::2|40000|\r\n",
		},
		{
			name:    "EPRT unknown family",
			s:       &session4,
			dir:     ipvs.FromClient,
			payload: "EPRT |3|203.0.113.2|40000|\r\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r ipvs.Result
			payload := []byte(tc.payload)
			Helper{}.Inspect(tc.s, tc.dir, payload, &r)
			want := tc.want
			if want == "" {
				want = tc.payload
			}
			if got := string(apply(payload, &r)); got != want {
				t.Errorf("payload = %q, want %q", got, want)
			}
			if string(payload) != tc.payload {
				t.Errorf("Inspect modified its input: %q", payload)
			}
			if d := r.Delta(); d != tc.delta {
				t.Errorf("Delta = %d, want %d", d, tc.delta)
			}
			if !slices.Equal(r.Channels, tc.channels) {
				t.Errorf("Channels = %v, want %v", r.Channels, tc.channels)
			}
		})
	}
}

func TestInspectAllocs(t *testing.T) {
	for _, tc := range []struct {
		name    string
		s       *ipvs.Session
		dir     ipvs.Direction
		payload string
	}{
		{"227", &session4, ipvs.FromServer, "227 Entering Passive Mode (10,0,0,11,156,64).\r\n"},
		{"229", &session6, ipvs.FromServer, "229 Entering Extended Passive Mode (|||6446|)\r\n"},
		{"PORT", &session4, ipvs.FromClient, "PORT 203,0,113,2,156,64\r\n"},
		{"EPRT", &session6, ipvs.FromClient, "EPRT |2|2001:db8:2::2|40000|\r\n"},
		{"bounce", &session4, ipvs.FromClient, "PORT 10,0,0,12,156,64\r\n"},
	} {
		var r ipvs.Result
		payload := []byte(tc.payload)
		n := testing.AllocsPerRun(100, func() {
			r.Reset()
			Helper{}.Inspect(tc.s, tc.dir, payload, &r)
		})
		if n != 0 {
			t.Errorf("%s: %v allocations per Inspect, want 0", tc.name, n)
		}
	}
}

func benchmarkInspect(b *testing.B, s *ipvs.Session, dir ipvs.Direction, payload string) {
	var r ipvs.Result
	p := []byte(payload)
	b.ReportAllocs()
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		r.Reset()
		Helper{}.Inspect(s, dir, p, &r)
	}
	if len(r.Channels) != 1 {
		b.Fatalf("Inspect(%q) opened %d channels, want 1", payload, len(r.Channels))
	}
}

func BenchmarkInspect227(b *testing.B) {
	benchmarkInspect(b, &session4, ipvs.FromServer, "227 Entering Passive Mode (10,0,0,11,156,64).\r\n")
}

func BenchmarkInspectPORT(b *testing.B) {
	benchmarkInspect(b, &session4, ipvs.FromClient, "PORT 203,0,113,2,156,64\r\n")
}
