package metrics

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nfhelper/nfhelper/health"
	"github.com/nfhelper/nfhelper/ipvs"
)

// TestServerUp: 0 while a server is down, 1 else, drained too; add-ons'
// learned servers have none.
func TestServerUp(t *testing.T) {
	f := newFixture(t)
	up := func() (a, b, dns float64) {
		s, _ := scrape(t, f.m.Handler())
		return s[lbl("nfhelper_real_server_up", "service", weirdName, "server", "10.0.0.11:21")],
			s[lbl("nfhelper_real_server_up", "service", weirdName, "server", "10.0.0.12:21")],
			s[lbl("nfhelper_real_server_up", "service", "dns", "server", "[fd00::53]:53")]
	}
	if a, b, dns := up(); a != 1 || b != 1 || dns != 1 {
		t.Errorf("all up: %v %v %v", a, b, dns)
	}
	f.e.SetStanding(f.rs[0], 1, true)
	f.e.SetStanding(f.rs[1], 0, false)
	if a, b, dns := up(); a != 0 || b != 1 || dns != 1 {
		t.Errorf("one down, one drained: %v %v %v", a, b, dns)
	}

	svc, err := ipvs.NewService("web", ap("198.51.100.10:80"), "rr", nil, []*ipvs.RealServer{{Addr: ap("10.0.0.11:80"), Weight: 1}})
	if err != nil {
		t.Fatal(err)
	}
	svc.Sorry = &ipvs.RealServer{Addr: ap("10.0.0.99:80")}
	e, err := ipvs.NewEngine([]*ipvs.Service{svc}, ipvs.Options{MarkMask: 0x00ff0000})
	if err != nil {
		t.Fatal(err)
	}
	s, fams := scrape(t, New(e, nil, nil).Handler())
	if v, ok := s[lbl("nfhelper_real_server_up", "service", "web", "server", "10.0.0.99:80")]; !ok || v != 1 {
		t.Errorf("sorry server up %v %v", v, ok)
	}
	if n := s[lbl("nfhelper_service_real_servers", "service", "web")]; n != 1 {
		t.Errorf("real servers %v: the sorry server counted", n)
	}
	for _, m := range fams["nfhelper_real_server_up"].Metric {
		for _, l := range m.Label {
			if l.GetValue() == "router-ftp" {
				t.Error("an add-on's server has an up series")
			}
		}
	}
}

// TestHealthMetrics: the monitor's last latency and failures by cause are
// read at scrape time; a none check has neither.
func TestHealthMetrics(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := netip.MustParseAddrPort(closed.Addr().String())
	closed.Close()
	good := netip.MustParseAddrPort(ln.Addr().String())

	mon := health.New(func(health.Change) {})
	spec := func(typ string, a netip.AddrPort) health.Spec {
		return health.Spec{Type: typ, Addr: a, Interval: 20 * time.Millisecond, Timeout: time.Second, Rise: 1, Fall: 1}
	}
	mon.Set([]health.Target{
		{Key: health.Key{Service: "web", Addr: good}, Spec: spec("tcp", good), Up: true},
		{Key: health.Key{Service: "web", Addr: refused}, Spec: spec("tcp", refused), Up: true},
		{Key: health.Key{Service: "plain", Addr: good}, Spec: spec("none", good), Up: true},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { mon.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	m := New(nil, nil, mon)
	var changes uint64 = 4
	m.StateChanges = func() uint64 { return changes }
	failures := lbl("nfhelper_health_check_failures_total", "service", "web", "server", refused.String(), "cause", "refused")
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, _ := scrape(t, m.Handler())
		if s[failures] >= 2 {
			if v, ok := s[lbl("nfhelper_health_check_latency_seconds", "service", "web", "server", good.String())]; !ok || v <= 0 || v > 1 {
				t.Errorf("latency %v %v", v, ok)
			}
			if _, ok := s[lbl("nfhelper_health_check_latency_seconds", "service", "plain", "server", good.String())]; ok {
				t.Error("a none check has a latency")
			}
			for k := range s {
				if k == lbl("nfhelper_health_check_failures_total", "service", "web", "server", good.String(), "cause", "refused") {
					t.Error("the good server failed")
				}
			}
			if s[lbl("nfhelper_real_server_state_changes_total")] != 4 {
				t.Errorf("state changes %v", s[lbl("nfhelper_real_server_state_changes_total")])
			}
			reg := prometheus.NewPedanticRegistry()
			if err := reg.Register(collector{m}); err != nil {
				t.Fatal(err)
			}
			if _, err := reg.Gather(); err != nil {
				t.Fatal(err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no refused failures counted: %v", s[failures])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
