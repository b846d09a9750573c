package ctl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/ipvs"
)

// fakeControl keeps standings as the daemon would, and applies them to
// the engine.
type fakeControl struct {
	mu        sync.Mutex
	e         *ipvs.Engine
	standings map[string]map[netip.AddrPort]*Standing
	fail      error // SetServer's error, if set
}

func newFakeControl(e *ipvs.Engine) *fakeControl {
	since := time.Date(2026, 12, 7, 8, 0, 0, 0, time.UTC)
	f := &fakeControl{e: e, standings: map[string]map[netip.AddrPort]*Standing{
		"ftp": {
			rs1: {Check: "ftp", Health: "up", Since: since, ConfigWeight: 1},
			rs2: {Check: "ftp", Health: "down", Since: since, LastFailure: since, LastCause: "timeout", ConfigWeight: 2},
		},
	}}
	f.apply("ftp", rs2)
	return f
}

// apply sets the server's effective standing in the engine.
func (f *fakeControl) apply(service string, addr netip.AddrPort) {
	st := f.standings[service][addr]
	down, weight := st.Health == "down", st.ConfigWeight
	if o := st.Override; o != nil {
		down = down || o.Down
		switch {
		case o.Drained:
			weight = 0
		case o.Weight != nil:
			weight = *o.Weight
		}
	}
	for _, svc := range f.e.Services() {
		for _, rs := range svc.Servers {
			if svc.Name == service && rs.Addr == addr {
				f.e.SetStanding(rs, weight, down)
			}
		}
	}
}

func (f *fakeControl) SetServer(_ context.Context, req ServerRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	svc, ok := f.standings[req.Service]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownService, req.Service)
	}
	st, ok := svc[req.Address]
	if !ok {
		return fmt.Errorf("%w %s in service %q", ErrUnknownServer, req.Address, req.Service)
	}
	o := Override{}
	if st.Override != nil {
		o = *st.Override
	}
	switch req.Op {
	case OpWeight:
		w := req.Weight
		o.Weight = &w
	case OpDrain:
		o.Drained = true
	case OpUndrain:
		o.Drained = false
	case OpDown:
		o.Down = true
	case OpUp:
		o.Down = false
	}
	st.Override = &o
	f.apply(req.Service, req.Address)
	return nil
}

func (f *fakeControl) Standing(service string, addr netip.AddrPort) (Standing, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.standings[service][addr]
	if !ok {
		return Standing{}, false
	}
	return *st, true
}

func TestSetServer(t *testing.T) {
	s, e := testServer(t)
	fc := newFakeControl(e)
	s.Servers = fc
	c := NewClient(serve(t, s), 5*time.Second)
	ctx := context.Background()

	svcs, err := c.Services(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ftp := svcs.Services[0]
	if a := ftp.Servers[0]; a.State != "up" || a.Down || a.Health != "up" || a.Check != "ftp" || a.ConfigWeight == nil || *a.ConfigWeight != 1 || a.Override != nil {
		t.Errorf("rs1 %+v", a)
	}
	if b := ftp.Servers[1]; b.State != "down" || !b.Down || b.Health != "down" || b.LastCause != "timeout" || b.LastFailure.IsZero() {
		t.Errorf("rs2 %+v", b)
	}
	// Not configured in the fake: state from the engine alone.
	if u := svcs.Services[1].Servers[0]; u.State != "up" || u.Health != "" || u.ConfigWeight != nil {
		t.Errorf("udp server %+v", u)
	}

	rs, err := c.SetServer(ctx, ServerRequest{Service: "ftp", Address: rs1, Op: OpWeight, Weight: 7})
	if err != nil || rs.Address != rs1 || rs.Weight != 7 || rs.State != "up" || rs.Override == nil || rs.Override.Weight == nil || *rs.Override.Weight != 7 {
		t.Fatalf("weight 7: %+v, %v", rs, err)
	}
	rs, err = c.SetServer(ctx, ServerRequest{Service: "ftp", Address: rs1, Op: OpDrain})
	if err != nil || rs.Down || rs.Weight != 0 || rs.State != "up" || !rs.Override.Drained {
		t.Fatalf("drain: %+v, %v", rs, err)
	}
	rs, err = c.SetServer(ctx, ServerRequest{Service: "ftp", Address: rs1, Op: OpUndrain})
	if err != nil || rs.Weight != 7 || rs.State != "up" {
		t.Fatalf("undrain: %+v, %v", rs, err)
	}
	rs, err = c.SetServer(ctx, ServerRequest{Service: "ftp", Address: rs1, Op: OpDown})
	if err != nil || !rs.Down || rs.State != "down" || !rs.Override.Down || *rs.Override.Weight != 7 {
		t.Fatalf("down: %+v, %v", rs, err)
	}

	for _, tc := range []struct {
		req  ServerRequest
		want error
		msg  string
	}{
		{ServerRequest{Service: "nope", Address: rs1, Op: OpDrain}, ErrUnknownService, `nfhelperd: unknown service "nope"`},
		{ServerRequest{Service: "ftp", Address: netip.MustParseAddrPort("10.0.0.99:21"), Op: OpDrain}, ErrUnknownServer,
			`nfhelperd: unknown real server 10.0.0.99:21 in service "ftp"`},
		{ServerRequest{Service: "ftp", Address: rs1, Op: "explode"}, ErrBadRequest,
			`nfhelperd: bad request: unknown operation "explode" (have weight, drain, undrain, down, up)`},
		{ServerRequest{Service: "ftp", Address: rs1, Op: OpWeight, Weight: 70000}, ErrBadRequest,
			"nfhelperd: bad request: weight 70000 out of 0..65535"},
		{ServerRequest{Service: "ftp", Address: rs1, Op: OpDrain, Weight: 3}, ErrBadRequest, "nfhelperd: bad request: drain takes no weight"},
		{ServerRequest{Address: rs1, Op: OpDrain}, ErrBadRequest, "nfhelperd: bad request: no service"},
		{ServerRequest{Service: "ftp", Op: OpDrain}, ErrBadRequest, "nfhelperd: bad request: no address:port"},
		{ServerRequest{Service: "ftp", Address: netip.MustParseAddrPort("10.0.0.11:0"), Op: OpDrain}, ErrBadRequest, "nfhelperd: bad request: 10.0.0.11:0: port 0"},
	} {
		_, err := c.SetServer(ctx, tc.req)
		if !errors.Is(err, tc.want) || err.Error() != tc.msg {
			t.Errorf("%+v: %v; want %q wrapping %v", tc.req, err, tc.msg, tc.want)
		}
	}

	// A daemon-side failure is a plain error (status 500).
	fc.fail = errors.New("ruleset update failed")
	_, err = c.SetServer(ctx, ServerRequest{Service: "ftp", Address: rs1, Op: OpUp})
	var re *ReplyError
	if !errors.As(err, &re) || re.Err != nil || err.Error() != "nfhelperd: ruleset update failed" {
		t.Errorf("failure: %v", err)
	}

	// Malformed bodies.
	for _, body := range []string{"", "{", `{"service":"ftp","address":"10.0.0.11:21","op":"up","extra":1}`, `{"address":"nope"}`} {
		var v any
		err := c.do(ctx, "POST", PathServer, []byte(body), &v)
		if !errors.Is(err, ErrBadRequest) {
			t.Errorf("body %q: %v, want ErrBadRequest", body, err)
		}
	}
	var v any
	if err := c.Get(ctx, PathServer, &v); err == nil || !strings.Contains(err.Error(), "no such request: GET /v1/server") {
		t.Errorf("GET: %v", err)
	}
}

func TestSetServerNoControl(t *testing.T) {
	s, _ := testServer(t)
	c := NewClient(serve(t, s), 5*time.Second)
	_, err := c.SetServer(context.Background(), ServerRequest{Service: "ftp", Address: rs1, Op: OpDrain})
	if err == nil || err.Error() != "nfhelperd: runtime control of real servers is not available" {
		t.Errorf("%v", err)
	}
	// Without control, the state comes from the engine alone.
	svcs, err := c.Services(context.Background())
	if err != nil || svcs.Services[0].Servers[0].State != "up" || svcs.Services[0].Servers[0].Health != "" {
		t.Errorf("%+v, %v", svcs, err)
	}
}

func TestFormatStanding(t *testing.T) {
	if a, b, c := Count(1, "connection"), Count(int64(0), "connection"), Count(2, "flow"); a != "1 connection" || b != "0 connections" || c != "2 flows" {
		t.Errorf("Count: %q %q %q", a, b, c)
	}
	at := time.Date(2026, 12, 7, 8, 0, 0, 0, time.UTC)
	one, seven := 1, 7
	var b bytes.Buffer
	WriteServices(&b, &Services{Services: []Service{{Name: "ftp", Protocol: "TCP", VIP: vip, Scheduler: "rr", Servers: []RealServer{
		{Address: rs1, Weight: 1, State: "up", Health: "up", Check: "ftp", Since: at, ConfigWeight: &one},
		{Address: rs2, Weight: 0, Active: 2, State: "down", Down: true, Health: "down", Check: "tcp", Since: at, LastFailure: at.Add(-time.Second),
			LastCause: "refused", ConfigWeight: &one, Override: &Override{Weight: &seven, Drained: true, Down: true}},
		{Address: netip.MustParseAddrPort("10.0.0.99:21"), Weight: 1, State: "up", Sorry: true},
	}}}})
	want := `Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port         Weight ActiveConn InActConn Conns     Packets     Bytes
     State (down: no new connections); health (check) since; last failure (cause); overrides
TCP  198.51.100.10:21 rr  # ftp
  -> 10.0.0.11:21               1      0          0         0         0           0
     state up; health up (ftp) since 2026-12-07T08:00:00Z
  -> 10.0.0.12:21               0      2          0         0         0           0
     state down; health down (tcp) since 2026-12-07T08:00:00Z; last failure 2026-12-07T07:59:59Z (refused); override weight 7, drained, down (file weight 1)
  -> 10.0.0.99:21               1      0          0         0         0           0
     sorry server; state up
`
	if got := b.String(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	b.Reset()
	WriteServer(&b, "ftp", &RealServer{Address: rs1, Weight: 0, Active: 2, Inactive: 1, State: "up", Health: "up", Check: "none",
		Override: &Override{Drained: true}, ConfigWeight: &one})
	want = "ftp 10.0.0.11:21: weight 0, 3 connections (2 active, 1 inactive)\n  state up; health up (none); override drained (file weight 1)\n"
	if got := b.String(); got != want {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

// TestSorryServer: the sorry server is listed last, up while not down
// whatever its weight, and is no target of runtime control.
func TestSorryServer(t *testing.T) {
	sorry := netip.MustParseAddrPort("10.0.0.99:21")
	svc, err := ipvs.NewService("ftp", vip, "rr", nil, []*ipvs.RealServer{{Addr: rs1, Weight: 1}})
	if err != nil {
		t.Fatal(err)
	}
	svc.Sorry = &ipvs.RealServer{Addr: sorry}
	e, err := ipvs.NewEngine([]*ipvs.Service{svc}, ipvs.Options{MarkMask: 0x00ff0000})
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Engine: e}
	got := s.Services(context.Background()).Services[0].Servers
	if len(got) != 2 || got[1].Address != sorry || !got[1].Sorry || got[1].State != "up" || got[0].Sorry {
		t.Fatalf("servers %+v", got)
	}
	if _, err := s.server(context.Background(), "ftp", sorry); !errors.Is(err, ErrUnknownServer) {
		t.Errorf("sorry server as a target: %v", err)
	}
	e.SetStanding(svc.Sorry, 0, true)
	if got := s.Services(context.Background()).Services[0].Servers[1]; got.State != "down" || !got.Down {
		t.Errorf("down sorry server %+v", got)
	}
}

// TestServerConns: /v1/conns with service and server answers that
// server's connections only. (Clients in four /24s: the service persists
// by /24.)
func TestServerConns(t *testing.T) {
	s, e := testServer(t)
	w := e.NewWorker()
	for i := range 4 {
		if v := w.Process(syn(netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, byte(2 + i), 7}), 40000), vip), 0); !v.SetMark {
			t.Fatalf("SYN not scheduled: %+v", v)
		}
	}
	c := NewClient(serve(t, s), 5*time.Second)
	ctx := context.Background()
	all, err := c.Conns(ctx)
	if err != nil || len(all.Conns) != 4 {
		t.Fatalf("all: %+v %v", all, err)
	}
	n := map[netip.AddrPort]int{}
	for _, x := range all.Conns {
		n[x.Server]++
	}
	for _, rs := range []netip.AddrPort{rs1, rs2} {
		cs, err := c.ServerConns(ctx, "ftp", rs)
		if err != nil || len(cs.Conns) != n[rs] || n[rs] == 0 {
			t.Errorf("%s: %d conns, want %d (%v)", rs, len(cs.Conns), n[rs], err)
		}
		for _, x := range cs.Conns {
			if x.Server != rs || x.Service != "ftp" || x.Ended() {
				t.Errorf("%s: %+v", rs, x)
			}
		}
	}
	if cs, err := c.ServerConns(ctx, "echo", rs1); err != nil || len(cs.Conns) != 0 {
		t.Errorf("another service: %+v %v", cs, err)
	}
	for _, q := range []string{"?service=ftp", "?server=10.0.0.11:21", "?service=ftp&server=nope"} {
		var v Conns
		if err := c.Get(ctx, PathConns+q, &v); !errors.Is(err, ErrBadRequest) {
			t.Errorf("%s: %v", q, err)
		}
	}
	for state, ended := range map[string]bool{"SYN_SENT": false, "ESTABLISHED": false, "UDP": false, "FIN_WAIT": true, "CLOSE": true} {
		if (&Conn{State: state}).Ended() != ended {
			t.Errorf("%s: ended %v", state, !ended)
		}
	}
}
