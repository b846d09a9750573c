// Package seqnum is TCP sequence-space arithmetic: numbers that wrap at
// 2^32, lengths in that space, signed shifts, and the kernel's seqadj
// record, which maps a connection's numbers after a length change.
//
// It is pure: the engine, the kernel's netlink code and the test models
// share it without pulling each other in.
package seqnum

// Value is a TCP sequence or acknowledgement number.
type Value uint32

// Size is a number of bytes in sequence space.
type Size uint32

// Delta is a signed shift in sequence space: what rewrites added to (or
// took from) a stream up to some point.
type Delta int32

// Before reports whether v comes before w, modulo 2^32 (the kernel's
// before()). Numbers exactly 2^31 apart are each before the other, as in
// the kernel.
func (v Value) Before(w Value) bool { return int32(v-w) < 0 }

// After reports whether v comes after w, modulo 2^32 (the kernel's after()).
func (v Value) After(w Value) bool { return w.Before(v) }

// Add is v moved forward by s bytes.
func (v Value) Add(s Size) Value { return v + Value(s) }

// Shift is v moved by d, forward or back.
func (v Value) Shift(d Delta) Value { return v + Value(d) }

// Size is the number of bytes from v up to w (w must not be before v).
func (v Value) Size(w Value) Size { return Size(w - v) }

// Delta is the signed shift that moves v to w.
func (v Value) Delta(w Value) Delta { return Delta(w - v) }
