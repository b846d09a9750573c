package ipvs

import (
	"slices"
	"sync/atomic"
)

// Stats counts what the engine did. Every field is in the registry below
// (Counters), from which status, the daemon's log lines and the metrics
// endpoint draw their counters; stats_test.go fails for a field missing there.
type Stats struct {
	Packets, Unparsed, Scheduled, NoServer atomic.Uint64
	Adopted, SNATLearned                   atomic.Uint64 // add-on connections; of those, behind the user's SNAT
	Rewritten, Corrected, Held, Dropped    atomic.Uint64 // packets altered, shifted, withholding, dropped out of order
	BadChecksum, HelperErrors              atomic.Uint64
	Channels, Evicted, Stopped             atomic.Uint64 // data channels opened, evicted by the limit; inspections stopped (TLS)
	Used                                   atomic.Uint64 // data channels whose data connection started (their claim freed at once)
	ConntrackGone                          atomic.Uint64 // connections removed because the kernel destroyed their conntrack entry
	Panics                                 atomic.Uint64 // packets whose handling panicked (a bug), passed on unmodified
	Backlogged                             atomic.Uint64 // data channels not opened: the datapath's backlog was full
	Restored                               atomic.Uint64 // connections taken back from conntrack at start
	AdoptedMidstream                       atomic.Uint64 // connections another router balanced, taken up mid-stream (a backup)
	Throttled                              atomic.Uint64 // segments dropped: their sender has maxEdits rewrites unacknowledged
	Skipped                                atomic.Uint64 // streams that picked up after bytes went by the daemon (fail-open)
	SeqAdjSet                              atomic.Uint64 // kernel datapath: seqadj records set outright before a verdict
	SeqAdjReported                         atomic.Uint64 // kernel datapath: connections reported after a verdict changed their seqadj records
	PickedUp                               atomic.Uint64 // helped connections nftables scheduled, taken up from their first packet queued
	PickupUnresolved                       atomic.Uint64 // SYN-ACKs of a shared server whose VIP conntrack did not tell (unhelped)
	ReplyFlows                             atomic.Uint64 // requests whose server may answer from a port of its own (TFTP)
	NotRequests                            atomic.Uint64 // datagrams to a datagram helper's service that asked for nothing
	RepliesStarted                         atomic.Uint64 // reply flows conntrack saw start, each its request's
	Refused                                [numRefusals]atomic.Uint64
}

// Counter is one of the engine's counters as the outside sees it.
type Counter struct {
	// Name is its name in status, status --json and the log lines.
	Name string
	// Metric is its Prometheus counter. Counters sharing one Metric (the
	// refusals) share Help and LabelName and differ by LabelValue.
	Metric                string
	LabelName, LabelValue string // "" for a metric without labels
	Help                  string

	field func(*Stats) *atomic.Uint64
}

// Load reads the counter from s.
func (c *Counter) Load(s *Stats) uint64 { return c.field(s).Load() }

// counters is the registry, in the order status and the log lines print.
// The names (status and metric alike) are an interface: scripts and
// dashboards read them, so they do not change.
var counters = func() []Counter {
	cs := []Counter{
		{"packets", "nfhelper_packets_total", "", "", "Packets the engine processed.",
			func(s *Stats) *atomic.Uint64 { return &s.Packets }},
		{"scheduled", "nfhelper_scheduled_connections_total", "", "", "Connections and UDP flows scheduled to a real server.",
			func(s *Stats) *atomic.Uint64 { return &s.Scheduled }},
		{"no_server", "nfhelper_no_server_total", "", "", "New connections no real server could take (all quiesced).",
			func(s *Stats) *atomic.Uint64 { return &s.NoServer }},
		{"adopted", "nfhelper_adopted_connections_total", "", "", "Add-on connections taken over after the user's DNAT.",
			func(s *Stats) *atomic.Uint64 { return &s.Adopted }},
		{"snat_learned", "nfhelper_snat_learned_total", "", "", "Add-on connections found behind the user's SNAT.",
			func(s *Stats) *atomic.Uint64 { return &s.SNATLearned }},
		{"rewritten", "nfhelper_rewritten_packets_total", "", "", "Packets whose payload a helper rewrote.",
			func(s *Stats) *atomic.Uint64 { return &s.Rewritten }},
		{"corrected", "nfhelper_corrected_packets_total", "", "", "Packets whose sequence or acknowledgement numbers were corrected.",
			func(s *Stats) *atomic.Uint64 { return &s.Corrected }},
		{"held", "nfhelper_held_packets_total", "", "", "Packets whose last bytes a helper withheld until more arrive.",
			func(s *Stats) *atomic.Uint64 { return &s.Held }},
		{"dropped_out_of_order", "nfhelper_dropped_out_of_order_total", "", "", "Segments dropped because they arrived past a gap (the sender resends them).",
			func(s *Stats) *atomic.Uint64 { return &s.Dropped }},
		{"channels", "nfhelper_data_channels_opened_total", "", "", "Data channels opened.",
			func(s *Stats) *atomic.Uint64 { return &s.Channels }},
		{"evicted", "nfhelper_data_channels_evicted_total", "", "", "Unused data channels evicted by the per-connection limit.",
			func(s *Stats) *atomic.Uint64 { return &s.Evicted }},
		{"channels_used", "nfhelper_data_channels_used_total", "", "", "Data channels whose data connection started, which frees their port at once.",
			func(s *Stats) *atomic.Uint64 { return &s.Used }},
		{"stopped_tls", "nfhelper_inspections_stopped_total", "", "", "Connections whose inspection stopped (TLS).",
			func(s *Stats) *atomic.Uint64 { return &s.Stopped }},
		{"conntrack_gone", "nfhelper_conntrack_gone_total", "", "", "Connections removed because the kernel destroyed their conntrack entry.",
			func(s *Stats) *atomic.Uint64 { return &s.ConntrackGone }},
		{"unparsed", "nfhelper_unparsed_packets_total", "", "", "Packets passed on unread: not parseable, or UDP to no UDP service.",
			func(s *Stats) *atomic.Uint64 { return &s.Unparsed }},
		{"bad_checksum", "nfhelper_bad_checksum_total", "", "", "Segments with a bad TCP checksum, passed on unread.",
			func(s *Stats) *atomic.Uint64 { return &s.BadChecksum }},
		{"helper_errors", "nfhelper_helper_errors_total", "", "", "Helper answers that broke the contract; the stream is no longer read.",
			func(s *Stats) *atomic.Uint64 { return &s.HelperErrors }},
		{"panics", "nfhelper_worker_panics_total", "", "", "Packets whose handling panicked (a bug); passed on unmodified.",
			func(s *Stats) *atomic.Uint64 { return &s.Panics }},
		{"backlogged", "nfhelper_data_channels_backlogged_total", "", "", "Data channels not opened because the datapath was too far behind.",
			func(s *Stats) *atomic.Uint64 { return &s.Backlogged }},
		{"restored", "nfhelper_restored_connections_total", "", "", "Connections taken back from conntrack at start (a restart after a crash).",
			func(s *Stats) *atomic.Uint64 { return &s.Restored }},
		{"adopted_midstream", "nfhelper_adopted_midstream_connections_total", "", "",
			"Helped connections another router balanced (conntrackd carried them to this backup), taken up in the middle of their streams.",
			func(s *Stats) *atomic.Uint64 { return &s.AdoptedMidstream }},
		{"throttled", "nfhelper_throttled_segments_total", "", "", "Segments dropped because their sender had too many rewrites unacknowledged (it resends them).",
			func(s *Stats) *atomic.Uint64 { return &s.Throttled }},
		{"skipped", "nfhelper_skipped_streams_total", "", "", "Times a helped stream picked up after bytes went by the daemon (the queue failed open).",
			func(s *Stats) *atomic.Uint64 { return &s.Skipped }},
		{"seqadj_set", "nfhelper_seqadj_set_total", "", "",
			"Kernel datapath: times the kernel's seqadj records were set outright before a verdict (a withheld line, a retransmission cut anew).",
			func(s *Stats) *atomic.Uint64 { return &s.SeqAdjSet }},
		{"seqadj_reported", "nfhelper_seqadj_reported_total", "", "",
			"Kernel datapath: connections whose seqadj records a verdict changed, reported by the kernel as a conntrack event for conntrackd to carry to a backup router.",
			func(s *Stats) *atomic.Uint64 { return &s.SeqAdjReported }},
		{"reply_flows", "nfhelper_reply_flows_opened_total", "", "",
			"Requests (TFTP) whose real server may answer from a port of its own, translated by the kernel as coming from the VIP.",
			func(s *Stats) *atomic.Uint64 { return &s.ReplyFlows }},
		{"replies_started", "nfhelper_reply_flows_started_total", "", "",
			"Reply flows (TFTP transfers) that started from a request's server, as conntrack told.",
			func(s *Stats) *atomic.Uint64 { return &s.RepliesStarted }},
		{"not_requests", "nfhelper_not_requests_total", "", "",
			"Datagrams to a UDP service with a helper that were no request (passed on, nothing opened).",
			func(s *Stats) *atomic.Uint64 { return &s.NotRequests }},
		{"picked_up", "nfhelper_picked_up_connections_total", "", "",
			"Helped connections the kernel scheduled, taken up from the first packet the daemon saw (the SYN-ACK, or the SYN after NAT).",
			func(s *Stats) *atomic.Uint64 { return &s.PickedUp }},
		{"pickup_unresolved", "nfhelper_pickup_unresolved_total", "", "",
			"SYN-ACKs from a real server several services hold whose VIP conntrack could not tell: the connection went unhelped.",
			func(s *Stats) *atomic.Uint64 { return &s.PickupUnresolved }},
	}
	for r := range Refusal(numRefusals) {
		cs = append(cs, Counter{"refused_" + r.String(), "nfhelper_refusals_total", "reason", r.String(),
			"Announced data channels, requests (reason pending) and answers from another host (reason foreign_reply) a helper refused, by reason.",
			func(s *Stats) *atomic.Uint64 { return &s.Refused[r] }})
	}
	return cs
}()

// Counters returns the registry of the engine's counters, in the order
// status and the log lines print them.
func Counters() []Counter { return slices.Clone(counters) }

// LogAttrs returns every counter as name, value pairs in registry order,
// for a slog line.
func (s *Stats) LogAttrs() []any {
	attrs := make([]any, 0, 2*len(counters))
	for i := range counters {
		attrs = append(attrs, counters[i].Name, counters[i].Load(s))
	}
	return attrs
}
