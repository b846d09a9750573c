package packet

import (
	"strings"
	"testing"
)

func BenchmarkParse(b *testing.B) {
	pkt := mustHex(b, hexV4227)
	var p Packet
	b.ReportAllocs()
	for b.Loop() {
		if err := Parse(pkt, &p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseV6Ext(b *testing.B) {
	pkt := mustHex(b, hexV6Ext)
	var p Packet
	b.ReportAllocs()
	for b.Loop() {
		if err := Parse(pkt, &p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRewrite227(b *testing.B) {
	p := mustParse(b, mustHex(b, hexV4227))
	off := strings.Index(string(p.PayloadBytes()), "10,0,0,11")
	edits := []Edit{{Off: off, Len: len("10,0,0,11"), New: []byte("198,51,100,10")}}
	dst := make([]byte, 0, 2048)
	b.ReportAllocs()
	b.SetBytes(int64(len(p.Buf)))
	for b.Loop() {
		if _, err := Rewrite(dst, p, edits); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSetSeqAck(b *testing.B) {
	tcp := mustParse(b, mustHex(b, hexV4227)).TCP()
	b.ReportAllocs()
	for b.Loop() {
		tcp.SetSeq(tcp.Seq() + 4)
		tcp.SetAck(tcp.Ack() - 4)
	}
}

func BenchmarkAdjustSACK(b *testing.B) {
	tcp := mustParse(b, mustHex(b, hexV6Ext)).TCP()
	delta := uint32(4)
	b.ReportAllocs()
	for b.Loop() {
		tcp.AdjustSACK(func(e uint32) uint32 { return e - delta })
	}
}

func BenchmarkTCPChecksumValid(b *testing.B) {
	p := mustParse(b, mustHex(b, hexV4227))
	b.ReportAllocs()
	b.SetBytes(int64(len(p.Buf) - p.L4))
	for b.Loop() {
		if !p.TCPChecksumValid() {
			b.Fatal("invalid")
		}
	}
}
