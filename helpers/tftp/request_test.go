package tftp

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// packet builds a datagram: op, then each field NUL-terminated.
func packet(op Op, fields ...string) []byte {
	b := []byte{byte(op >> 8), byte(op)}
	for _, f := range fields {
		b = append(b, f...)
		b = append(b, 0)
	}
	return b
}

// encode is the inverse of ParseRequest, without padding.
func encode(r Request) []byte {
	fields := []string{r.Filename, r.Mode}
	for _, o := range r.Options {
		fields = append(fields, o.Name, o.Value)
	}
	return packet(r.Op, fields...)
}

// realRequests are requests in the shape real clients send them.
var realRequests = []string{
	"\x00\x01pxelinux.0\x00octet\x00blksize\x001468\x00tsize\x000\x00",                                        // tftp-hpa
	"\x00\x01pxelinux.cfg/01-52-54-00-12-34-56\x00octet\x00timeout\x005\x00tsize\x000\x00blksize\x001468\x00", // U-Boot
	"\x00\x01/boot/grub/x86_64-efi/normal.mod\x00octet\x00blksize\x001024\x00tsize\x000\x00",                  // GRUB
	"\x00\x01boot\\x64\\wdsnbp.com\x00octet\x00tsize\x000\x00blksize\x001456\x00windowsize\x004\x00",          // Windows PXE
	"\x00\x01undionly.kpxe\x00octet\x00",                                                                      // a PXE ROM
	"\x00\x02router-confg\x00octet\x00",                                                                       // a router saving its config
	"\x00\x02notes.txt\x00netascii\x00",                                                                       // BSD tftp put
	"\x00\x01ipxe.efi\x00octet\x00tsize\x000\x00\x00\x00\x00",                                                 // padded
}

func TestRealRequests(t *testing.T) {
	for _, in := range realRequests {
		r, err := ParseRequest([]byte(in))
		if err != nil {
			t.Errorf("ParseRequest(%q): %v", in, err)
			continue
		}
		if got := string(encode(r)); got != strings.TrimRight(in, "\x00")+"\x00" {
			t.Errorf("ParseRequest(%q) = %+v, which encodes as %q", in, r, got)
		}
	}
}

func TestOpOf(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Op
		ok   bool
	}{
		{"", 0, false},
		{"\x00", 0, false},
		{"\x00\x01", OpRRQ, true},
		{"\x00\x02file\x00octet\x00", OpWRQ, true},
		{"\x00\x03\x00\x01data", OpDATA, true},
		{"\x00\x04\x00\x01", OpACK, true},
		{"\x00\x05\x00\x01oops\x00", OpERROR, true},
		{"\x00\x06blksize\x001468\x00", OpOACK, true},
		{"\x01\x02", 0x0102, true},
		{"\xff\xff", 0xffff, true},
	} {
		if got, ok := OpOf([]byte(tc.in)); got != tc.want || ok != tc.ok {
			t.Errorf("OpOf(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestOpString(t *testing.T) {
	for op, want := range map[Op]string{
		0: "op(0)", OpRRQ: "RRQ", OpWRQ: "WRQ", OpDATA: "DATA", OpACK: "ACK",
		OpERROR: "ERROR", OpOACK: "OACK", 7: "op(7)", 0xffff: "op(65535)",
	} {
		if got := op.String(); got != want {
			t.Errorf("Op(%d).String() = %q, want %q", uint16(op), got, want)
		}
	}
}

func TestParseRequest(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want Request
	}{
		{"RRQ", packet(OpRRQ, "pxelinux.0", "octet"),
			Request{Op: OpRRQ, Filename: "pxelinux.0", Mode: "octet"}},
		{"WRQ", packet(OpWRQ, "upload.bin", "octet"),
			Request{Op: OpWRQ, Filename: "upload.bin", Mode: "octet"}},
		{"netascii", packet(OpRRQ, "a.txt", "netascii"),
			Request{Op: OpRRQ, Filename: "a.txt", Mode: "netascii"}},
		{"mail", packet(OpWRQ, "root", "mail"),
			Request{Op: OpWRQ, Filename: "root", Mode: "mail"}},
		{"mode case kept", packet(OpRRQ, "f", "OcTeT"),
			Request{Op: OpRRQ, Filename: "f", Mode: "OcTeT"}},
		{"NETASCII", packet(OpRRQ, "f", "NETASCII"),
			Request{Op: OpRRQ, Filename: "f", Mode: "NETASCII"}},
		{"options", packet(OpRRQ, "pxelinux.0", "octet", "blksize", "1468", "tsize", "0", "windowsize", "16"),
			Request{Op: OpRRQ, Filename: "pxelinux.0", Mode: "octet", Options: []Option{
				{"blksize", "1468"}, {"tsize", "0"}, {"windowsize", "16"}}}},
		{"WRQ options", packet(OpWRQ, "up", "octet", "tsize", "123456", "timeout", "3"),
			Request{Op: OpWRQ, Filename: "up", Mode: "octet", Options: []Option{{"tsize", "123456"}, {"timeout", "3"}}}},
		{"empty value", packet(OpRRQ, "f", "octet", "tsize", ""),
			Request{Op: OpRRQ, Filename: "f", Mode: "octet", Options: []Option{{"tsize", ""}}}},
		{"unknown option kept", packet(OpRRQ, "f", "octet", "X-Vendor", "a b=c"),
			Request{Op: OpRRQ, Filename: "f", Mode: "octet", Options: []Option{{"X-Vendor", "a b=c"}}}},
		{"padding after mode", append(packet(OpRRQ, "f", "octet"), 0, 0, 0),
			Request{Op: OpRRQ, Filename: "f", Mode: "octet"}},
		{"padding after options", append(packet(OpRRQ, "f", "octet", "blksize", "512"), 0),
			Request{Op: OpRRQ, Filename: "f", Mode: "octet", Options: []Option{{"blksize", "512"}}}},
		{"filename bytes as sent", packet(OpRRQ, "dir\\\xff\x01 é", "octet"),
			Request{Op: OpRRQ, Filename: "dir\\\xff\x01 é", Mode: "octet"}},
		{"most options", packet(OpRRQ, append([]string{"f", "octet"}, pairs(MaxOptions)...)...),
			Request{Op: OpRRQ, Filename: "f", Mode: "octet", Options: options(MaxOptions)}},
		{"longest", packet(OpRRQ, strings.Repeat("a", MaxRequestLen-2-len("\x00octet\x00")), "octet"),
			Request{Op: OpRRQ, Filename: strings.Repeat("a", MaxRequestLen-9), Mode: "octet"}},
	} {
		got, err := ParseRequest(tc.in)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: ParseRequest(%q) = %+v, %v; want %+v", tc.name, tc.in, got, err, tc.want)
		}
	}
}

// pairs returns n option names and values, in order.
func pairs(n int) []string {
	var s []string
	for _, o := range options(n) {
		s = append(s, o.Name, o.Value)
	}
	return s
}

func options(n int) []Option {
	o := make([]Option, n)
	for i := range o {
		o[i] = Option{"opt" + string(rune('a'+i%26)) + string(rune('a'+i/26)), "v"}
	}
	return o
}

func TestParseRequestErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrNotRequest},
		{"one byte", []byte{0}, ErrNotRequest},
		{"DATA", packet(OpDATA, "f", "octet"), ErrNotRequest},
		{"ACK", []byte{0, 4, 0, 1}, ErrNotRequest},
		{"ERROR", packet(OpERROR, "\x00\x01oops"), ErrNotRequest},
		{"OACK", packet(OpOACK, "blksize", "1468"), ErrNotRequest},
		{"opcode 0", packet(0, "f", "octet"), ErrNotRequest},
		{"opcode 0x0101", packet(0x0101, "f", "octet"), ErrNotRequest},
		{"too long", packet(OpRRQ, strings.Repeat("a", MaxRequestLen), "octet"), ErrNotRequest},
		{"opcode only", packet(OpRRQ), ErrTruncated},
		{"filename lacks NUL", []byte("\x00\x01pxelinux.0"), ErrTruncated},
		{"no mode", packet(OpRRQ, "f"), ErrTruncated},
		{"mode lacks NUL", []byte("\x00\x01f\x00octet"), ErrTruncated},
		{"empty filename", packet(OpRRQ, "", "octet"), ErrEmptyFilename},
		{"empty filename, no mode", packet(OpWRQ, ""), ErrEmptyFilename},
		{"empty mode", packet(OpRRQ, "f", ""), ErrBadMode},
		{"binary", packet(OpRRQ, "f", "binary"), ErrBadMode},
		{"octets", packet(OpRRQ, "f", "octets"), ErrBadMode},
		{"octe", packet(OpRRQ, "f", "octe"), ErrBadMode},
		{"mode with space", packet(OpRRQ, "f", "octet "), ErrBadMode},
		{"Unicode fold", packet(OpRRQ, "f", "netaſcii"), ErrBadMode}, // U+017F folds to s, but not in strcasecmp
		{"name without value", packet(OpRRQ, "f", "octet", "blksize"), ErrOddOptions},
		{"name lacks NUL", []byte("\x00\x01f\x00octet\x00blksize"), ErrOddOptions},
		{"value lacks NUL", []byte("\x00\x01f\x00octet\x00blksize\x001468"), ErrOddOptions},
		{"third of a pair", packet(OpRRQ, "f", "octet", "blksize", "1468", "tsize"), ErrOddOptions},
		{"empty name inside", packet(OpRRQ, "f", "octet", "", "blksize", "1468", "x"), ErrOddOptions},
		{"junk after padding", append(packet(OpRRQ, "f", "octet", "blksize", "512"), 0, 0, 'x'), ErrOddOptions},
		{"too many options", packet(OpRRQ, append([]string{"f", "octet"}, pairs(MaxOptions+1)...)...), ErrTooManyOptions},
	} {
		got, err := ParseRequest(tc.in)
		if !errors.Is(err, tc.want) || !reflect.DeepEqual(got, Request{}) {
			t.Errorf("%s: ParseRequest(%q) = %+v, %v; want %v", tc.name, tc.in, got, err, tc.want)
		}
	}
}

// A request costs one string and one slice of options; junk costs nothing.
func TestParseRequestAllocs(t *testing.T) {
	for in, want := range map[string]float64{
		realRequests[0]:                     2,
		"\x00\x01f\x00octet\x00":            1,
		"\x00\x03\x00\x01":                  0,
		"\x00\x01f\x00binary\x00":           0,
		"\x00\x01f\x00octet\x00blksize\x00": 0,
	} {
		b := []byte(in)
		if n := testing.AllocsPerRun(100, func() { ParseRequest(b) }); n != want {
			t.Errorf("ParseRequest(%q): %v allocations, want %v", in, n, want)
		}
	}
}

func TestOption(t *testing.T) {
	r := Request{Op: OpRRQ, Filename: "f", Mode: "octet", Options: []Option{
		{"BlkSize", "1468"}, {"tsize", "0"}, {"blksize", "512"}, {"empty", ""}}}
	for _, tc := range []struct {
		name, want string
		ok         bool
	}{
		{"blksize", "1468", true}, // the first one wins
		{"BLKSIZE", "1468", true},
		{"TSize", "0", true},
		{"empty", "", true},
		{"windowsize", "", false},
		{"", "", false},
		{"bl\u212asize", "", false}, // KELVIN SIGN is not k to strcasecmp
	} {
		if got, ok := r.Option(tc.name); got != tc.want || ok != tc.ok {
			t.Errorf("Option(%q) = %q, %v; want %q, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
	if v, ok := (Request{}).Option("blksize"); v != "" || ok {
		t.Errorf("Option on no options = %q, %v", v, ok)
	}
}

func TestSummary(t *testing.T) {
	for _, tc := range []struct {
		r    Request
		max  int
		want string
	}{
		{Request{Op: OpRRQ, Filename: "pxelinux.0", Mode: "octet", Options: []Option{
			{"blksize", "1468"}, {"tsize", "0"}, {"windowsize", "16"}}}, 64,
			`RRQ "pxelinux.0" octet blksize=1468 tsize=0 windowsize=16`},
		{Request{Op: OpWRQ, Filename: "cfg", Mode: "NetASCII"}, 0,
			`WRQ "cfg" NetASCII`},
		{Request{Op: OpRRQ, Filename: "pxelinux.cfg/default", Mode: "octet"}, 6,
			`RRQ "pxelin"… octet`},
		{Request{Op: OpRRQ, Filename: "abcdef", Mode: "octet"}, 6,
			`RRQ "abcdef" octet`},
		{Request{Op: OpRRQ, Filename: "abcdef", Mode: "octet"}, -1,
			`RRQ "abcdef" octet`},
		{Request{Op: OpRRQ, Filename: "a\x00b\tc\x1b[31md\x7f\n", Mode: "octet"}, 0,
			`RRQ "a\x00b\tc\x1b[31md\x7f\n" octet`},
		{Request{Op: OpRRQ, Filename: "dir\\\"quoted\"", Mode: "octet"}, 0,
			`RRQ "dir\\\"quoted\"" octet`},
		{Request{Op: OpRRQ, Filename: "bad\xff\xfe", Mode: "octet"}, 0,
			`RRQ "bad\xff\xfe" octet`},
		{Request{Op: OpRRQ, Filename: "\u202egnp.exe", Mode: "octet"}, 0, // bidi override
			`RRQ "\u202egnp.exe" octet`},
		{Request{Op: OpRRQ, Filename: "été", Mode: "octet"}, 0,
			`RRQ "été" octet`},
		{Request{Op: OpRRQ, Filename: "été", Mode: "octet"}, 1, // é is two bytes: not split
			`RRQ ""… o…`},
		{Request{Op: OpRRQ, Filename: "été", Mode: "octet"}, 4,
			`RRQ "ét"… octe…`},
		{Request{Op: OpRRQ, Filename: "été", Mode: "octet"}, 5,
			`RRQ "été" octet`},
		{Request{Op: OpRRQ, Filename: "a\xe9t\xe9", Mode: "octet"}, 2, // Latin-1: cut where asked
			`RRQ "a\xe9"… oc…`},
		{Request{Op: OpRRQ, Filename: "f", Mode: "octet", Options: []Option{
			{"a b", "c=d"}, {"x", ""}, {"", "y"}, {"e\x1bf", "g\"h"}, {"tsize", "123456789"}}}, 5,
			`RRQ "f" octet "a b"="c=d" x="" ""=y "e\x1bf"="g\"h" tsize=12345…`},
		{Request{Op: 9, Filename: "", Mode: "oc\ttet\x00"}, 0,
			`op(9) "" "oc\ttet\x00"`},
		{Request{}, 0,
			`op(0) "" ""`},
	} {
		got := tc.r.Summary(tc.max)
		if got != tc.want {
			t.Errorf("%+v.Summary(%d):\n got %s\nwant %s", tc.r, tc.max, got, tc.want)
		}
		checkPrintable(t, got)
	}
}

// checkPrintable fails t if s has a control character.
func checkPrintable(t *testing.T, s string) {
	t.Helper()
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			t.Fatalf("control character %#x at %d in %q", s[i], i, s)
		}
	}
}
