package ipvs

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// HelperStats counts what one helper did, under the concepts stream
// (FTP) and datagram (TFTP) helpers share. A service reaches its helper's
// counters through Service.helperStats, set when the engine takes the
// service on, so that the per-packet paths count without a lookup; they
// count next to the engine-wide counter (Stats) of the same event.
type HelperStats struct {
	// Sessions: connections taken on with the helper (FTP control
	// connections scheduled, adopted, picked up or restored); requests
	// the helper read (TFTP: datagrams its Request accepted).
	Sessions atomic.Uint64
	// ChannelsOpened: data channels opened (FTP); reply flows opened (TFTP).
	ChannelsOpened atomic.Uint64
	// ChannelsUsed: data channels whose data connection started (FTP);
	// reply flows that started (TFTP).
	ChannelsUsed atomic.Uint64
	Rewritten    atomic.Uint64 // packets whose payload the helper rewrote
	Errors       atomic.Uint64 // answers that broke the helper contract
	Refused      [numRefusals]atomic.Uint64
}

// HelperCounter is one of every helper's counters as the outside sees it.
type HelperCounter struct {
	// Name is its name in status --json's per-helper counters.
	Name string
	// Metric is its Prometheus counter, labelled helper; the refusals
	// share one, labelled reason too (LabelName, LabelValue).
	Metric                string
	LabelName, LabelValue string // "" but for the refusals
	Help                  string

	field func(*HelperStats) *atomic.Uint64
}

// Load reads the counter from s.
func (c *HelperCounter) Load(s *HelperStats) uint64 { return c.field(s).Load() }

// helperCounters is the per-helper registry, in the order status prints.
// Its names are an interface, as the engine-wide ones (counters) are.
// nfhelper_helper_errors_total is an engine-wide family already (without
// the helper label), hence contract_errors here.
var helperCounters = func() []HelperCounter {
	cs := []HelperCounter{
		{"sessions", "nfhelper_helper_sessions_total", "", "",
			"Sessions each helper read: control connections it was given (FTP), requests it accepted (TFTP).",
			func(s *HelperStats) *atomic.Uint64 { return &s.Sessions }},
		{"channels_opened", "nfhelper_helper_channels_opened_total", "", "",
			"Channels each helper opened: data channels (FTP), reply flows (TFTP).",
			func(s *HelperStats) *atomic.Uint64 { return &s.ChannelsOpened }},
		{"channels_used", "nfhelper_helper_channels_used_total", "", "",
			"Channels of each helper that started: data connections (FTP), reply flows (TFTP).",
			func(s *HelperStats) *atomic.Uint64 { return &s.ChannelsUsed }},
		{"rewritten", "nfhelper_helper_rewritten_packets_total", "", "",
			"Packets whose payload each helper rewrote.",
			func(s *HelperStats) *atomic.Uint64 { return &s.Rewritten }},
		{"errors", "nfhelper_helper_contract_errors_total", "", "",
			"Answers of each helper that broke the contract; the stream is no longer read.",
			func(s *HelperStats) *atomic.Uint64 { return &s.Errors }},
	}
	for r := range Refusal(numRefusals) {
		cs = append(cs, HelperCounter{"refused_" + r.String(), "nfhelper_helper_refusals_total", "reason", r.String(),
			"Announced data channels, requests and answers from another host each helper refused, by reason.",
			func(s *HelperStats) *atomic.Uint64 { return &s.Refused[r] }})
	}
	return cs
}()

// HelperCounters returns the per-helper registry, in the order status
// prints it.
func HelperCounters() []HelperCounter { return slices.Clone(helperCounters) }

// HelperStatsOf is one helper's counters, by the helper's name.
type HelperStatsOf struct {
	Helper string
	Stats  *HelperStats
}

// helperStatsTable holds an engine's per-helper counters by helper name.
// Only service (re)configuration and readers take its lock; the workers
// reach the counters through their services.
type helperStatsTable struct {
	mu     sync.Mutex
	byName map[string]*HelperStats
}

// of returns the counters of the helper named name, made on first use: a
// service's helper need not be registered (tests build their own).
func (t *helperStatsTable) of(name string) *HelperStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byName == nil {
		t.byName = map[string]*HelperStats{}
	}
	s := t.byName[name]
	if s == nil {
		s = new(HelperStats)
		t.byName[name] = s
	}
	return s
}

// helperStatsFor returns the counters of svc's helper; nil without one.
func (e *Engine) helperStatsFor(svc *Service) *HelperStats {
	switch {
	case svc.Helper != nil:
		return e.helperStats.of(svc.Helper.Name())
	case svc.Datagram != nil:
		return e.helperStats.of(svc.Datagram.Name())
	}
	return nil
}

// HelperStats returns every registered helper's counters (zero for one no
// service used yet), and those of any other helper a service ran with,
// sorted by helper name.
func (e *Engine) HelperStats() []HelperStatsOf {
	for _, name := range HelperNames() {
		e.helperStats.of(name)
	}
	t := &e.helperStats
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]HelperStatsOf, 0, len(t.byName))
	for name, s := range t.byName {
		out = append(out, HelperStatsOf{name, s})
	}
	slices.SortFunc(out, func(a, b HelperStatsOf) int { return strings.Compare(a.Helper, b.Helper) })
	return out
}

// countSession counts a connection taken on for s's helper, if it has one.
func (s *Service) countSession() {
	if s.helperStats != nil {
		s.helperStats.Sessions.Add(1)
	}
}
