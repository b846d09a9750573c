// Package nfq parses and rewrites the IP/TCP packets that nftables queues to
// userspace: header views over the queued bytes, wraparound-safe sequence
// arithmetic, incremental (RFC 1624) and full checksums, and payload
// rewriting. Nothing on the per-packet path allocates.
package nfq

import (
	"errors"
	"net/netip"
)

// Errors from Parse, returned bare so that the per-packet path does not
// allocate; callers compare with errors.Is.
var (
	ErrTruncated = errors.New("nfq: packet truncated")
	ErrNotTCP    = errors.New("nfq: not a TCP packet")
	ErrFragment  = errors.New("nfq: IP fragment")
	ErrBadHeader = errors.New("nfq: malformed header")
)

// Packet is a parsed view of one IP packet (IPv4 or IPv6) carrying TCP; it
// does not copy.
type Packet struct {
	Buf     []byte // the packet as queued, starting at the IP header, cut to the IP length
	V6      bool
	L4      int // offset of the TCP header in Buf
	Payload int // offset of the TCP payload in Buf
}

// Parse validates buf as an IPv4 or IPv6 packet carrying an unfragmented TCP
// segment and fills p with a view of it. buf may extend past the IP length
// (Buf is cut to it) but not fall short of it. IPv4 options and the IPv6
// hop-by-hop, routing and destination-options headers are skipped. On error
// p is left unchanged.
func Parse(buf []byte, p *Packet) error {
	if len(buf) == 0 {
		return ErrTruncated
	}
	var (
		l4 int
		v6 bool
	)
	switch buf[0] >> 4 {
	case 4:
		if len(buf) < IPv4MinHeaderLen {
			return ErrTruncated
		}
		ip := IPv4(buf)
		hl, total := ip.HeaderLen(), int(ip.TotalLen())
		if hl < IPv4MinHeaderLen || total < hl {
			return ErrBadHeader
		}
		if total > len(buf) {
			return ErrTruncated
		}
		// A fragment is reported before the protocol, as IPv6 meets the
		// fragment header before the upper-layer header.
		if ip.IsFragment() {
			return ErrFragment
		}
		if ip.Protocol() != ProtocolTCP {
			return ErrNotTCP
		}
		buf, l4 = buf[:total], hl
	case 6:
		if len(buf) < IPv6HeaderLen {
			return ErrTruncated
		}
		total := IPv6HeaderLen + int(IPv6(buf).PayloadLen())
		if total > len(buf) {
			return ErrTruncated
		}
		buf, v6 = buf[:total], true
		var err error
		if l4, err = skipIPv6Ext(buf); err != nil {
			return err
		}
	default:
		return ErrBadHeader
	}
	if len(buf)-l4 < TCPMinHeaderLen {
		return ErrTruncated
	}
	doff := TCP(buf[l4:]).DataOffset()
	if doff < TCPMinHeaderLen {
		return ErrBadHeader
	}
	if doff > len(buf)-l4 {
		return ErrTruncated
	}
	*p = Packet{Buf: buf, V6: v6, L4: l4, Payload: l4 + doff}
	return nil
}

// skipIPv6Ext walks the extension headers of the IPv6 packet b (already cut
// to its length) and returns the offset of the TCP header.
func skipIPv6Ext(b []byte) (int, error) {
	next, off := IPv6(b).NextHeader(), IPv6HeaderLen
	for {
		switch next {
		case ProtocolTCP:
			return off, nil
		case ipv6HopByHop, ipv6Routing, ipv6DestOpts:
			// These share the layout: next header, then length in 8-byte
			// units not counting the first 8.
			if len(b)-off < 2 {
				return 0, ErrTruncated
			}
			n := (int(b[off+1]) + 1) * 8
			if n > len(b)-off {
				return 0, ErrTruncated
			}
			next, off = b[off], off+n
		case ipv6Fragment:
			return 0, ErrFragment
		default:
			// Including AH and ESP: a protected payload cannot be rewritten.
			return 0, ErrNotTCP
		}
	}
}

// IPv4 is the packet as an IPv4 header view; valid only if !p.V6.
func (p *Packet) IPv4() IPv4 { return IPv4(p.Buf) }

// IPv6 is the packet as an IPv6 header view; valid only if p.V6.
func (p *Packet) IPv6() IPv6 { return IPv6(p.Buf) }

// TCP is the TCP segment, header and payload.
func (p *Packet) TCP() TCP { return TCP(p.Buf[p.L4:]) }

// PayloadBytes is the TCP payload.
func (p *Packet) PayloadBytes() []byte { return p.Buf[p.Payload:] }

// Src is the source address and TCP port.
func (p *Packet) Src() netip.AddrPort {
	if p.V6 {
		return netip.AddrPortFrom(p.IPv6().Src(), p.TCP().SrcPort())
	}
	return netip.AddrPortFrom(p.IPv4().Src(), p.TCP().SrcPort())
}

// Dst is the destination address and TCP port.
func (p *Packet) Dst() netip.AddrPort {
	if p.V6 {
		return netip.AddrPortFrom(p.IPv6().Dst(), p.TCP().DstPort())
	}
	return netip.AddrPortFrom(p.IPv4().Dst(), p.TCP().DstPort())
}

// TCPChecksumValid verifies the TCP checksum over the pseudo-header and the
// whole segment.
func (p *Packet) TCPChecksumValid() bool {
	tcp := p.TCP()
	return ChecksumFold(Checksum(tcp, pseudoHeaderSum(p.Buf, p.V6, len(tcp)))) == 0
}
