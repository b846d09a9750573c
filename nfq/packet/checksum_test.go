package packet

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

const propIters = 20000

func newRand(t testing.TB) *rand.Rand {
	t.Helper()
	return rand.New(rand.NewPCG(1624, 1071))
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// rand16 favours the values where ones'-complement arithmetic has edges.
func rand16(r *rand.Rand) uint16 {
	switch r.IntN(8) {
	case 0:
		return 0
	case 1:
		return 0xffff
	case 2:
		return 1
	}
	return uint16(r.Uint32())
}

func rand32(r *rand.Rand) uint32 { return uint32(rand16(r))<<16 | uint32(rand16(r)) }

func TestChecksumMatchesReference(t *testing.T) {
	r := newRand(t)
	for range propIters {
		b := randBytes(r, r.IntN(300))
		if r.IntN(4) == 0 { // long runs of 0xff stress the carries
			for i := range b {
				b[i] = 0xff
			}
		}
		if got, want := Checksum(b, 0), refSum(b); got != want {
			t.Fatalf("Checksum(% x) = %#x, want %#x", b, got, want)
		}
		if got, want := ChecksumFold(Checksum(b, 0)), refChecksum(b); got != want {
			t.Fatalf("ChecksumFold = %#x, want %#x", got, want)
		}
		split := r.IntN(len(b)/2+1) * 2 // chaining needs an even first part
		if got, want := Checksum(b[split:], Checksum(b[:split], 0)), refSum(b); got != want {
			t.Fatalf("chained at %d: %#x, want %#x", split, got, want)
		}
		init := r.Uint32()
		var ib [4]byte
		binary.BigEndian.PutUint32(ib[:], init)
		if got, want := Checksum(b, init), refSum(ib[:], b); got != want {
			t.Fatalf("initial %#x: %#x, want %#x", init, got, want)
		}
	}
}

func TestChecksumFold(t *testing.T) {
	for _, tt := range []struct {
		sum  uint32
		want uint16
	}{
		{0, 0xffff}, {0xffff, 0}, {0x1234, ^uint16(0x1234)}, {0x1fffe, 0}, {0xffffffff, 0}, {0x10000, 0xfffe},
	} {
		if got := ChecksumFold(tt.sum); got != tt.want {
			t.Errorf("ChecksumFold(%#x) = %#x, want %#x", tt.sum, got, tt.want)
		}
	}
}

// TestChecksumUpdate checks RFC 1624 updates against recomputation over
// random data whose first word is nonzero, as in every real header.
func TestChecksumUpdate(t *testing.T) {
	r := newRand(t)
	for range propIters {
		b := randBytes(r, 8+4*r.IntN(16))
		b[0] = 0x45
		csum := refChecksum(b)
		i := 2 * (1 + r.IntN(len(b)/2-1))
		old, v := binary.BigEndian.Uint16(b[i:]), rand16(r)
		binary.BigEndian.PutUint16(b[i:], v)
		if got, want := ChecksumUpdate16(csum, old, v), refChecksum(b); got != want {
			t.Fatalf("ChecksumUpdate16(%#x, %#x, %#x) = %#x, want %#x", csum, old, v, got, want)
		}

		csum = refChecksum(b)
		i = 2 * (1 + r.IntN(len(b)/2-2)) // 32-bit fields need not be 4-aligned
		old32, v32 := binary.BigEndian.Uint32(b[i:]), rand32(r)
		binary.BigEndian.PutUint32(b[i:], v32)
		if got, want := ChecksumUpdate32(csum, old32, v32), refChecksum(b); got != want {
			t.Fatalf("ChecksumUpdate32(%#x, %#x, %#x) = %#x, want %#x", csum, old32, v32, got, want)
		}
	}
}

// randPacket builds a valid random IPv4 or IPv6 TCP packet whose options
// mix NOPs, timestamps and SACK blocks.
func randPacket(r *rand.Rand) []byte {
	var opts []byte
	for len(opts) < 40 {
		var o []byte
		switch r.IntN(4) {
		case 0:
			o = []byte{1}
		case 1:
			o = tsOpt
		default:
			edges := make([]uint32, 2*(1+r.IntN(4)))
			for i := range edges {
				edges[i] = rand32(r)
			}
			o = sackOpt(edges...)[2:]
		}
		if len(opts)+len(o) > 40 {
			break
		}
		opts = append(opts, o...)
	}
	for len(opts)%4 != 0 {
		opts = append(opts, 1)
	}
	payload := randBytes(r, r.IntN(100))
	if r.IntN(2) == 0 {
		return buildV6([]ext{hopByHop, destOpts}[:r.IntN(3)], opts, payload)
	}
	return buildV4(make([]byte, 4*r.IntN(3)), opts, payload)
}

func TestIncrementalMatchesRecompute(t *testing.T) {
	r := newRand(t)
	for range propIters {
		pkt := randPacket(r)
		p := mustParse(t, pkt)
		tcp := p.TCP()
		check := func(what string) {
			t.Helper()
			if want := refTCPChecksum(p.Buf, p.V6, tcp); tcp.Checksum() != want {
				t.Fatalf("%s: checksum %#04x, recomputed %#04x\n% x", what, tcp.Checksum(), want, pkt)
			}
		}
		v := rand32(r)
		tcp.SetSeq(v)
		if tcp.Seq() != v {
			t.Fatalf("Seq = %#x after SetSeq(%#x)", tcp.Seq(), v)
		}
		check("SetSeq")
		v = rand32(r)
		tcp.SetAck(v)
		if tcp.Ack() != v {
			t.Fatalf("Ack = %#x after SetAck(%#x)", tcp.Ack(), v)
		}
		check("SetAck")

		before := bytes.Clone(tcp.Options())
		delta := rand32(r)
		tcp.AdjustSACK(func(e uint32) uint32 { return e - delta })
		check("AdjustSACK")
		tcp.AdjustSACK(func(e uint32) uint32 { return e + delta })
		if !bytes.Equal(tcp.Options(), before) {
			t.Fatalf("AdjustSACK not undone: % x, was % x", tcp.Options(), before)
		}
		check("AdjustSACK back")

		if !p.V6 {
			ip := p.IPv4()
			n := rand16(r)
			ip.SetTotalLen(n)
			if ip.TotalLen() != n {
				t.Fatalf("TotalLen = %d after SetTotalLen(%d)", ip.TotalLen(), n)
			}
			if want := refIPv4Checksum(p.Buf); ip.Checksum() != want || ip.CalculateChecksum() != want {
				t.Fatalf("SetTotalLen: checksum %#04x, calculated %#04x, want %#04x", ip.Checksum(), ip.CalculateChecksum(), want)
			}
		}
	}
}
