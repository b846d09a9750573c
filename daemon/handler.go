package daemon

import (
	"log/slog"
	"time"

	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/metrics"
	"github.com/nfhelper/nfhelper/nfq"
	"github.com/nfhelper/nfhelper/nft"
)

// verdicter answers for queued packets: a queue, or a fake in tests.
type verdicter interface {
	Accept(id uint32, setMark bool, mark uint32, pkt []byte) error
	Drop(id uint32) error
	// AcceptCT lets the packet go on with NFQA_CT contents ct, for the
	// kernel's seqadj and the connection's helper data.
	AcceptCT(id uint32, pkt []byte, ct []byte) error
	// Flush sends the verdicts collected so far.
	Flush() error
}

// queue is an *nfq.Queue as a verdicter.
type queue struct{ *nfq.Queue }

func (q queue) AcceptCT(id uint32, pkt []byte, ct []byte) error {
	return q.SetVerdict(&nfq.Verdict{ID: id, Verdict: nfq.VerdictAccept, Payload: pkt, CT: ct})
}

// handler is one queue's per-packet path, whichever the queue and the
// datapath: decide, then have the datapath answer. A panic on the way is a
// bug: the packet goes on unmodified, the worker goes on with the next one.
type handler struct {
	q     verdicter
	num   uint16
	w     *ipvs.Worker
	stats *ipvs.Stats
	dp    datapath
	mx    *metrics.Metrics
	log   *slog.Logger
	// start is when the queue handed over the packet being handled.
	start time.Time
}

// handle is called for each packet the queue reads; ct is the packet's
// NFQA_CT contents, nil where the queue has none.
func (h *handler) handle(id uint32, pkt []byte, mark uint32, ct []byte) {
	h.start = time.Now()
	defer h.recoverPanic(id, mark)
	conn := h.dp.inspect(ct)
	v := h.w.Process(pkt, mark)
	h.mx.CountVerdict(h.num, v)
	if mark&nft.UnseenMark != 0 {
		// The daemon saw this server segment: it must not look
		// bypassed to the rules after conntrack.
		if !v.SetMark {
			v.SetMark, v.Mark = true, mark
		}
		v.Mark &^= nft.UnseenMark
	}
	if h.dp.answer(h, id, pkt, v, conn) {
		h.mx.ObserveVerdict(time.Since(h.start))
	}
}

func (h *handler) recoverPanic(id uint32, mark uint32) {
	if r := recover(); r != nil {
		h.stats.Panics.Add(1)
		h.log.Error("worker panic; packet accepted unmodified", "panic", r, "total", h.stats.Panics.Load())
		h.q.Accept(id, mark&nft.UnseenMark != 0, mark&^nft.UnseenMark, nil)
	}
}

// verdict gives packet id the verdict v, as it is.
func (h *handler) verdict(id uint32, v *ipvs.Verdict) {
	if err := verdict(h.q, id, v.Drop, v.SetMark, v.Mark, v.Packet); err != nil {
		h.log.Warn("verdict", "err", err)
	}
}

func verdict(q verdicter, id uint32, drop, setMark bool, mark uint32, pkt []byte) error {
	if drop {
		return q.Drop(id)
	}
	return q.Accept(id, setMark, mark, pkt)
}
