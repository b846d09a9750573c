package ftp

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/nfhelper/nfhelper/ipvs"
)

// seed adds the transcript lines for which keep returns true, transformed.
func seed(f *testing.F, file string, keep func(line string) (string, bool)) {
	for _, tc := range readTranscripts(f, file) {
		if s, ok := keep(tc.line); ok {
			f.Add([]byte(s))
		}
	}
}

func argsOf(cmd string) func(string) (string, bool) {
	return func(line string) (string, bool) {
		if len(line) < len(cmd) || !strings.EqualFold(line[:len(cmd)], cmd) {
			return "", false
		}
		return line[len(cmd):], true
	}
}

func all(line string) (string, bool) { return line, true }

func FuzzParse227(f *testing.F) {
	seed(f, "replies.txt", all)
	f.Fuzz(func(t *testing.T, line []byte) {
		ap, start, end, err := Parse227(line)
		if err != nil {
			return
		}
		if start < 4 || end <= start || end > len(line) {
			t.Fatalf("Parse227(%q): bad offsets %d, %d", line, start, end)
		}
		if p, err := ParsePORT(line[start:end]); err != nil || p != ap {
			t.Fatalf("Parse227(%q) = %v, but [%d:%d] parses as %v, %v", line, ap, start, end, p, err)
		}
	})
}

func FuzzParsePORT(f *testing.F) {
	seed(f, "commands.txt", argsOf("PORT "))
	f.Fuzz(func(t *testing.T, args []byte) {
		ap, err := ParsePORT(args)
		if err != nil {
			return
		}
		text := AppendHostPort(nil, ap)
		if p, err := ParsePORT(text); err != nil || p != ap {
			t.Fatalf("ParsePORT(%q) = %v, but its formatting %q parses as %v, %v", args, ap, text, p, err)
		}
		// Without leading zeros the formatting is the input itself.
		canonical := true
		for _, n := range strings.Split(string(args), ",") {
			canonical = canonical && (len(n) == 1 || n[0] != '0')
		}
		if canonical && string(text) != string(args) {
			t.Fatalf("ParsePORT(%q) = %v, formatted as %q", args, ap, text)
		}
	})
}

// refEPRT is an obviously correct, allocating EPRT parser to compare with.
func refEPRT(s string) (netip.AddrPort, bool) {
	if s == "" || !isDelim(s[0]) {
		return netip.AddrPort{}, false
	}
	f := strings.Split(s[1:], s[:1])
	if len(f) != 4 || f[3] != "" || len(f[2]) > 5 || strings.Trim(f[2], "0123456789") != "" {
		return netip.AddrPort{}, false
	}
	port, err := strconv.Atoi(f[2])
	if err != nil || port < 1 || port > 65535 {
		return netip.AddrPort{}, false
	}
	a, err := netip.ParseAddr(f[1])
	if err != nil || a.Zone() != "" || !(f[0] == "1" && a.Is4() || f[0] == "2" && a.Is6()) {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a, uint16(port)), true
}

func FuzzParseEPRT(f *testing.F) {
	seed(f, "commands.txt", argsOf("EPRT "))
	f.Fuzz(func(t *testing.T, args []byte) {
		ap, err := ParseEPRT(args)
		want, ok := refEPRT(string(args))
		if (err == nil) != ok || ap != want {
			t.Fatalf("ParseEPRT(%q) = %v, %v; reference parser: %v, %v", args, ap, err, want, ok)
		}
	})
}

func FuzzParse229(f *testing.F) {
	seed(f, "replies.txt", all)
	f.Fuzz(func(t *testing.T, line []byte) {
		port, err := Parse229(line)
		if err != nil {
			return
		}
		if port == 0 || !strings.Contains(string(line), strconv.Itoa(int(port))) {
			t.Fatalf("Parse229(%q) = %d", line, port)
		}
	})
}

// FuzzParseAddr compares the allocation-free address parsers with netip.
func FuzzParseAddr(f *testing.F) {
	for _, s := range []string{"1.2.3.4", "::", "1::2", "::ffff:1.2.3.4", "1:2:3:4:5:6:7:8", "fe80::1%eth0"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) { checkAddrLikeNetip(t, b) })
}

func FuzzInspect(f *testing.F) {
	var lines []string
	for _, file := range []string{"replies.txt", "commands.txt"} {
		for _, tc := range readTranscripts(f, file) {
			lines = append(lines, tc.line)
			f.Add([]byte(tc.line+"\r\n"), strings.HasPrefix(tc.line, "2"), false)
		}
	}
	f.Add([]byte(strings.Join(lines, "\r\n")), true, false)
	f.Add([]byte(strings.Join(lines, "\n")), false, true)
	f.Add([]byte("227 (10,0,0,11,156,64)\r\nPORT 203,0,113,2,156,64\r\nEPRT |2|2001:db8:2::2|40000|\r\n227 (10,0,0,11,4,"), true, false)
	f.Fuzz(func(t *testing.T, payload []byte, fromServer, v6 bool) {
		s, dir := &session4, ipvs.FromClient
		if v6 {
			s = &session6
		}
		if fromServer {
			dir = ipvs.FromServer
		}
		in := string(payload)
		var r ipvs.Result
		Helper{}.Inspect(s, dir, payload, &r)
		if string(payload) != in {
			t.Fatalf("Inspect modified its input")
		}
		end := 0
		for _, e := range r.Edits {
			if e.Off < end || e.Len <= 0 || e.Off+e.Len > len(payload) {
				t.Fatalf("edit {%d, %d} out of order or bounds (payload %d bytes, previous edit ends at %d)", e.Off, e.Len, len(payload), end)
			}
			end = e.Off + e.Len
			old, err := ParsePORT(payload[e.Off:end])
			if err != nil || old.Addr() != s.Server.Addr() {
				t.Fatalf("edit replaces %q, not the server's address: %v, %v", payload[e.Off:end], old, err)
			}
			ap, err := ParsePORT(e.New)
			if err != nil || ap != netip.AddrPortFrom(s.VIP.Addr(), old.Port()) {
				t.Fatalf("edit writes %q: %v, %v", e.New, ap, err)
			}
		}
		for _, c := range r.Channels {
			switch c.Kind {
			case ipvs.ChannelPassive:
				if c.Client.Port() != 0 || c.Server.Addr() != s.Server.Addr() || c.VIP.Addr() != s.VIP.Addr() || c.VIP.Port() != c.Server.Port() || c.VIP.Port() == 0 {
					t.Fatalf("bad passive channel %+v", c)
				}
			case ipvs.ChannelActive:
				if c.Client.Addr() != s.Client.Addr() || c.Client.Port() < minDataPort || c.Server != netip.AddrPortFrom(s.Server.Addr(), 0) || c.VIP != netip.AddrPortFrom(s.VIP.Addr(), 0) {
					t.Fatalf("bad active channel %+v", c)
				}
			default:
				t.Fatalf("bad channel kind %+v", c)
			}
		}
	})
}
