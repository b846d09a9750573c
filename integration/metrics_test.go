//go:build integration

package integration

import (
	"bytes"
	"maps"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// TestMetrics scrapes the daemon's Prometheus endpoint on the router's
// loopback after sessions of its own (whatever ran before): the counters
// they drove are there and move.
func TestMetrics(t *testing.T) {
	needDaemon(t)
	// Two sessions: round robin reaches both real servers; each rewrites
	// a 227 and opens a data channel.
	seen := newConnServers(t, 2)
	refused := provokeRefusal(t)
	out, stderr, err := execIn(t, 10*time.Second, harness.tp.Router, nil, "curl", "-sS", "--max-time", "5", "http://127.0.0.1:9330/metrics")
	if err != nil {
		t.Fatalf("scrape: %v\n%s", err, stderr)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(out))
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, out)
	}
	// value is the sample of family name with exactly labels (name, value
	// pairs); a histogram's is its count.
	value := func(name string, labels ...string) float64 {
		t.Helper()
		want := map[string]string{}
		for i := 0; i+1 < len(labels); i += 2 {
			want[labels[i]] = labels[i+1]
		}
		for _, m := range fams[name].GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			if !maps.Equal(got, want) {
				continue
			}
			if m.Histogram != nil {
				return float64(m.Histogram.GetSampleCount())
			}
			return m.Counter.GetValue()
		}
		t.Errorf("no series %s%q", name, labels)
		return 0
	}
	for _, s := range []struct {
		name   string
		labels []string
	}{
		{"nfhelper_packets_total", nil},
		{"nfhelper_picked_up_connections_total", nil}, // the reference services are rr: the kernel schedules them
		{"nfhelper_rewritten_packets_total", nil},
		{"nfhelper_data_channels_opened_total", nil},
		{"nfhelper_refusals_total", []string{"reason", "bounce"}},
		{"nfhelper_verdict_duration_seconds", nil}, // its count
		{"nfhelper_real_server_connections_total", []string{"service", "ftp", "server", "10.0.0.11:21"}},
		{"nfhelper_real_server_connections_total", []string{"service", "ftp", "server", "10.0.0.12:21"}},
	} {
		if s.name == "nfhelper_refusals_total" && !refused {
			continue // no quirky server to bounce through
		}
		if v := value(s.name, s.labels...); v <= 0 {
			t.Errorf("%s%q = %v after sessions to %v, want > 0", s.name, s.labels, v, seen)
		}
	}
	if f := fams["nfhelper_verdict_duration_seconds"]; f.GetType() != dto.MetricType_HISTOGRAM {
		t.Errorf("verdict latency: %v, want a histogram", f.GetType())
	}
	// The standard process and Go runtime families come along.
	for _, name := range []string{"process_cpu_seconds_total", "process_open_fds", "go_goroutines"} {
		if fams[name] == nil {
			t.Errorf("no %s", name)
		}
	}
	if !strings.Contains(string(out), "# TYPE nfhelper_verdict_duration_seconds histogram") {
		t.Error("no verdict latency histogram in the text format")
	}
	// Not reachable from outside the router: the listener is on loopback.
	if _, _, err := execIn(t, 10*time.Second, harness.tp.Client, nil, "curl", "-sS", "--max-time", "2", "http://203.0.113.1:9330/metrics"); err == nil {
		t.Error("metrics endpoint reachable from the client")
	}
}
