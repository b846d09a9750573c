// Package nfqtest builds packets for tests of code that processes queued
// packets.
package nfqtest

import (
	"encoding/binary"
	"net/netip"

	"github.com/nfhelper/nfhelper/nfq/packet"
)

// Segment describes one TCP segment. Options must be padded to 4 bytes.
type Segment struct {
	Src, Dst netip.AddrPort
	Seq, Ack uint32
	Flags    uint8
	Options  []byte
	Payload  []byte
}

// Build returns the segment as an IPv4 or IPv6 packet (by Src's family) with
// correct checksums.
func Build(s Segment) []byte {
	tcpLen := 20 + len(s.Options)
	var b []byte
	v6 := s.Src.Addr().Is6()
	if v6 {
		b = make([]byte, 40)
		b[0] = 0x60
		binary.BigEndian.PutUint16(b[4:], uint16(tcpLen+len(s.Payload)))
		b[6], b[7] = packet.ProtocolTCP, 64
		src, dst := s.Src.Addr().As16(), s.Dst.Addr().As16()
		copy(b[8:], src[:])
		copy(b[24:], dst[:])
	} else {
		b = make([]byte, 20)
		b[0] = 0x45
		binary.BigEndian.PutUint16(b[2:], uint16(20+tcpLen+len(s.Payload)))
		b[8], b[9] = 64, packet.ProtocolTCP
		src, dst := s.Src.Addr().As4(), s.Dst.Addr().As4()
		copy(b[12:], src[:])
		copy(b[16:], dst[:])
		packet.IPv4(b).SetChecksum(packet.IPv4(b).CalculateChecksum())
	}
	tcp := make([]byte, tcpLen)
	binary.BigEndian.PutUint16(tcp[0:], s.Src.Port())
	binary.BigEndian.PutUint16(tcp[2:], s.Dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], s.Seq)
	binary.BigEndian.PutUint32(tcp[8:], s.Ack)
	tcp[12] = byte(tcpLen/4) << 4
	tcp[13] = s.Flags
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	copy(tcp[20:], s.Options)
	b = append(append(b, tcp...), s.Payload...)

	// A rewrite without edits computes the TCP checksum.
	var p packet.Packet
	if err := packet.Parse(b, &p); err != nil {
		panic("nfqtest: built packet does not parse: " + err.Error())
	}
	out, err := packet.Rewrite(nil, &p, nil)
	if err != nil {
		panic("nfqtest: " + err.Error())
	}
	return out
}

// SACK returns a SACK option (with two leading NOPs) for the given edges.
func SACK(edges ...uint32) []byte {
	o := []byte{1, 1, 5, byte(2 + 4*len(edges))}
	for _, e := range edges {
		o = binary.BigEndian.AppendUint32(o, e)
	}
	return o
}
