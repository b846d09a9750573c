// Package nfq parses and rewrites the IP/TCP packets that nftables queues to
// userspace: header views over the queued bytes, wraparound-safe sequence
// arithmetic, incremental (RFC 1624) and full checksums, and payload
// rewriting. Nothing on the per-packet path allocates.
package packet

import (
	"errors"
	"net/netip"
)

// Errors from Parse, returned bare so that the per-packet path does not
// allocate; callers compare with errors.Is.
var (
	ErrTruncated = errors.New("packet: truncated")
	ErrNotTCP    = errors.New("packet: not a TCP packet")
	ErrNotUDP    = errors.New("packet: not a UDP packet")
	ErrFragment  = errors.New("packet: IP fragment")
	ErrBadHeader = errors.New("packet: malformed header")
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
	buf, l4, v6, proto, err := parseIP(buf)
	if err != nil {
		return err
	}
	if proto != ProtocolTCP {
		return ErrNotTCP
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

// ProtocolUDP is UDP's IP protocol number.
const ProtocolUDP = 17

// UDPEndpoints parses buf as an unfragmented IPv4 or IPv6 packet carrying
// UDP and returns its source and destination: what scheduling a UDP flow
// needs. Other packets give ErrNotUDP or the errors of Parse.
func UDPEndpoints(buf []byte) (src, dst netip.AddrPort, err error) {
	src, dst, _, err = UDPDatagram(buf)
	return src, dst, err
}

// UDPDatagram is UDPEndpoints with the datagram's payload, as long as the
// UDP header says and the packet holds.
func UDPDatagram(buf []byte) (src, dst netip.AddrPort, payload []byte, err error) {
	buf, l4, v6, proto, err := parseIP(buf)
	if err != nil {
		return src, dst, nil, err
	}
	if proto != ProtocolUDP {
		return src, dst, nil, ErrNotUDP
	}
	if len(buf)-l4 < udpHeaderLen {
		return src, dst, nil, ErrTruncated
	}
	sport, dport := uint16(buf[l4])<<8|uint16(buf[l4+1]), uint16(buf[l4+2])<<8|uint16(buf[l4+3])
	if n := int(buf[l4+4])<<8 | int(buf[l4+5]); n >= udpHeaderLen && l4+n < len(buf) {
		buf = buf[:l4+n]
	}
	payload = buf[l4+udpHeaderLen:]
	if v6 {
		ip := IPv6(buf)
		return netip.AddrPortFrom(ip.Src(), sport), netip.AddrPortFrom(ip.Dst(), dport), payload, nil
	}
	ip := IPv4(buf)
	return netip.AddrPortFrom(ip.Src(), sport), netip.AddrPortFrom(ip.Dst(), dport), payload, nil
}

const udpHeaderLen = 8

// parseIP validates the IP header(s) of buf and returns buf cut to the IP
// length, the offset of the transport header and its protocol.
func parseIP(buf []byte) (_ []byte, l4 int, v6 bool, proto uint8, err error) {
	if len(buf) == 0 {
		return nil, 0, false, 0, ErrTruncated
	}
	switch buf[0] >> 4 {
	case 4:
		if len(buf) < IPv4MinHeaderLen {
			return nil, 0, false, 0, ErrTruncated
		}
		ip := IPv4(buf)
		hl, total := ip.HeaderLen(), int(ip.TotalLen())
		if hl < IPv4MinHeaderLen || total < hl {
			return nil, 0, false, 0, ErrBadHeader
		}
		if total > len(buf) {
			return nil, 0, false, 0, ErrTruncated
		}
		// A fragment is reported before the protocol, as IPv6 meets the
		// fragment header before the upper-layer header.
		if ip.IsFragment() {
			return nil, 0, false, 0, ErrFragment
		}
		return buf[:total], hl, false, ip.Protocol(), nil
	case 6:
		if len(buf) < IPv6HeaderLen {
			return nil, 0, false, 0, ErrTruncated
		}
		total := IPv6HeaderLen + int(IPv6(buf).PayloadLen())
		if total > len(buf) {
			return nil, 0, false, 0, ErrTruncated
		}
		buf = buf[:total]
		l4, proto, err := skipIPv6Ext(buf)
		if err != nil {
			return nil, 0, false, 0, err
		}
		return buf, l4, true, proto, nil
	}
	return nil, 0, false, 0, ErrBadHeader
}

// skipIPv6Ext walks the extension headers of the IPv6 packet b (already cut
// to its length) and returns the offset and protocol of the TCP or UDP
// header.
func skipIPv6Ext(b []byte) (int, uint8, error) {
	next, off := IPv6(b).NextHeader(), IPv6HeaderLen
	for {
		switch next {
		case ProtocolTCP, ProtocolUDP:
			return off, next, nil
		case ipv6HopByHop, ipv6Routing, ipv6DestOpts:
			// These share the layout: next header, then length in 8-byte
			// units not counting the first 8.
			if len(b)-off < 2 {
				return 0, 0, ErrTruncated
			}
			n := (int(b[off+1]) + 1) * 8
			if n > len(b)-off {
				return 0, 0, ErrTruncated
			}
			next, off = b[off], off+n
		case ipv6Fragment:
			return 0, 0, ErrFragment
		default:
			// Including AH and ESP: a protected payload cannot be rewritten.
			return 0, next, nil
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
