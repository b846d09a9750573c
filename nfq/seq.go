package nfq

// SeqBefore reports whether sequence number a comes before b, modulo 2^32
// (the kernel's before()). Numbers exactly 2^31 apart are each before the
// other, as in the kernel.
func SeqBefore(a, b uint32) bool { return int32(a-b) < 0 }

// SeqAfter reports whether a comes after b, modulo 2^32 (the kernel's
// after()).
func SeqAfter(a, b uint32) bool { return SeqBefore(b, a) }
