//go:build integration

package integration

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMetrics scrapes the daemon's Prometheus endpoint on the router's
// loopback after the FTP tests: the counters they drove are there and move.
func TestMetrics(t *testing.T) {
	needDaemon(t)
	out, stderr, err := execIn(t, 10*time.Second, harness.tp.Router, nil, "curl", "-sS", "--max-time", "5", "http://127.0.0.1:9330/metrics")
	if err != nil {
		t.Fatalf("scrape: %v\n%s", err, stderr)
	}
	text := string(out)
	value := func(series string) float64 {
		t.Helper()
		m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(text)
		if m == nil {
			t.Errorf("no series %s", series)
			return 0
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		return v
	}
	for _, series := range []string{
		"nfhelper_packets_total", "nfhelper_scheduled_connections_total", "nfhelper_rewritten_packets_total",
		"nfhelper_data_channels_opened_total", `nfhelper_refusals_total{reason="bounce"}`, "nfhelper_verdict_duration_seconds_count",
		`nfhelper_real_server_connections_total{service="ftp",server="10.0.0.11:21"}`,
	} {
		if v := value(series); v <= 0 {
			t.Errorf("%s = %v after the FTP tests, want > 0", series, v)
		}
	}
	if !strings.Contains(text, "# TYPE nfhelper_verdict_duration_seconds histogram") {
		t.Error("no verdict latency histogram")
	}
	// Not reachable from outside the router: the listener is on loopback.
	if _, _, err := execIn(t, 10*time.Second, harness.tp.Client, nil, "curl", "-sS", "--max-time", "2", "http://203.0.113.1:9330/metrics"); err == nil {
		t.Error("metrics endpoint reachable from the client")
	}
}
