package daemon

import (
	"net/netip"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/config"
	"github.com/nfhelper/nfhelper/ctl"
	"github.com/nfhelper/nfhelper/health"
)

// TestStanding: down when the checks or an override say so; weight 0 if
// drained, else the override's, else the file's.
func TestStanding(t *testing.T) {
	w := func(n int) *int { return &n }
	for _, c := range []struct {
		name string
		up   bool
		o    *ctl.Override
		want standing
	}{
		{"up, no override", true, nil, standing{weight: 3}},
		{"health down", false, nil, standing{weight: 3, down: true}},
		{"forced down", true, &ctl.Override{Down: true}, standing{weight: 3, down: true}},
		{"forced down and health down", false, &ctl.Override{Down: true}, standing{weight: 3, down: true}},
		{"weight", true, &ctl.Override{Weight: w(7)}, standing{weight: 7}},
		{"drained", true, &ctl.Override{Drained: true}, standing{}},
		{"drained over weight", true, &ctl.Override{Weight: w(7), Drained: true}, standing{}},
		{"weight, health down", false, &ctl.Override{Weight: w(7)}, standing{weight: 7, down: true}},
	} {
		s := &serverState{up: c.up, override: c.o}
		if got := s.standing(3); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
}

func mustParse(t *testing.T, yaml string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

const rosterYAML = `
services:
  - name: web
    vip: 198.51.100.10:80
    scheduler: rr
    health_check:
      type: tcp
    real_servers:
      - address: 10.0.0.1:80
      - address: 10.0.0.2:80
        weight: 2
`

var (
	web1 = health.Key{Service: "web", Addr: netip.MustParseAddrPort("10.0.0.1:80")}
	web2 = health.Key{Service: "web", Addr: netip.MustParseAddrPort("10.0.0.2:80")}
	web3 = health.Key{Service: "web", Addr: netip.MustParseAddrPort("10.0.0.3:80")}
)

// TestReconcile: servers that stay keep their health and their override
// while their entry in the file is the same; a changed entry (weight,
// check) clears the override and says so; new servers start in their
// initial_state; servers without checks are up.
func TestReconcile(t *testing.T) {
	t0, t1 := time.Unix(1000, 0), time.Unix(2000, 0)
	cfg := mustParse(t, rosterYAML)
	ro, gone := roster{}.reconcile(cfg, t0)
	if len(ro) != 2 || !ro[web1].up || !ro[web1].since.Equal(t0) || len(gone) != 0 {
		t.Fatalf("first roster %+v, cleared %v", ro, gone)
	}
	ro[web1].up, ro[web1].since = false, t0.Add(time.Second)
	ro[web1].override = &ctl.Override{Down: true}
	ro[web2].override = &ctl.Override{Drained: true}
	ro[web1].fingerprint = fingerprint(&cfg.Services[0], &cfg.Services[0].RealServers[0])
	ro[web2].fingerprint = fingerprint(&cfg.Services[0], &cfg.Services[0].RealServers[1])

	// The same file: everything stays.
	same, gone := ro.reconcile(mustParse(t, rosterYAML), t1)
	if s := same[web1]; s.up || !s.since.Equal(t0.Add(time.Second)) || s.override == nil || !s.override.Down {
		t.Errorf("web1 after an unchanged reload: %+v", s)
	}
	if same[web2].override == nil || len(gone) != 0 {
		t.Errorf("web2 after an unchanged reload: %+v; cleared %v", same[web2], gone)
	}

	// web2's weight changes, web1's check does not, web3 comes, down.
	changed := mustParse(t, rosterYAML[:len(rosterYAML)-len("        weight: 2\n")]+`        weight: 5
      - address: 10.0.0.3:80
        health_check:
          initial_state: down
`)
	next, gone := ro.reconcile(changed, t1)
	if next[web1].override == nil || next[web1].up {
		t.Errorf("web1 lost its override or health: %+v", next[web1])
	}
	if next[web2].override != nil {
		t.Errorf("web2's override kept though its weight changed: %+v", next[web2].override)
	}
	if len(gone) != 1 || gone[0].key != web2 {
		t.Errorf("cleared %+v, want web2's", gone)
	}
	if s := next[web3]; s == nil || s.up || !s.since.Equal(t1) {
		t.Errorf("web3 (initial_state down): %+v", s)
	}

	// The check changes: web1's override goes; a server whose check is now
	// none is up.
	none := mustParse(t, `
services:
  - name: web
    vip: 198.51.100.10:80
    scheduler: rr
    real_servers:
      - address: 10.0.0.1:80
`)
	next, gone = ro.reconcile(none, t1)
	if s := next[web1]; s.override != nil || !s.up || !s.since.Equal(t1) {
		t.Errorf("web1 without checks: %+v", s)
	}
	if len(gone) != 2 { // web1's changed, web2's gone with its server
		t.Errorf("cleared %+v", gone)
	}
}

// TestFingerprint: the address, the weight and the effective check make a
// server's fingerprint; the rest of the file does not.
func TestFingerprint(t *testing.T) {
	cfg := mustParse(t, rosterYAML)
	sc := &cfg.Services[0]
	base := fingerprint(sc, &sc.RealServers[0])
	if fingerprint(sc, &sc.RealServers[1]) == base {
		t.Error("two servers, one fingerprint")
	}
	sc.Scheduler = "wrr"
	if fingerprint(sc, &sc.RealServers[0]) != base {
		t.Error("the scheduler changed the fingerprint")
	}
	n := 5
	sc.HealthCheck.Fall = &n
	if fingerprint(sc, &sc.RealServers[0]) == base {
		t.Error("the check's fall did not change the fingerprint")
	}
}

// TestStandings: the file's weights under the roster's states, by service
// and address.
func TestStandings(t *testing.T) {
	cfg := mustParse(t, rosterYAML)
	ro, _ := roster{}.reconcile(cfg, time.Now())
	ro[web2].up = false
	st := ro.standings(cfg)
	if st[web1] != (standing{weight: 1}) || st[web2] != (standing{weight: 2, down: true}) {
		t.Errorf("standings %+v", st)
	}
}

// TestSavedOrder: the state file lists servers by service and address,
// whatever order the roster's map gives.
func TestSavedOrder(t *testing.T) {
	ro := roster{}
	for _, k := range []health.Key{
		{Service: "b", Addr: netip.MustParseAddrPort("10.0.0.1:21")},
		{Service: "a", Addr: netip.MustParseAddrPort("10.0.0.12:21")},
		{Service: "a", Addr: netip.MustParseAddrPort("10.0.0.2:21")},
		{Service: "a", Addr: netip.MustParseAddrPort("[fd00::1]:21")},
	} {
		ro[k] = &serverState{up: true, override: &ctl.Override{Down: true}}
	}
	want := []string{"a 10.0.0.2:21", "a 10.0.0.12:21", "a [fd00::1]:21", "b 10.0.0.1:21"}
	for range 5 {
		st := ro.saved()
		for i, h := range st.Health {
			if got := h.Service + " " + h.Address.String(); got != want[i] {
				t.Fatalf("health[%d] = %s, want %s", i, got, want[i])
			}
			if o := st.Overrides[i]; o.Service != h.Service || o.Address != h.Address {
				t.Fatalf("overrides[%d] = %s %s, want %s", i, o.Service, o.Address, want[i])
			}
		}
	}
}
