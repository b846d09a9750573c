package daemon

import (
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/config"
	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/kernel"
)

func TestExpectations(t *testing.T) {
	ap := netip.MustParseAddrPort
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ct := kernel.Conntrack{
		Orig:  kernel.Tuple{Src: ap("203.0.113.2:40000"), Dst: ap("198.51.100.10:21"), Proto: unix.IPPROTO_TCP},
		Reply: kernel.Tuple{Src: ap("10.0.0.11:21"), Dst: ap("203.0.113.2:40000"), Proto: unix.IPPROTO_TCP},
	}
	chs := []ipvs.Channel{
		{Kind: ipvs.ChannelPassive, Client: ap("203.0.113.2:0"), Server: ap("10.0.0.11:30000"), VIP: ap("198.51.100.10:30001")},
		{Kind: ipvs.ChannelActive, Client: ap("203.0.113.2:5000"), Server: ap("10.0.0.11:0"), VIP: ap("198.51.100.10:0")},
		{Kind: ipvs.ChannelWatch, Server: ap("10.0.0.12:21")},
		{Kind: ipvs.ChannelPassive, Client: ap("203.0.113.2:0"), Server: ap("10.0.0.11:30000"), VIP: ap("198.51.100.10:30001"), NAT: ap("10.0.0.1:0")},
	}
	got := expectations(chs, ct, log)
	if len(got) != 2 {
		t.Fatalf("%d expectations: %+v", len(got), got)
	}
	p, a := got[0], got[1]
	if p.Master != ct.Orig || p.Dir != kernel.DirOriginal || !p.NAT ||
		p.Tuple != (kernel.Tuple{Src: ap("203.0.113.2:0"), Dst: ap("198.51.100.10:30001"), Proto: unix.IPPROTO_TCP}) ||
		p.NATTo.Src != ap("10.0.0.11:30000") {
		t.Errorf("passive %+v", p)
	}
	if a.Dir != kernel.DirReply || a.Tuple != (kernel.Tuple{Src: ap("10.0.0.11:0"), Dst: ap("203.0.113.2:5000"), Proto: unix.IPPROTO_TCP}) ||
		a.NATTo.Src != ap("203.0.113.2:5000") {
		t.Errorf("active %+v", a)
	}
	if got := expectations(chs[:1], kernel.Conntrack{}, log); len(got) != 0 {
		t.Errorf("without the master's tuple: %+v", got)
	}
}

func TestStateBytes(t *testing.T) {
	if stateBytes(nil) != nil {
		t.Error("state without a connection")
	}
	k := &ipvs.KernelState{Synced: [2]bool{true, false}, Next: [2]uint32{7, 9}, Stopped: true}
	s, err := kernel.DecodeState(stateBytes(k))
	if err != nil || s.Flags != kernel.StateValid|kernel.StateStopped || s.Next != k.Next {
		t.Errorf("%+v %v", s, err)
	}
}

// TestChooser: the kernel datapath where the kernel has it and the
// configuration no add-on helpers; with add-on helpers compat, and asking
// for the kernel datapath is an error.
func TestChooser(t *testing.T) {
	ready := kernel.Features{} // every probe succeeded
	lacking := kernel.Features{Cthelper: errors.New("no nfnetlink_cthelper")}
	services, addOns := &config.Config{}, &config.Config{Helpers: []config.AddOn{{}}}
	for _, c := range []struct {
		name     string
		cfg      *config.Config
		f        kernel.Features
		override string
		want     string
		wantErr  error
	}{
		{"auto kernel", services, ready, "", kernel.DatapathKernel, nil},
		{"auto lacking", services, lacking, "", kernel.DatapathCompat, nil},
		{"auto add-ons", addOns, ready, "", kernel.DatapathCompat, nil},
		{"forced add-ons", addOns, ready, "kernel", "", errAddonsKernel},
		{"forced compat", services, ready, "compat", kernel.DatapathCompat, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv(kernel.EnvDatapath, c.override)
			got, err := chooser(c.cfg)(c.f)
			if got != c.want || !errors.Is(err, c.wantErr) || (err != nil) != (c.wantErr != nil) {
				t.Errorf("got %q, %v; want %q, %v", got, err, c.want, c.wantErr)
			}
		})
	}
}

// TestTakeUp: a helper's connection whose helper data was never written
// (its SYN, nftables scheduled it) is picked up where its service is
// kernel-scheduled; one with state is restored from it.
func TestTakeUp(t *testing.T) {
	ap := netip.MustParseAddrPort
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	client, vip, server := ap("203.0.113.2:40000"), ap("198.51.100.10:21"), ap("10.0.0.11:21")
	ct := kernel.Conntrack{
		Orig:   kernel.Tuple{Src: client, Dst: vip, Proto: unix.IPPROTO_TCP},
		Reply:  kernel.Tuple{Src: server, Dst: client, Proto: unix.IPPROTO_TCP},
		Helper: helperName, HelperInfo: make([]byte, kernel.StateLen),
	}
	for _, tc := range []struct {
		sched string
		info  []byte
		want  bool
	}{
		{"mh", ct.HelperInfo, true},
		{"wlc", ct.HelperInfo, false},
		{"wlc", kernel.HelperState{Flags: kernel.StateValid, Next: [2]uint32{101, 0}}.Encode(), true},
	} {
		e := oneService(t, vip, tc.sched, "ftp", &ipvs.RealServer{Addr: server, Weight: 1})
		c := ct
		c.HelperInfo = tc.info
		takeUp(e, c, log)
		if got := e.Table.LookupVIP(client, vip) != nil; got != tc.want {
			t.Errorf("%s, helper data %x: taken up %v", tc.sched, tc.info, got)
		}
	}
}
