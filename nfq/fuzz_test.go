package nfq

import (
	"bytes"
	"errors"
	"testing"
	"unsafe"
)

func fuzzSeeds(f *testing.F) [][]byte {
	return [][]byte{
		mustHex(f, hexV4227),
		mustHex(f, hexV6Ext),
		buildV4([]byte{148, 4, 0, 0}, sackOpt(1, 2, 3, 4), []byte("PORT 10,0,0,1,4,1\r\n")),
		buildV6([]ext{hopByHop, routing, destOpts}, tsOpt, []byte("EPSV\r\n")),
		buildV6([]ext{fragHdr}, nil, nil),
		buildV4(nil, []byte{1, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2, 0}, nil),
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Add([]byte{0x45})
	f.Add([]byte{0x60, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		data = bytes.Clone(data) // the checks write to the packet
		var p Packet
		if Parse(data, &p) != nil {
			return
		}
		checkPacketView(t, data, &p)
	})
}

func FuzzRewrite(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s, 0, 0, []byte("x"))
		f.Add(s, 3, 2, []byte("198,51,100,10"))
		f.Add(s, 1, 1000, []byte{})
	}
	f.Fuzz(func(t *testing.T, data []byte, off, n int, repl []byte) {
		var p Packet
		if Parse(data, &p) != nil {
			return
		}
		orig := bytes.Clone(p.Buf)
		ipValid := p.V6 || p.IPv4().CalculateChecksum() == p.IPv4().Checksum()
		edits := []Edit{{Off: off, Len: n, New: repl}}
		out, err := Rewrite(nil, &p, edits)
		if !bytes.Equal(p.Buf, orig) {
			t.Fatal("Rewrite modified its input")
		}
		payLen := len(p.Buf) - p.Payload
		valid := off >= 0 && n >= 0 && off <= payLen && n <= payLen-off
		switch {
		case !valid:
			if !errors.Is(err, ErrBadEdit) {
				t.Fatalf("edit %d+%d of %d bytes: err = %v, want ErrBadEdit", off, n, payLen, err)
			}
			return
		case errors.Is(err, ErrTooLong):
			return
		case err != nil:
			t.Fatalf("Rewrite: %v", err)
		}
		q := mustParse(t, out)
		if want := applyEdits(string(p.PayloadBytes()), edits); string(q.PayloadBytes()) != want {
			t.Fatalf("payload %q, want %q", q.PayloadBytes(), want)
		}
		if !q.TCPChecksumValid() {
			t.Fatal("TCP checksum does not verify")
		}
		if ipValid && !q.V6 && q.IPv4().CalculateChecksum() != q.IPv4().Checksum() {
			t.Fatal("IPv4 header checksum broken")
		}
	})
}

// FuzzParseQueueMessage: any datagram from the kernel, split and parsed as
// the reader does, never panics, and what parses points into the datagram
// and survives being encoded again.
func FuzzParseQueueMessage(f *testing.F) {
	f.Add(appendPacketMessage(nil, testPacket{id: 1, payload: []byte{0x45, 0, 0, 20}}))
	f.Add(appendPacketMessage(appendPacketMessage(nil, testPacket{id: 2, payload: []byte("x"), withMark: true, mark: 3}),
		testPacket{id: 3, payload: nil, withCT: true, ct: []byte{8, 0, 1, 0, 1, 2, 3, 4}, ctInfo: 2, withInDev: true, inDev: 4}))
	f.Add([]byte{16, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		var m Message
		for d := data; len(d) > 0; {
			typ, _, msg, adv, err := nlHeader(d)
			if err != nil {
				return
			}
			if adv <= 0 || adv > len(d) || len(msg) > len(d) {
				t.Fatalf("advance %d, message %d of %d bytes", adv, len(msg), len(d))
			}
			d = d[adv:]
			if typ == nlmsgError {
				parseError(msg)
				continue
			}
			if ParseQueueMessage(msg, &m) != nil {
				continue
			}
			for _, s := range [][]byte{m.Payload, m.CT} {
				if len(s) > 0 && !within(s, msg) {
					t.Fatal("a parsed slice points outside the message")
				}
			}
			again := appendPacketMessage(nil, testPacket{id: m.ID, payload: m.Payload, mark: m.Mark, withMark: true,
				ct: m.CT, withCT: m.CT != nil, ctInfo: m.CTInfo, inDev: m.InDev, withInDev: true})
			var m2 Message
			if err := ParseQueueMessage(again, &m2); err != nil {
				t.Fatalf("re-encoded message: %v", err)
			}
			if m2.ID != m.ID || m2.Mark != m.Mark || !bytes.Equal(m2.Payload, m.Payload) || !bytes.Equal(m2.CT, m.CT) || m2.InDev != m.InDev {
				t.Fatalf("round trip: %+v != %+v", m2, m)
			}
		}
	})
}

// within reports whether s lies inside b's memory.
func within(s, b []byte) bool {
	base := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	p := uintptr(unsafe.Pointer(unsafe.SliceData(s)))
	return p >= base && p+uintptr(len(s)) <= base+uintptr(len(b))
}
