package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// HelperState is the per-connection state nfhelperd keeps in the kernel,
// in the connection's helper data area (PrivDataMax bytes), so that a
// restarted daemon can go on helping a connection it finds in a queued
// packet's NFQA_CT instead of passing it on unread.
type HelperState struct {
	Flags uint8
	// Next is, per direction (DirOriginal, DirReply), the sequence number
	// after the last byte the helper has read, in the sender's space.
	Next [2]uint32
	// Helper is the protocol helper's own state (e.g. the FTP commands
	// awaiting their reply), as ipvs.StateSaver encodes it.
	Helper uint64
	// Server is the index of the real server the connection went to.
	Server uint16
}

// HelperState flags.
const (
	StateValid      = 1 << 0 // Next[DirOriginal] holds a sequence number
	StateStopped    = 1 << 1 // the helper ended inspection (e.g. AUTH TLS)
	StateLost       = 1 << 2 // a stream was lost: pass on unread
	StateReplyValid = 1 << 3 // Next[DirReply] holds a sequence number
)

// StateLen is the bytes of HelperState in the kernel: the helper's PrivLen.
const StateLen = 20

const stateVersion = 1

// ErrStateVersion: the data was written by an incompatible version.
var ErrStateVersion = errors.New("helper state of another version")

// Encode is s as stored in the kernel.
func (s HelperState) Encode() []byte {
	b := make([]byte, StateLen)
	b[0] = stateVersion
	b[1] = s.Flags
	binary.BigEndian.PutUint16(b[2:], s.Server)
	binary.BigEndian.PutUint32(b[4:], s.Next[0])
	binary.BigEndian.PutUint32(b[8:], s.Next[1])
	binary.BigEndian.PutUint64(b[12:], s.Helper)
	return b
}

// DecodeState reads HelperState from a connection's helper data. All
// zeros (a connection the helper never wrote to) is the zero state.
func DecodeState(b []byte) (HelperState, error) {
	var s HelperState
	if len(b) < StateLen {
		return s, fmt.Errorf("helper state: %d bytes, want %d", len(b), StateLen)
	}
	switch b[0] {
	case 0:
		for _, c := range b[:StateLen] {
			if c != 0 {
				return s, fmt.Errorf("helper state: %w (version 0 with data)", ErrStateVersion)
			}
		}
		return s, nil
	case stateVersion:
	default:
		return s, fmt.Errorf("helper state: %w (%d)", ErrStateVersion, b[0])
	}
	s.Flags = b[1]
	s.Server = binary.BigEndian.Uint16(b[2:])
	s.Next[0] = binary.BigEndian.Uint32(b[4:])
	s.Next[1] = binary.BigEndian.Uint32(b[8:])
	s.Helper = binary.BigEndian.Uint64(b[12:])
	return s, nil
}
