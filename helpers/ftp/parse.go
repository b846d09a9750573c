package ftp

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
)

// Errors returned by the parsers; errors with more context wrap them.
var (
	ErrSyntax  = errors.New("ftp: malformed address argument")
	ErrAddress = errors.New("ftp: invalid address")
	ErrPort    = errors.New("ftp: invalid port")
)

// Wrapped once here, not per call, so that the packet path never allocates.
var (
	errOctet   = fmt.Errorf("%w: host number above 255", ErrAddress)
	errNetPrt  = fmt.Errorf("%w: EPRT net-prt is neither 1 nor 2", ErrAddress)
	errNetAddr = fmt.Errorf("%w: EPRT net-addr is not an address of the net-prt family", ErrAddress)
	errByte    = fmt.Errorf("%w: port number above 255", ErrPort)
	errRange   = fmt.Errorf("%w: port not in 1-65535", ErrPort)
)

// ParsePORT parses the argument of a PORT command, "h1,h2,h3,h4,p1,p2"
// (RFC 959), with the line terminator already removed. Numbers are decimal,
// one to three digits each.
func ParsePORT(args []byte) (netip.AddrPort, error) {
	ap, n, err := hostPort(args)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if n != len(args) {
		return netip.AddrPort{}, ErrSyntax
	}
	return ap, nil
}

// Parse227 parses a "227 " (PASV) reply line, without its line terminator.
// Replies differ in wording, so as RFC 1123 4.1.2.6 advises, the address is
// taken from the first digit on. start and end delimit the h1..p2 text in
// line.
func Parse227(line []byte) (ap netip.AddrPort, start, end int, err error) {
	if !hasPrefix(line, "227 ") {
		return netip.AddrPort{}, 0, 0, ErrSyntax
	}
	return scanHostPort(line, 4)
}

// scanHostPort parses the "h1,h2,h3,h4,p1,p2" that starts at the first digit
// of line at or after from; start and end delimit it in line.
func scanHostPort(line []byte, from int) (ap netip.AddrPort, start, end int, err error) {
	start = min(from, len(line))
	for start < len(line) && !isDigit(line[start]) {
		start++
	}
	ap, n, err := hostPort(line[start:])
	if err != nil {
		return netip.AddrPort{}, 0, 0, err
	}
	end = start + n
	// A seventh number means this is not the address we think it is.
	if end < len(line) && line[end] == ',' {
		return netip.AddrPort{}, 0, 0, ErrSyntax
	}
	return ap, start, end, nil
}

// Parse229 parses a "229 " (EPSV) reply line, without its line terminator:
// "229 text (<d><d><d><port><d>)" (RFC 2428).
func Parse229(line []byte) (port uint16, err error) {
	port, _, _, _, err = parse229(line)
	return port, err
}

// parse229 is Parse229 that also returns where the "(" is and where the port
// digits start and end in line.
func parse229(line []byte) (port uint16, paren, start, end int, err error) {
	if !hasPrefix(line, "229 ") {
		return 0, 0, 0, 0, ErrSyntax
	}
	i := bytes.IndexByte(line[4:], '(')
	if i < 0 {
		return 0, 0, 0, 0, ErrSyntax
	}
	paren = 4 + i
	b := line[paren+1:]
	if len(b) < 3 || !isDelim(b[0]) || b[1] != b[0] || b[2] != b[0] {
		return 0, 0, 0, 0, ErrSyntax
	}
	d := b[0]
	port, n, err := tcpPort(b[3:])
	if err != nil {
		return 0, 0, 0, 0, err
	}
	b = b[3+n:]
	if len(b) < 2 || b[0] != d || b[1] != ')' {
		return 0, 0, 0, 0, ErrSyntax
	}
	start = paren + 4
	return port, paren, start, start + n, nil
}

// ParseEPRT parses the argument of an EPRT command,
// "<d><net-prt><d><net-addr><d><tcp-port><d>" (RFC 2428), with the line
// terminator already removed. net-prt 1 is IPv4, 2 is IPv6 (no zone).
func ParseEPRT(args []byte) (netip.AddrPort, error) {
	if len(args) < 3 || !isDelim(args[0]) || args[2] != args[0] {
		return netip.AddrPort{}, ErrSyntax
	}
	d, proto := args[0], args[1]
	rest := args[3:]
	i := bytes.IndexByte(rest, d)
	if i < 0 {
		return netip.AddrPort{}, ErrSyntax
	}
	text := rest[:i]
	rest = rest[i+1:]
	port, n, err := tcpPort(rest)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if n+1 != len(rest) || rest[n] != d {
		return netip.AddrPort{}, ErrSyntax
	}
	var addr netip.Addr
	ok := false
	switch proto {
	case '1':
		addr, ok = parseIPv4(text)
	case '2':
		addr, ok = parseIPv6(text)
	default:
		return netip.AddrPort{}, errNetPrt
	}
	if !ok {
		return netip.AddrPort{}, errNetAddr
	}
	return netip.AddrPortFrom(addr, port), nil
}

// AppendHostPort appends ap as "h1,h2,h3,h4,p1,p2", the form PORT and 227
// use. Only IPv4 has that form: for any other address dst is returned as is.
func AppendHostPort(dst []byte, ap netip.AddrPort) []byte {
	a := ap.Addr()
	if !a.Is4() {
		return dst
	}
	for _, v := range a.As4() {
		dst = strconv.AppendUint(dst, uint64(v), 10)
		dst = append(dst, ',')
	}
	dst = strconv.AppendUint(dst, uint64(ap.Port()>>8), 10)
	dst = append(dst, ',')
	return strconv.AppendUint(dst, uint64(ap.Port()&0xff), 10)
}

// hostPort parses "h1,h2,h3,h4,p1,p2" at the start of b and returns how many
// bytes it used. Unlike a dotted quad, leading zeros are fine: RFC 959 says
// the fields are decimal and servers read them so.
func hostPort(b []byte) (netip.AddrPort, int, error) {
	var f [6]byte
	off := 0
	for i := range f {
		if i > 0 {
			if off >= len(b) || b[off] != ',' {
				return netip.AddrPort{}, 0, ErrSyntax
			}
			off++
		}
		v, n := decimal(b[off:])
		if n == 0 || n > 3 {
			return netip.AddrPort{}, 0, ErrSyntax
		}
		if v > 255 {
			if i < 4 {
				return netip.AddrPort{}, 0, errOctet
			}
			return netip.AddrPort{}, 0, errByte
		}
		f[i] = byte(v)
		off += n
	}
	port := uint16(f[4])<<8 | uint16(f[5])
	if port == 0 {
		return netip.AddrPort{}, 0, errRange
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(f[:4])), port), off, nil
}

// tcpPort parses the decimal port at the start of b.
func tcpPort(b []byte) (uint16, int, error) {
	v, n := decimal(b)
	if n == 0 {
		return 0, 0, ErrSyntax
	}
	if n > 5 || v < 1 || v > 65535 {
		return 0, 0, errRange
	}
	return uint16(v), n, nil
}

// isDelim reports whether c may delimit EPRT and EPSV fields: RFC 2428 allows
// ASCII 33-126; digits are excluded, as in Linux, since they would be
// ambiguous next to the port.
func isDelim(c byte) bool { return 33 <= c && c <= 126 && !isDigit(c) }

// hasPrefix is bytes.HasPrefix ignoring ASCII case, since FTP commands are
// case-insensitive; prefix must be upper case.
func hasPrefix(b []byte, prefix string) bool {
	if len(b) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		c := b[i]
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}
