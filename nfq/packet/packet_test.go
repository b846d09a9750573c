package packet

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
)

func TestParse(t *testing.T) {
	payload := []byte("USER anonymous\r\n")
	v4 := func(ipOpts, tcpOpts []byte, mod func([]byte)) []byte {
		b := buildV4(ipOpts, tcpOpts, payload)
		if mod != nil {
			mod(b)
		}
		return b
	}
	v6 := func(exts []ext, mod func([]byte)) []byte {
		b := buildV6(exts, nil, payload)
		if mod != nil {
			mod(b)
		}
		return b
	}
	routerAlert := []byte{148, 4, 0, 0, 1, 1, 1, 0} // router alert, NOPs, EOL
	tests := []struct {
		name        string
		buf         []byte
		err         error
		v6          bool
		l4, payload int
		bufLen      int // expected len(p.Buf); 0 means len(buf)
	}{
		{name: "v4", buf: v4(nil, nil, nil), l4: 20, payload: 40},
		{name: "v4 ip options", buf: v4(routerAlert, nil, nil), l4: 28, payload: 48},
		{name: "v4 tcp options", buf: v4(nil, tsOpt, nil), l4: 20, payload: 52},
		{name: "v4 DF is no fragment", buf: v4(nil, nil, func(b []byte) { b[6] = 0x40 }), l4: 20, payload: 40},
		{name: "v4 longer buf", buf: append(v4(nil, nil, nil), 0xde, 0xad, 0xbe, 0xef), l4: 20, payload: 40, bufLen: 56},
		{name: "v4 MF", buf: v4(nil, nil, func(b []byte) { b[6] = 0x20 }), err: ErrFragment},
		{name: "v4 frag offset", buf: v4(nil, nil, func(b []byte) { b[6], b[7] = 0x40, 1 }), err: ErrFragment},
		{name: "v4 udp", buf: v4(nil, nil, func(b []byte) { b[9] = 17 }), err: ErrNotTCP},
		{name: "v4 IHL 4", buf: v4(nil, nil, func(b []byte) { b[0] = 0x44 }), err: ErrBadHeader},
		{name: "v4 total < IHL", buf: v4(routerAlert, nil, func(b []byte) { b[2], b[3] = 0, 24 }), err: ErrBadHeader},
		{name: "v4 total > buf", buf: v4(nil, nil, func(b []byte) { b[3]++ }), err: ErrTruncated},
		{name: "v4 no room for tcp", buf: v4(nil, nil, func(b []byte) { b[2], b[3] = 0, 39 }), err: ErrTruncated},
		{name: "v4 data offset 16", buf: v4(nil, nil, func(b []byte) { b[32] = 4 << 4 }), err: ErrBadHeader},
		{name: "v4 data offset 0", buf: v4(nil, nil, func(b []byte) { b[32] = 0 }), err: ErrBadHeader},
		{name: "v4 data offset past end", buf: v4(nil, nil, func(b []byte) { b[32] = 15 << 4 }), err: ErrTruncated},
		{name: "v6", buf: v6(nil, nil), v6: true, l4: 40, payload: 60},
		{name: "v6 hbh+dest", buf: v6([]ext{hopByHop, destOpts}, nil), v6: true, l4: 64, payload: 84},
		{name: "v6 hbh+routing+dest", buf: v6([]ext{hopByHop, routing, destOpts}, nil), v6: true, l4: 72, payload: 92},
		{name: "v6 longer buf", buf: append(v6([]ext{hopByHop}, nil), 1, 2, 3), v6: true, l4: 48, payload: 68, bufLen: 84},
		{name: "v6 fragment", buf: v6([]ext{fragHdr}, nil), err: ErrFragment},
		{name: "v6 hbh+fragment", buf: v6([]ext{hopByHop, fragHdr}, nil), err: ErrFragment},
		{name: "v6 udp", buf: v6(nil, func(b []byte) { b[6] = 17 }), err: ErrNotTCP},
		{name: "v6 no next header", buf: v6([]ext{hopByHop}, func(b []byte) { b[40] = 59 }), err: ErrNotTCP},
		{name: "v6 ext past end", buf: v6([]ext{hopByHop}, func(b []byte) { b[41] = 200 }), err: ErrTruncated},
		{name: "v6 payload len > buf", buf: v6(nil, func(b []byte) { b[5]++ }), err: ErrTruncated},
		{name: "v6 data offset 8", buf: v6(nil, func(b []byte) { b[52] = 2 << 4 }), err: ErrBadHeader},
		{name: "version 5", buf: v4(nil, nil, func(b []byte) { b[0] = 0x55 }), err: ErrBadHeader},
		{name: "empty", buf: nil, err: ErrTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Packet{L4: -1} // must stay untouched on error
			err := Parse(tt.buf, &p)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("Parse = %v, want %v", err, tt.err)
				}
				if p.L4 != -1 {
					t.Errorf("p changed on error: %+v", p)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			want := tt.bufLen
			if want == 0 {
				want = len(tt.buf)
			}
			if p.V6 != tt.v6 || p.L4 != tt.l4 || p.Payload != tt.payload || len(p.Buf) != want {
				t.Errorf("got V6=%v L4=%d Payload=%d len(Buf)=%d, want %v %d %d %d",
					p.V6, p.L4, p.Payload, len(p.Buf), tt.v6, tt.l4, tt.payload, want)
			}
			if &p.Buf[0] != &tt.buf[0] {
				t.Error("Parse copied the packet")
			}
			if !bytes.Equal(p.PayloadBytes(), payload) {
				t.Errorf("payload %q, want %q", p.PayloadBytes(), payload)
			}
			if !p.TCPChecksumValid() {
				t.Error("TCP checksum does not verify")
			}
		})
	}
}

// TestParseTruncated cuts valid packets at every length: each must fail
// with ErrTruncated, never panic.
func TestParseTruncated(t *testing.T) {
	pkts := map[string][]byte{
		"v4 options": buildV4([]byte{1, 1, 1, 1}, tsOpt, []byte("PASV\r\n")),
		"v6 ext":     buildV6([]ext{hopByHop, routing, destOpts}, sackOpt(1, 2), []byte("PASV\r\n")),
	}
	for name, pkt := range pkts {
		for n := range len(pkt) {
			var p Packet
			if err := Parse(pkt[:n], &p); !errors.Is(err, ErrTruncated) {
				t.Errorf("%s cut to %d bytes: Parse = %v, want ErrTruncated", name, n, err)
			}
		}
		if err := Parse(pkt, new(Packet)); err != nil {
			t.Errorf("%s whole: %v", name, err)
		}
	}
}

// TestParseLyingLengths sets every length field to every value: Parse may
// fail but must not panic or return a view outside the buffer.
func TestParseLyingLengths(t *testing.T) {
	v4 := buildV4([]byte{1, 1, 1, 1}, tsOpt, []byte("PASV\r\n"))
	v6 := buildV6([]ext{hopByHop, destOpts}, tsOpt, []byte("PASV\r\n"))
	fields := []struct {
		pkt []byte
		off int
		max int
	}{
		{v4, 0, 0xff}, {v4, 2, 0xffff}, {v4, 24 + 12, 0xff},
		{v6, 4, 0xffff}, {v6, 6, 0xff}, {v6, 41, 0xff}, {v6, 49, 0xff}, {v6, 64 + 12, 0xff},
	}
	for _, f := range fields {
		for v := 0; v <= f.max; v++ {
			b := bytes.Clone(f.pkt)
			if f.max > 0xff {
				binary.BigEndian.PutUint16(b[f.off:], uint16(v))
			} else {
				b[f.off] = byte(v)
			}
			var p Packet
			if Parse(b, &p) == nil {
				checkPacketView(t, b, &p)
			}
		}
	}
}

// checkPacketView checks the invariants of a successfully parsed packet and
// exercises every accessor.
func checkPacketView(t testing.TB, buf []byte, p *Packet) {
	t.Helper()
	if len(p.Buf) > len(buf) || (len(p.Buf) > 0 && &p.Buf[0] != &buf[0]) {
		t.Fatalf("Buf is not a prefix of the input")
	}
	if p.L4 < IPv4MinHeaderLen || p.Payload < p.L4+TCPMinHeaderLen || p.Payload > len(p.Buf) {
		t.Fatalf("bad offsets L4=%d Payload=%d len=%d", p.L4, p.Payload, len(p.Buf))
	}
	tcp := p.TCP()
	if p.L4+tcp.DataOffset() != p.Payload || len(tcp.Options()) != tcp.DataOffset()-TCPMinHeaderLen {
		t.Fatalf("TCP view disagrees with offsets")
	}
	if len(tcp.Payload()) != len(p.PayloadBytes()) {
		t.Fatalf("TCP payload and PayloadBytes differ")
	}
	if p.V6 {
		ip := p.IPv6()
		if int(ip.PayloadLen())+IPv6HeaderLen != len(p.Buf) {
			t.Fatalf("IPv6 length %d, Buf %d", ip.PayloadLen(), len(p.Buf))
		}
		_, _, _ = ip.NextHeader(), ip.Src(), ip.Dst()
	} else {
		ip := p.IPv4()
		if int(ip.TotalLen()) != len(p.Buf) || ip.HeaderLen() != p.L4 || ip.IsFragment() || ip.Protocol() != ProtocolTCP {
			t.Fatalf("IPv4 header disagrees with view")
		}
		_, _, _, _ = ip.Src(), ip.Dst(), ip.Checksum(), ip.CalculateChecksum()
	}
	_, _, _, _, _, _ = tcp.SrcPort(), tcp.DstPort(), tcp.Seq(), tcp.Ack(), tcp.Flags(), tcp.Checksum()
	_, _, _ = p.Src(), p.Dst(), p.TCPChecksumValid()
	before := bytes.Clone(p.Buf)
	tcp.AdjustSACK(func(e uint32) uint32 { return e })
	if !bytes.Equal(before, p.Buf) {
		t.Fatalf("AdjustSACK with the identity changed the packet")
	}
}

func TestKnownGoodV4(t *testing.T) {
	p := mustParse(t, mustHex(t, hexV4227))
	ip, tcp := p.IPv4(), p.TCP()
	if got, want := p.Src(), netip.MustParseAddrPort("10.0.0.11:21"); got != want {
		t.Errorf("Src = %v, want %v", got, want)
	}
	if got, want := p.Dst(), netip.MustParseAddrPort("192.0.2.7:40000"); got != want {
		t.Errorf("Dst = %v, want %v", got, want)
	}
	if ip.HeaderLen() != 20 || ip.TotalLen() != 99 || ip.Protocol() != 6 || ip.IsFragment() {
		t.Errorf("IPv4 fields: hl %d total %d proto %d frag %v", ip.HeaderLen(), ip.TotalLen(), ip.Protocol(), ip.IsFragment())
	}
	if ip.Checksum() != 0x523d || ip.CalculateChecksum() != 0x523d {
		t.Errorf("IPv4 checksum %#04x, calculated %#04x, want 0x523d", ip.Checksum(), ip.CalculateChecksum())
	}
	if tcp.Seq() != 0x01020304 || tcp.Ack() != 0xa0b0c0d0 || tcp.Flags() != FlagPSH|FlagACK || tcp.DataOffset() != 32 {
		t.Errorf("TCP fields: seq %#x ack %#x flags %#x doff %d", tcp.Seq(), tcp.Ack(), tcp.Flags(), tcp.DataOffset())
	}
	if !bytes.Equal(tcp.Options(), tsOpt) {
		t.Errorf("options % x", tcp.Options())
	}
	if tcp.Checksum() != 0x4d36 || !p.TCPChecksumValid() {
		t.Errorf("TCP checksum %#04x valid=%v, want 0x4d36 valid", tcp.Checksum(), p.TCPChecksumValid())
	}
	if string(p.PayloadBytes()) != "227 Entering Passive Mode (10,0,0,11,156,64).\r\n" {
		t.Errorf("payload %q", p.PayloadBytes())
	}
	p.Buf[len(p.Buf)-3] ^= 0x01
	if p.TCPChecksumValid() {
		t.Error("corrupted payload verifies")
	}
}

// TestKnownGoodIPv4Header is the RFC 1071 example header from Wikipedia.
func TestKnownGoodIPv4Header(t *testing.T) {
	ip := IPv4(mustHex(t, "450000730000400040110000c0a80001c0a800c7"))
	if got := ip.CalculateChecksum(); got != 0xb861 {
		t.Errorf("CalculateChecksum = %#04x, want 0xb861", got)
	}
}

func TestKnownGoodV6(t *testing.T) {
	p := mustParse(t, mustHex(t, hexV6Ext))
	if !p.V6 || p.L4 != 64 || p.Payload != 64+40 {
		t.Fatalf("V6=%v L4=%d Payload=%d", p.V6, p.L4, p.Payload)
	}
	ip, tcp := p.IPv6(), p.TCP()
	if ip.NextHeader() != 0 || ip.PayloadLen() != 70 {
		t.Errorf("next header %d payload len %d", ip.NextHeader(), ip.PayloadLen())
	}
	if got, want := p.Src(), netip.MustParseAddrPort("[2001:db8::1]:40001"); got != want {
		t.Errorf("Src = %v, want %v", got, want)
	}
	if got, want := p.Dst(), netip.MustParseAddrPort("[2001:db8::2]:21"); got != want {
		t.Errorf("Dst = %v, want %v", got, want)
	}
	if tcp.Checksum() != 0x2f12 || !p.TCPChecksumValid() {
		t.Fatalf("TCP checksum %#04x valid=%v, want 0x2f12 valid", tcp.Checksum(), p.TCPChecksumValid())
	}
	if string(p.PayloadBytes()) != "PASV\r\n" {
		t.Errorf("payload %q", p.PayloadBytes())
	}

	// The peer acknowledges 100 bytes more than the sender wrote: shift
	// the SACK edges back, across the wrap.
	tcp.AdjustSACK(func(e uint32) uint32 { return e + 100 })
	want := sackOpt(0x54, 0x10+100, 0x20+100, 0x30+100) // 0xfffffff0+100 wraps
	if !bytes.Equal(tcp.Options(), want) {
		t.Errorf("options % x, want % x", tcp.Options(), want)
	}
	if !p.TCPChecksumValid() {
		t.Error("checksum invalid after AdjustSACK")
	}
	if got := refTCPChecksum(p.Buf, true, tcp); got != tcp.Checksum() {
		t.Errorf("checksum %#04x, recomputed %#04x", tcp.Checksum(), got)
	}
}

func TestAdjustSACKOptions(t *testing.T) {
	inc := func(e uint32) uint32 { return e + 1 }
	sack1 := []byte{5, 10, 0, 0, 0, 1, 0, 0, 0, 2}
	tests := []struct {
		name       string
		opts, want []byte
	}{
		{"none", nil, nil},
		{"timestamps only", tsOpt, tsOpt},
		{"sack after timestamps", append(append([]byte{}, tsOpt...), sackOpt(7, 9)...),
			append(append([]byte{}, tsOpt...), sackOpt(8, 10)...)},
		{"four blocks", sackOpt(1, 2, 3, 4, 5, 6, 7, 8), sackOpt(2, 3, 4, 5, 6, 7, 8, 9)},
		{"sack after EOL untouched", append([]byte{0, 0}, sack1...), append([]byte{0, 0}, sack1...)},
		{"bad sack length skipped", []byte{5, 6, 0, 0, 0, 1, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2},
			[]byte{5, 6, 0, 0, 0, 1, 5, 10, 0, 0, 0, 2, 0, 0, 0, 3}},
		{"empty sack skipped", []byte{5, 2, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2},
			[]byte{5, 2, 5, 10, 0, 0, 0, 2, 0, 0, 0, 3}},
		{"option length 0 stops", []byte{8, 0, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2},
			[]byte{8, 0, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2}},
		{"option length past end stops", []byte{1, 1, 5, 18, 0, 0, 0, 1, 0, 0, 0, 2},
			[]byte{1, 1, 5, 18, 0, 0, 0, 1, 0, 0, 0, 2}},
		{"sack at odd offset", []byte{1, 5, 10, 0xff, 0xff, 0xff, 0xff, 0, 0, 0xff, 0xff},
			[]byte{1, 5, 10, 0, 0, 0, 0, 0, 1, 0, 0}},
		{"kind without length at end", []byte{1, 1, 1, 5}, []byte{1, 1, 1, 5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for len(tt.opts)%4 != 0 {
				tt.opts = append(tt.opts, 0)
				tt.want = append(tt.want, 0)
			}
			pkt := buildV4(nil, tt.opts, []byte("x"))
			p := mustParse(t, pkt)
			p.TCP().AdjustSACK(inc)
			if !bytes.Equal(p.TCP().Options(), tt.want) {
				t.Errorf("options\n % x\nwant\n % x", p.TCP().Options(), tt.want)
			}
			if !p.TCPChecksumValid() {
				t.Error("checksum invalid")
			}
		})
	}
}

func TestLowerMSS(t *testing.T) {
	tests := []struct {
		name       string
		opts, want []byte
		changed    bool
	}{
		{"lowered", []byte{2, 4, 0x05, 0xb4}, []byte{2, 4, 0x03, 0x74}, true}, // 1460 - 576
		{"at odd offset", []byte{1, 2, 4, 0x05, 0xb4, 1, 1, 1}, []byte{1, 2, 4, 0x03, 0x74, 1, 1, 1}, true},
		{"to the floor", []byte{2, 4, 0x03, 0x00}, []byte{2, 4, 0x02, 0x18}, true},
		{"at the floor", []byte{2, 4, 0x02, 0x18}, []byte{2, 4, 0x02, 0x18}, false},
		{"below the floor", []byte{2, 4, 0x00, 0x40}, []byte{2, 4, 0x00, 0x40}, false},
		{"after timestamps", append(append([]byte{}, tsOpt...), 2, 4, 0xff, 0xff), append(append([]byte{}, tsOpt...), 2, 4, 0xfd, 0xbf), true},
		{"bad length", []byte{2, 3, 0x05, 0xb4}, []byte{2, 3, 0x05, 0xb4}, false},
		{"none", nil, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for len(tt.opts)%4 != 0 {
				tt.opts = append(tt.opts, 0)
				tt.want = append(tt.want, 0)
			}
			p := mustParse(t, buildV4(nil, tt.opts, nil))
			if got := p.TCP().LowerMSS(576, 536); got != tt.changed {
				t.Errorf("changed = %v", got)
			}
			if !bytes.Equal(p.TCP().Options(), tt.want) {
				t.Errorf("options\n % x\nwant\n % x", p.TCP().Options(), tt.want)
			}
			if !p.TCPChecksumValid() {
				t.Error("checksum invalid")
			}
		})
	}
}

func TestUDPEndpoints(t *testing.T) {
	v4 := []byte{0x45, 0, 0, 28, 0, 0, 0, 0, 64, ProtocolUDP, 0, 0, 203, 0, 113, 2, 198, 51, 100, 10, 0x9c, 0x40, 0, 53, 0, 8, 0, 0}
	src, dst, err := UDPEndpoints(v4)
	if err != nil || src != netip.MustParseAddrPort("203.0.113.2:40000") || dst != netip.MustParseAddrPort("198.51.100.10:53") {
		t.Fatalf("v4: %v %v %v", src, dst, err)
	}
	for n := range len(v4) {
		if _, _, err := UDPEndpoints(v4[:n]); err == nil {
			t.Errorf("truncated to %d bytes: no error", n)
		}
	}
	tcp := append([]byte(nil), v4...)
	tcp[9] = ProtocolTCP
	if _, _, err := UDPEndpoints(tcp); !errors.Is(err, ErrNotUDP) {
		t.Errorf("TCP packet: %v", err)
	}
	v6 := make([]byte, 48)
	v6[0], v6[5], v6[6] = 0x60, 8, ProtocolUDP
	copy(v6[8:], netip.MustParseAddr("2001:db8:2::2").AsSlice())
	copy(v6[24:], netip.MustParseAddr("2001:db8:1::10").AsSlice())
	v6[40], v6[41], v6[43] = 0x9c, 0x40, 53
	if src, dst, err := UDPEndpoints(v6); err != nil || src.Port() != 40000 || dst != netip.MustParseAddrPort("[2001:db8:1::10]:53") {
		t.Errorf("v6: %v %v %v", src, dst, err)
	}
}

// TestUDPDatagram: the payload as long as the UDP header says and the
// packet holds.
func TestUDPDatagram(t *testing.T) {
	head := []byte{0x45, 0, 0, 33, 0, 0, 0, 0, 64, ProtocolUDP, 0, 0, 203, 0, 113, 2, 198, 51, 100, 10, 0x9c, 0x40, 0, 69, 0, 13, 0, 0}
	pkt := append(head, "hello"...)
	if src, dst, p, err := UDPDatagram(pkt); err != nil || string(p) != "hello" || src.Port() != 40000 || dst.Port() != 69 {
		t.Errorf("%v %v %q %v", src, dst, p, err)
	}
	short := append([]byte(nil), pkt...)
	short[25] = 11 // the UDP length says 3 bytes of payload
	if _, _, p, err := UDPDatagram(short); err != nil || string(p) != "hel" {
		t.Errorf("UDP length 11: %q %v", p, err)
	}
	long := append([]byte(nil), pkt...)
	long[25] = 200 // longer than the packet: what it holds
	if _, _, p, err := UDPDatagram(long); err != nil || string(p) != "hello" {
		t.Errorf("UDP length 200: %q %v", p, err)
	}
}
