package packet

import (
	"errors"
	"fmt"
	"unsafe"
)

// Errors from Rewrite, wrapped with the offending values.
var (
	ErrBadEdit = errors.New("packet: bad edit")
	ErrTooLong = errors.New("packet: rewritten packet too long")
	ErrOverlap = errors.New("packet: destination overlaps the packet")
)

// Edit replaces Len bytes at Off (an offset into the TCP payload) with New.
type Edit struct {
	Off, Len int
	New      []byte
}

// maxLenField is the largest IPv4 total length or IPv6 payload length.
const maxLenField = 0xffff

// Rewrite writes p with edits applied to its TCP payload into dst, reusing
// dst's storage when its capacity suffices, and returns the new packet. It
// sets the IPv4 total length (header checksum updated incrementally) or the
// IPv6 payload length (which covers any extension headers) and recomputes
// the TCP checksum over the new segment and pseudo-header.
//
// Edits must be in ascending offset order, non-overlapping and within the
// payload (ErrBadEdit); the new length must fit the IP length field
// (ErrTooLong); dst's storage must not overlap p.Buf (ErrOverlap), since
// edits that grow the payload would overwrite bytes not yet copied.
//
// On error Rewrite returns dst[:0], keeping dst's storage for the next call.
//
// The TCP checksum is recomputed rather than adjusted, so a segment that
// arrived corrupt leaves valid: callers that must not launder corruption
// check p.TCPChecksumValid first, as IPVS does before running a helper.
func Rewrite(dst []byte, p *Packet, edits []Edit) ([]byte, error) {
	payLen := len(p.Buf) - p.Payload
	size, end := len(p.Buf), 0
	for i, e := range edits {
		if e.Off < end || e.Len < 0 || e.Len > payLen-e.Off {
			return dst[:0], fmt.Errorf("%w: edit %d (off %d, len %d) after offset %d of a %d-byte payload",
				ErrBadEdit, i, e.Off, e.Len, end, payLen)
		}
		end = e.Off + e.Len
		size += len(e.New) - e.Len
	}
	lenField := size
	if p.V6 {
		lenField -= IPv6HeaderLen
	}
	if lenField > maxLenField {
		return dst[:0], fmt.Errorf("%w: %d bytes", ErrTooLong, size)
	}

	if cap(dst) < size {
		dst = make([]byte, size)
	}
	if overlap(dst[:size], p.Buf) {
		return dst[:0], ErrOverlap
	}
	dst = dst[:size]
	d := copy(dst, p.Buf[:p.Payload])
	s := p.Payload
	for _, e := range edits {
		d += copy(dst[d:], p.Buf[s:p.Payload+e.Off])
		d += copy(dst[d:], e.New)
		s = p.Payload + e.Off + e.Len
	}
	copy(dst[d:], p.Buf[s:])

	if p.V6 {
		IPv6(dst).SetPayloadLen(uint16(lenField))
	} else {
		IPv4(dst).SetTotalLen(uint16(lenField))
	}
	tcp := TCP(dst[p.L4:])
	tcp.SetChecksum(0)
	tcp.SetChecksum(ChecksumFold(Checksum(tcp, pseudoHeaderSum(dst, p.V6, len(tcp)))))
	return dst, nil
}

// overlap reports whether a and b share any byte of memory.
func overlap(a, b []byte) bool {
	if len(a) == 0 || len(b) == 0 {
		return false
	}
	a0, b0 := uintptr(unsafe.Pointer(&a[0])), uintptr(unsafe.Pointer(&b[0]))
	return a0 < b0+uintptr(len(b)) && b0 < a0+uintptr(len(a))
}
