package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/ctl"
	"github.com/nfhelper/nfhelper/integration/topo"
)

// The memory of persistent clients: a fresh daemon balances VIP:persistPort
// with persistence (timeout 1h, prefix4 32) over closed ports of rs1/rs2
// (they answer with a reset), once with rr (templates in the kernel's
// persist map) and once with lc (templates in the daemon). -persist SYNs,
// each from its own source address (100.64.0.0/10, sent from a raw socket
// in the client namespace; the router routes that range back to the client,
// which drops the answers), make one template each. The router's conntrack
// table is emptied before every reading, so what grows is the templates:
// the kernel's unreclaimable slab memory (/proc/meminfo SUnreclaim and
// /proc/slabinfo, the whole machine's: other work on it adds noise) and the
// daemon's RSS, before, after the fill and (rr) after the persist map is
// flushed.

const (
	persistPort = "8082"
	synRate     = 20000 // SYNs per second, paced in batches
)

// persistRun is one scheduler's figures.
type persistRun struct {
	Sched       string           `json:"scheduler"`
	Sent        int              `json:"sent"`
	Templates   int              `json:"templates"` // nfhelperctl's count after the fill
	MapElems    int              `json:"map_elements"`
	FillTime    time.Duration    `json:"fill_ns"`
	RSSBefore   int64            `json:"rss_before_kb"`
	RSSFill     int64            `json:"rss_fill_kb"`  // after the fill, before any control request
	RSSAfter    int64            `json:"rss_after_kb"` // after the services requests that counted the templates
	CtlTime     time.Duration    `json:"services_ns"`  // the last of those requests
	CtlCalls    int              `json:"services_requests"`
	SlabBefore  int64            `json:"sunreclaim_before_kb"`
	SlabAfter   int64            `json:"sunreclaim_after_kb"`
	SlabFlushed int64            `json:"sunreclaim_flushed_kb,omitempty"` // rr: after the persist map was flushed
	Caches      map[string]int64 `json:"slab_growth_bytes,omitempty"`     // the caches that grew most during the fill
	ListTime    time.Duration    `json:"list_ns,omitempty"`               // nft list map of the templates, daemon running
	ListErr     string           `json:"list_error,omitempty"`
	Err         string           `json:"error,omitempty"`
}

type persistResult struct {
	n    int
	runs []persistRun
}

func (b *bench) persistMemory(ctx context.Context) (*persistResult, error) {
	tp := b.tp
	if _, err := tp.Run(ctx, tp.Router, "ip", "route", "add", "100.64.0.0/10", "via", topo.ClientV4, "dev", "c0"); err != nil {
		return nil, err
	}
	pm := &persistResult{n: b.o.persist}
	for _, sched := range []string{"rr", "lc"} {
		r := b.persistRun(ctx, sched)
		logf("persistent clients, %s: %d sent, %d templates, %d map elements, RSS %d -> %d kB, SUnreclaim %d -> %d kB (flushed %d), %s",
			sched, r.Sent, r.Templates, r.MapElems, r.RSSBefore, r.RSSAfter, r.SlabBefore, r.SlabAfter, r.SlabFlushed, r.Err)
		pm.runs = append(pm.runs, r)
		if ctx.Err() != nil {
			return pm, ctx.Err()
		}
	}
	return pm, nil
}

func (b *bench) persistRun(ctx context.Context, sched string) (r persistRun) {
	tp := b.tp
	r.Sched = sched
	fail := func(err error) persistRun {
		r.Err = err.Error()
		return r
	}
	cfg := fmt.Sprintf(`services:
  - name: persist
    vip: %s:%s
    scheduler: %s
    persistence:
      timeout: 1h
    real_servers:
      - address: %s:%s
      - address: %s:%s
`, topo.VIP4, persistPort, sched, topo.RS1V4, persistPort, topo.RS2V4, persistPort)
	p := filepath.Join(b.tmp, "nfhelperd-persist-"+sched+".yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
		return fail(err)
	}
	b.fresh(ctx)
	d, err := tp.StartDaemon(b.bin, p)
	if err != nil {
		return fail(err)
	}
	defer func() {
		if st, err := d.Stop(); err != nil || st.ExitCode != 0 {
			logf("persist daemon stop: %+v %v (log %s)", st, err, d.LogPath)
		}
	}()
	cl := ctl.NewClient(tp.ControlSocket(), 60*time.Second)
	settle := func() (int64, map[string]int64) {
		b.fresh(ctx)
		time.Sleep(time.Second)
		return sunreclaimKB(), slabBytes()
	}
	r.RSSBefore = procRSS(d.Pid())
	var caches0 map[string]int64
	r.SlabBefore, caches0 = settle()

	t0 := time.Now()
	if r.Sent, err = b.synFill(ctx, b.o.persist); err != nil {
		return fail(err)
	}
	r.FillTime = time.Since(t0)
	var caches1 map[string]int64
	r.SlabAfter, caches1 = settle()
	r.RSSFill = procRSS(d.Pid())
	// Count the templates (lc: once the daemon's queue has drained). A
	// request reads a kernel-scheduled service's templates from its map.
	last := -1
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		c0 := time.Now()
		n, err := templates(ctx, cl)
		if err != nil {
			return fail(err)
		}
		r.CtlTime, r.Templates = time.Since(c0), n
		r.CtlCalls++
		if n >= r.Sent || n == last {
			break
		}
		last = n
	}
	r.RSSAfter = procRSS(d.Pid())
	r.Caches = topGrowth(caches0, caches1, 4)
	// Kernel-scheduled persistence keeps its templates in a persist_* map.
	if name, n, took, listErr, err := b.persistMap(ctx); err != nil {
		return fail(err)
	} else if name != "" {
		r.MapElems, r.ListTime, r.ListErr = n, took, listErr
		if _, err := tp.Run(ctx, tp.Router, "nft", "flush", "map", "inet", "nfhelper", name); err != nil {
			return fail(err)
		}
		time.Sleep(2 * time.Second) // elements are freed after an RCU grace period
		r.SlabFlushed = sunreclaimKB()
	}
	return r
}

// templates is the persist service's template count from nfhelperctl.
func templates(ctx context.Context, cl *ctl.Client) (int, error) {
	var v ctl.Services
	if err := cl.Get(ctx, ctl.PathServices, &v); err != nil {
		return 0, err
	}
	for _, s := range v.Services {
		if s.Name == "persist" && s.Persistence != nil {
			return s.Persistence.Templates, nil
		}
	}
	return 0, fmt.Errorf("nfhelperctl services: no persistent service persist")
}

// listTimeout bounds the listing of the persist map: nft starts a listing
// over whenever the ruleset changes, and the running daemon renews its
// liveness element (a ruleset transaction) every 250 ms.
const listTimeout = 60 * time.Second

// persistMap finds the router's persist_* map of the service, if there is
// one (a terse listing: names only), and counts its elements, or says
// (listErr) that listing them did not finish within listTimeout.
func (b *bench) persistMap(ctx context.Context) (name string, elems int, took time.Duration, listErr string, err error) {
	out, err := b.tp.Run(ctx, b.tp.Router, "nft", "-j", "-t", "list", "maps", "inet")
	if err != nil {
		return "", 0, 0, "", err
	}
	maps, err := nftMaps(out)
	if err != nil {
		return "", 0, 0, "", err
	}
	for n := range maps {
		if strings.HasPrefix(n, "persist_") && strings.HasSuffix(n, "_"+persistPort) {
			name = n
		}
	}
	if name == "" {
		return "", 0, 0, "", nil
	}
	lctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	t0 := time.Now()
	out, err = b.tp.Run(lctx, b.tp.Router, "nft", "-j", "list", "map", "inet", "nfhelper", name)
	took = time.Since(t0)
	if lctx.Err() != nil && ctx.Err() == nil {
		return name, -1, took, fmt.Sprintf("nft list map %s did not finish within %v while the daemon ran", name, listTimeout), nil
	}
	if err != nil {
		return "", 0, 0, "", err
	}
	if maps, err = nftMaps(out); err != nil {
		return "", 0, 0, "", err
	}
	return name, maps[name], took, "", nil
}

// nftMaps reads `nft -j list` output: map name -> elements listed.
func nftMaps(out []byte) (map[string]int, error) {
	var v struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		return nil, err
	}
	m := map[string]int{}
	for _, obj := range v.Nftables {
		raw, ok := obj["map"]
		if !ok {
			continue
		}
		var mp struct {
			Name  string            `json:"name"`
			Table string            `json:"table"`
			Elem  []json.RawMessage `json:"elem"`
		}
		if err := json.Unmarshal(raw, &mp); err != nil {
			return nil, err
		}
		if mp.Table == "nfhelper" {
			m[mp.Name] = len(mp.Elem)
		}
	}
	return m, nil
}

// synFill sends n TCP SYNs to VIP:persistPort from the client namespace,
// each from its own address of 100.64.0.0/10, at synRate.
func (b *bench) synFill(ctx context.Context, n int) (int, error) {
	var fd int
	err := topo.Do(b.tp.Client, func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	dst := netip.MustParseAddr(topo.VIP4).As4()
	port, _ := strconv.Atoi(persistPort)
	to := &unix.SockaddrInet4{Addr: dst}
	base := binary.BigEndian.Uint32(netip.MustParseAddr("100.64.0.1").AsSlice())
	const batch = 500
	tick := time.NewTicker(time.Second * batch / synRate)
	defer tick.Stop()
	pkt := make([]byte, 40)
	sent := 0
	for sent < n {
		for k := 0; k < batch && sent < n; k++ {
			var src [4]byte
			binary.BigEndian.PutUint32(src[:], base+uint32(sent))
			synPacket(pkt, src, dst, uint16(1024+rand.IntN(60000)), uint16(port), rand.Uint32())
			if err := unix.Sendto(fd, pkt, 0, to); err != nil {
				return sent, fmt.Errorf("sendto: %w", err)
			}
			sent++
		}
		select {
		case <-ctx.Done():
			return sent, ctx.Err()
		case <-tick.C:
		}
	}
	return sent, nil
}

// synPacket writes an IPv4 TCP SYN (no options) into p (40 bytes).
func synPacket(p []byte, src, dst [4]byte, sport, dport uint16, seq uint32) {
	clear(p)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], 40)
	p[8] = 64
	p[9] = unix.IPPROTO_TCP
	copy(p[12:16], src[:])
	copy(p[16:20], dst[:])
	binary.BigEndian.PutUint16(p[10:], csum(p[:20], 0))
	t := p[20:]
	binary.BigEndian.PutUint16(t[0:], sport)
	binary.BigEndian.PutUint16(t[2:], dport)
	binary.BigEndian.PutUint32(t[4:], seq)
	t[12] = 5 << 4
	t[13] = 0x02 // SYN
	binary.BigEndian.PutUint16(t[14:], 64240)
	// The pseudo header: addresses, protocol, TCP length.
	var ph uint32
	for i := 12; i < 20; i += 2 {
		ph += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	ph += unix.IPPROTO_TCP + 20
	binary.BigEndian.PutUint16(t[16:], csum(t, ph))
}

// csum is the Internet checksum of b, starting from sum.
func csum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// sunreclaimKB is the machine's unreclaimable slab memory.
func sunreclaimKB() int64 { return procField("/proc/meminfo", "SUnreclaim:") }

// procField is the first number after prefix on a line of a /proc file
// (a size in kB), or 0.
func procField(path, prefix string) int64 {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return n
		}
	}
	return 0
}

// slabBytes is active objects × object size per cache of /proc/slabinfo.
func slabBytes() map[string]int64 {
	m := map[string]int64{}
	data, err := os.ReadFile("/proc/slabinfo")
	if err != nil {
		return m
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || strings.HasPrefix(line, "#") || f[0] == "slabinfo" {
			continue
		}
		active, err1 := strconv.ParseInt(f[1], 10, 64)
		size, err2 := strconv.ParseInt(f[3], 10, 64)
		if err1 == nil && err2 == nil {
			m[f[0]] = active * size
		}
	}
	return m
}

// topGrowth is the n caches that grew most from a to b.
func topGrowth(a, b map[string]int64, n int) map[string]int64 {
	type g struct {
		name string
		d    int64
	}
	var gs []g
	for k, v := range b {
		if d := v - a[k]; d > 0 {
			gs = append(gs, g{k, d})
		}
	}
	slices.SortFunc(gs, func(x, y g) int { return int(y.d - x.d) })
	out := map[string]int64{}
	for _, x := range gs[:min(n, len(gs))] {
		out[x.name] = x.d
	}
	return out
}

// procRSS is a process's VmRSS in kB.
func procRSS(pid int) int64 { return procField(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:") }

func (pm *persistResult) report(sb *strings.Builder) {
	fmt.Fprintf(sb, "persistent clients: %d SYNs from as many addresses (100.64.0.0/10) to %s:%s, persistence 1h /32, a fresh daemon each;\n"+
		"memory after the router's conntrack table was emptied (SUnreclaim: the whole machine's unreclaimable slab)\n",
		pm.n, topo.VIP4, persistPort)
	for _, r := range pm.runs {
		where, elems := "the daemon", "no persist map"
		switch {
		case r.ListErr != "":
			where, elems = "the kernel's persist map", r.ListErr
		case r.MapElems > 0:
			where = "the kernel's persist map"
			elems = fmt.Sprintf("%d persist map elements (listed in %v)", r.MapElems, r.ListTime.Round(time.Millisecond))
		}
		fmt.Fprintf(sb, "  %s (templates in %s): %d sent, %d templates (nfhelperctl), %s, fill %v\n",
			r.Sched, where, r.Sent, r.Templates, elems, r.FillTime.Round(time.Millisecond))
		perT := func(kb int64) string {
			if r.Templates <= 0 {
				return "-"
			}
			return fmt.Sprintf("%.0f B/template", float64(kb)*1024/float64(r.Templates))
		}
		fmt.Fprintf(sb, "    daemon RSS %d -> %d kB after the fill (%s), %d kB after %d services requests counting them (the last took %v); SUnreclaim %d -> %d kB (%s)",
			r.RSSBefore, r.RSSFill, perT(r.RSSFill-r.RSSBefore), r.RSSAfter, r.CtlCalls, r.CtlTime.Round(time.Millisecond),
			r.SlabBefore, r.SlabAfter, perT(r.SlabAfter-r.SlabBefore))
		if r.SlabFlushed > 0 {
			fmt.Fprintf(sb, "; after flushing the map %d kB (%s freed)", r.SlabFlushed, perT(r.SlabAfter-r.SlabFlushed))
		}
		sb.WriteString("\n")
		if len(r.Caches) > 0 {
			fmt.Fprintf(sb, "    slab caches that grew most during the fill (bytes): %s\n", bannerText(r.Caches))
		}
		if r.Err != "" {
			fmt.Fprintf(sb, "    ERROR: %s\n", r.Err)
		}
	}
}
