package daemon

import (
	"net/netip"
	"testing"

	"github.com/nfhelper/nfhelper/ipvs"
)

// oneService is an engine whose only service, at vip, schedules with sched
// to the one real server rs; helper is its helper's name ("": none).
func oneService(t testing.TB, vip netip.AddrPort, sched, helper string, rs *ipvs.RealServer) *ipvs.Engine {
	t.Helper()
	var h ipvs.Helper
	if helper != "" {
		var ok bool
		if h, ok = ipvs.LookupHelper(helper); !ok {
			t.Fatalf("no helper %q", helper)
		}
	}
	svc, err := ipvs.NewService(helper+"-"+sched, vip, sched, h, []*ipvs.RealServer{rs})
	if err != nil {
		t.Fatal(err)
	}
	e, err := ipvs.NewEngine([]*ipvs.Service{svc}, ipvs.Options{MarkMask: markMask})
	if err != nil {
		t.Fatal(err)
	}
	return e
}
