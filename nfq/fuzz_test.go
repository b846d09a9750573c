package nfq

import (
	"bytes"
	"testing"
	"unsafe"
)

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
