package ftp

import (
	"bufio"
	"bytes"
	"errors"
	"math/rand/v2"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
)

// transcript is one case of a testdata file.
type transcript struct {
	pos  string // file:line, for failure messages
	want string // address:port, port, or "invalid"
	line string
}

func readTranscripts(tb testing.TB, name string) []transcript {
	tb.Helper()
	f, err := os.Open("testdata/" + name)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var ts []transcript
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		text := sc.Text()
		if text == "" || text[0] == '#' {
			continue
		}
		want, line, ok := strings.Cut(text, "\t")
		if !ok {
			tb.Fatalf("%s:%d: no tab", name, n)
		}
		ts = append(ts, transcript{name + ":" + strconv.Itoa(n), want, line})
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	return ts
}

func TestRepliesTranscript(t *testing.T) {
	for _, tc := range readTranscripts(t, "replies.txt") {
		line := []byte(tc.line)
		var got string
		switch {
		case strings.HasPrefix(tc.line, "229"):
			port, err := Parse229(line)
			got = strconv.Itoa(int(port))
			if err != nil {
				got = "invalid"
			}
		default:
			ap, start, end, err := Parse227(line)
			got = ap.String()
			if err != nil {
				got = "invalid"
			} else if p, err := ParsePORT(line[start:end]); err != nil || p != ap {
				t.Errorf("%s: Parse227(%q): [%d:%d] = %q does not parse as %v", tc.pos, tc.line, start, end, line[start:end], ap)
			}
		}
		if got != tc.want {
			t.Errorf("%s: %q: got %s, want %s", tc.pos, tc.line, got, tc.want)
		}
	}
}

func TestCommandsTranscript(t *testing.T) {
	for _, tc := range readTranscripts(t, "commands.txt") {
		got := "invalid"
		var ap netip.AddrPort
		var err error = ErrSyntax
		switch line := []byte(tc.line); {
		case hasPrefix(line, "PORT "):
			ap, err = ParsePORT(line[5:])
		case hasPrefix(line, "EPRT "):
			ap, err = ParseEPRT(line[5:])
		}
		if err == nil {
			got = ap.String()
		}
		if got != tc.want {
			t.Errorf("%s: %q: got %s (%v), want %s", tc.pos, tc.line, got, err, tc.want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		parse string
		in    string
		want  error
	}{
		{"PORT", "10,0,1,2,4,51", nil},
		{"PORT", "10,0,1,2,256,22", ErrPort},
		{"PORT", "10,0,1,2,0,0", ErrPort},
		{"PORT", "10,0,1,256,4,51", ErrAddress},
		{"PORT", "10,0,1,2,4", ErrSyntax},
		{"PORT", "10,0,1,2,4,51\r\n", ErrSyntax},
		{"PORT", "", ErrSyntax},
		{"PORT", "1000,0,1,2,4,51", ErrSyntax},
		{"227", "227 x 1216,256,2,127,127,127", ErrSyntax},
		{"227", "227 (10,0,0,300,4,51)", ErrAddress},
		{"227", "227 (10,0,0,3,4,510)", ErrPort},
		{"227", "228 (10,0,0,11,4,51)", ErrSyntax},
		{"229", "229 (|||6446|)", nil},
		{"229", "229 (|||65536|)", ErrPort},
		{"229", "229 (|||123456|)", ErrPort},
		{"229", "229 (|||0|)", ErrPort},
		{"229", "229 (1116446|)", ErrSyntax},
		{"229", "229 (\x7f\x7f\x7f6446\x7f)", ErrSyntax},
		{"EPRT", "|1|132.235.1.2|6275|", nil},
		{"EPRT", "|3|132.235.1.2|6275|", ErrAddress},
		{"EPRT", "||||", ErrSyntax},
		{"EPRT", "|1|::1|6275|", ErrAddress},
		{"EPRT", "|2|1.2.3.4|6275|", ErrAddress},
		{"EPRT", "|1|1.2.3.4|70000|", ErrPort},
		{"EPRT", "|1|1.2.3.4|6275", ErrSyntax},
	} {
		var err error
		switch tc.parse {
		case "PORT":
			_, err = ParsePORT([]byte(tc.in))
		case "227":
			_, _, _, err = Parse227([]byte(tc.in))
		case "229":
			_, err = Parse229([]byte(tc.in))
		case "EPRT":
			_, err = ParseEPRT([]byte(tc.in))
		}
		if (tc.want == nil) != (err == nil) || !errors.Is(err, tc.want) {
			t.Errorf("Parse%s(%q) = %v, want %v", tc.parse, tc.in, err, tc.want)
		}
	}
}

func TestParse227Offsets(t *testing.T) {
	line := []byte("227 Entering Passive Mode (10,0,0,11,156,64).")
	ap, start, end, err := Parse227(line)
	if err != nil || ap != netip.MustParseAddrPort("10.0.0.11:40000") ||
		string(line[start:end]) != "10,0,0,11,156,64" {
		t.Errorf("Parse227(%q) = %v, %d, %d, %v", line, ap, start, end, err)
	}
}

func TestAppendHostPort(t *testing.T) {
	for _, tc := range []struct {
		ap   string
		want string
	}{
		{"198.51.100.10:40000", "198,51,100,10,156,64"},
		{"0.0.0.0:1", "0,0,0,0,0,1"},
		{"255.255.255.255:65535", "255,255,255,255,255,255"},
		{"[2001:db8::1]:21", ""},
		{"[::ffff:1.2.3.4]:21", ""}, // mapped is IPv6 here; callers Unmap
	} {
		if got := AppendHostPort([]byte("prefix:"), netip.MustParseAddrPort(tc.ap)); string(got) != "prefix:"+tc.want {
			t.Errorf("AppendHostPort(%s) = %q, want %q", tc.ap, got, tc.want)
		}
	}
}

func TestHostPortRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var buf []byte
	for range 10000 {
		var a [4]byte
		for i := range a {
			a[i] = byte(r.UintN(256))
		}
		ap := netip.AddrPortFrom(netip.AddrFrom4(a), uint16(1+r.UintN(65535)))
		buf = AppendHostPort(buf[:0], ap)
		got, err := ParsePORT(buf)
		if err != nil || got != ap {
			t.Fatalf("ParsePORT(AppendHostPort(%v) = %q) = %v, %v", ap, buf, got, err)
		}
	}
}

// TestParseAddrLikeNetip checks the byte parsers against netip.ParseAddr on
// tricky inputs; FuzzParseAddr explores further.
func TestParseAddrLikeNetip(t *testing.T) {
	for _, s := range []string{
		"", "0.0.0.0", "1.2.3.4", "255.255.255.255", "256.1.1.1", "01.1.1.1",
		"1.2.3", "1.2.3.4.5", "1..2.3", "1.2.3.4.", ".1.2.3", "1.2.3.-4",
		"::", ":", ":::", "::1", "1::", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::",
		"::2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7:8::",
		"1::2::3", "12345::", "fFfF::", "g::", "1:2:3:4:5:6:1.2.3.4",
		"::1.2.3.4", "::ffff:1.2.3.4", "1:2:3:4:5:6:7:1.2.3.4", "1::1.2.3.4:5",
		"::ffff:01.2.3.4", "::1.2.3", "1:2:3:4:5::1.2.3.4", "fe80::1%eth0",
		"1:", ":1", "1:::2", "::ffff:1.2.3.4.5", "1:2:3:4:5:6:7:", "0x1::",
	} {
		checkAddrLikeNetip(t, []byte(s))
	}
}

func checkAddrLikeNetip(t *testing.T, b []byte) {
	t.Helper()
	want, err := netip.ParseAddr(string(b))
	if err == nil && want.Zone() != "" {
		err = errors.New("zone") // zones are refused on purpose
	}
	var got netip.Addr
	var ok bool
	if bytes.IndexByte(b, ':') >= 0 {
		got, ok = parseIPv6(b)
	} else {
		got, ok = parseIPv4(b)
	}
	if ok != (err == nil) || (ok && got != want) {
		t.Errorf("parse(%q) = %v, %v; netip.ParseAddr = %v, %v", b, got, ok, want, err)
	}
}
