package daemon

import (
	"net/netip"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/config"
	"github.com/nfhelper/nfhelper/health"
	"github.com/nfhelper/nfhelper/nft"
)

// specFor gives rr, wrr, sh and mh services a kernel table over their
// available servers, with persistence; lc stays daemon-scheduled.
func TestSpecForKernel(t *testing.T) {
	cfg, err := config.Parse([]byte(`services:
  - name: web
    vip: 198.51.100.10:80
    scheduler: rr
    persistence:
      timeout: 10m
      prefix4: 24
    sorry_server: 10.0.0.99:80
    real_servers:
      - address: 10.0.0.11:80
      - address: 10.0.0.12:80
      - address: 10.0.0.13:80
  - name: lc
    vip: 198.51.100.10:81
    scheduler: lc
    real_servers:
      - address: 10.0.0.11:80
  - name: sh
    vip: 198.51.100.10:82
    scheduler: sh
    sh_port: true
    real_servers:
      - address: 10.0.0.11:80
`))
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort
	st := cfg2standings(cfg)
	st[health.Key{Service: "web", Addr: ap("10.0.0.12:80")}] = standing{weight: 1, down: true}
	st[health.Key{Service: "web", Addr: ap("10.0.0.13:80")}] = standing{weight: 0}
	spec := specFor(cfg, services(cfg, st), st)
	web, lc := spec.Services[0], spec.Services[1]
	if lc.Kernel != nil {
		t.Errorf("lc scheduled in the kernel: %+v", lc.Kernel)
	}
	if s := web.Servers[1]; !s.Down || s.Weight != 0 {
		t.Errorf("down server %+v", s)
	}
	k := web.Kernel
	want := []nft.SlotRun{{First: 0, Last: 0, Server: ap("10.0.0.11:80")}}
	if k == nil || k.By != nft.ByCounter || k.Size != 1 || len(k.Slots) != 1 || k.Slots[0] != want[0] {
		t.Fatalf("rr table %+v, want %+v", k, want)
	}
	if p := k.Persist; p == nil || *p != (nft.Persist{Timeout: 10 * time.Minute, Prefix4: 24, Prefix6: 128}) {
		t.Errorf("persistence %+v", p)
	}
	if web.Sorry == nil || web.Sorry.Addr != ap("10.0.0.99:80") {
		t.Errorf("sorry %+v", web.Sorry)
	}
	if k := spec.Services[2].Kernel; k == nil || k.By != nft.BySourcePort || k.Persist != nil {
		t.Errorf("sh table %+v", k)
	}
}

// cfg2standings is every configured server up at its file's weight.
func cfg2standings(cfg *config.Config) map[health.Key]standing {
	st := map[health.Key]standing{}
	for _, sc := range cfg.Services {
		for _, r := range sc.RealServers {
			st[health.Key{Service: sc.Name, Addr: r.Addr}] = standing{weight: r.EffectiveWeight()}
		}
	}
	return st
}
