package ipvs

import (
	"log/slog"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// statsFields lists every counter in s (a *Stats or *HelperStats) by its
// Go name (array elements as Name[i]) and address, so that a registry's
// accessors can be checked against the struct itself.
func statsFields(s any) map[*atomic.Uint64]string {
	u64 := reflect.TypeFor[atomic.Uint64]()
	v := reflect.ValueOf(s).Elem()
	fields := map[*atomic.Uint64]string{}
	for i := range v.NumField() {
		f, name := v.Field(i), v.Type().Field(i).Name
		switch {
		case f.Type() == u64:
			fields[f.Addr().Interface().(*atomic.Uint64)] = name
		case f.Kind() == reflect.Array && f.Type().Elem() == u64:
			for j := range f.Len() {
				fields[f.Index(j).Addr().Interface().(*atomic.Uint64)] = name + "[" + strconv.Itoa(j) + "]"
			}
		default:
			panic(v.Type().Name() + "." + name + " is no counter: teach statsFields its type")
		}
	}
	return fields
}

// registered is one registry entry as the coverage check sees it.
type registered struct {
	name string
	p    *atomic.Uint64
}

// checkCovers fails t unless the registry reads every counter of fields
// (statsFields of the struct it reads), each once: a counter forgotten in
// the registry (file) would be missing from status and the metrics.
func checkCovers(t *testing.T, fields map[*atomic.Uint64]string, registry []registered, file string) {
	t.Helper()
	seen := map[*atomic.Uint64]string{}
	for _, c := range registry {
		f, ok := fields[c.p]
		if !ok {
			t.Errorf("%s: reads no counter of its struct", c.name)
			continue
		}
		if prev, dup := seen[c.p]; dup {
			t.Errorf("%s is in the registry twice: %s and %s", f, prev, c.name)
		}
		seen[c.p] = c.name
	}
	for p, f := range fields {
		if _, ok := seen[p]; !ok {
			t.Errorf("%s is not in the registry (%s)", f, file)
		}
	}
}

// TestCountersCoverStats: every Stats counter is in the registry.
func TestCountersCoverStats(t *testing.T) {
	var s Stats
	var reg []registered
	for _, c := range Counters() {
		reg = append(reg, registered{c.Name, c.field(&s)})
	}
	checkCovers(t, statsFields(&s), reg, "stats.go")
}

// TestCountersConsistent: names are unique, and counters that share a
// metric are one labelled family.
func TestCountersConsistent(t *testing.T) {
	names := map[string]bool{}
	type family struct{ help, label string }
	families := map[string]family{}
	series := map[string]bool{}
	for _, c := range Counters() {
		if names[c.Name] {
			t.Errorf("name %s twice", c.Name)
		}
		names[c.Name] = true
		if !strings.HasPrefix(c.Metric, "nfhelper_") || !strings.HasSuffix(c.Metric, "_total") || c.Help == "" {
			t.Errorf("%s: metric %q, help %q", c.Name, c.Metric, c.Help)
		}
		if (c.LabelName == "") != (c.LabelValue == "") {
			t.Errorf("%s: label %q=%q", c.Name, c.LabelName, c.LabelValue)
		}
		if f, ok := families[c.Metric]; ok && f != (family{c.Help, c.LabelName}) {
			t.Errorf("%s: %s's help or label name differs from its family's", c.Name, c.Metric)
		}
		families[c.Metric] = family{c.Help, c.LabelName}
		if k := c.Metric + "{" + c.LabelValue + "}"; series[k] {
			t.Errorf("%s: series %s twice", c.Name, k)
		} else {
			series[k] = true
		}
	}
}

func TestLogAttrs(t *testing.T) {
	var s Stats
	s.Panics.Add(3)
	s.Refused[RefuseNoPort].Add(5)
	attrs := s.LogAttrs()
	cs := Counters()
	if len(attrs) != 2*len(cs) {
		t.Fatalf("%d attrs for %d counters", len(attrs), len(cs))
	}
	got := map[string]uint64{}
	for i := 0; i < len(attrs); i += 2 {
		if attrs[i] != cs[i/2].Name {
			t.Errorf("attr %d is %v, want %s (registry order)", i/2, attrs[i], cs[i/2].Name)
		}
		got[attrs[i].(string)] = attrs[i+1].(uint64)
	}
	if got["panics"] != 3 || got["refused_no_port"] != 5 || got["packets"] != 0 {
		t.Errorf("values %v", got)
	}
	// slog takes the pairs as they are.
	var b strings.Builder
	slog.New(slog.NewTextHandler(&b, nil)).Info("stopping", attrs...)
	if !strings.Contains(b.String(), " panics=3 ") || strings.Contains(b.String(), "!BADKEY") {
		t.Errorf("log line %s", b.String())
	}
}

// TestCounterNames pins the names that exist: scripts reading status or the
// log lines, and dashboards, depend on them. New counters need no entry.
func TestCounterNames(t *testing.T) {
	want := []struct{ name, metric, label string }{ // label: of "reason"
		{"packets", "nfhelper_packets_total", ""},
		{"scheduled", "nfhelper_scheduled_connections_total", ""},
		{"no_server", "nfhelper_no_server_total", ""},
		{"adopted", "nfhelper_adopted_connections_total", ""},
		{"snat_learned", "nfhelper_snat_learned_total", ""},
		{"rewritten", "nfhelper_rewritten_packets_total", ""},
		{"corrected", "nfhelper_corrected_packets_total", ""},
		{"held", "nfhelper_held_packets_total", ""},
		{"dropped_out_of_order", "nfhelper_dropped_out_of_order_total", ""},
		{"channels", "nfhelper_data_channels_opened_total", ""},
		{"evicted", "nfhelper_data_channels_evicted_total", ""},
		{"channels_used", "nfhelper_data_channels_used_total", ""},
		{"stopped_tls", "nfhelper_inspections_stopped_total", ""},
		{"conntrack_gone", "nfhelper_conntrack_gone_total", ""},
		{"unparsed", "nfhelper_unparsed_packets_total", ""},
		{"bad_checksum", "nfhelper_bad_checksum_total", ""},
		{"helper_errors", "nfhelper_helper_errors_total", ""},
		{"panics", "nfhelper_worker_panics_total", ""},
		{"backlogged", "nfhelper_data_channels_backlogged_total", ""},
		{"restored", "nfhelper_restored_connections_total", ""},
		{"throttled", "nfhelper_throttled_segments_total", ""},
		{"skipped", "nfhelper_skipped_streams_total", ""},
		{"seqadj_set", "nfhelper_seqadj_set_total", ""},
		{"refused_bounce", "nfhelper_refusals_total", "bounce"},
		{"refused_low_port", "nfhelper_refusals_total", "low_port"},
		{"refused_unsolicited", "nfhelper_refusals_total", "unsolicited"},
		{"refused_epsv_all", "nfhelper_refusals_total", "epsv_all"},
		{"refused_no_port", "nfhelper_refusals_total", "no_port"},
		{"refused_malformed", "nfhelper_refusals_total", "malformed"},
	}
	byName := map[string]Counter{}
	for _, c := range Counters() {
		byName[c.Name] = c
	}
	for _, w := range want {
		c, ok := byName[w.name]
		if !ok || c.Metric != w.metric || c.LabelValue != w.label || (w.label != "" && c.LabelName != "reason") {
			t.Errorf("%s: %v %s %q, want %s %q", w.name, ok, c.Metric, c.LabelValue, w.metric, w.label)
		}
	}
}
