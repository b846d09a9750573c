package metrics

import (
	"net/netip"
	"testing"

	_ "github.com/nfhelper/nfhelper/helpers/tftp"
	"github.com/nfhelper/nfhelper/ipvs"
)

// TestHelperFamilies: every registered helper has each per-helper family,
// at zero until used, and the engine's per-helper counts land under their
// helper's label (refusals under their reason too).
func TestHelperFamilies(t *testing.T) {
	f := newFixture(t)
	w := f.e.NewWorker()
	for i := range 3 {
		w.Process(syn(netip.AddrPortFrom(netip.MustParseAddr("203.0.113.2"), uint16(40000+i)), f.tcpVIP), 0)
	}
	var ftp *ipvs.HelperStats
	for _, h := range f.e.HelperStats() {
		if h.Helper == "ftp" {
			ftp = h.Stats
		}
	}
	if ftp == nil {
		t.Fatal("no ftp counters")
	}
	ftp.ChannelsOpened.Add(4)
	ftp.ChannelsUsed.Add(3)
	ftp.Rewritten.Add(7)
	ftp.Errors.Add(1)
	ftp.Refused[ipvs.RefuseBounce].Add(2)

	s, fams := scrape(t, f.m.Handler())
	helpers := ipvs.HelperNames()
	if len(helpers) < 2 {
		t.Fatalf("registered helpers %v, want ftp and tftp", helpers)
	}
	want := map[string]float64{}
	for _, h := range helpers {
		for _, c := range ipvs.HelperCounters() {
			k := lbl(c.Metric, "helper", h)
			if c.LabelName != "" {
				k = lbl(c.Metric, "helper", h, c.LabelName, c.LabelValue)
			}
			want[k] = 0
		}
	}
	for k, v := range map[string]float64{
		lbl("nfhelper_helper_sessions_total", "helper", "ftp"):                     3,
		lbl("nfhelper_helper_channels_opened_total", "helper", "ftp"):              4,
		lbl("nfhelper_helper_channels_used_total", "helper", "ftp"):                3,
		lbl("nfhelper_helper_rewritten_packets_total", "helper", "ftp"):            7,
		lbl("nfhelper_helper_contract_errors_total", "helper", "ftp"):              1,
		lbl("nfhelper_helper_refusals_total", "helper", "ftp", "reason", "bounce"): 2,
	} {
		if _, ok := want[k]; !ok {
			t.Fatalf("%s is no series of the registry", k)
		}
		want[k] = v
	}
	for k, v := range want {
		if got, ok := s[k]; !ok || got != v {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	for _, name := range []string{"nfhelper_helper_sessions_total", "nfhelper_helper_refusals_total"} {
		var n int
		if fam := fams[name]; fam != nil {
			n = len(fam.Metric)
		}
		perHelper := 1
		if name == "nfhelper_helper_refusals_total" {
			perHelper = len(ftp.Refused)
		}
		if n != perHelper*len(helpers) {
			t.Errorf("%s: %d series, want %d for %d helpers", name, n, perHelper*len(helpers), len(helpers))
		}
	}
	// The engine-wide families are still there, without the helper label.
	if _, ok := s[lbl("nfhelper_helper_errors_total")]; !ok {
		t.Error("engine-wide nfhelper_helper_errors_total gone")
	}
}
