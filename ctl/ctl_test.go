package ctl

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/kernel"
)

type nopHelper struct{}

func (nopHelper) Name() string                                     { return "fake" }
func (nopHelper) Bind(*ipvs.Session, *ipvs.Policy) ipvs.ConnHelper { return nopConn{} }

type nopConn struct{}

func (nopConn) Inspect(ipvs.Direction, []byte, int, bool, *ipvs.Result) {}

var (
	vip   = netip.MustParseAddrPort("198.51.100.10:21")
	match = netip.MustParseAddrPort("198.51.100.20:21")
	rs1   = netip.MustParseAddrPort("10.0.0.11:21")
	rs2   = netip.MustParseAddrPort("10.0.0.12:21")
)

// testEngine is a small engine: a helped persistent service with two real
// servers, a UDP service and an add-on helper.
func testEngine(t *testing.T) *ipvs.Engine {
	t.Helper()
	svc, err := ipvs.NewService("ftp", vip, "rr", nopHelper{}, []*ipvs.RealServer{{Addr: rs1, Weight: 1}, {Addr: rs2, Weight: 2}})
	if err != nil {
		t.Fatal(err)
	}
	svc.Persist = ipvs.NewPersistence(300*time.Second, 24, 128)
	udp, err := ipvs.NewService("echo", netip.MustParseAddrPort("198.51.100.10:7"), "wlc", nil,
		[]*ipvs.RealServer{{Addr: netip.MustParseAddrPort("10.0.0.11:7"), Weight: 1}})
	if err != nil {
		t.Fatal(err)
	}
	udp.UDP = true
	addon := ipvs.NewAddOn("router-ftp", match, nopHelper{}, 0)
	e, err := ipvs.NewEngine([]*ipvs.Service{svc, udp, addon}, ipvs.Options{MarkMask: 0x00ff0000})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// syn is an IPv4 TCP SYN from src to dst.
func syn(src, dst netip.AddrPort) []byte {
	p := make([]byte, 40)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], 40)
	p[8] = 64
	p[9] = 6
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[20:], src.Port())
	binary.BigEndian.PutUint16(p[22:], dst.Port())
	binary.BigEndian.PutUint32(p[24:], 1000)
	p[32] = 5 << 4
	p[33] = 0x02 // SYN
	binary.BigEndian.PutUint16(p[34:], 65535)
	return p
}

func testServer(t *testing.T) (*Server, *ipvs.Engine) {
	e := testEngine(t)
	s := &Server{Engine: e, Info: Info{
		Pid: 4242, Started: time.Now().Add(-90 * time.Second), Datapath: "test-path", Config: "/etc/x.yaml",
		Table: "nfhelper", Queues: Queues{First: 100, Count: 4},
	}}
	s.CheckFunc = func(context.Context) []Check {
		return []Check{{Name: "table", Status: CheckOK, Detail: "fine"}, {Name: "nft-queue", Status: CheckInfo, Detail: "no"}}
	}
	s.RulesFunc = func(context.Context) (Rules, error) {
		return Rules{Table: "inet nfhelper", Source: "test", Text: "table inet nfhelper {\n}\n"}, nil
	}
	return s, e
}

// serve starts s on a socket in a new directory below a temp dir.
func serve(t *testing.T, s *Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run", "nfhelperd.sock")
	if err := s.Listen(path); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket left after Serve ended: %v", err)
		}
	})
	return path
}

func TestListenModes(t *testing.T) {
	s, _ := testServer(t)
	path := serve(t, s)
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want socket 0600", fi.Mode())
	}
	di, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o755 {
		t.Errorf("directory mode %v, want 0755", di.Mode().Perm())
	}
	// A second daemon must not take a live socket.
	s2, _ := testServer(t)
	if err := s2.Listen(path); !errors.Is(err, ErrInUse) {
		t.Errorf("Listen on a live socket: %v, want ErrInUse", err)
	}
}

func TestListenStaleAndNotSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "d.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close() // a crashed daemon's socket: nobody answers
	s, _ := testServer(t)
	if err := s.Listen(path); err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	s.ln.Close()

	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("x"), 0o644)
	s2, _ := testServer(t)
	if err := s2.Listen(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen on a regular file: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "x" {
		t.Error("regular file touched")
	}
}

func TestRoundTrip(t *testing.T) {
	s, e := testServer(t)
	w := e.NewWorker()
	client := netip.MustParseAddrPort("192.0.2.7:40000")
	if v := w.Process(syn(client, vip), 0); !v.SetMark {
		t.Fatalf("SYN not scheduled: %+v", v)
	}
	s.NoteReload(nil)
	s.NoteReload(errors.New("bad file"))
	c := NewClient(serve(t, s), 5*time.Second)
	ctx := context.Background()

	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Pid != 4242 || st.Datapath != "test-path" || st.Services != 2 || st.Helpers != 1 || st.Connections != 1 ||
		st.Queues != (Queues{100, 4}) || st.Table != "inet nfhelper" || st.UptimeSeconds < 89 {
		t.Errorf("status %+v", st)
	}
	if st.Stats["packets"] != 1 || st.Stats["scheduled"] != 1 {
		t.Errorf("stats %v", st.Stats)
	}
	if _, ok := st.Stats["refused_bounce"]; !ok || len(st.Stats) != len(StatNames) {
		t.Errorf("stats names %v", st.Stats)
	}
	if st.Reloads != 1 || st.LastReload == nil || st.LastReload.Error != "bad file" {
		t.Errorf("reloads %d %+v", st.Reloads, st.LastReload)
	}

	svcs, err := c.Services(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs.Services) != 2 || len(svcs.Helpers) != 1 {
		t.Fatalf("services %+v", svcs)
	}
	ftp := svcs.Services[0]
	if ftp.VIP != vip || ftp.Scheduler != "rr" || ftp.Helper != "fake" || ftp.Persistence == nil ||
		ftp.Persistence.Prefix4 != 24 || ftp.Persistence.Templates != 1 || ftp.Policy == nil || len(ftp.Servers) != 2 {
		t.Errorf("ftp %+v", ftp)
	}
	var conns, inactive uint64
	for _, rs := range ftp.Servers {
		conns += rs.Conns
		inactive += uint64(rs.Inactive)
	}
	if conns != 1 || inactive != 1 {
		t.Errorf("server counters %+v", ftp.Servers)
	}
	if u := svcs.Services[1]; u.Protocol != "UDP" || u.Scheduler != "wlc" || u.Policy != nil {
		t.Errorf("udp %+v", u)
	}
	if h := svcs.Helpers[0]; h.Match != match || h.VIP.IsValid() || h.Scheduler != "" || len(h.Servers) != 0 {
		t.Errorf("helper %+v", h)
	}

	cs, err := c.Conns(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs.Conns) != 1 {
		t.Fatalf("conns %+v", cs)
	}
	got := cs.Conns[0]
	if got.Protocol != "TCP" || got.State != "SYN_SENT" || got.Client != client || got.VIP != vip ||
		(got.Server != rs1 && got.Server != rs2) || got.Service != "ftp" || got.Helper != "fake" ||
		got.ExpiresIn < 110 || got.ExpiresIn > 120 {
		t.Errorf("conn %+v", got)
	}

	ck, err := c.Check(ctx)
	if err != nil || len(ck.Checks) != 2 || ck.Failed() {
		t.Errorf("check %+v %v", ck, err)
	}
	r, err := c.Rules(ctx)
	if err != nil || !strings.Contains(r.Text, "table inet nfhelper") {
		t.Errorf("rules %+v %v", r, err)
	}

	s.RulesFunc = func(context.Context) (Rules, error) { return Rules{}, errors.New("no nft today") }
	if _, err := c.Rules(ctx); err == nil || err.Error() != "nfhelperd: no nft today" {
		t.Errorf("rules error: %v", err)
	}
	var v any
	if err := c.Get(ctx, "/v1/nothing", &v); err == nil || !strings.Contains(err.Error(), "no such request") {
		t.Errorf("unknown path: %v", err)
	}
}

// TestStatusCounters: every registry counter reaches status and status
// --json by its name, panics and backlogged too (missing there once), and
// the text lists them in registry order.
func TestStatusCounters(t *testing.T) {
	s, e := testServer(t)
	e.Stats.Panics.Add(2)
	e.Stats.Backlogged.Add(3)
	e.Stats.Refused[ipvs.RefuseMalformed].Add(4)
	st, err := NewClient(serve(t, s), 5*time.Second).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cs := ipvs.Counters()
	if len(st.Stats) != len(cs) {
		t.Errorf("%d stats, want %d: %v", len(st.Stats), len(cs), st.Stats)
	}
	for _, c := range cs {
		if v, ok := st.Stats[c.Name]; !ok || v != c.Load(&e.Stats) {
			t.Errorf("stats[%s] = %d, %v; want %d", c.Name, v, ok, c.Load(&e.Stats))
		}
	}
	if st.Stats["panics"] != 2 || st.Stats["backlogged"] != 3 || st.Stats["refused_malformed"] != 4 {
		t.Errorf("stats %v", st.Stats)
	}

	st.Stats["from_a_newer_daemon"] = 9
	var b bytes.Buffer
	WriteStatus(&b, st)
	out := b.String()
	last := -1
	for _, c := range cs {
		i := strings.Index(out, fmt.Sprintf("\n  %-22s %d\n", c.Name, c.Load(&e.Stats)))
		if i < 0 || i < last {
			t.Errorf("%s missing or out of order:\n%s", c.Name, out)
		}
		last = i
	}
	if i := strings.Index(out, fmt.Sprintf("\n  %-22s 9\n", "from_a_newer_daemon")); i < last {
		t.Errorf("unknown counter missing or not last:\n%s", out)
	}
}

func TestJSONShape(t *testing.T) {
	b, err := json.Marshal(Conn{Protocol: "TCP", Client: netip.MustParseAddrPort("192.0.2.1:1"),
		Channels: []Channel{{Kind: "passive", Client: netip.MustParseAddrPort("192.0.2.1:0"), VIP: vip, Server: rs1, ExpiresIn: 299}}})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(b, &m)
	if _, ok := m["client_nat"]; ok {
		t.Errorf("client_nat present though invalid: %s", b)
	}
	if m["client"] != "192.0.2.1:1" {
		t.Errorf("client %v: %s", m["client"], b)
	}
	ch := m["channels"].([]any)[0].(map[string]any)
	if ch["vip"] != "198.51.100.10:21" || ch["expires_in"] != 299.0 {
		t.Errorf("channel %s", b)
	}
	if _, ok := ch["nat"]; ok {
		t.Errorf("nat present though invalid: %s", b)
	}
}

func TestClientNotRunning(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "none.sock")
	_, err := NewClient(missing, time.Second).Status(context.Background())
	var nr *NotRunningError
	if !errors.As(err, &nr) || err.Error() != "nfhelperd is not running (no socket at "+missing+")" {
		t.Errorf("missing socket: %v", err)
	}
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	_, err = NewClient(stale, time.Second).Status(context.Background())
	if !errors.As(err, &nr) || !strings.HasPrefix(err.Error(), "nfhelperd is not running") {
		t.Errorf("stale socket: %v", err)
	}
}

func TestRulesetMistakes(t *testing.T) {
	user := &nftables.Table{Name: "user", Family: nftables.TableFamilyINet}
	netdev := &nftables.Table{Name: "nd", Family: nftables.TableFamilyNetdev}
	helper := &nftables.Rule{Exprs: []expr.Any{&expr.Objref{Type: unix.NFT_OBJECT_CT_HELPER, Name: "ftp-std"}}}
	counter := &nftables.Rule{Exprs: []expr.Any{&expr.Objref{Type: unix.NFT_OBJECT_COUNTER, Name: "c"}}}
	chain := func(t *nftables.Table, name string, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		return &nftables.Chain{Table: t, Name: name, Hooknum: hook, Priority: prio}
	}
	found := RulesetMistakes([]ChainRules{
		{chain(user, "raw_pre", nftables.ChainHookPrerouting, nftables.ChainPriorityRaw), []*nftables.Rule{counter, helper}},
		{chain(user, "raw_out", nftables.ChainHookOutput, nftables.ChainPriorityRef(-250)), []*nftables.Rule{helper}},
		{chain(user, "filter_pre", nftables.ChainHookPrerouting, nftables.ChainPriorityFilter), []*nftables.Rule{helper}},
		{chain(user, "regular", nil, nil), []*nftables.Rule{helper}},
		{chain(user, "raw_fwd", nftables.ChainHookForward, nftables.ChainPriorityRaw), []*nftables.Rule{helper}},
		{chain(netdev, "ingress", nftables.ChainHookPrerouting, nftables.ChainPriorityRaw), []*nftables.Rule{helper}},
	})
	if len(found) != 2 {
		t.Fatalf("found %+v, want raw_pre and raw_out", found)
	}
	for i, want := range []string{"table inet user chain raw_pre (hook prerouting, priority -300)", "chain raw_out (hook output, priority -250)"} {
		if found[i].Status != CheckWarn || !strings.Contains(found[i].Detail, want) || !strings.Contains(found[i].Detail, `"ftp-std"`) {
			t.Errorf("finding %d: %+v, want %q", i, found[i], want)
		}
	}
}

func TestFormat(t *testing.T) {
	var b bytes.Buffer
	WriteServices(&b, &Services{
		Services: []Service{{Name: "ftp", Protocol: "TCP", VIP: vip, Scheduler: "wrr", Helper: "ftp",
			Persistence: &Persistence{TimeoutSeconds: 300, Prefix4: 32, Prefix6: 128},
			Servers:     []RealServer{{Address: rs1, Weight: 2, Active: 1, Inactive: 3, Conns: 7, Packets: 90, Bytes: 12345}}}},
		Helpers: []Service{{Name: "router-ftp", Protocol: "TCP", Match: match, Helper: "ftp",
			Servers: []RealServer{{Address: rs2, Weight: 1, Conns: 2}}}},
	})
	out := b.String()
	for _, want := range []string{
		"TCP  198.51.100.10:21 wrr persistent 300 helper ftp  # ftp",
		"  -> 10.0.0.11:21               2      1          3         7         90          12345",
		"Add-on helpers", "TCP  198.51.100.20:21 helper ftp  # router-ftp", "  -> 10.0.0.12:21 ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("services output lacks %q:\n%s", want, out)
		}
	}

	b.Reset()
	WriteConns(&b, &Conns{Conns: []Conn{{Protocol: "TCP", State: "ESTABLISHED", ExpiresIn: 899,
		Client: netip.MustParseAddrPort("192.0.2.7:40000"), VIP: vip, Server: rs1, Service: "ftp", Helper: "ftp",
		Channels: []Channel{
			{Kind: "passive", Client: netip.MustParseAddrPort("192.0.2.7:0"), VIP: netip.MustParseAddrPort("198.51.100.10:30001"),
				Server: netip.MustParseAddrPort("10.0.0.11:30001"), ExpiresIn: 299},
			{Kind: "active", Client: netip.MustParseAddrPort("192.0.2.7:5001"), VIP: netip.MustParseAddrPort("198.51.100.10:0"),
				Server: netip.MustParseAddrPort("10.0.0.11:0"), ExpiresIn: 61},
		}}}})
	out = b.String()
	for _, want := range []string{
		"TCP 14:59  ESTABLISHED 192.0.2.7:40000",
		"`- passive 192.0.2.7:* -> 198.51.100.10:30001 => 10.0.0.11:30001 expire 04:59",
		"`- active  10.0.0.11:* -> 192.0.2.7:5001 (source 198.51.100.10) expire 01:01",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("conns output lacks %q:\n%s", want, out)
		}
	}
}

func TestQueueWithoutBypass(t *testing.T) {
	user := &nftables.Table{Name: "user", Family: nftables.TableFamilyIPv4}
	ch := &nftables.Chain{Table: user, Name: "fwd", Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter}
	xtInfo := func(num, flags uint16) *xt.Unknown {
		b := make(xt.Unknown, 6)
		binary.NativeEndian.PutUint16(b, num)
		binary.NativeEndian.PutUint16(b[2:], 1)
		binary.NativeEndian.PutUint16(b[4:], flags)
		return &b
	}
	rules := []*nftables.Rule{
		{Exprs: []expr.Any{&expr.Queue{Num: 1, Flag: expr.QueueFlagBypass}}},
		{Exprs: []expr.Any{&expr.Queue{Num: 2}}},
		{Exprs: []expr.Any{&expr.Target{Name: "NFQUEUE", Rev: 3, Info: xtInfo(3, 1)}}},
		{Exprs: []expr.Any{&expr.Target{Name: "NFQUEUE", Rev: 3, Info: xtInfo(4, 2)}}},
		{Exprs: []expr.Any{&expr.Target{Name: "MARK", Rev: 2, Info: xtInfo(5, 0)}}},
	}
	found := RulesetMistakes([]ChainRules{{ch, rules}, {&nftables.Chain{Table: user, Name: "regular"}, rules}})
	if len(found) != 2 || !strings.Contains(found[0].Detail, "queues to 2 without bypass") || !strings.Contains(found[1].Detail, "queues to 4 without bypass") {
		t.Errorf("found %+v", found)
	}
}

func TestKernelChecks(t *testing.T) {
	f := kernel.Features{NativeQueue: kernel.ErrNoNativeQueue, QueueConntrack: kernel.ErrNoQueueConntrack, Cthelper: kernel.ErrNoCthelper, IPVS: kernel.ErrNoIPVS}
	got := KernelChecks(f, "", kernel.DatapathCompat, nil)
	last := got[len(got)-1]
	if len(got) != 9 || last.Name != "datapath" || !strings.Contains(last.Detail, "would run xt-nfqueue+nft-maps (the kernel datapath cannot run here), queueing with the xtables NFQUEUE target") {
		t.Errorf("%+v", got)
	}
	for _, c := range got {
		if c.Status == CheckFail || c.Status == CheckWarn {
			t.Errorf("a missing feature is a problem: %+v", c)
		}
	}
	// Without the kernel's FTP helper the daemon runs, but the check says
	// what fail-open then covers.
	noFTP := f
	noFTP.KernelFTP = fmt.Errorf("%w: module nf_nat_ftp not loaded", kernel.ErrNoKernelFTP)
	warned := false
	for _, c := range KernelChecks(noFTP, "", kernel.DatapathCompat, nil) {
		if c.Name == "kernel-ftp" {
			warned = c.Status == CheckWarn && strings.Contains(c.Detail, "fail-open covers control connections only")
		}
	}
	if !warned {
		t.Errorf("no kernel FTP helper: %+v", KernelChecks(noFTP, "", kernel.DatapathCompat, nil))
	}
	noTFTP := f
	noTFTP.KernelTFTP = fmt.Errorf("%w: module nf_nat_tftp not loaded", kernel.ErrNoKernelTFTP)
	warned = false
	for _, c := range KernelChecks(noTFTP, "", kernel.DatapathCompat, nil) {
		if c.Name == "kernel-tftp" {
			warned = c.Status == CheckWarn && strings.Contains(c.Detail, "new TFTP requests")
		}
	}
	if !warned {
		t.Errorf("no kernel TFTP helper: %+v", KernelChecks(noTFTP, "", kernel.DatapathCompat, nil))
	}
	_, err := kernel.Choose(f, "kernel", false)
	got = KernelChecks(f, "", "", err)
	if last := got[len(got)-1]; last.Status != CheckFail {
		t.Errorf("unavailable override: %+v", last)
	}
	// Neither queue statement: no datapath, and the module is named.
	f.XtQueue = kernel.ErrNoXtQueue
	_, err = kernel.Choose(f, "", true)
	got = KernelChecks(f, "", "", err)
	if last := got[len(got)-1]; last.Status != CheckFail || !strings.Contains(last.Detail, "xt_NFQUEUE") {
		t.Errorf("no queue statement: %+v", last)
	}
	got = KernelChecks(kernel.Features{}, "", kernel.DatapathCompat, nil)
	if last := got[len(got)-1]; !strings.Contains(last.Detail, "queueing with the nft queue expression") {
		t.Errorf("native queue: %+v", last)
	}
	got = KernelChecks(kernel.Features{}, kernel.DatapathCompat, kernel.DatapathKernel, nil)
	if last := got[len(got)-1]; !strings.Contains(last.Detail, "running xt-nfqueue+nft-maps; a restart would choose kernel") {
		t.Errorf("running: %+v", last)
	}
}
