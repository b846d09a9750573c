package ftp

import "net/netip"

// The parsers below take bytes straight from the packet. netip.ParseAddr
// would need a string conversion, which allocates on every call because the
// string may be retained as an IPv6 zone. They accept exactly what
// netip.ParseAddr accepts, minus zones (an EPRT address has no use for one).

// parseIPv4 parses a dotted quad. Like netip it rejects leading zeros: a
// server using inet_aton would read "010" as octal 8, so accepting it would
// let a client announce an address other than the one we checked.
func parseIPv4(b []byte) (netip.Addr, bool) {
	var ip [4]byte
	field := 0
	for i := 0; i < 4; i++ {
		if i > 0 {
			if field >= len(b) || b[field] != '.' {
				return netip.Addr{}, false
			}
			field++
		}
		v, n := decimal(b[field:])
		if n == 0 || n > 3 || v > 255 || (n > 1 && b[field] == '0') {
			return netip.Addr{}, false
		}
		ip[i] = byte(v)
		field += n
	}
	if field != len(b) {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4(ip), true
}

// parseIPv6 parses RFC 4291 text: hex groups, at most one "::" standing for
// at least one zero group, and an optional trailing dotted quad.
func parseIPv6(b []byte) (netip.Addr, bool) {
	var ip [16]byte
	ellipsis := -1 // index in ip where "::" stands, if any
	if len(b) >= 2 && b[0] == ':' && b[1] == ':' {
		ellipsis = 0
		b = b[2:]
		if len(b) == 0 {
			return netip.IPv6Unspecified(), true
		}
	}
	i := 0
	for i < 16 {
		acc, n := 0, 0
		for n < len(b) && n <= 4 {
			v, ok := hexval(b[n])
			if !ok {
				break
			}
			acc = acc<<4 | v
			n++
		}
		if n == 0 || n > 4 {
			return netip.Addr{}, false
		}
		if n < len(b) && b[n] == '.' {
			// A dotted quad may only fill the last 32 bits.
			if (ellipsis < 0 && i != 12) || i+4 > 16 {
				return netip.Addr{}, false
			}
			v4, ok := parseIPv4(b)
			if !ok {
				return netip.Addr{}, false
			}
			a := v4.As4()
			copy(ip[i:], a[:])
			i += 4
			b = nil
			break
		}
		ip[i], ip[i+1] = byte(acc>>8), byte(acc)
		i += 2
		b = b[n:]
		if len(b) == 0 {
			break
		}
		if b[0] != ':' || len(b) == 1 {
			return netip.Addr{}, false
		}
		b = b[1:]
		if b[0] == ':' {
			if ellipsis >= 0 {
				return netip.Addr{}, false
			}
			ellipsis = i
			b = b[1:]
			if len(b) == 0 {
				break
			}
		}
	}
	if len(b) != 0 {
		return netip.Addr{}, false
	}
	if i < 16 {
		if ellipsis < 0 {
			return netip.Addr{}, false
		}
		n := 16 - i
		copy(ip[ellipsis+n:], ip[ellipsis:i])
		clear(ip[ellipsis : ellipsis+n])
	} else if ellipsis >= 0 {
		return netip.Addr{}, false
	}
	return netip.AddrFrom16(ip), true
}

// decimal reads the leading decimal digits of b. It stops accumulating past
// six digits so that the value cannot overflow; callers check n.
func decimal(b []byte) (v, n int) {
	for n < len(b) && isDigit(b[n]) {
		if n < 6 {
			v = v*10 + int(b[n]-'0')
		}
		n++
	}
	return v, n
}

func hexval(c byte) (int, bool) {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0'), true
	case 'a' <= c && c <= 'f':
		return int(c - 'a' + 10), true
	case 'A' <= c && c <= 'F':
		return int(c - 'A' + 10), true
	}
	return 0, false
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
