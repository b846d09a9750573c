package packet

import (
	"encoding/binary"
	"net/netip"
)

// IPv6 is an IPv6 packet, starting at its fixed header. Accessors do no
// bounds checks: Parse validates the packet once.
type IPv6 []byte

// Field offsets of the IPv6 fixed header (RFC 8200).
const (
	IPv6HeaderLen     = 40
	ipv6PayloadLenOff = 4
	ipv6NextHeaderOff = 6
	ipv6AddrsOff      = 8 // Src then Dst, the pseudo-header's address part
	ipv6DstOff        = 24
	ipv6AddrsEnd      = 40
)

// IPv6 extension headers that Parse walks or recognises.
const (
	ipv6HopByHop = 0
	ipv6Routing  = 43
	ipv6Fragment = 44
	ipv6DestOpts = 60
)

// PayloadLen is the length of everything after the fixed header, extension
// headers included.
func (b IPv6) PayloadLen() uint16 { return binary.BigEndian.Uint16(b[ipv6PayloadLenOff:]) }

// SetPayloadLen sets the payload length; IPv6 has no header checksum.
func (b IPv6) SetPayloadLen(v uint16) { binary.BigEndian.PutUint16(b[ipv6PayloadLenOff:], v) }

// NextHeader is the type of the header after the fixed header.
func (b IPv6) NextHeader() uint8 { return b[ipv6NextHeaderOff] }

// Src is the source address.
func (b IPv6) Src() netip.Addr { return netip.AddrFrom16([16]byte(b[ipv6AddrsOff:])) }

// Dst is the destination address.
func (b IPv6) Dst() netip.Addr { return netip.AddrFrom16([16]byte(b[ipv6DstOff:])) }
