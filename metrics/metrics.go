// Package metrics exposes the daemon's counters to Prometheus, through
// client_golang with a registry of its own (not the library's global one):
// the nfhelper_* families, and the library's standard process_* and go_*.
//
// Everything but the verdict counters and the latency histogram is read at
// scrape time from the engine, the queues and the health monitor, which
// count anyway (see
// collect.go); the per-packet calls (CountVerdict, ObserveVerdict) are
// atomic adds into fixed arrays: no allocation, no lock, and no label
// lookup as a client_golang vector would make for each packet.
package metrics

import (
	"bytes"
	"maps"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nfhelper/nfhelper/health"
	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/nfq"
)

// Verdict kinds, most telling first: a packet dropped; accepted with new
// bytes (a rewrite or a seq/ack correction); accepted with a new mark (a
// scheduling decision); accepted as it was.
const (
	kindAccept = iota
	kindMark
	kindModify
	kindDrop
	numKinds
)

var kindNames = [numKinds]string{"accept", "mark", "modify", "drop"}

// bounds are the verdict-latency histogram's upper bounds in nanoseconds,
// 10µs to 100ms in 1-2.5-5 steps.
var bounds = [...]int64{
	10e3, 25e3, 50e3,
	100e3, 250e3, 500e3,
	1e6, 2.5e6, 5e6,
	10e6, 25e6, 50e6,
	100e6,
}

// queueSlot holds one queue's verdict counts; only that queue's reader
// writes it. Padded to a cache line so that readers do not share one.
type queueSlot struct {
	verdicts [numKinds]atomic.Uint64
	_        [64 - numKinds*8%64]byte
}

// Metrics serves the engine's and the queues' counters to Prometheus.
type Metrics struct {
	reg    *prometheus.Registry
	engine *ipvs.Engine
	queues []*nfq.Queue
	health *health.Monitor

	// StateChanges, if set, counts the real servers' state changes (up to
	// down and back); set it before serving.
	StateChanges func() uint64
	// VRRPStateFile, if set, names the VRRP state file read at each
	// scrape for nfhelper_vrrp_master, and whether the configuration set
	// it (config.Config.VRRPStateFile); set it before serving.
	VRRPStateFile func() (path string, configured bool)

	first uint16      // queue number of slots[0]
	slots []queueSlot // by queue number - first
	known []bool      // slots that are one of queues

	buckets  [len(bounds) + 1]atomic.Uint64 // not cumulative; the last is +Inf
	sumNanos atomic.Uint64
}

// New returns metrics for engine (nil: none of its counters), queues and
// the health checks of mon (nil: none).
func New(engine *ipvs.Engine, queues []*nfq.Queue, mon *health.Monitor) *Metrics {
	m := &Metrics{engine: engine, queues: queues, health: mon}
	if len(queues) > 0 {
		lo, hi := queues[0].Num, queues[0].Num
		for _, q := range queues {
			lo, hi = min(lo, q.Num), max(hi, q.Num)
		}
		m.first = lo
		m.slots = make([]queueSlot, int(hi-lo)+1)
		m.known = make([]bool, len(m.slots))
		for _, q := range queues {
			m.known[q.Num-lo] = true
		}
	}
	m.reg = prometheus.NewRegistry()
	m.reg.MustRegister(collector{m},
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector())
	return m
}

// CountVerdict counts the verdict v given to a packet read from queue
// number queue (a number New was not given is ignored). Call it once per
// packet, also for packets whose verdict waits for a data channel.
func (m *Metrics) CountVerdict(queue uint16, v ipvs.Verdict) {
	i := int(queue) - int(m.first)
	if i < 0 || i >= len(m.slots) {
		return
	}
	k := kindAccept
	switch {
	case v.Drop:
		k = kindDrop
	case v.Packet != nil:
		k = kindModify
	case v.SetMark:
		k = kindMark
	}
	m.slots[i].verdicts[k].Add(1)
}

// ObserveVerdict records how long one packet's verdict took.
func (m *Metrics) ObserveVerdict(d time.Duration) {
	n := max(int64(d), 0)
	i := 0
	for i < len(bounds) && n > bounds[i] {
		i++
	}
	m.buckets[i].Add(1)
	m.sumNanos.Add(uint64(n))
}

// Handler serves the metrics to GET and HEAD requests, in the format the
// scraper asks for (the text format unless it asks for another).
func (m *Metrics) Handler() http.Handler {
	// ContinueOnError: a sample that cannot be exported (a label value that
	// is not UTF-8) is left out, and the rest served.
	prom := promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		// Rendered whole first: the reply carries a Content-Length, and
		// HEAD gets the headers GET would.
		reply := bufferedReply{header: http.Header{}, code: http.StatusOK}
		prom.ServeHTTP(&reply, r)
		h := w.Header()
		maps.Copy(h, reply.header)
		h.Set("Content-Length", strconv.Itoa(reply.body.Len()))
		h.Set("Cache-Control", "no-store")
		w.WriteHeader(reply.code)
		if r.Method != http.MethodHead {
			w.Write(reply.body.Bytes())
		}
	})
}

// bufferedReply keeps a handler's reply.
type bufferedReply struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (b *bufferedReply) Header() http.Header         { return b.header }
func (b *bufferedReply) WriteHeader(code int)        { b.code = code }
func (b *bufferedReply) Write(p []byte) (int, error) { return b.body.Write(p) }
