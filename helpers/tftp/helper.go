package tftp

import "github.com/nfhelper/nfhelper/ipvs"

func init() { ipvs.RegisterDatagram(Helper{}) }

// Helper is the TFTP helper of UDP services: a read or write request lets
// its real server answer from a port of its own (the transfer ID), which
// the kernel translates as the VIP's; whatever else reaches it passes on
// without one. The transfer itself never reaches the daemon.
type Helper struct{}

// Name is the helper's name in configurations.
func (Helper) Name() string { return "tftp" }

// summaryMax caps each string of a request's summary (filename, option
// values) in `nfhelperctl conns`.
const summaryMax = 64

// Request reads a client's datagram. Any RRQ or WRQ gets its reply flow,
// even one the server will refuse (an unknown mode, a missing file): the
// refusal, an ERROR, comes from the transfer ID too.
func (Helper) Request(d []byte) (reply bool, about string) {
	r, err := ParseRequest(d)
	if err != nil {
		if op, ok := OpOf(d); ok && (op == OpRRQ || op == OpWRQ) {
			return true, op.String() + " (malformed)"
		}
		return false, ""
	}
	return true, r.Summary(summaryMax)
}
