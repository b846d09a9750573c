package ctl

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/ipvs"
)

// fakeKernel answers flows and templates as conntrack and the ruleset
// would, and records what it was asked.
type fakeKernel struct {
	flows     []Flow
	templates int
	err       error
	asked     map[FlowKey]bool
}

func (k *fakeKernel) Flows(_ context.Context, services map[FlowKey]bool) ([]Flow, error) {
	k.asked = services
	return k.flows, k.err
}

func (k *fakeKernel) Templates(context.Context, FlowKey) (int, error) { return k.templates, nil }

// kernelServer is testServer whose ftp service (rr) is kernel-scheduled,
// with conntrack holding flows to rs1 (one established), rs2 and a server
// the service does not have, and the engine one connection (picked up by
// its helper, to the server it returns) that conntrack holds too,
// established.
func kernelServer(t *testing.T) (*Server, *fakeKernel, netip.AddrPort) {
	s, e := testServer(t)
	picked := netip.MustParseAddrPort("192.0.2.9:40009")
	if v := e.NewWorker().Process(syn(picked, vip), 0); !v.SetMark {
		t.Fatalf("SYN not scheduled: %+v", v)
	}
	server := e.ConnViews()[0].Server
	ap := netip.MustParseAddrPort
	k := &fakeKernel{templates: 5, flows: []Flow{
		{Client: ap("192.0.2.1:40001"), VIP: vip, Server: rs1, State: ipvs.StateEstablished, ExpiresIn: 431999 * time.Second},
		{Client: ap("192.0.2.2:40002"), VIP: vip, Server: rs1, State: ipvs.StateSynSent, ExpiresIn: 59 * time.Second},
		{Client: ap("192.0.2.3:40003"), VIP: vip, Server: rs2, State: ipvs.StateFinWait, ExpiresIn: 119 * time.Second},
		{Client: ap("192.0.2.4:40004"), VIP: vip, Server: ap("10.0.0.99:21"), State: ipvs.StateEstablished},
		{Client: picked, VIP: vip, Server: server, State: ipvs.StateEstablished},
	}}
	s.Kernel = k
	return s, k, server
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// Kernel-scheduled services count their servers' connections from
// conntrack, ESTABLISHED as active, and their templates from the ruleset;
// daemon-scheduled ones keep the engine's.
func TestKernelServices(t *testing.T) {
	s, k, picked := kernelServer(t)
	svcs := s.Services(context.Background())
	if len(k.asked) != 1 || !k.asked[FlowKey{VIP: vip}] {
		t.Errorf("asked for %v", k.asked)
	}
	ftp, echo := svcs.Services[0], svcs.Services[1]
	if ftp.ScheduledBy != ScheduledByKernel || echo.ScheduledBy != ScheduledByDaemon || svcs.Helpers[0].ScheduledBy != "" {
		t.Errorf("scheduled by %q %q %q", ftp.ScheduledBy, echo.ScheduledBy, svcs.Helpers[0].ScheduledBy)
	}
	r1, r2 := ftp.Servers[0], ftp.Servers[1]
	if r1.Active != 1+b2i(picked == rs1) || r1.Inactive != 1 || r2.Active != b2i(picked == rs2) || r2.Inactive != 1 || r1.Conns+r2.Conns != 1 {
		t.Errorf("servers %+v", ftp.Servers)
	}
	if ftp.Persistence == nil || ftp.Persistence.Templates != 5 || svcs.KernelError != "" {
		t.Errorf("persistence %+v, error %q", ftp.Persistence, svcs.KernelError)
	}
	var b bytes.Buffer
	WriteServices(&b, &svcs)
	for _, want := range []string{"# ftp, kernel-scheduled\n", "# echo, daemon-scheduled\n", "# router-ftp\n"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("services output lacks %q:\n%s", want, b.String())
		}
	}
}

// Conns lists kernel-scheduled services' connections from conntrack
// beside the engine's table, a connection in both once (the engine's).
func TestKernelConns(t *testing.T) {
	s, _, server := kernelServer(t)
	picked := netip.MustParseAddrPort("192.0.2.9:40009")
	cs := s.Conns(context.Background())
	if len(cs.Conns) != 5 {
		t.Fatalf("conns %+v", cs.Conns)
	}
	for _, c := range cs.Conns {
		if fromKernel := c.ScheduledBy == ScheduledByKernel; fromKernel == (c.Client == picked) || c.Service != "ftp" || c.Helper != "fake" {
			t.Errorf("conn %+v", c)
		}
	}
	if c := cs.Conns[0]; c.Client != netip.MustParseAddrPort("192.0.2.1:40001") || c.State != "ESTABLISHED" || c.ExpiresIn != 431999 {
		t.Errorf("first conn %+v", c)
	}
	// What drain --wait asks.
	to1, err := NewClient(serve(t, s), 5*time.Second).ServerConns(context.Background(), "ftp", rs1)
	if err != nil || len(to1.Conns) != 2+int(b2i(server == rs1)) || to1.Conns[1].Ended() {
		t.Errorf("rs1's conns %+v %v", to1, err)
	}
}

// A conntrack that cannot be read leaves the engine's view, and says so.
func TestKernelError(t *testing.T) {
	s, k, _ := kernelServer(t)
	k.flows, k.err = nil, errors.New("no conntrack today")
	svcs, cs := s.Services(context.Background()), s.Conns(context.Background())
	if svcs.KernelError != "no conntrack today" || cs.KernelError != "no conntrack today" || len(cs.Conns) != 1 {
		t.Errorf("services error %q, conns %+v", svcs.KernelError, cs)
	}
	var inactive int64 // the engine's: its one connection
	for _, rs := range svcs.Services[0].Servers {
		inactive += rs.Inactive
	}
	if inactive != 1 || svcs.Services[0].Persistence.Templates != 5 {
		t.Errorf("servers %+v, persistence %+v", svcs.Services[0].Servers, svcs.Services[0].Persistence)
	}
	var b bytes.Buffer
	WriteConns(&b, &cs)
	if !strings.Contains(b.String(), "warning: kernel-scheduled services' connections not read: no conntrack today\n") {
		t.Errorf("conns output:\n%s", b.String())
	}
}
