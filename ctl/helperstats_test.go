package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/ipvs"
)

// TestStatusHelperStats: each helper's counters reach status --json by
// their registry names and status as one table line, refusals summed.
func TestStatusHelperStats(t *testing.T) {
	s, e := testServer(t)
	w := e.NewWorker()
	for i := range 2 {
		w.Process(syn(netip.AddrPortFrom(netip.MustParseAddr("192.0.2.7"), uint16(40000+i)), vip), 0)
	}
	hs := e.HelperStats()
	if len(hs) != 1 || hs[0].Helper != "fake" {
		t.Fatalf("helpers %+v, want the services' fake", hs)
	}
	fake := hs[0].Stats
	fake.ChannelsOpened.Add(5)
	fake.ChannelsUsed.Add(4)
	fake.Rewritten.Add(3)
	fake.Errors.Add(1)
	fake.Refused[ipvs.RefuseBounce].Add(2)
	fake.Refused[ipvs.RefusePending].Add(1)

	st, err := NewClient(serve(t, s), 5*time.Second).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := st.HelperStats["fake"]
	if len(st.HelperStats) != 1 || len(got) != len(ipvs.HelperCounters()) {
		t.Fatalf("helper stats %v", st.HelperStats)
	}
	for _, c := range ipvs.HelperCounters() {
		if v, ok := got[c.Name]; !ok || v != c.Load(fake) {
			t.Errorf("fake %s = %d, %v; want %d", c.Name, v, ok, c.Load(fake))
		}
	}
	if got["sessions"] != 2 || got["refused_bounce"] != 2 {
		t.Errorf("fake %v", got)
	}

	var b bytes.Buffer
	WriteStatus(&b, st)
	out := b.String()
	head := fmt.Sprintf(helperLine, "helper", "sessions", "channels", "used", "rewritten", "errors", "refusals")
	line := fmt.Sprintf(helperLine, "fake", 2, 5, 4, 3, 1, 3)
	if !strings.Contains(out, "\nper helper:\n"+head+line) {
		t.Errorf("no helper table, or not as\n%s%s in:\n%s", head, line, out)
	}
}

// TestStatusHelperStatsJSON: the per-helper counters survive status
// --json's round trip; a status from a daemon that predates them decodes,
// and prints without their table; a client that predates them reads a new
// status.
func TestStatusHelperStatsJSON(t *testing.T) {
	s, e := testServer(t)
	e.HelperStats()[0].Stats.Sessions.Add(7)
	st := s.Status()
	data, err := json.Marshal(&st)
	if err != nil {
		t.Fatal(err)
	}
	var back Status
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if !maps.EqualFunc(back.HelperStats, st.HelperStats, maps.Equal) || back.HelperStats["fake"]["sessions"] != 7 {
		t.Errorf("round trip: %v, sent %v", back.HelperStats, st.HelperStats)
	}

	old := `{"pid": 1, "started": "2026-01-02T03:04:05Z", "datapath": "compat", "queues": {"first": 100, "count": 1},
		"stats": {"packets": 9, "refused_bounce": 1}}`
	var prev Status
	if err := json.Unmarshal([]byte(old), &prev); err != nil {
		t.Fatal(err)
	}
	if prev.HelperStats != nil || prev.Stats["packets"] != 9 {
		t.Errorf("older daemon's status: %+v", prev)
	}
	var b bytes.Buffer
	WriteStatus(&b, &prev)
	if strings.Contains(b.String(), "per helper") {
		t.Errorf("a table without helper counters:\n%s", b.String())
	}

	// An older client's Status, the field unknown to it.
	var older struct {
		Pid   int               `json:"pid"`
		Stats map[string]uint64 `json:"stats"`
	}
	if err := json.Unmarshal(data, &older); err != nil || older.Pid != st.Pid || len(older.Stats) != len(st.Stats) {
		t.Errorf("older client: %+v, %v", older, err)
	}
}
