package packet

import (
	"encoding/binary"
	"encoding/hex"
	"testing"
)

// Known-good packets, built and checksummed by an independent Python
// implementation of RFC 1071 (not the code under test).
const (
	// 10.0.0.11:21 -> 192.0.2.7:40000, DF, PSH|ACK, NOP NOP timestamps,
	// "227 Entering Passive Mode (10,0,0,11,156,64).\r\n".
	hexV4227 = "450000631c4640004006523d0a00000bc000020700159c4001020304a0b0c0d0801801f64d3600000101080a112233445566778832323720456e746572696e672050617373697665204d6f6465202831302c302c302c31312c3135362c3634292e0d0a"
	// hexV4227 with the address rewritten to 198,51,100,10.
	hexV4227Rewritten = "450000671c464000400652390a00000bc000020700159c4001020304a0b0c0d0801801f6e5c100000101080a112233445566778832323720456e746572696e672050617373697665204d6f646520283139382c35312c3130302c31302c3135362c3634292e0d0a"
	// [2001:db8::1]:40001 -> [2001:db8::2]:21 via hop-by-hop (8 bytes) and
	// destination options (16 bytes); ACK; NOP NOP SACK with blocks
	// fffffff0-00000010 and 00000020-00000030; "PASV\r\n".
	hexV6Ext = "600000000046004020010db800000000000000000000000120010db80000000000000000000000023c000104000000000601010c0000000000000000000000009c410015fffffff07ffffff0a01001f62f12000001010512fffffff0000000100000002000000030504153560d0a"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// refSum is a deliberately naive RFC 1071 sum: 16-bit words, plain
// addition, folded by a loop at the end.
func refSum(parts ...[]byte) uint32 {
	var all []byte
	for _, p := range parts {
		all = append(all, p...)
	}
	if len(all)%2 == 1 {
		all = append(all, 0)
	}
	var s uint64
	for i := 0; i < len(all); i += 2 {
		s += uint64(all[i])<<8 | uint64(all[i+1])
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint32(s)
}

func refChecksum(parts ...[]byte) uint16 { return ^uint16(refSum(parts...)) }

// refIPv4Checksum computes the header checksum of a packet with the naive
// implementation, ignoring the stored field.
func refIPv4Checksum(pkt []byte) uint16 {
	hl := int(pkt[0]&0xf) * 4
	return refChecksum(pkt[:10], pkt[12:hl])
}

// refTCPChecksum computes the TCP checksum of segment seg (field ignored)
// for the given packet addresses with the naive implementation.
func refTCPChecksum(pkt []byte, v6 bool, seg []byte) uint16 {
	var ph []byte
	if v6 {
		ph = append(ph, pkt[8:40]...)
		ph = binary.BigEndian.AppendUint32(ph, uint32(len(seg)))
		ph = append(ph, 0, 0, 0, 6)
	} else {
		ph = append(ph, pkt[12:20]...)
		ph = append(ph, 0, 6)
		ph = binary.BigEndian.AppendUint16(ph, uint16(len(seg)))
	}
	return refChecksum(ph, seg[:16], seg[18:])
}

// tcpSeg builds a TCP segment with a zero checksum field.
func tcpSeg(opts, payload []byte) []byte {
	if len(opts)%4 != 0 {
		panic("tcp options not a multiple of 4")
	}
	s := make([]byte, 20, 20+len(opts)+len(payload))
	binary.BigEndian.PutUint16(s[0:], 21)
	binary.BigEndian.PutUint16(s[2:], 40000)
	binary.BigEndian.PutUint32(s[4:], 0x01020304)
	binary.BigEndian.PutUint32(s[8:], 0xa0b0c0d0)
	s[12] = byte((20+len(opts))/4) << 4
	s[13] = FlagPSH | FlagACK
	binary.BigEndian.PutUint16(s[14:], 502)
	s = append(s, opts...)
	return append(s, payload...)
}

// buildV4 builds a valid IPv4/TCP packet with correct checksums.
func buildV4(ipOpts, tcpOpts, payload []byte) []byte {
	if len(ipOpts)%4 != 0 {
		panic("ip options not a multiple of 4")
	}
	hl := 20 + len(ipOpts)
	seg := tcpSeg(tcpOpts, payload)
	pkt := make([]byte, hl, hl+len(seg))
	pkt[0] = 0x40 | byte(hl/4)
	binary.BigEndian.PutUint16(pkt[2:], uint16(hl+len(seg)))
	binary.BigEndian.PutUint16(pkt[4:], 0x1c46)
	binary.BigEndian.PutUint16(pkt[6:], 0x4000) // DF
	pkt[8], pkt[9] = 64, 6
	copy(pkt[12:], []byte{10, 0, 0, 11, 192, 0, 2, 7})
	copy(pkt[20:], ipOpts)
	binary.BigEndian.PutUint16(pkt[10:], refIPv4Checksum(pkt))
	pkt = append(pkt, seg...)
	binary.BigEndian.PutUint16(pkt[hl+16:], refTCPChecksum(pkt, false, pkt[hl:]))
	return pkt
}

// ext is one IPv6 extension header: its type and its bytes (whose first
// byte, the next header, buildV6 fills in).
type ext struct {
	typ  uint8
	body []byte
}

// buildV6 builds a valid IPv6/TCP packet with correct checksum.
func buildV6(exts []ext, tcpOpts, payload []byte) []byte {
	pkt := make([]byte, 40)
	pkt[0] = 0x60
	pkt[7] = 64
	copy(pkt[8:], []byte{0x20, 0x01, 0x0d, 0xb8, 15: 1})
	copy(pkt[24:], []byte{0x20, 0x01, 0x0d, 0xb8, 15: 2})
	prev := 6 // offset of the next header field to fill
	for _, e := range exts {
		pkt[prev] = e.typ
		prev = len(pkt)
		pkt = append(pkt, e.body...)
	}
	pkt[prev] = 6
	l4 := len(pkt)
	pkt = append(pkt, tcpSeg(tcpOpts, payload)...)
	binary.BigEndian.PutUint16(pkt[4:], uint16(len(pkt)-40))
	binary.BigEndian.PutUint16(pkt[l4+16:], refTCPChecksum(pkt, true, pkt[l4:]))
	return pkt
}

var (
	hopByHop = ext{0, []byte{0, 0, 1, 4, 0, 0, 0, 0}}                           // PadN
	destOpts = ext{60, []byte{0, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}} // PadN, 16 bytes
	routing  = ext{43, []byte{0, 0, 4, 0, 0, 0, 0, 0}}                          // type 4, segments left 0
	fragHdr  = ext{44, []byte{0, 0, 0, 0, 0, 0, 0, 1}}

	tsOpt = []byte{1, 1, 8, 10, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88}
)

// sackOpt builds NOP NOP SACK with the given edges.
func sackOpt(edges ...uint32) []byte {
	o := []byte{1, 1, 5, byte(2 + 4*len(edges))}
	for _, e := range edges {
		o = binary.BigEndian.AppendUint32(o, e)
	}
	return o
}

func mustParse(t testing.TB, b []byte) *Packet {
	t.Helper()
	var p Packet
	if err := Parse(b, &p); err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return &p
}
