package packet

import (
	"encoding/binary"
	"net/netip"
)

// IPv4 is an IPv4 packet, starting at its header. Accessors do no bounds
// checks: Parse validates the header once (gVisor's header package style).
type IPv4 []byte

// Field offsets and sizes of the IPv4 header (RFC 791).
const (
	IPv4MinHeaderLen = 20
	ipv4TotalLenOff  = 2
	ipv4FlagsFragOff = 6
	ipv4ProtocolOff  = 9
	ipv4ChecksumOff  = 10
	ipv4AddrsOff     = 12 // Src then Dst, the pseudo-header's address part
	ipv4DstOff       = 16
	ipv4AddrsEnd     = 20

	// ipv4FragMask covers the MF flag and the fragment offset; DF is not a
	// fragment.
	ipv4FragMask = 0x3fff
)

// ProtocolTCP is the IP protocol number (IPv4) and next header (IPv6) of TCP.
const ProtocolTCP = 6

// HeaderLen is the header length in bytes, from IHL.
func (b IPv4) HeaderLen() int { return int(b[0]&0x0f) * 4 }

// TotalLen is the length of the packet, header included.
func (b IPv4) TotalLen() uint16 { return binary.BigEndian.Uint16(b[ipv4TotalLenOff:]) }

// SetTotalLen sets the total length and updates the header checksum
// incrementally, so a header that was corrupt stays detectably corrupt.
func (b IPv4) SetTotalLen(v uint16) {
	b.SetChecksum(ChecksumUpdate16(b.Checksum(), b.TotalLen(), v))
	binary.BigEndian.PutUint16(b[ipv4TotalLenOff:], v)
}

// Protocol is the upper-layer protocol number.
func (b IPv4) Protocol() uint8 { return b[ipv4ProtocolOff] }

// Src is the source address.
func (b IPv4) Src() netip.Addr { return netip.AddrFrom4([4]byte(b[ipv4AddrsOff:])) }

// Dst is the destination address.
func (b IPv4) Dst() netip.Addr { return netip.AddrFrom4([4]byte(b[ipv4DstOff:])) }

// Checksum is the header checksum field.
func (b IPv4) Checksum() uint16 { return binary.BigEndian.Uint16(b[ipv4ChecksumOff:]) }

// SetChecksum sets the header checksum field.
func (b IPv4) SetChecksum(v uint16) { binary.BigEndian.PutUint16(b[ipv4ChecksumOff:], v) }

// IsFragment reports whether the packet is a fragment: MF set or a nonzero
// fragment offset.
func (b IPv4) IsFragment() bool {
	return binary.BigEndian.Uint16(b[ipv4FlagsFragOff:])&ipv4FragMask != 0
}

// CalculateChecksum computes the header checksum over HeaderLen bytes with
// the checksum field taken as zero: the value SetChecksum should store, and
// equal to Checksum() for a valid header.
func (b IPv4) CalculateChecksum() uint16 {
	hl := b.HeaderLen()
	return ChecksumFold(Checksum(b[ipv4ChecksumOff+2:hl], Checksum(b[:ipv4ChecksumOff], 0)))
}
