package metrics

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	_ "github.com/nfhelper/nfhelper/helpers/ftp"
	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/nfq"
	"github.com/nfhelper/nfhelper/nfq/nfqtest"
	"github.com/nfhelper/nfhelper/nfq/packet"
)

var ap = netip.MustParseAddrPort

// weirdName needs every label escape.
const weirdName = "ftp \"main\"\\prod\nline2"

func syn(src, dst netip.AddrPort) []byte {
	return nfqtest.Build(nfqtest.Segment{Src: src, Dst: dst, Seq: 100, Flags: packet.FlagSYN})
}

// udp builds an IPv4 UDP datagram.
func udp(src, dst netip.AddrPort) []byte {
	b := make([]byte, 28)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], 28)
	b[8], b[9] = 64, packet.ProtocolUDP
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	packet.IPv4(b).SetChecksum(packet.IPv4(b).CalculateChecksum())
	binary.BigEndian.PutUint16(b[20:], src.Port())
	binary.BigEndian.PutUint16(b[22:], dst.Port())
	binary.BigEndian.PutUint16(b[24:], 8)
	return b
}

type fixture struct {
	e      *ipvs.Engine
	q      []*nfq.Queue
	m      *Metrics
	tcp    *ipvs.Service
	dns    *ipvs.Service
	rs     []*ipvs.RealServer // tcp's
	dnsRS  *ipvs.RealServer
	addOn  *ipvs.Service
	tcpVIP netip.AddrPort
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{tcpVIP: ap("198.51.100.10:21")}
	h, ok := ipvs.LookupHelper("ftp")
	if !ok {
		t.Fatal("no ftp helper")
	}
	f.rs = []*ipvs.RealServer{{Addr: ap("10.0.0.11:21"), Weight: 1}, {Addr: ap("10.0.0.12:21"), Weight: 3}}
	var err error
	if f.tcp, err = ipvs.NewService(weirdName, f.tcpVIP, "rr", h, f.rs); err != nil {
		t.Fatal(err)
	}
	f.dnsRS = &ipvs.RealServer{Addr: ap("[fd00::53]:53"), Weight: 2}
	if f.dns, err = ipvs.NewService("dns", ap("198.51.100.10:53"), "rr", nil, []*ipvs.RealServer{f.dnsRS}); err != nil {
		t.Fatal(err)
	}
	f.dns.UDP = true
	f.addOn = ipvs.NewAddOn("router-ftp", ap("198.51.100.20:21"), h, 0)
	if f.e, err = ipvs.NewEngine([]*ipvs.Service{f.tcp, f.dns, f.addOn}, ipvs.Options{MarkMask: 0x00ff0000}); err != nil {
		t.Fatal(err)
	}
	f.q = []*nfq.Queue{{Num: 100}, {Num: 101}, {Num: 103}}
	f.m = New(f.e, f.q, nil)
	return f
}

// scrape GETs the metrics in the text format and parses them.
func scrape(t testing.TB, h http.Handler) (map[string]float64, map[string]*dto.MetricFamily) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d", rec.Code)
	}
	if f := expfmt.ResponseFormat(rec.Header()); f.FormatType() != expfmt.TypeTextPlain {
		t.Fatalf("Content-Type %q", rec.Header().Get("Content-Type"))
	}
	if n, err := strconv.Atoi(rec.Header().Get("Content-Length")); err != nil || n != rec.Body.Len() {
		t.Errorf("Content-Length %q for %d bytes", rec.Header().Get("Content-Length"), rec.Body.Len())
	}
	series, fams, err := parseExposition(rec.Body.String())
	if err != nil {
		t.Fatalf("%v\n%s", err, rec.Body.String())
	}
	return series, fams
}

// parseExposition parses the text format with names Prometheus accepts
// without quoting, and flattens counters, gauges and histograms into
// samples by series key (see lbl). It fails where the collector could err:
// a series twice, a negative counter, a histogram whose buckets do not rise
// to its count.
func parseExposition(text string) (map[string]float64, map[string]*dto.MetricFamily, error) {
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		return nil, nil, err
	}
	series := map[string]float64{}
	add := func(name string, labels []*dto.LabelPair, v float64, pairs ...string) error {
		var all []string
		for _, l := range labels {
			all = append(all, l.GetName(), l.GetValue())
		}
		k := lbl(name, append(all, pairs...)...)
		if _, dup := series[k]; dup {
			return fmt.Errorf("series %s twice", k)
		}
		series[k] = v
		return nil
	}
	for name, f := range fams {
		for _, m := range f.Metric {
			var err error
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				if v := m.Counter.GetValue(); v < 0 || math.IsNaN(v) {
					return nil, nil, fmt.Errorf("%s: counter %v", name, v)
				}
				err = add(name, m.Label, m.Counter.GetValue())
			case dto.MetricType_GAUGE:
				err = add(name, m.Label, m.Gauge.GetValue())
			case dto.MetricType_HISTOGRAM:
				err = addHistogram(name, m, add)
			}
			if err != nil {
				return nil, nil, err
			}
		}
	}
	return series, fams, nil
}

func addHistogram(name string, m *dto.Metric, add func(string, []*dto.LabelPair, float64, ...string) error) error {
	h := m.Histogram
	var last uint64
	inf := false
	for _, b := range h.Bucket {
		if b.GetCumulativeCount() < last {
			return fmt.Errorf("%s: buckets not cumulative", name)
		}
		last = b.GetCumulativeCount()
		le := strconv.FormatFloat(b.GetUpperBound(), 'g', -1, 64)
		if math.IsInf(b.GetUpperBound(), 1) {
			le, inf = "+Inf", true
		}
		if err := add(name+"_bucket", m.Label, float64(last), "le", le); err != nil {
			return err
		}
	}
	if last > h.GetSampleCount() || (inf && last != h.GetSampleCount()) {
		return fmt.Errorf("%s: buckets rise to %d, count %d", name, last, h.GetSampleCount())
	}
	if !inf {
		if err := add(name+"_bucket", m.Label, float64(h.GetSampleCount()), "le", "+Inf"); err != nil {
			return err
		}
	}
	if err := add(name+"_sum", m.Label, h.GetSampleSum()); err != nil {
		return err
	}
	return add(name+"_count", m.Label, float64(h.GetSampleCount()))
}

// lbl names a series: name{a="x",b="y"} from name and label pairs, the
// labels sorted.
func lbl(name string, pairs ...string) string {
	var ls []string
	for i := 0; i+1 < len(pairs); i += 2 {
		ls = append(ls, fmt.Sprintf("%s=%q", pairs[i], pairs[i+1]))
	}
	sort.Strings(ls)
	if len(ls) == 0 {
		return name
	}
	return name + "{" + strings.Join(ls, ",") + "}"
}

// addToStats adds distinct amounts to every counter of s.
func addToStats(s *ipvs.Stats) {
	n := uint64(1000)
	v := reflect.ValueOf(s).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		if f.Kind() != reflect.Array {
			f.Addr().Interface().(*atomic.Uint64).Add(n)
			n++
			continue
		}
		for j := range f.Len() {
			f.Index(j).Addr().Interface().(*atomic.Uint64).Add(n)
			n++
		}
	}
}

func TestHandlerValues(t *testing.T) {
	f := newFixture(t)
	w := f.e.NewWorker()
	for i := range 3 {
		w.Process(syn(netip.AddrPortFrom(netip.MustParseAddr("203.0.113.2"), uint16(40000+i)), f.tcpVIP), 0)
	}
	w.Process(udp(ap("203.0.113.2:5353"), ap("198.51.100.10:53")), 0)

	addToStats(&f.e.Stats)
	f.q[0].ReadErrors.Add(5)
	f.q[2].ReadErrors.Add(6)
	f.q[1].VerdictErrors.Add(2)
	f.q[2].Malformed.Add(1)
	f.rs[0].Packets.Add(11)
	f.rs[0].Bytes.Add(12345)
	f.rs[1].Active.Add(1) // as if one became established
	f.rs[1].Inactive.Add(-1)

	f.m.CountVerdict(100, ipvs.Verdict{})
	f.m.CountVerdict(100, ipvs.Verdict{SetMark: true})
	f.m.CountVerdict(100, ipvs.Verdict{SetMark: true, Packet: []byte{1}})
	f.m.CountVerdict(101, ipvs.Verdict{Drop: true})
	f.m.CountVerdict(101, ipvs.Verdict{Drop: true, Packet: []byte{1}})
	f.m.CountVerdict(102, ipvs.Verdict{}) // a gap in the range: not a queue
	f.m.CountVerdict(99, ipvs.Verdict{})  // out of range
	f.m.CountVerdict(200, ipvs.Verdict{})

	for _, d := range []time.Duration{-time.Second, 0, 10 * time.Microsecond, 10*time.Microsecond + 1, 3 * time.Millisecond, time.Second} {
		f.m.ObserveVerdict(d)
	}

	s, fams := scrape(t, f.m.Handler())
	want := map[string]float64{
		lbl("nfhelper_queue_packets_total", "queue", "100"):                 3,
		lbl("nfhelper_queue_packets_total", "queue", "101"):                 2,
		lbl("nfhelper_queue_packets_total", "queue", "103"):                 0,
		lbl("nfhelper_verdicts_total", "queue", "100", "verdict", "accept"): 1,
		lbl("nfhelper_verdicts_total", "queue", "100", "verdict", "mark"):   1,
		lbl("nfhelper_verdicts_total", "queue", "100", "verdict", "modify"): 1,
		lbl("nfhelper_verdicts_total", "queue", "100", "verdict", "drop"):   0,
		lbl("nfhelper_verdicts_total", "queue", "101", "verdict", "drop"):   2,
		lbl("nfhelper_queue_read_errors_total", "queue", "100"):             5,
		lbl("nfhelper_queue_read_errors_total", "queue", "101"):             0,
		lbl("nfhelper_queue_read_errors_total", "queue", "103"):             6,
		lbl("nfhelper_queue_verdict_errors_total", "queue", "101"):          2,
		lbl("nfhelper_queue_verdict_errors_total", "queue", "100"):          0,
		lbl("nfhelper_queue_malformed_total", "queue", "103"):               1,
		lbl("nfhelper_connections", "proto", "tcp"):                         3,
		lbl("nfhelper_connections", "proto", "udp"):                         1,
		lbl("nfhelper_verdict_duration_seconds_bucket", "le", "1e-05"):      3,
		lbl("nfhelper_verdict_duration_seconds_bucket", "le", "2.5e-05"):    4,
		lbl("nfhelper_verdict_duration_seconds_bucket", "le", "0.0025"):     4,
		lbl("nfhelper_verdict_duration_seconds_bucket", "le", "0.005"):      5,
		lbl("nfhelper_verdict_duration_seconds_bucket", "le", "0.1"):        5,
		lbl("nfhelper_verdict_duration_seconds_bucket", "le", "+Inf"):       6,
		lbl("nfhelper_verdict_duration_seconds_count"):                      6,
		lbl("nfhelper_verdict_duration_seconds_sum"):                        1.003020001,
		lbl("nfhelper_service_info", "service", weirdName, "vip", "198.51.100.10:21", "proto", "tcp", "mode", "balance", "scheduler", "rr", "helper", "ftp"): 1,
		lbl("nfhelper_service_info", "service", "dns", "vip", "198.51.100.10:53", "proto", "udp", "mode", "balance", "scheduler", "rr", "helper", ""):        1,
		lbl("nfhelper_service_info", "service", "router-ftp", "vip", "198.51.100.20:21", "proto", "tcp", "mode", "addon", "scheduler", "", "helper", "ftp"):  1,
		lbl("nfhelper_service_real_servers", "service", weirdName):                                       2,
		lbl("nfhelper_service_real_servers", "service", "router-ftp"):                                    0,
		lbl("nfhelper_service_active_connections", "service", weirdName):                                 1,
		lbl("nfhelper_service_inactive_connections", "service", weirdName):                               2,
		lbl("nfhelper_service_inactive_connections", "service", "dns"):                                   1,
		lbl("nfhelper_real_server_connections_total", "service", weirdName, "server", "10.0.0.11:21"):    2,
		lbl("nfhelper_real_server_connections_total", "service", weirdName, "server", "10.0.0.12:21"):    1,
		lbl("nfhelper_real_server_connections_total", "service", "dns", "server", "[fd00::53]:53"):       1,
		lbl("nfhelper_real_server_active_connections", "service", weirdName, "server", "10.0.0.12:21"):   1,
		lbl("nfhelper_real_server_inactive_connections", "service", weirdName, "server", "10.0.0.11:21"): 2,
		lbl("nfhelper_real_server_inactive_connections", "service", weirdName, "server", "10.0.0.12:21"): 0,
		lbl("nfhelper_real_server_packets_total", "service", weirdName, "server", "10.0.0.11:21"):        11,
		lbl("nfhelper_real_server_bytes_total", "service", weirdName, "server", "10.0.0.11:21"):          12345,
		lbl("nfhelper_real_server_weight", "service", weirdName, "server", "10.0.0.11:21"):               1,
		lbl("nfhelper_real_server_weight", "service", weirdName, "server", "10.0.0.12:21"):               3,
		lbl("nfhelper_real_server_weight", "service", "dns", "server", "[fd00::53]:53"):                  2,
	}
	for _, c := range ipvs.Counters() {
		k := lbl(c.Metric)
		if c.LabelName != "" {
			k = lbl(c.Metric, c.LabelName, c.LabelValue)
		}
		want[k] = float64(c.Load(&f.e.Stats))
	}
	// Spot checks that the registry's reading lands where it should, the
	// worker's counting on top of addToStats's.
	st := &f.e.Stats
	for k, v := range map[string]uint64{
		lbl("nfhelper_packets_total"):                       st.Packets.Load(),
		lbl("nfhelper_worker_panics_total"):                 st.Panics.Load(),
		lbl("nfhelper_data_channels_backlogged_total"):      st.Backlogged.Load(),
		lbl("nfhelper_refusals_total", "reason", "no_port"): st.Refused[ipvs.RefuseNoPort].Load(),
		lbl("nfhelper_dropped_out_of_order_total"):          st.Dropped.Load(),
	} {
		if want[k] != float64(v) || v < 1000 {
			t.Errorf("%s: registry reads %v, Stats has %d", k, want[k], v)
		}
	}
	if st.Packets.Load() != 1000+4 {
		t.Errorf("packets %d: the worker's 4 on top of addToStats's 1000", st.Packets.Load())
	}
	for k, v := range want {
		got, ok := s[k]
		if !ok {
			t.Errorf("missing %s", k)
			continue
		}
		if diff := got - v; diff > 1e-12 || diff < -1e-12 {
			t.Errorf("%s = %v, want %v", k, got, v)
		}
	}
	if _, ok := s[lbl("nfhelper_queue_packets_total", "queue", "102")]; ok {
		t.Error("queue 102 was not given to New but is exported")
	}
	if n := len(fams["nfhelper_refusals_total"].Metric); n != len(f.e.Stats.Refused) {
		t.Errorf("%d refusal reasons, want %d", n, len(f.e.Stats.Refused))
	}
	// Every family this package writes has a HELP text and a counter's
	// name ends in _total; the standard ones are there too.
	for name, fam := range fams {
		if !strings.HasPrefix(name, "nfhelper_") && !strings.HasPrefix(name, "process_") && !strings.HasPrefix(name, "go_") {
			t.Errorf("%s: not nfhelper_, process_ or go_", name)
		}
		if fam.GetHelp() == "" || (fam.GetType() == dto.MetricType_COUNTER && !strings.HasSuffix(name, "_total")) {
			t.Errorf("%s: %s, help %q", name, fam.GetType(), fam.GetHelp())
		}
	}
	for _, name := range []string{"process_cpu_seconds_total", "process_resident_memory_bytes", "go_goroutines", "go_memstats_heap_alloc_bytes"} {
		if fams[name] == nil {
			t.Errorf("no %s", name)
		}
	}
}

func TestHandlerMethods(t *testing.T) {
	m := New(nil, nil, nil)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("HEAD", "/", nil))
	if rec.Code != http.StatusOK || rec.Body.Len() != 0 || rec.Header().Get("Content-Length") == "" {
		t.Errorf("HEAD: %d, %d bytes, Content-Length %q", rec.Code, rec.Body.Len(), rec.Header().Get("Content-Length"))
	}
	rec = httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("POST", "/", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", rec.Code)
	}
	// Without an engine or queues only the histogram remains, still valid.
	s, _ := scrape(t, m.Handler())
	if s[lbl("nfhelper_verdict_duration_seconds_count")] != 0 {
		t.Error("count not 0")
	}
}

// TestCollectorPedantic: the collector collects only what it describes,
// once each (the pedantic registry checks every metric against Describe).
func TestCollectorPedantic(t *testing.T) {
	f := newFixture(t)
	f.e.Stats.Refused[ipvs.RefuseBounce].Add(1)
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(collector{f.m}); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
}

// TestNotUTF8: a service name that is no UTF-8 cannot be a label value;
// its series are left out and the rest is served.
func TestNotUTF8(t *testing.T) {
	svc, err := ipvs.NewService("bad\xff", ap("198.51.100.30:80"), "rr", nil, []*ipvs.RealServer{{Addr: ap("10.0.0.30:80"), Weight: 1}})
	if err != nil {
		t.Fatal(err)
	}
	e, err := ipvs.NewEngine([]*ipvs.Service{svc}, ipvs.Options{MarkMask: 0x00ff0000})
	if err != nil {
		t.Fatal(err)
	}
	s, fams := scrape(t, New(e, nil, nil).Handler())
	if _, ok := s[lbl("nfhelper_connections", "proto", "tcp")]; !ok || fams["nfhelper_service_info"] != nil {
		t.Errorf("series %v", s)
	}
}

func TestObserveVerdictAllocs(t *testing.T) {
	f := newFixture(t)
	v := ipvs.Verdict{SetMark: true, Packet: []byte{1}}
	n := testing.AllocsPerRun(1000, func() {
		f.m.ObserveVerdict(42 * time.Microsecond)
		f.m.CountVerdict(101, v)
	})
	if n != 0 {
		t.Errorf("%v allocations per packet", n)
	}
}

// TestConcurrent runs observers and scrapers at once (meant for -race):
// every scrape must be valid, and nothing may be lost.
func TestConcurrent(t *testing.T) {
	f := newFixture(t)
	const workers, per = 8, 5000
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			for j := range per {
				f.m.ObserveVerdict(time.Duration(j%200) * time.Microsecond)
				f.m.CountVerdict(f.q[i%len(f.q)].Num, ipvs.Verdict{Drop: j%2 == 0})
				f.e.Stats.Packets.Add(1)
			}
		})
	}
	stop := make(chan struct{})
	var scrapes sync.WaitGroup
	scrapes.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			scrape(t, f.m.Handler())
		}
	})
	wg.Wait()
	close(stop)
	scrapes.Wait()

	s, _ := scrape(t, f.m.Handler())
	if got := s[lbl("nfhelper_verdict_duration_seconds_count")]; got != workers*per {
		t.Errorf("count %v, want %v", got, workers*per)
	}
	var sum time.Duration
	for j := range per {
		sum += time.Duration(j%200) * time.Microsecond
	}
	if got, want := s[lbl("nfhelper_verdict_duration_seconds_sum")], (workers * sum).Seconds(); got-want > 1e-9 || want-got > 1e-9 {
		t.Errorf("sum %v, want %v", got, want)
	}
	var total float64
	for _, q := range f.q {
		total += s[lbl("nfhelper_queue_packets_total", "queue", strconv.Itoa(int(q.Num)))]
	}
	if total != workers*per {
		t.Errorf("queue packets %v, want %v", total, workers*per)
	}
}

// TestScrapeDuringReload scrapes while a reload changes weights and
// servers (meant for -race: weights are written under the service's lock).
// One reload per scrape: with two or more during one scrape, the second
// commit writes weights under a newer service's lock than the one the
// scrape holds (an ipvs matter; see the report).
func TestScrapeDuringReload(t *testing.T) {
	f := newFixture(t)
	for i := range 50 {
		var wg sync.WaitGroup
		wg.Go(func() {
			s, err := ipvs.NewService(weirdName, f.tcpVIP, "rr", nil, []*ipvs.RealServer{{Addr: f.rs[i%2].Addr, Weight: i}})
			if err != nil {
				t.Error(err)
				return
			}
			// Fresh services, as a reload decodes them: Prepare writes to
			// the ones it is given.
			dns, err := ipvs.NewService("dns", f.dns.VIP, "rr", nil, []*ipvs.RealServer{{Addr: f.dnsRS.Addr, Weight: 2}})
			if err != nil {
				t.Error(err)
				return
			}
			dns.UDP = true
			addOn := ipvs.NewAddOn("router-ftp", f.addOn.VIP, nil, 0)
			commit, err := f.e.Prepare([]*ipvs.Service{s, dns, addOn})
			if err != nil {
				t.Error(err)
				return
			}
			commit()
		})
		scrape(t, f.m.Handler())
		wg.Wait()
	}
	s, _ := scrape(t, f.m.Handler())
	if w := s[lbl("nfhelper_real_server_weight", "service", weirdName, "server", f.rs[1].Addr.String())]; w != 49 {
		t.Errorf("weight after reloads %v, want 49", w)
	}
}

func TestListenRefusesRemote(t *testing.T) {
	h := New(nil, nil, nil).Handler()
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:9100", "[::ffff:10.0.0.1]:0"} {
		err := Listen(context.Background(), addr, h, false)
		if !errors.Is(err, ErrNotLoopback) {
			t.Errorf("%s: %v, want ErrNotLoopback", addr, err)
		}
	}
	if err := Listen(context.Background(), "no-port", h, false); err == nil || errors.Is(err, ErrNotLoopback) {
		t.Errorf("no port: %v", err)
	}
}

func TestListenAllowRemote(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- listen(ctx, "0.0.0.0:0", New(nil, nil, nil).Handler(), true, func(a net.Addr) { ready <- a })
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("allowed 0.0.0.0 refused: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestListenServes(t *testing.T) {
	f := newFixture(t)
	f.m.ObserveVerdict(time.Millisecond)
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0", "localhost:0"} {
		t.Run(addr, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ready := make(chan net.Addr, 1)
			done := make(chan error, 1)
			go func() { done <- listen(ctx, addr, f.m.Handler(), false, func(a net.Addr) { ready <- a }) }()
			var bound net.Addr
			select {
			case bound = <-ready:
			case err := <-done:
				if strings.HasPrefix(addr, "[::1]") {
					t.Skipf("no IPv6 loopback: %v", err)
				}
				t.Fatal(err)
			}
			resp, err := http.Get("http://" + bound.String() + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("%d %v", resp.StatusCode, err)
			}
			s, _, err := parseExposition(string(body))
			if err != nil {
				t.Fatal(err)
			}
			if s[lbl("nfhelper_verdict_duration_seconds_count")] != 1 {
				t.Error("histogram not served")
			}
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("after cancel: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Listen did not return after cancel")
			}
		})
	}
}

func BenchmarkObserveVerdict(b *testing.B) {
	m := New(nil, []*nfq.Queue{{Num: 100}}, nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		d := time.Duration(0)
		for pb.Next() {
			m.ObserveVerdict(d)
			m.CountVerdict(100, ipvs.Verdict{SetMark: true})
			d = (d + 7*time.Microsecond) % (200 * time.Millisecond)
		}
	})
}

func BenchmarkScrape(b *testing.B) {
	f := newFixture(b)
	h := f.m.Handler()
	req := httptest.NewRequest("GET", "/metrics", nil)
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatal(rec.Code)
		}
	}
}
