package ipvs

import (
	"github.com/nfhelper/nfhelper/nfq/packet"
	"github.com/nfhelper/nfhelper/nfq/seqnum"
)

// datapathMode is what differs, in a helped segment's handling, between
// the datapaths (Options.Datapath): how the sequence numbers the worker
// writes become the receiver's, and what the kernel needs to carry out
// the helper's data channels. Chosen once, when the engine is built.
type datapathMode interface {
	// channels adds to v what the datapath needs for the connection's
	// channels and pure ACKs after the segment; it may close the
	// connection's open channels (into w.close). c.mu is held.
	channels(w *Worker, c *Conn, s *segment, v *Verdict)
	// numbers turns the stream's numbers for the segment (s.outSeq,
	// s.outAck, s.sack) into what to write, and adds to v what the kernel
	// is to record. c.mu is held.
	numbers(w *Worker, c *Conn, s *segment, v *Verdict)
	// sackEdge is what to write for a SACK edge that the stream reads as
	// x, of peer's bytes.
	sackEdge(peer *stream, x seqnum.Value) seqnum.Value
}

func newDatapathMode(d Datapath) datapathMode {
	if d == DatapathKernel {
		return kernelMode{}
	}
	return compatMode{}
}

// compatMode is DatapathCompat's: the worker writes the receiver's numbers
// itself, and the stream offsets, data channels and pure-ACK elements are
// nftables elements the datapath adds before the verdict.
type compatMode struct{}

func (compatMode) channels(w *Worker, c *Conn, s *segment, v *Verdict) {
	h := c.help
	if len(h.open) > 0 && (s.flags&packet.FlagRST != 0 || s.dir == FromServer && s.flags&packet.FlagFIN != 0) {
		w.closeOpen(c)
	}
	if len(w.open) > 0 && s.inLen > 0 {
		h.announcing, h.annDir, h.annSeq, h.annEnd = true, s.dir, s.seq, s.seq.Add(s.inLen)
		v.Announcing = c
	}
	if !h.acksQueued && !h.ended && h.needsAcks() {
		h.acksQueued = true
		v.Acks = Channel{Kind: ChannelAcks, Client: c.Client, Server: c.Server, NAT: h.clientNAT}
	}
}

func (compatMode) numbers(w *Worker, c *Conn, s *segment, v *Verdict) { c.offsets(s.before, v) }

func (compatMode) sackEdge(peer *stream, x seqnum.Value) seqnum.Value { return x }
