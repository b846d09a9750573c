package ftp

import (
	"net/netip"
	"slices"
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

// FuzzInspect feeds one direction's stream (after the client primed the
// server's replies with commands) in one piece and in the chunks chunking
// gives, checks the contract on every call (in sim.feed), and that both
// feeds deliver the same stream and ask for the same channels.
func FuzzInspect(f *testing.F) {
	var lines []string
	for _, file := range []string{"replies.txt", "commands.txt"} {
		for _, tc := range readTranscripts(f, file) {
			lines = append(lines, tc.line)
			f.Add(strings.HasPrefix(tc.line, "2"), []byte(tc.line+"\r\n"), []byte{3, 7}, uint8(0))
		}
	}
	f.Add(true, []byte(strings.Join(lines, "\r\n")), []byte{1, 2, 3, 4, 5, 6, 7, 8, 9}, uint8(1))
	f.Add(false, []byte(strings.Join(lines, "\n")), []byte{40, 1, 1, 200}, uint8(6))
	f.Add(true, []byte("227 (10,0,0,11,156,64)\r\n211-x\r\n227 (10,0,0,11,4,1)\r\n211 y\r\n227-a\r\n b 10,0,0,11,4,2\r\n227 c\r\n"), []byte{5, 30, 2}, uint8(2))
	f.Add(true, []byte("229 Entering Extended Passive Mode (|||6446|)\r\n234 ok\r\n227 (10,0,0,11,156,64)\r\n"), []byte{9}, uint8(8|16))
	for _, tc := range transcripts {
		_, server := tc.streams()
		f.Add(true, []byte(server), []byte{17, 1, 100}, uint8(4))
	}
	f.Fuzz(func(t *testing.T, fromServer bool, stream, chunking []byte, mode uint8) {
		// mode: 1 loose, 2 low ports, 4 VIP port change, 8 AUTH first,
		// 16 fin, 32 the shorter VIP, 64 opener refuses.
		s, p := &session4, ipvs.Policy{Loose: mode&1 != 0, AllowLowPorts: mode&2 != 0}
		if mode&32 != 0 {
			s = &sessionShort
		}
		var port uint16
		if mode&4 != 0 {
			port = 1024 + uint16(len(stream))
		}
		prime := "PASV\r\nEPSV\r\nPASV\r\nEPSV\r\nPASV\r\nEPSV\r\n"
		if mode&8 != 0 {
			prime = "AUTH TLS\r\n" + prime
		}
		dir := ipvs.FromClient
		if fromServer {
			dir = ipvs.FromServer
		}
		fin := mode&16 != 0
		feed := func(cuts []byte) (string, []string, *sim) {
			m := newSim(t, s, &p)
			m.rec.port, m.rec.refuse = port, mode&64 != 0
			if fromServer {
				m.feed(ipvs.FromClient, []byte(prime), false)
			}
			rest := stream
			for _, c := range cuts {
				n := min(int(c)+1, len(rest))
				if n == len(rest) {
					break
				}
				m.feed(dir, rest[:n], false)
				rest = rest[n:]
			}
			m.feed(dir, rest, fin)
			m.release(&m.dir[dir])
			return string(m.dir[dir].out), m.rec.log, m
		}
		out, log, _ := feed(nil)
		out2, log2, _ := feed(chunking)
		if out != out2 || !slices.Equal(log, log2) {
			t.Fatalf("chunked %v:\n%q\n%q\nunchunked:\n%q\n%q", chunking, out2, log2, out, log)
		}
		if !fromServer {
			// Only refused PORT and EPRT verbs change, and every refused
			// one does.
			in, got := strings.Split(string(stream), "\n"), strings.Split(out, "\n")
			if len(in) != len(got) {
				t.Fatalf("client stream: %d lines became %d", len(in), len(got))
			}
			refusals := 0
			for _, l := range log {
				if strings.HasPrefix(l, "refuse ") {
					refusals++
				}
			}
			changed := 0
			for i := range in {
				if in[i] == got[i] {
					continue
				}
				changed++
				if got[i] != neutralVerb+in[i][len(neutralVerb):] {
					t.Fatalf("client line %q became %q", in[i], got[i])
				}
			}
			if changed > refusals {
				t.Fatalf("%d client lines changed, %d refusals: %q", changed, refusals, out)
			}
			return
		}
		// Lines are kept and a rewritten line names the VIP.
		in := strings.Split(string(stream), "\n")
		got := strings.Split(out, "\n")
		if len(in) != len(got) {
			t.Fatalf("%d lines became %d", len(in), len(got))
		}
		for i := range in {
			if in[i] == got[i] {
				continue
			}
			line := []byte(strings.TrimSuffix(got[i], "\r"))
			if hasPrefix(line, "229 ") {
				if q, err := Parse229(line); err != nil || q != port {
					t.Fatalf("%q rewritten to %q: %v, %v", in[i], line, q, err)
				}
				continue
			}
			from := 0
			if hasPrefix(line, "227") {
				from = 4
			}
			ap, _, _, err := scanHostPort(line, from)
			if err != nil || ap.Addr() != s.VIP.Addr() || port != 0 && ap.Port() != port {
				t.Fatalf("%q rewritten to %q: %v, %v", in[i], line, ap, err)
			}
		}
	})
}
