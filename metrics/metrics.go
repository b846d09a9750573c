// Package metrics exposes the daemon's counters in the Prometheus text
// exposition format (version 0.0.4), written by hand: no client library.
//
// Everything but the verdict counters and the latency histogram is read at
// scrape time from the engine and the queues, which count anyway; the
// per-packet calls (CountVerdict, ObserveVerdict) are atomic adds into
// fixed arrays: no allocation, no lock.
package metrics

import (
	"bytes"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

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

// Metrics renders the engine's and the queues' counters for Prometheus.
type Metrics struct {
	engine *ipvs.Engine
	queues []*nfq.Queue

	first uint16      // queue number of slots[0]
	slots []queueSlot // by queue number - first
	known []bool      // slots that are one of queues

	buckets  [len(bounds) + 1]atomic.Uint64 // not cumulative; the last is +Inf
	sumNanos atomic.Uint64
}

// New returns metrics for engine (nil: none of its counters) and queues.
func New(engine *ipvs.Engine, queues []*nfq.Queue) *Metrics {
	m := &Metrics{engine: engine, queues: queues}
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

// Handler serves the metrics to GET and HEAD requests.
func (m *Metrics) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		var b bytes.Buffer
		m.write(&b)
		h := w.Header()
		h.Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		h.Set("Content-Length", strconv.Itoa(b.Len()))
		h.Set("Cache-Control", "no-store")
		if r.Method == http.MethodHead {
			return
		}
		w.Write(b.Bytes())
	})
}

// write renders every metric family.
func (m *Metrics) write(b *bytes.Buffer) {
	x := &expo{b: b}
	m.writeQueues(x)
	m.writeLatency(x)
	if m.engine != nil {
		writeEngine(x, m.engine)
		writeServices(x, m.engine)
	}
}

func (m *Metrics) writeQueues(x *expo) {
	queueLabel := func(i int) string { return strconv.Itoa(int(m.first) + i) }
	x.family("nfhelper_queue_packets_total", "counter", "Packets read from each NFQUEUE and given a verdict.")
	for i := range m.slots {
		if !m.known[i] {
			continue
		}
		var n uint64
		for k := range numKinds {
			n += m.slots[i].verdicts[k].Load()
		}
		x.sample("nfhelper_queue_packets_total", n, "queue", queueLabel(i))
	}
	x.family("nfhelper_verdicts_total", "counter",
		"Verdicts by queue and kind: drop; modify (new bytes: rewrite or seq/ack correction); mark (scheduling decision); accept (unchanged).")
	for i := range m.slots {
		if !m.known[i] {
			continue
		}
		for k := range numKinds {
			x.sample("nfhelper_verdicts_total", m.slots[i].verdicts[k].Load(), "queue", queueLabel(i), "verdict", kindNames[k])
		}
	}
	x.family("nfhelper_queue_read_errors_total", "counter",
		"Receive errors each queue's reader survived (ENOBUFS: the kernel dropped queue messages, the socket buffer was full).")
	for _, q := range m.queues {
		x.sample("nfhelper_queue_read_errors_total", q.ReadErrors.Load(), "queue", strconv.Itoa(int(q.Num)))
	}
	x.family("nfhelper_queue_verdict_errors_total", "counter",
		"Verdicts of each queue the kernel refused or that could not be sent (a packet id it no longer holds, a malformed altered packet).")
	for _, q := range m.queues {
		x.sample("nfhelper_queue_verdict_errors_total", q.VerdictErrors.Load(), "queue", strconv.Itoa(int(q.Num)))
	}
	x.family("nfhelper_queue_malformed_total", "counter", "Messages from the kernel on each queue's socket that could not be parsed.")
	for _, q := range m.queues {
		x.sample("nfhelper_queue_malformed_total", q.Malformed.Load(), "queue", strconv.Itoa(int(q.Num)))
	}
	if kernel := nfq.KernelStats(nfq.ProcQueueStats); len(kernel) > 0 {
		x.family("nfhelper_queue_kernel_dropped_total", "counter",
			"Packets the kernel dropped because a queue was full (none while fail-open accepts them).")
		for _, k := range kernel {
			x.sample("nfhelper_queue_kernel_dropped_total", k.Dropped, "queue", strconv.Itoa(int(k.Num)))
		}
		x.family("nfhelper_queue_user_dropped_total", "counter",
			"Packets the kernel dropped because the reader's socket buffer was full.")
		for _, k := range kernel {
			x.sample("nfhelper_queue_user_dropped_total", k.UserDropped, "queue", strconv.Itoa(int(k.Num)))
		}
	}
}

func (m *Metrics) writeLatency(x *expo) {
	const name = "nfhelper_verdict_duration_seconds"
	x.family(name, "histogram", "Time from reading a packet to its verdict.")
	var cum uint64
	for i := range m.buckets {
		cum += m.buckets[i].Load()
		le := "+Inf"
		if i < len(bounds) {
			le = strconv.FormatFloat(float64(bounds[i])/1e9, 'g', -1, 64)
		}
		x.sample(name+"_bucket", cum, "le", le)
	}
	x.sampleFloat(name+"_sum", float64(m.sumNanos.Load())/1e9)
	// The count is the +Inf bucket by construction, even while observers run.
	x.sample(name+"_count", cum)
}

// engineCounters are the engine's plain counters.
var engineCounters = [...]struct {
	name, help string
	get        func(*ipvs.Stats) *atomic.Uint64
}{
	{"nfhelper_packets_total", "Packets the engine processed.", func(s *ipvs.Stats) *atomic.Uint64 { return &s.Packets }},
	{"nfhelper_unparsed_packets_total", "Packets passed on unread: not parseable, or UDP to no UDP service.", func(s *ipvs.Stats) *atomic.Uint64 { return &s.Unparsed }},
	{"nfhelper_scheduled_connections_total", "Connections and UDP flows scheduled to a real server.", func(s *ipvs.Stats) *atomic.Uint64 { return &s.Scheduled }},
	{"nfhelper_no_server_total", "New connections no real server could take (all quiesced).", func(s *ipvs.Stats) *atomic.Uint64 { return &s.NoServer }},
	{"nfhelper_adopted_connections_total", "Add-on connections taken over after the user's DNAT.", func(s *ipvs.Stats) *atomic.Uint64 { return &s.Adopted }},
	{"nfhelper_snat_learned_total", "Add-on connections found behind the user's SNAT.", func(s *ipvs.Stats) *atomic.Uint64 { return &s.SNATLearned }},
	{"nfhelper_rewritten_packets_total", "Packets whose payload a helper rewrote.", func(s *ipvs.Stats) *atomic.Uint64 { return &s.Rewritten }},
	{"nfhelper_corrected_packets_total", "Packets whose sequence or acknowledgement numbers were corrected.", func(s *ipvs.Stats) *atomic.Uint64 { return &s.Corrected }},
	{"nfhelper_held_packets_total", "Packets whose last bytes a helper withheld until more arrive.", func(s *ipvs.Stats) *atomic.Uint64 { return &s.Held }},
	{"nfhelper_dropped_out_of_order_total", "Segments dropped because they arrived past a gap (the sender resends them).", func(s *ipvs.Stats) *atomic.Uint64 { return &s.Dropped }},
	{"nfhelper_bad_checksum_total", "Segments with a bad TCP checksum, passed on unread.", func(s *ipvs.Stats) *atomic.Uint64 { return &s.BadChecksum }},
	{"nfhelper_helper_errors_total", "Helper answers that broke the contract; the stream is no longer read.", func(s *ipvs.Stats) *atomic.Uint64 { return &s.HelperErrors }},
	{"nfhelper_worker_panics_total", "Packets whose handling panicked (a bug); passed on unmodified.", func(s *ipvs.Stats) *atomic.Uint64 { return &s.Panics }},
	{"nfhelper_data_channels_backlogged_total", "Data channels not opened because the datapath was too far behind.", func(s *ipvs.Stats) *atomic.Uint64 { return &s.Backlogged }},
	{"nfhelper_restored_connections_total", "Connections taken back from conntrack at start (a restart after a crash).", func(s *ipvs.Stats) *atomic.Uint64 { return &s.Restored }},
	{"nfhelper_throttled_segments_total", "Segments dropped because their sender had too many rewrites unacknowledged (it resends them).", func(s *ipvs.Stats) *atomic.Uint64 { return &s.Throttled }},
	{"nfhelper_skipped_streams_total", "Times a helped stream picked up after bytes went by the daemon (the queue failed open).", func(s *ipvs.Stats) *atomic.Uint64 { return &s.Skipped }},
	{"nfhelper_seqadj_set_total", "Kernel datapath: times the kernel's seqadj records were set outright before a verdict (a withheld line, a retransmission cut anew).", func(s *ipvs.Stats) *atomic.Uint64 { return &s.SeqAdjSet }},
	{"nfhelper_data_channels_opened_total", "Data channels opened.", func(s *ipvs.Stats) *atomic.Uint64 { return &s.Channels }},
	{"nfhelper_data_channels_used_total", "Data channels whose data connection started, which frees their port at once.", func(s *ipvs.Stats) *atomic.Uint64 { return &s.Used }},
	{"nfhelper_data_channels_evicted_total", "Unused data channels evicted by the per-connection limit.", func(s *ipvs.Stats) *atomic.Uint64 { return &s.Evicted }},
	{"nfhelper_inspections_stopped_total", "Connections whose inspection stopped (TLS).", func(s *ipvs.Stats) *atomic.Uint64 { return &s.Stopped }},
	{"nfhelper_conntrack_gone_total", "Connections removed because the kernel destroyed their conntrack entry.", func(s *ipvs.Stats) *atomic.Uint64 { return &s.ConntrackGone }},
}

func writeEngine(x *expo, e *ipvs.Engine) {
	for _, c := range engineCounters {
		x.family(c.name, "counter", c.help)
		x.sample(c.name, c.get(&e.Stats).Load())
	}
	x.family("nfhelper_refusals_total", "counter", "Announced data channels a helper refused, by reason.")
	for i := range e.Stats.Refused {
		x.sample("nfhelper_refusals_total", e.Stats.Refused[i].Load(), "reason", ipvs.Refusal(i).String())
	}
	x.family("nfhelper_connections", "gauge", "Connections (tcp) and flows (udp) in the table.")
	x.sampleInt("nfhelper_connections", int64(e.Table.Len()), "proto", "tcp")
	x.sampleInt("nfhelper_connections", int64(e.UDP.Len()), "proto", "udp")
}

func writeServices(x *expo, e *ipvs.Engine) {
	// Copies taken under each service's lock: a reload's commit writes
	// weights, an add-on learning a server appends to its list.
	svcs := e.ServiceViews()

	x.family("nfhelper_service_info", "gauge",
		"One series per running service: its VIP (or matched destination), protocol, mode, scheduler and helper.")
	for i := range svcs {
		s := &svcs[i]
		proto, mode := "tcp", "balance"
		if s.UDP {
			proto = "udp"
		}
		if s.AddOn {
			mode = "addon"
		}
		x.sampleInt("nfhelper_service_info", 1, "service", s.Name, "vip", s.VIP.String(), "proto", proto, "mode", mode,
			"scheduler", s.Scheduler, "helper", s.Helper)
	}
	x.family("nfhelper_service_real_servers", "gauge", "Real servers of each service (learned ones for add-ons).")
	for i := range svcs {
		x.sampleInt("nfhelper_service_real_servers", int64(len(svcs[i].Servers)), "service", svcs[i].Name)
	}
	serviceGauge := func(name, help string, get func(*ipvs.RealServerView) int64) {
		x.family(name, "gauge", help)
		for i := range svcs {
			var n int64
			for j := range svcs[i].Servers {
				n += get(&svcs[i].Servers[j])
			}
			x.sampleInt(name, n, "service", svcs[i].Name)
		}
	}
	serviceGauge("nfhelper_service_active_connections", "Established connections of each service's real servers.",
		func(rs *ipvs.RealServerView) int64 { return rs.Active })
	serviceGauge("nfhelper_service_inactive_connections", "Connections of each service's real servers in other states.",
		func(rs *ipvs.RealServerView) int64 { return rs.Inactive })

	servers := func(name, typ, help string, write func(name string, rs *ipvs.RealServerView, labels ...string)) {
		x.family(name, typ, help)
		for i := range svcs {
			for j := range svcs[i].Servers {
				rs := &svcs[i].Servers[j]
				write(name, rs, "service", svcs[i].Name, "server", rs.Addr.String())
			}
		}
	}
	counter := func(get func(*ipvs.RealServerView) uint64) func(string, *ipvs.RealServerView, ...string) {
		return func(name string, rs *ipvs.RealServerView, labels ...string) { x.sample(name, get(rs), labels...) }
	}
	gauge := func(get func(*ipvs.RealServerView) int64) func(string, *ipvs.RealServerView, ...string) {
		return func(name string, rs *ipvs.RealServerView, labels ...string) { x.sampleInt(name, get(rs), labels...) }
	}
	servers("nfhelper_real_server_connections_total", "counter", "Connections scheduled to (or learned for) each real server.",
		counter(func(rs *ipvs.RealServerView) uint64 { return rs.Conns }))
	servers("nfhelper_real_server_active_connections", "gauge", "Established connections of each real server (ipvsadm ActiveConn).",
		gauge(func(rs *ipvs.RealServerView) int64 { return rs.Active }))
	servers("nfhelper_real_server_inactive_connections", "gauge", "Connections of each real server in other states (ipvsadm InActConn).",
		gauge(func(rs *ipvs.RealServerView) int64 { return rs.Inactive }))
	servers("nfhelper_real_server_packets_total", "counter", "Packets, both directions, of each real server's ended connections (needs nf_conntrack_acct=1).",
		counter(func(rs *ipvs.RealServerView) uint64 { return rs.Packets }))
	servers("nfhelper_real_server_bytes_total", "counter", "Bytes, both directions, of each real server's ended connections (needs nf_conntrack_acct=1).",
		counter(func(rs *ipvs.RealServerView) uint64 { return rs.Bytes }))
	servers("nfhelper_real_server_weight", "gauge", "Scheduling weight of each real server (0: quiesced).",
		gauge(func(rs *ipvs.RealServerView) int64 { return int64(rs.Weight) }))
}

// expo writes the text exposition format.
type expo struct {
	b *bytes.Buffer
	s []byte // scratch
}

// family writes the HELP and TYPE lines that must precede a family's samples.
func (x *expo) family(name, typ, help string) {
	x.b.WriteString("# HELP ")
	x.b.WriteString(name)
	x.b.WriteByte(' ')
	for i := 0; i < len(help); i++ {
		switch c := help[i]; c {
		case '\\':
			x.b.WriteString(`\\`)
		case '\n':
			x.b.WriteString(`\n`)
		default:
			x.b.WriteByte(c)
		}
	}
	x.b.WriteString("\n# TYPE ")
	x.b.WriteString(name)
	x.b.WriteByte(' ')
	x.b.WriteString(typ)
	x.b.WriteByte('\n')
}

// series writes a sample's name and labels, given as name, value pairs.
func (x *expo) series(name string, labels []string) {
	x.b.WriteString(name)
	if len(labels) > 0 {
		x.b.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				x.b.WriteByte(',')
			}
			x.b.WriteString(labels[i])
			x.b.WriteString(`="`)
			writeLabelValue(x.b, labels[i+1])
			x.b.WriteByte('"')
		}
		x.b.WriteByte('}')
	}
	x.b.WriteByte(' ')
}

func (x *expo) sample(name string, v uint64, labels ...string) {
	x.series(name, labels)
	x.s = strconv.AppendUint(x.s[:0], v, 10)
	x.b.Write(x.s)
	x.b.WriteByte('\n')
}

func (x *expo) sampleInt(name string, v int64, labels ...string) {
	x.series(name, labels)
	x.s = strconv.AppendInt(x.s[:0], v, 10)
	x.b.Write(x.s)
	x.b.WriteByte('\n')
}

func (x *expo) sampleFloat(name string, v float64, labels ...string) {
	x.series(name, labels)
	x.s = strconv.AppendFloat(x.s[:0], v, 'g', -1, 64)
	x.b.Write(x.s)
	x.b.WriteByte('\n')
}

// writeLabelValue escapes a label value: backslash, double quote and line
// feed. Invalid UTF-8 is written as it is (names come from the config).
func writeLabelValue(b *bytes.Buffer, v string) {
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '\\':
			b.WriteString(`\\`)
		case '"':
			b.WriteString(`\"`)
		case '\n':
			b.WriteString(`\n`)
		default:
			b.WriteByte(c)
		}
	}
}
