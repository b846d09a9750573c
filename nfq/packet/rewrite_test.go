package packet

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// applyEdits is the reference: string surgery from the last edit back.
func applyEdits(payload string, edits []Edit) string {
	for i := len(edits) - 1; i >= 0; i-- {
		e := edits[i]
		payload = payload[:e.Off] + string(e.New) + payload[e.Off+e.Len:]
	}
	return payload
}

// checkRewritten verifies out as the rewrite of orig (parsed as p) with
// edits: lengths, checksums, payload, and untouched header bytes.
func checkRewritten(t testing.TB, orig []byte, p *Packet, out []byte, edits []Edit) {
	t.Helper()
	q := mustParse(t, out)
	want := applyEdits(string(p.PayloadBytes()), edits)
	if string(q.PayloadBytes()) != want {
		t.Fatalf("payload %q, want %q", q.PayloadBytes(), want)
	}
	if len(q.Buf) != len(out) || q.V6 != p.V6 || q.L4 != p.L4 || q.Payload != p.Payload {
		t.Fatalf("re-parsed view %+v differs from %+v", q, p)
	}
	if !q.TCPChecksumValid() {
		t.Fatal("TCP checksum does not verify")
	}
	if got, want := q.TCP().Checksum(), refTCPChecksum(out, q.V6, q.TCP()); got != want {
		t.Fatalf("TCP checksum %#04x, reference %#04x", got, want)
	}
	// Apart from the length, IP checksum and TCP checksum fields the
	// headers must be copied unchanged.
	lenOff, ipSum := 4, -1
	if !p.V6 {
		lenOff, ipSum = 2, 10
		if int(q.IPv4().TotalLen()) != len(out) {
			t.Fatalf("total length %d, packet %d bytes", q.IPv4().TotalLen(), len(out))
		}
		if got, want := q.IPv4().Checksum(), refIPv4Checksum(out); got != want || q.IPv4().CalculateChecksum() != want {
			t.Fatalf("IPv4 checksum %#04x, reference %#04x", got, want)
		}
	} else if int(q.IPv6().PayloadLen()) != len(out)-IPv6HeaderLen {
		t.Fatalf("payload length %d, packet %d bytes", q.IPv6().PayloadLen(), len(out))
	}
	for i := range p.Payload {
		if i == lenOff || i == lenOff+1 || i == ipSum || i == ipSum+1 || i == p.L4+16 || i == p.L4+17 {
			continue
		}
		if out[i] != orig[i] {
			t.Fatalf("header byte %d changed: %#02x -> %#02x", i, orig[i], out[i])
		}
	}
}

func TestRewrite(t *testing.T) {
	const payload = "0123456789abcdefghij"
	pkts := map[string][]byte{
		"v4":         buildV4(nil, nil, []byte(payload)),
		"v4 options": buildV4([]byte{1, 1, 1, 0}, tsOpt, []byte(payload)),
		"v6":         buildV6(nil, nil, []byte(payload)),
		"v6 ext":     buildV6([]ext{hopByHop, routing, destOpts}, sackOpt(1, 2), []byte(payload)),
	}
	e := func(off, n int, s string) Edit { return Edit{off, n, []byte(s)} }
	cases := map[string][]Edit{
		"none":            nil,
		"same length":     {e(4, 3, "XYZ")},
		"grow":            {e(4, 3, "a longer text")},
		"shrink":          {e(4, 10, "-")},
		"delete":          {e(4, 10, "")},
		"insert":          {e(4, 0, "++")},
		"at start":        {e(0, 2, "START")},
		"at end":          {e(17, 3, "END!")},
		"append":          {e(20, 0, "\r\n")},
		"whole":           {e(0, 20, "all new")},
		"delete all":      {e(0, 20, "")},
		"multiple":        {e(0, 1, "AA"), e(5, 2, ""), e(7, 0, "ins"), e(10, 5, "x"), e(19, 1, "ZZZ")},
		"adjacent":        {e(2, 2, "aa"), e(4, 2, "bbbbbb"), e(6, 0, "c")},
		"two inserts":     {e(3, 0, "a"), e(3, 0, "b")},
		"no-op edit":      {e(3, 0, "")},
		"grow and shrink": {e(1, 1, "0123456789"), e(10, 10, "")},
	}
	for pname, pkt := range pkts {
		p := mustParse(t, pkt)
		orig := bytes.Clone(pkt)
		for cname, edits := range cases {
			t.Run(pname+"/"+cname, func(t *testing.T) {
				for _, dst := range [][]byte{nil, make([]byte, 0, 4096)} {
					out, err := Rewrite(dst, p, edits)
					if err != nil {
						t.Fatalf("Rewrite: %v", err)
					}
					if !bytes.Equal(pkt, orig) {
						t.Fatal("Rewrite modified its input")
					}
					if cap(dst) > 0 && &out[:1][0] != &dst[:1][0] {
						t.Error("Rewrite did not reuse dst")
					}
					checkRewritten(t, orig, p, out, edits)
				}
			})
		}
	}
}

func TestRewriteKnownGood(t *testing.T) {
	p := mustParse(t, mustHex(t, hexV4227))
	off := strings.Index(string(p.PayloadBytes()), "10,0,0,11")
	out, err := Rewrite(nil, p, []Edit{{Off: off, Len: len("10,0,0,11"), New: []byte("198,51,100,10")}})
	if err != nil {
		t.Fatal(err)
	}
	if want := mustHex(t, hexV4227Rewritten); !bytes.Equal(out, want) {
		t.Errorf("got\n%x\nwant\n%x", out, want)
	}
}

func TestRewriteBadEdits(t *testing.T) {
	p := mustParse(t, buildV4(nil, nil, []byte("0123456789")))
	for name, edits := range map[string][]Edit{
		"negative off":    {{Off: -1, Len: 1}},
		"negative len":    {{Off: 2, Len: -1}},
		"off past end":    {{Off: 11, Len: 0}},
		"len past end":    {{Off: 8, Len: 3}},
		"huge len":        {{Off: 1, Len: int(^uint(0) >> 1)}},
		"descending":      {{Off: 5, Len: 1}, {Off: 2, Len: 1}},
		"overlapping":     {{Off: 2, Len: 3}, {Off: 4, Len: 1}},
		"second past end": {{Off: 2, Len: 3}, {Off: 9, Len: 2}},
	} {
		dst := make([]byte, 10, 100)
		out, err := Rewrite(dst, p, edits)
		if !errors.Is(err, ErrBadEdit) {
			t.Errorf("%s: err = %v, want ErrBadEdit", name, err)
		}
		if len(out) != 0 || cap(out) != cap(dst) {
			t.Errorf("%s: returned len %d cap %d, want dst[:0]", name, len(out), cap(out))
		}
	}
}

func TestRewriteTooLong(t *testing.T) {
	big := make([]byte, 0xffff)
	v4 := mustParse(t, buildV4(nil, nil, []byte("x")))
	room := 0xffff - len(v4.Buf) // bytes the payload can grow
	if _, err := Rewrite(nil, v4, []Edit{{Off: 0, Len: 0, New: big[:room]}}); err != nil {
		t.Errorf("v4 at 65535 bytes: %v", err)
	}
	if _, err := Rewrite(nil, v4, []Edit{{Off: 0, Len: 0, New: big[:room+1]}}); !errors.Is(err, ErrTooLong) {
		t.Errorf("v4 at 65536 bytes: err = %v, want ErrTooLong", err)
	}
	// IPv6 limits the payload length, not the packet.
	v6 := mustParse(t, buildV6([]ext{hopByHop}, nil, []byte("x")))
	room = 0xffff + IPv6HeaderLen - len(v6.Buf)
	out, err := Rewrite(nil, v6, []Edit{{Off: 0, Len: 1, New: big[:room+1]}})
	if err != nil {
		t.Fatalf("v6 payload length 65535: %v", err)
	}
	checkRewritten(t, v6.Buf, v6, out, []Edit{{Off: 0, Len: 1, New: big[:room+1]}})
	if _, err := Rewrite(nil, v6, []Edit{{Off: 0, Len: 0, New: big[:room+1]}}); !errors.Is(err, ErrTooLong) {
		t.Errorf("v6 payload length 65536: err = %v, want ErrTooLong", err)
	}
}

func TestRewriteOverlap(t *testing.T) {
	pkt := buildV4(nil, nil, []byte("0123456789"))
	p := mustParse(t, pkt)
	edits := []Edit{{Off: 0, Len: 5, New: []byte("a")}}
	if _, err := Rewrite(pkt[:0], p, edits); !errors.Is(err, ErrOverlap) {
		t.Errorf("dst = packet: err = %v, want ErrOverlap", err)
	}
	if _, err := Rewrite(pkt[2:2], p, edits); !errors.Is(err, ErrOverlap) {
		t.Errorf("dst inside packet: err = %v, want ErrOverlap", err)
	}
	// Storage too small is replaced, so it cannot overlap.
	grow := []Edit{{Off: 0, Len: 0, New: make([]byte, 100)}}
	out, err := Rewrite(pkt[:0:len(pkt)], p, grow)
	if err != nil {
		t.Fatalf("small overlapping dst: %v", err)
	}
	checkRewritten(t, pkt, p, out, grow)
}

func TestRewriteThenAdjust(t *testing.T) {
	// The caller's flow: rewrite, re-parse, then fix seq/ack and SACK.
	p := mustParse(t, buildV6([]ext{destOpts}, sackOpt(100, 200), []byte("227 x")))
	out, err := Rewrite(nil, p, []Edit{{Off: 4, Len: 1, New: []byte("yyy")}})
	if err != nil {
		t.Fatal(err)
	}
	q := mustParse(t, out)
	tcp := q.TCP()
	tcp.SetSeq(tcp.Seq() + 2)
	tcp.SetAck(tcp.Ack() - 7)
	tcp.AdjustSACK(func(e uint32) uint32 { return e - 7 })
	if !q.TCPChecksumValid() || !bytes.Equal(tcp.Options(), sackOpt(93, 193)) {
		t.Errorf("valid=%v options % x", q.TCPChecksumValid(), tcp.Options())
	}
}

func TestZeroAllocs(t *testing.T) {
	pkt := mustHex(t, hexV4227)
	v6 := mustHex(t, hexV6Ext)
	p, p6 := *mustParse(t, pkt), *mustParse(t, v6)
	edits := []Edit{{Off: 27, Len: 9, New: []byte("198,51,100,10")}}
	dst := make([]byte, 0, 2048)
	delta := uint32(3)
	for name, f := range map[string]func(){
		"Parse v4": func() { _ = Parse(pkt, &p) },
		"Parse v6": func() { _ = Parse(v6, &p6) },
		"SetSeq":   func() { p.TCP().SetSeq(p.TCP().Seq() + 1) },
		"SetAck":   func() { p.TCP().SetAck(p.TCP().Ack() + 1) },
		"AdjustSACK": func() {
			p6.TCP().AdjustSACK(func(e uint32) uint32 { return e + delta })
		},
		"Src/Dst":          func() { _, _ = p6.Src(), p6.Dst() },
		"TCPChecksumValid": func() { _ = p.TCPChecksumValid() },
		"Rewrite": func() {
			if _, err := Rewrite(dst, &p, edits); err != nil {
				panic(err)
			}
		},
	} {
		if n := testing.AllocsPerRun(100, f); n != 0 {
			t.Errorf("%s: %v allocs/op, want 0", name, n)
		}
	}
}
