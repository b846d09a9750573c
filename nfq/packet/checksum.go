package packet

import (
	"encoding/binary"
	"math/bits"
)

// Checksum adds the bytes of b, as big-endian 16-bit words, to initial in
// ones'-complement arithmetic and returns the sum folded to 16 bits (always
// <= 0xffff) but not complemented, so that results can be chained:
// Checksum(b2, Checksum(b1, 0)). An odd final byte is padded with a zero
// byte, so every b but the last of a chain must have even length. initial
// may be any uint32, e.g. a pseudo-header sum.
func Checksum(b []byte, initial uint32) uint32 {
	// 64-bit words with the carry fed back into the next addition are an
	// end-around-carry sum; since 2^16 ≡ 1 (mod 2^16-1) it folds to the same
	// value as summing 16-bit words, four times faster.
	sum, carry := uint64(initial), uint64(0)
	for len(b) >= 8 {
		sum, carry = bits.Add64(sum, binary.BigEndian.Uint64(b), carry)
		b = b[8:]
	}
	if len(b) >= 4 {
		sum, carry = bits.Add64(sum, uint64(binary.BigEndian.Uint32(b)), carry)
		b = b[4:]
	}
	if len(b) >= 2 {
		sum, carry = bits.Add64(sum, uint64(binary.BigEndian.Uint16(b)), carry)
		b = b[2:]
	}
	if len(b) == 1 {
		sum, carry = bits.Add64(sum, uint64(b[0])<<8, carry)
	}
	sum, carry = bits.Add64(sum, 0, carry)
	sum += carry // cannot carry again: if the add above carried, it left sum == 0
	return fold64(sum)
}

// fold64 reduces a ones'-complement sum to 16 bits.
func fold64(s uint64) uint32 {
	s = s>>32 + s&0xffffffff // < 2^33
	s = s>>16 + s&0xffff     // < 2^17 + 2^16
	s = s>>16 + s&0xffff     // < 2^16 + 3
	s = s>>16 + s&0xffff     // <= 0xffff
	return uint32(s)
}

// ChecksumFold folds a sum from Checksum (or any ones'-complement partial
// sum) and complements it, giving the value stored in a checksum field.
// Over data that includes a correct checksum field, it returns 0.
func ChecksumFold(sum uint32) uint16 {
	return ^uint16(fold64(uint64(sum)))
}

// ChecksumUpdate16 returns checksum csum adjusted for one 16-bit word of the
// covered data changing from old to new: RFC 1624 eqn. 3,
// HC' = ~(~HC + ~m + m'). The result equals a full recomputation for any
// data that is not entirely zero, which holds for every IPv4 header and
// every TCP segment (the pseudo-header carries the protocol number). A
// field holding 0xffff, which no full computation yields, may come out as
// 0: the two are the same ones'-complement zero to a verifier.
func ChecksumUpdate16(csum, old, new uint16) uint16 {
	return ^uint16(fold64(uint64(^csum) + uint64(^old) + uint64(new)))
}

// ChecksumUpdate32 is ChecksumUpdate16 for a 32-bit field (two words).
func ChecksumUpdate32(csum uint16, old, new uint32) uint16 {
	s := uint64(^csum) + uint64(^uint16(old>>16)) + uint64(^uint16(old)) +
		uint64(new>>16) + uint64(new&0xffff)
	return ^uint16(fold64(s))
}

// pseudoHeaderSum is the unfolded sum of the TCP pseudo-header of ip (an
// IPv4 or IPv6 packet) for a TCP segment of tcpLen bytes. IPv4 (RFC 793)
// and IPv6 (RFC 8200 8.1) pseudo-headers sum alike: the addresses, the
// protocol number as a word, and the length (a 32-bit field in IPv6, whose
// two words sum to the same value as a plain addition).
//
// For IPv6 the pseudo-header destination is the header's Dst; RFC 8200 asks
// for the final destination of a routing header instead, so such packets
// whose routing header still has segments left do not verify here.
func pseudoHeaderSum(ip []byte, v6 bool, tcpLen int) uint32 {
	addrs := ip[ipv4AddrsOff:ipv4AddrsEnd]
	if v6 {
		addrs = ip[ipv6AddrsOff:ipv6AddrsEnd]
	}
	return Checksum(addrs, uint32(ProtocolTCP)+uint32(tcpLen))
}
