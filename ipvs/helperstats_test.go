package ipvs

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestHelperCountersCoverStats: every HelperStats counter is in the
// registry.
func TestHelperCountersCoverStats(t *testing.T) {
	var s HelperStats
	var reg []registered
	for _, c := range HelperCounters() {
		reg = append(reg, registered{c.Name, c.field(&s)})
	}
	checkCovers(t, statsFields(&s), reg, "helperstats.go")
}

// TestHelperCountersConsistent: names are unique, the families are
// nfhelper_helper_*_total, and none is an engine-wide family already (one
// registry cannot serve a family under two label sets).
func TestHelperCountersConsistent(t *testing.T) {
	engineWide := map[string]bool{}
	for _, c := range Counters() {
		engineWide[c.Metric] = true
	}
	names := map[string]bool{}
	for _, c := range HelperCounters() {
		if names[c.Name] {
			t.Errorf("name %s twice", c.Name)
		}
		names[c.Name] = true
		if !strings.HasPrefix(c.Metric, "nfhelper_helper_") || !strings.HasSuffix(c.Metric, "_total") || c.Help == "" {
			t.Errorf("%s: metric %q, help %q", c.Name, c.Metric, c.Help)
		}
		if engineWide[c.Metric] {
			t.Errorf("%s: %s is an engine-wide family", c.Name, c.Metric)
		}
		if (c.LabelName == "") != (c.LabelValue == "") || c.LabelName == "helper" {
			t.Errorf("%s: label %q=%q", c.Name, c.LabelName, c.LabelValue)
		}
	}
	if n := len(HelperCounters()) - 5; n != int(numRefusals) {
		t.Errorf("%d refusal counters, want %d", n, numRefusals)
	}
}

// badHelper breaks the Inspect contract on every byte it reads.
type badHelper struct{}

func (badHelper) Name() string                      { return "bad" }
func (badHelper) Bind(*Session, *Policy) ConnHelper { return badHelper{} }
func (badHelper) Inspect(_ Direction, _ []byte, _ int, _ bool, r *Result) {
	r.Carry = -1
}

// statsOf returns e's counters of the helper named name.
func statsOf(t *testing.T, e *Engine, name string) *HelperStats {
	t.Helper()
	for _, h := range e.HelperStats() {
		if h.Helper == name {
			return h.Stats
		}
	}
	t.Fatalf("no counters for helper %s", name)
	return nil
}

// loads reads every counter of s, by registry name.
func loads(s *HelperStats) map[string]uint64 {
	m := map[string]uint64{}
	for _, c := range HelperCounters() {
		if v := c.Load(s); v != 0 {
			m[c.Name] = v
		}
	}
	return m
}

func wantCounts(t *testing.T, helper string, s *HelperStats, want map[string]uint64) {
	t.Helper()
	got := loads(s)
	for name, v := range want {
		if got[name] != v {
			t.Errorf("%s: %s = %d, want %d", helper, name, got[name], v)
		}
	}
	for name, v := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("%s: %s = %d, want 0", helper, name, v)
		}
	}
}

// TestHelperStatsStream: a stream helper's connections, channels,
// rewrites, refusals and errors are counted under its name, beside the
// engine-wide counters, and each helper's apart from the other's.
func TestHelperStatsStream(t *testing.T) {
	rs := []*RealServer{{Addr: rs1, Weight: 1}}
	port, err := NewService("port", vip, "rr", portHelper{}, rs)
	if err != nil {
		t.Fatal(err)
	}
	port.Policy = Policy{MaxChannels: 4, ChannelTimeout: time.Minute}
	badVIP := ap("198.51.100.10:2121")
	bad, err := NewService("bad", badVIP, "rr", badHelper{}, []*RealServer{{Addr: ap("10.0.0.12:21"), Weight: 1}})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := NewService("plain", ap("198.51.100.10:80"), "rr", nil, []*RealServer{{Addr: ap("10.0.0.13:80"), Weight: 1}})
	if err != nil {
		t.Fatal(err)
	}
	e, err := NewEngine([]*Service{port, bad, plain}, Options{MarkMask: 0x00ff0000})
	if err != nil {
		t.Fatal(err)
	}
	w := e.NewWorker()
	announce(t, e, w, client, 1000, "40000")
	// Another user behind the same address, whose server picked the
	// same port: the announcement is rewritten to the next one.
	announce(t, e, w, ap("203.0.113.2:40001"), 2000, "40000")
	if _, ok := e.ChannelUsed(client.Addr(), ap("198.51.100.10:40000"), netip.AddrPortFrom(rs1.Addr(), 40000)); !ok {
		t.Fatal("channel not used")
	}
	w.now = now()
	w.refused(e.Table.LookupVIP(client, vip), []Refusal{RefuseBounce, RefuseNoPort})

	w.Process(seg(client, badVIP, 100, 0, syn, ""), 0)
	c := e.Table.LookupVIP(client, badVIP)
	w.Process(seg(c.Server, client, 5000, 101, syn|ack, ""), 0)
	w.Process(seg(c.Server, client, 5001, 101, pshAck, "220 hi\r\n"), 0)
	// A connection without a helper counts under none.
	w.Process(seg(client, ap("198.51.100.10:80"), 100, 0, syn, ""), 0)

	wantCounts(t, "port", statsOf(t, e, "port"), map[string]uint64{
		"sessions": 2, "channels_opened": 2, "channels_used": 1, "rewritten": 1, "refused_bounce": 1, "refused_no_port": 1,
	})
	wantCounts(t, "bad", statsOf(t, e, "bad"), map[string]uint64{"sessions": 1, "errors": 1})

	// Their sums are the engine's counts of the same events.
	var sum HelperStats
	for _, h := range e.HelperStats() {
		for _, c := range HelperCounters() {
			c.field(&sum).Add(c.Load(h.Stats))
		}
	}
	st := &e.Stats
	for name, pair := range map[string][2]uint64{
		"channels":  {sum.ChannelsOpened.Load(), st.Channels.Load()},
		"used":      {sum.ChannelsUsed.Load(), st.Used.Load()},
		"rewritten": {sum.Rewritten.Load(), st.Rewritten.Load()},
		"errors":    {sum.Errors.Load(), st.HelperErrors.Load()},
		"bounce":    {sum.Refused[RefuseBounce].Load(), st.Refused[RefuseBounce].Load()},
		"sessions":  {sum.Sessions.Load(), st.Scheduled.Load() - 1}, // all but the plain one
	} {
		if pair[0] != pair[1] {
			t.Errorf("%s: helpers count %d, the engine %d", name, pair[0], pair[1])
		}
	}

	// A reload's new service of the same helper counts on: connections
	// of the old one and of the new one alike.
	again, err := NewService("port", vip, "rr", portHelper{}, []*RealServer{{Addr: rs1, Weight: 1}})
	if err != nil {
		t.Fatal(err)
	}
	commit, err := e.Prepare([]*Service{again})
	if err != nil {
		t.Fatal(err)
	}
	commit()
	announce(t, e, w, ap("203.0.113.5:40000"), 3000, "40000")
	if _, ok := e.ChannelUsed(client.Addr(), ap("198.51.100.10:40001"), netip.AddrPortFrom(rs1.Addr(), 40000)); !ok {
		t.Fatal("the old service's channel not used after the reload")
	}
	if got := loads(statsOf(t, e, "port")); got["sessions"] != 3 || got["channels_opened"] != 3 || got["channels_used"] != 2 {
		t.Errorf("after the reload: %v", got)
	}
}

// TestHelperStatsDatagram: a datagram helper's requests, reply flows
// opened and started, and refusals are counted under its name.
func TestHelperStatsDatagram(t *testing.T) {
	a := &RealServer{Addr: ap("10.0.0.11:69"), Weight: 1}
	s := svcOf(t, "198.51.100.10:69", "rr", a)
	s.UDP, s.Datagram = true, requestHelper{}
	s.Policy.MaxPending = 1
	e, err := NewEngine([]*Service{s}, Options{MarkMask: 0x00ff0000, ReplyMark: 0x08000000})
	if err != nil {
		t.Fatal(err)
	}
	w := e.NewWorker()
	vip := ap("198.51.100.10:69")
	send := func(client, payload string) Verdict {
		p := udpPacket(ap(client), vip)
		p[3] += byte(len(payload))
		p[25] += byte(len(payload))
		return w.Process(append(p, payload...), 0)
	}
	cl := "203.0.113.2:40000"
	send(cl, "REQ file")
	send(cl, "REQ file") // its copy
	send(cl, "ACK")      // no request
	if v := send("203.0.113.2:40001", "REQ other"); !v.Drop {
		t.Fatal("a request beyond MaxPending was not dropped")
	}
	if !e.ReplyStarted(ap("10.0.0.11:51000"), ap(cl), ap(cl), ap("198.51.100.10:51000")) {
		t.Fatal("reply not taken")
	}
	hs := statsOf(t, e, "req")
	wantCounts(t, "req", hs, map[string]uint64{"sessions": 3, "channels_opened": 2, "channels_used": 1, "refused_pending": 1})
	if hs.ChannelsOpened.Load() != e.Stats.ReplyFlows.Load() || hs.ChannelsUsed.Load() != e.Stats.RepliesStarted.Load() {
		t.Errorf("reply flows: helper %d opened, %d used; engine %d, %d",
			hs.ChannelsOpened.Load(), hs.ChannelsUsed.Load(), e.Stats.ReplyFlows.Load(), e.Stats.RepliesStarted.Load())
	}
}

// TestHelperStatsRegistered: every registered helper has its counters,
// zero until a service uses it.
func TestHelperStatsRegistered(t *testing.T) {
	e, err := NewEngine(nil, Options{MarkMask: 0x00ff0000})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, h := range e.HelperStats() {
		got = append(got, h.Helper)
		if v := loads(h.Stats); len(v) != 0 {
			t.Errorf("%s: %v before any use", h.Helper, v)
		}
	}
	if want := HelperNames(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("helpers %v, want the registered %v", got, want)
	}
}
