package packet

import (
	"encoding/binary"
	"math/bits"
)

// TCP is a TCP segment, starting at its header and ending where the IP
// packet ends. Accessors do no bounds checks: Parse validates the header
// once, including that DataOffset lies within the segment.
type TCP []byte

// Field offsets of the TCP header (RFC 9293).
const (
	TCPMinHeaderLen = 20
	tcpDstPortOff   = 2
	tcpSeqOff       = 4
	tcpAckOff       = 8
	tcpDataOffOff   = 12
	tcpFlagsOff     = 13
	tcpChecksumOff  = 16
)

// TCP flags, as in Flags.
const (
	FlagFIN uint8 = 1 << iota
	FlagSYN
	FlagRST
	FlagPSH
	FlagACK
	FlagURG
)

// TCP option kinds that LowerMSS and AdjustSACK interpret.
const (
	tcpOptEOL  = 0
	tcpOptNOP  = 1
	tcpOptMSS  = 2
	tcpOptSACK = 5

	sackBlockLen = 8 // two 32-bit edges
)

// SrcPort is the source port.
func (t TCP) SrcPort() uint16 { return binary.BigEndian.Uint16(t) }

// DstPort is the destination port.
func (t TCP) DstPort() uint16 { return binary.BigEndian.Uint16(t[tcpDstPortOff:]) }

// Seq is the sequence number.
func (t TCP) Seq() uint32 { return binary.BigEndian.Uint32(t[tcpSeqOff:]) }

// Ack is the acknowledgment number.
func (t TCP) Ack() uint32 { return binary.BigEndian.Uint32(t[tcpAckOff:]) }

// SetSeq sets the sequence number, updating the checksum incrementally.
func (t TCP) SetSeq(v uint32) { t.set32(tcpSeqOff, v) }

// SetAck sets the acknowledgment number, updating the checksum incrementally.
func (t TCP) SetAck(v uint32) { t.set32(tcpAckOff, v) }

// set32 stores v at off and updates the checksum incrementally.
func (t TCP) set32(off int, v uint32) {
	t.SetChecksum(ChecksumUpdate32(t.Checksum(), binary.BigEndian.Uint32(t[off:]), v))
	binary.BigEndian.PutUint32(t[off:], v)
}

// DataOffset is the header length in bytes, options included.
func (t TCP) DataOffset() int { return int(t[tcpDataOffOff]>>4) * 4 }

// Flags are the FIN..URG flags (and ECE, CWR in the top bits).
func (t TCP) Flags() uint8 { return t[tcpFlagsOff] }

// Checksum is the checksum field.
func (t TCP) Checksum() uint16 { return binary.BigEndian.Uint16(t[tcpChecksumOff:]) }

// SetChecksum sets the checksum field.
func (t TCP) SetChecksum(v uint16) { binary.BigEndian.PutUint16(t[tcpChecksumOff:], v) }

// Options are the header bytes after the fixed part.
func (t TCP) Options() []byte { return t[TCPMinHeaderLen:t.DataOffset()] }

// Payload is the data after the header.
func (t TCP) Payload() []byte { return t[t.DataOffset():] }

// nextOption finds the option at or after offset i of opts: its offset,
// kind and length; ok is false at the end. The walk follows the kernel's
// nf_ct_sack_adjust: it stops at EOL or at an option that would run past
// the header (nothing after a partial option can be trusted).
func nextOption(opts []byte, i int) (at, kind, n int, ok bool) {
	for i < len(opts) && opts[i] == tcpOptNOP {
		i++
	}
	if i+1 >= len(opts) || opts[i] == tcpOptEOL {
		return 0, 0, 0, false
	}
	n = int(opts[i+1])
	if n < 2 || n > len(opts)-i {
		return 0, 0, 0, false
	}
	return i, int(opts[i]), n, true
}

// LowerMSS lowers the MSS option (kind 2) by by, to no less than floor,
// updating the checksum incrementally; false if nothing changed.
func (t TCP) LowerMSS(by, floor uint16) bool {
	opts := t.Options()
	for i, kind, n, ok := nextOption(opts, 0); ok; i, kind, n, ok = nextOption(opts, i+n) {
		if kind != tcpOptMSS || n != 4 {
			continue
		}
		old := binary.BigEndian.Uint16(opts[i+2:])
		v := floor
		if old > by {
			v = max(old-by, floor)
		}
		if v >= old {
			return false
		}
		binary.BigEndian.PutUint16(opts[i+2:], v)
		rot := 8 * (i & 1) // a field at an odd offset sums rotated by a byte
		t.SetChecksum(ChecksumUpdate16(t.Checksum(), bits.RotateLeft16(old, rot), bits.RotateLeft16(v, rot)))
		return true
	}
	return false
}

// AdjustSACK replaces every edge of every SACK block (option kind 5) with
// f(edge), in place, updating the checksum incrementally. After payload
// edits the peer acknowledges shifted sequence numbers, and its SACK blocks
// must be shifted back like Ack. A SACK option whose length is not 2 plus a
// whole number of blocks is skipped, as the kernel does.
func (t TCP) AdjustSACK(f func(edge uint32) uint32) {
	opts := t.Options()
	csum := t.Checksum()
	for i, kind, n, ok := nextOption(opts, 0); ok; i, kind, n, ok = nextOption(opts, i+n) {
		if kind != tcpOptSACK || n == 2 || (n-2)%sackBlockLen != 0 {
			continue
		}
		// Senders align SACK with NOPs, but nothing forces them to. A
		// field at an odd offset straddles checksum words; its sum is that
		// of the field rotated by a byte (2^8·2^8 ≡ 1 mod 2^16-1).
		rot := 8 * (i & 1) // Options start at an even offset
		for e := i + 2; e < i+n; e += 4 {
			old := binary.BigEndian.Uint32(opts[e:])
			v := f(old)
			if v == old {
				// Edges below the edited range stay; leaving them alone
				// also keeps a packet byte-identical when nothing moves.
				continue
			}
			binary.BigEndian.PutUint32(opts[e:], v)
			csum = ChecksumUpdate32(csum, bits.RotateLeft32(old, rot), bits.RotateLeft32(v, rot))
		}
	}
	t.SetChecksum(csum)
}
