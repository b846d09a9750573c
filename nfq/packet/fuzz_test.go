package packet

import (
	"bytes"
	"errors"
	"testing"
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
