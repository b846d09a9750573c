//go:build integration

package daemon

import (
	"context"
	"net/netip"
	"testing"

	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/ctl"
	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/kernel"
)

// TestKernelViewsFlows reads a namespace's conntrack as nfhelperctl's
// views of kernel-scheduled services do: the entries to their VIPs, by
// protocol, with the reply's source as server and the TCP state.
func TestKernelViewsFlows(t *testing.T) {
	ns, ct := ctNamespace(t)
	ap := netip.MustParseAddrPort
	vip, other, server := ap("198.51.100.10:80"), ap("198.51.100.10:81"), ap("10.0.0.11:80")
	est := established(ap("203.0.113.2:40001"), vip, server)
	syn := established(ap("203.0.113.2:40002"), vip, server)
	syn.ProtoInfo.TCP.State = uint8(kernel.CtTCPSynRecv)
	elsewhere := established(ap("203.0.113.2:40003"), other, server)
	udp := conntrack.NewFlow(unix.IPPROTO_UDP, conntrack.StatusConfirmed, ap("203.0.113.2:40004").Addr(), vip.Addr(), 40004, vip.Port(), 60, 0)
	udp.TupleReply.IP.SourceAddress, udp.TupleReply.Proto.SourcePort = server.Addr(), server.Port()
	for _, f := range []conntrack.Flow{est, syn, elsewhere, udp} {
		if err := ct.Create(f); err != nil {
			t.Fatal(err)
		}
	}
	k := &kernelViews{netns: ns}
	flows, err := k.Flows(context.Background(), map[ctl.FlowKey]bool{{VIP: vip}: true, {UDP: true, VIP: vip}: true})
	if err != nil {
		t.Fatal(err)
	}
	got := map[uint16]ctl.Flow{}
	for _, f := range flows {
		got[f.Client.Port()] = f
	}
	want := map[uint16]ipvs.TCPState{40001: ipvs.StateEstablished, 40002: ipvs.StateSynSent, 40004: ipvs.StateUDP}
	if len(got) != len(want) {
		t.Fatalf("flows %+v", flows)
	}
	for port, state := range want {
		if f := got[port]; f.State != state || f.Server != server || f.VIP != vip || f.UDP != (port == 40004) || f.ExpiresIn <= 0 {
			t.Errorf("client port %d: %+v", port, f)
		}
	}
}
