//go:build integration

package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// Kernel-scheduled services (issue 15): rr, wrr, sh and mh are scheduled by
// nftables in the router's kernel, lc (and wlc, sed, nq) still by the
// daemon from the queued SYN. These tests run a daemon of their own (as the
// health tests do, hcEnv.start) against the health fixture's servers
// hs1..hs3, which serve a banner (their name) on the plain TCP ports below
// and echo it on UDP, from listeners of this process in their namespaces.
// Clients connect from many source addresses of the client namespace: the
// hashing schedulers and persistence group clients by address. The same
// scenarios run through a user's plain nft DNAT (numgen, jhash) on another
// VIP, and the log says where the two differ.

const (
	ksVIP4    = "198.51.100.50" // the tests' services
	ksVIP6    = "2001:db8:1::50"
	ksVIP4mh  = "198.51.100.52" // the FTP mh service's
	ksVIP6mh  = "2001:db8:1::52"
	ksVIP4wrr = "198.51.100.53" // the FTP wrr service's
	ksVIP6wrr = "2001:db8:1::53"
	ksVIP4sh  = "198.51.100.54" // the FTP sh service's
	ksVIP6sh  = "2001:db8:1::54"
	ksDNATVIP = "198.51.100.51" // the user's plain nft DNAT, for comparison
	ksTable   = "nfht_ks"       // the user's table (ip family) in the router

	// Ports of the plain services, one per scheduler.
	ksRR, ksWRR, ksSH, ksMH, ksPersist, ksLC, ksUDP, ksSHPort = 8001, 8002, 8003, 8004, 8005, 8006, 8007, 8008

	// ksClients source addresses 203.0.113.100.. on the client.
	// Hashed over three servers, each gets 16 on average; the tests ask for
	// a quarter of that (the hashes are fixed: a spread is the same in
	// every run).
	ksClients = 48
	// ksNets are /24 networks 198.18.N.0 with two client addresses each
	// (.1, .2), for persistence by prefix 24; the router routes
	// 198.18.0.0/16 to the client.
	ksNets = 16
)

var ksFixture struct {
	once sync.Once
	err  error
}

// ksEnv is one kernel-scheduling test's view: the health fixture and the
// daemon the test started.
type ksEnv struct {
	*hcEnv
	d *hcDaemon
}

// needKernelSched sets up the addresses the tests use (once) and returns
// the health fixture.
func needKernelSched(t *testing.T) *ksEnv {
	t.Helper()
	e := needHealth(t)
	ksFixture.once.Do(func() { ksFixture.err = setUpKernelSched(e.tp) })
	if ksFixture.err != nil {
		t.Fatalf("kernel scheduling fixture: %v", ksFixture.err)
	}
	return &ksEnv{hcEnv: e}
}

func setUpKernelSched(tp *topo.Topo) error {
	ctx, cancel := context.WithTimeout(context.Background(), topo.Scaled(30*time.Second))
	defer cancel()
	var r, c strings.Builder
	for _, a := range []string{ksVIP4, ksVIP4mh, ksVIP4wrr, ksVIP4sh, ksDNATVIP} {
		fmt.Fprintf(&r, "addr add %s/32 dev lo\n", a)
	}
	for _, a := range []string{ksVIP6, ksVIP6mh, ksVIP6wrr, ksVIP6sh} {
		fmt.Fprintf(&r, "addr add %s/128 dev lo nodad\n", a)
	}
	r.WriteString("route add 198.18.0.0/16 dev c0\n")
	for _, a := range ksClientAddrs() {
		fmt.Fprintf(&c, "addr add %s/32 dev eth0\n", a)
	}
	for n := range ksNets {
		fmt.Fprintf(&c, "addr add 198.18.%d.1/32 dev eth0\naddr add 198.18.%d.2/32 dev eth0\n", n, n)
	}
	for _, b := range []struct{ ns, script string }{{tp.Router, r.String()}, {tp.Client, c.String()}} {
		cmd := tp.CommandContext(ctx, b.ns, "ip", "-batch", "-")
		cmd.Stdin = strings.NewReader(b.script)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("ip -batch in %s: %w: %s", b.ns, err, out)
		}
	}
	return nil
}

// ksClientAddrs are the client's extra source addresses.
func ksClientAddrs() []netip.Addr {
	var out []netip.Addr
	a := netip.MustParseAddr("203.0.113.100")
	for range ksClients {
		out = append(out, a)
		a = a.Next()
	}
	return out
}

// ksNetAddr is client address i (1 or 2) of network n.
func ksNetAddr(n, i int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("198.18.%d.%d", n, i)) }

// ---- servers ----

// ksServe starts, in s's namespace, a banner server on each TCP port (it
// writes s's name and a newline, then holds the connection until the
// client closes it) and a UDP echo server on each UDP port (it answers
// every datagram with s's name). stop closes the listeners (new
// connections are refused; connections already accepted go on); the test's
// end closes everything.
func (e *ksEnv) ksServe(s *hcServer, tcpPorts []int, udpPorts []int) (stop func()) {
	t := e.t
	t.Helper()
	var mu sync.Mutex
	var closers []io.Closer
	var conns []net.Conn
	for _, p := range tcpPorts {
		ln, err := topo.ListenIn(s.NS, "tcp4", ":"+strconv.Itoa(p))
		if err != nil {
			t.Fatalf("banner server %s:%d: %v", s.Name, p, err)
		}
		closers = append(closers, ln)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
				go func() {
					defer c.Close()
					if _, err := io.WriteString(c, s.Name+"\n"); err == nil {
						_, _ = io.Copy(io.Discard, c)
					}
				}()
			}
		}()
	}
	for _, p := range udpPorts {
		var pc net.PacketConn
		err := topo.Do(s.NS, func() (err error) {
			pc, err = net.ListenPacket("udp4", ":"+strconv.Itoa(p))
			return err
		})
		if err != nil {
			t.Fatalf("udp echo %s:%d: %v", s.Name, p, err)
		}
		closers = append(closers, pc)
		go func() {
			buf := make([]byte, 2048)
			for {
				_, peer, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo([]byte(s.Name), peer)
			}
		}()
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			for _, c := range closers {
				c.Close()
			}
		})
	}
	t.Cleanup(func() {
		stop()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return stop
}

// ---- clients ----

// ksDial opens a TCP connection from src (the client's own address when
// invalid) to addr and reads the banner: the server's name.
func (e *ksEnv) ksDial(src netip.Addr, addr string) (net.Conn, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), topo.Scaled(5*time.Second))
	defer cancel()
	var c net.Conn
	err := topo.Do(e.tp.Client, func() error {
		var d net.Dialer
		if src.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return nil, "", err
	}
	_ = c.SetReadDeadline(time.Now().Add(topo.Scaled(5 * time.Second)))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		c.Close()
		return nil, "", fmt.Errorf("banner from %s: %w", addr, err)
	}
	_ = c.SetReadDeadline(time.Time{})
	return c, strings.TrimSpace(line), nil
}

// ksConnect is one short connection (closed with a reset: no TIME_WAIT):
// which server answered.
func (e *ksEnv) ksConnect(src netip.Addr, addr string) (string, error) {
	c, name, err := e.ksDial(src, addr)
	if err != nil {
		return "", err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
	return name, nil
}

// mustConnect is ksConnect that fails the test on error.
func (e *ksEnv) mustConnect(src netip.Addr, addr string) string {
	e.t.Helper()
	name, err := e.ksConnect(src, addr)
	if err != nil {
		e.t.Fatalf("connect %s -> %s: %v", src, addr, err)
	}
	return name
}

// sequence makes n connections one after the other from the client's own
// address and returns the servers in order.
func (e *ksEnv) sequence(addr string, n int) []string {
	e.t.Helper()
	var seq []string
	for range n {
		seq = append(seq, e.mustConnect(netip.Addr{}, addr))
	}
	return seq
}

// udpFlows sends two datagrams on each of n flows (a socket each, so a new
// source port each) to addr and returns the server of each flow; a flow
// whose two answers came from different servers, or not from addr, fails
// the test.
// ksUDPPort counts the client ports udpFlows used: each flow gets a new
// one in this test binary's run, from 20001 on, below the ephemeral range.
var ksUDPPort atomic.Uint32

func (e *ksEnv) udpFlows(addr string, n int) []string {
	t := e.t
	t.Helper()
	var seq []string
	for i := range n {
		var who []string
		err := topo.Do(e.tp.Client, func() error {
			// A port of its own: an ephemeral one may be the last flow's
			// again, whose conntrack entry (and server) it would reuse.
			to, err := net.ResolveUDPAddr("udp4", addr)
			if err != nil {
				return err
			}
			c, err := net.DialUDP("udp4", &net.UDPAddr{Port: 20000 + int(ksUDPPort.Add(1))}, to)
			if err != nil {
				return err
			}
			defer c.Close()
			buf := make([]byte, 64)
			for j := range 2 {
				if _, err := fmt.Fprintf(c, "flow %d datagram %d", i, j); err != nil {
					return err
				}
				_ = c.SetReadDeadline(time.Now().Add(topo.Scaled(3 * time.Second)))
				k, err := c.Read(buf) // a connected socket takes answers from addr only
				if err != nil {
					return err
				}
				who = append(who, string(buf[:k]))
			}
			return nil
		})
		if err != nil {
			t.Fatalf("udp flow %d to %s: %v", i, addr, err)
		}
		if who[0] != who[1] {
			t.Errorf("udp flow %d moved from %s to %s", i, who[0], who[1])
		}
		seq = append(seq, who[0])
	}
	return seq
}

// ---- checks ----

// ksCounts tallies servers.
func ksCounts(seq []string) map[string]int {
	m := map[string]int{}
	for _, s := range seq {
		m[s]++
	}
	return m
}

// ksCycle asserts exact shares over every run of consecutive
// connections as long as one cycle: every window of sum(want) consecutive
// entries of seq holds each server exactly want[server] times (rr: each
// once; wrr 3:1: three and one).
func ksCycle(t *testing.T, what string, seq []string, want map[string]int) {
	t.Helper()
	size := 0
	for _, n := range want {
		size += n
	}
	if len(seq) < size {
		t.Fatalf("%s: %d connections, fewer than a cycle of %d", what, len(seq), size)
	}
	for i := 0; i+size <= len(seq); i++ {
		got := ksCounts(seq[i : i+size])
		if !ksEqual(got, want) {
			t.Errorf("%s: connections %d..%d went %v, want %v (every cycle exact); whole sequence %v", what, i, i+size-1, got, want, seq)
			return
		}
	}
	t.Logf("%s: %v over %d connections, every window of %d exact", what, ksCounts(seq), len(seq), size)
}

// ksEqual compares two tallies.
func ksEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// bySource connects twice from each address (the same server both times,
// or the test fails) and returns each address's server.
func (e *ksEnv) bySource(addr string, srcs []netip.Addr) map[netip.Addr]string {
	t := e.t
	t.Helper()
	out := map[netip.Addr]string{}
	for _, src := range srcs {
		a, b := e.mustConnect(src, addr), e.mustConnect(src, addr)
		if a != b {
			t.Errorf("%s: client %s went to %s, then %s", addr, src, a, b)
		}
		out[src] = a
	}
	return out
}

// ksSpread asserts that every server of names got at least min of the
// clients and no other server got any.
func ksSpread(t *testing.T, what string, m map[netip.Addr]string, names []string, min int) {
	t.Helper()
	per := map[string]int{}
	for _, s := range m {
		per[s]++
	}
	for s := range per {
		if !slices.Contains(names, s) {
			t.Errorf("%s: server %s took clients: %v", what, s, per)
		}
	}
	for _, s := range names {
		if per[s] < min {
			t.Errorf("%s: server %s took %d of %d clients, want at least %d: %v", what, s, per[s], len(m), min, per)
		}
	}
	t.Logf("%s: %d clients by server %v", what, len(m), per)
}

// ksQueued is the number of packets the router's kernel queued to the
// daemon so far: the sum of id_sequence over the queues of
// /proc/net/netfilter/nfnetlink_queue (in the router's namespace; it
// starts anew when the daemon binds its queues).
func ksQueued(t *testing.T) uint64 {
	t.Helper()
	out, _, err := execIn(t, 10*time.Second, harness.tp.Router, nil, "cat", "/proc/net/netfilter/nfnetlink_queue")
	if err != nil {
		t.Fatalf("nfnetlink_queue: %v", err)
	}
	var sum uint64
	lines := 0
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		n, err := strconv.ParseUint(f[7], 10, 64)
		if err != nil {
			t.Fatalf("nfnetlink_queue line %q: %v", line, err)
		}
		sum += n
		lines++
	}
	if lines == 0 {
		t.Fatalf("no queue bound in the router:\n%s", out)
	}
	return sum
}

// scheduling reads `nfhelperctl --json services` and returns, per service
// name, who schedules it (scheduled_by: "kernel" or "daemon"), and the
// services' JSON.
func (e *ksEnv) scheduling() (map[string]string, string) {
	t := e.t
	t.Helper()
	var v struct {
		Services []struct {
			Name        string `json:"name"`
			ScheduledBy string `json:"scheduled_by"`
		} `json:"services"`
	}
	code, out, errOut := nfhelperctl(t, e.tp.ControlSocket(), "--json", "services")
	if code != 0 {
		t.Fatalf("nfhelperctl --json services: exit %d\n%s%s", code, out, errOut)
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("nfhelperctl --json services: %v\n%s", err, out)
	}
	m := map[string]string{}
	for _, s := range v.Services {
		m[s.Name] = s.ScheduledBy
	}
	return m, out
}

// checkScheduling asserts who schedules each service named in want.
func (e *ksEnv) checkScheduling(want map[string]string) {
	t := e.t
	t.Helper()
	got, out := e.scheduling()
	for name, w := range want {
		if got[name] != w {
			t.Errorf("nfhelperctl services: %s scheduled by %q, want %q\n%s", name, got[name], w, out)
		}
	}
	_, text, _ := nfhelperctl(t, e.tp.ControlSocket(), "services")
	t.Logf("nfhelperctl services:\n%s", text)
}

// ksNftMaps lists, with nft -j, what args name in the router's namespace
// and returns the number of elements of each map of table inet nfhelper.
func ksNftMaps(t *testing.T, args ...string) map[string]int {
	t.Helper()
	out, errOut, err := execIn(t, 30*time.Second, harness.tp.Router, nil, "nft", append([]string{"-j"}, args...)...)
	if err != nil {
		t.Fatalf("nft -j %s: %v %s", strings.Join(args, " "), err, errOut)
	}
	var v struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("nft -j: %v", err)
	}
	m := map[string]int{}
	for _, obj := range v.Nftables {
		raw, ok := obj["map"]
		if !ok {
			continue
		}
		var s struct {
			Name  string            `json:"name"`
			Table string            `json:"table"`
			Elem  []json.RawMessage `json:"elem"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatalf("nft -j map: %v", err)
		}
		if s.Table == "nfhelper" {
			m[s.Name] = len(s.Elem)
		}
	}
	return m
}

// ksElements is the element count of the one map of table inet nfhelper
// named prefix..suffix (-1, and the test fails, if there is not exactly
// one). The map's name comes from a terse listing and only that map is
// listed with its elements: a listing that takes long never ends while the
// daemon renews its liveness element.
func ksElements(t *testing.T, prefix, suffix string) int {
	t.Helper()
	var names []string
	for name := range ksNftMaps(t, "-t", "list", "maps", "inet") {
		if strings.HasPrefix(name, prefix) && strings.HasSuffix(name, suffix) {
			names = append(names, name)
		}
	}
	if len(names) != 1 {
		t.Errorf("maps %s*%s in table inet nfhelper: %v, want one", prefix, suffix, names)
		return -1
	}
	return ksNftMaps(t, "list", "map", "inet", "nfhelper", names[0])[names[0]]
}

// userDNAT installs the user's table ip nfht_ks in the router with the
// rules given (a chain at the dstnat hook) and deletes it when the test
// ends.
func (e *ksEnv) userDNAT(rules ...string) {
	t := e.t
	t.Helper()
	script := fmt.Sprintf("table ip %s {\n chain dstnat {\n  type nat hook prerouting priority dstnat; policy accept;\n  %s\n }\n}\n",
		ksTable, strings.Join(rules, "\n  "))
	if err := nftScript(t, e.tp.Router, script); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if out, err := e.tp.Run(context.Background(), e.tp.Router, "nft", "delete", "table", "ip", ksTable); err != nil {
			t.Errorf("delete table ip %s: %v %s", ksTable, err, out)
		}
	})
}

// ---- configuration ----

// ksService is one plain service: scheduler, protocol (tcp unless udp),
// port on ksVIP4, extra service keys (YAML lines indented by 4) and its
// servers, each "address" or "address weight".
func ksService(name, proto, sched string, port int, extra string, servers ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "  - name: %s\n    vip: %s:%d\n    scheduler: %s\n", name, ksVIP4, port, sched)
	if proto == "udp" {
		b.WriteString("    protocol: udp\n")
	}
	b.WriteString(extra)
	b.WriteString("    real_servers:\n")
	for _, s := range servers {
		addr, w, _ := strings.Cut(s, " ")
		fmt.Fprintf(&b, "      - address: %s:%d\n", addr, port)
		if w != "" {
			fmt.Fprintf(&b, "        weight: %s\n", w)
		}
	}
	return b.String()
}

// ksNames lists the servers' names.
func ksNames(servers ...*hcServer) []string {
	var out []string
	for _, s := range servers {
		out = append(out, s.Name)
	}
	return out
}

// ksAddr is the tests' VIP at port.
func ksAddr(port int) string { return net.JoinHostPort(ksVIP4, strconv.Itoa(port)) }

// ---- tests ----

// TestKernelSchedShares: rr, wrr (3:1), sh, sh with sh_port, mh (table
// size 251) and rr over UDP are scheduled in the kernel: exact shares over
// every cycle (rr, wrr), the same client always on the same server and
// clients spread (sh, mh), and the daemon is handed none of their packets
// (not even the servers' SYN-ACKs, though an FTP service, whose SYN-ACKs
// the compat datapath queues, has the same servers at port 21);
// lc is still scheduled by the daemon from the queued SYN (its packets do
// move the queue: the check can fail). nfhelperctl services names who
// schedules each and counts the kernel-scheduled connections from
// conntrack. The same through plain nft DNAT (numgen, jhash) for
// comparison.
func TestKernelSchedShares(t *testing.T) {
	e := needKernelSched(t)
	hs1, hs2, hs3 := e.servers[0], e.servers[1], e.servers[2]
	all := []string{hs1.V4, hs2.V4, hs3.V4}
	tcp := []int{ksRR, ksWRR, ksSH, ksMH, ksLC, ksSHPort}
	for _, s := range e.servers {
		e.ksServe(s, tcp, []int{ksUDP})
	}
	e.d = e.start(hcConfig(
		ksService("k-rr", "tcp", "rr", ksRR, "", all...),
		ksService("k-wrr", "tcp", "wrr", ksWRR, "", hs1.V4+" 3", hs2.V4+" 1"),
		ksService("k-sh", "tcp", "sh", ksSH, "", all...),
		ksService("k-shport", "tcp", "sh", ksSHPort, "    sh_port: true\n", all...),
		ksService("k-mh", "tcp", "mh", ksMH, "    mh_table_size: 251\n", all...),
		ksService("k-udp", "udp", "rr", ksUDP, "", all...),
		ksService("d-lc", "tcp", "lc", ksLC, "", all...),
		ksFTPService("k-ftp", ksVIP4, "rr", "", false, hs1.V4, hs2.V4, hs3.V4),
	), "")
	e.checkScheduling(map[string]string{"k-rr": "kernel", "k-wrr": "kernel", "k-sh": "kernel", "k-shport": "kernel",
		"k-mh": "kernel", "k-udp": "kernel", "d-lc": "daemon", "k-ftp": "kernel"})
	if n := ksElements(t, "slots_", fmt.Sprintf("_%d", ksMH)); n != 251 {
		t.Errorf("mh with mh_table_size 251: its slots map has %d elements, want 251", n)
	}
	names := ksNames(hs1, hs2, hs3)

	q0 := ksQueued(t)
	start := time.Now()
	ksCycle(t, "rr", e.sequence(ksAddr(ksRR), 30), map[string]int{hs1.Name: 1, hs2.Name: 1, hs3.Name: 1})
	ksCycle(t, "wrr 3:1", e.sequence(ksAddr(ksWRR), 40), map[string]int{hs1.Name: 3, hs2.Name: 1})
	ksCycle(t, "udp rr", e.udpFlows(ksAddr(ksUDP), 30), map[string]int{hs1.Name: 1, hs2.Name: 1, hs3.Name: 1})
	clients := ksClientAddrs()
	sh := e.bySource(ksAddr(ksSH), clients)
	ksSpread(t, "sh", sh, names, ksClients/12)
	mh := e.bySource(ksAddr(ksMH), clients)
	ksSpread(t, "mh", mh, names, ksClients/12)
	// sh_port hashes the source port too: one client spreads.
	if c := ksCounts(e.sequence(ksAddr(ksSHPort), 30)); len(c) < 2 {
		t.Errorf("sh with sh_port: 30 connections from one client all went to %v", c)
	}
	kernelTook := time.Since(start)
	if q := ksQueued(t); q != q0 {
		t.Errorf("the kernel-scheduled services' connections queued %d packets to the daemon, want none", q-q0)
	} else {
		t.Logf("kernel-scheduled: %d connections and 30 UDP flows in %v, 0 packets queued", 30+40+2*2*ksClients+30, kernelTook.Round(time.Millisecond))
	}
	// lc: each SYN goes up to the daemon.
	q1 := ksQueued(t)
	lc := e.sequence(ksAddr(ksLC), 10)
	if q := ksQueued(t); q < q1+10 {
		t.Errorf("lc: 10 connections queued %d packets, want at least their 10 SYNs", q-q1)
	} else {
		t.Logf("lc (daemon-scheduled): 10 connections queued %d packets; servers %v", q-q1, ksCounts(lc))
	}

	// Connections counted from conntrack: six held on k-rr.
	var held []net.Conn
	for range 6 {
		c, _, err := e.ksDial(netip.Addr{}, ksAddr(ksRR))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	e.waitActive("k-rr", all, ksRR, 6)
	for _, c := range held {
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	e.waitActive("k-rr", all, ksRR, 0)

	// The same through the user's own DNAT.
	e.userDNAT(
		fmt.Sprintf("ip daddr %s tcp dport %d dnat to numgen inc mod 3 map { 0 : %s, 1 : %s, 2 : %s }", ksDNATVIP, ksRR, hs1.V4, hs2.V4, hs3.V4),
		fmt.Sprintf("ip daddr %s tcp dport %d dnat to numgen inc mod 4 map { 0-2 : %s, 3 : %s }", ksDNATVIP, ksWRR, hs1.V4, hs2.V4),
		fmt.Sprintf("ip daddr %s tcp dport %d dnat to jhash ip saddr mod 3 seed 0x1 map { 0 : %s, 1 : %s, 2 : %s }", ksDNATVIP, ksSH, hs1.V4, hs2.V4, hs3.V4),
	)
	dv := func(port int) string { return net.JoinHostPort(ksDNATVIP, strconv.Itoa(port)) }
	start = time.Now()
	ksCycle(t, "plain DNAT numgen mod 3", e.sequence(dv(ksRR), 30), map[string]int{hs1.Name: 1, hs2.Name: 1, hs3.Name: 1})
	ksCycle(t, "plain DNAT numgen mod 4 (0-2, 3)", e.sequence(dv(ksWRR), 40), map[string]int{hs1.Name: 3, hs2.Name: 1})
	ksSpread(t, "plain DNAT jhash ip saddr", e.bySource(dv(ksSH), clients), names, ksClients/12)
	t.Logf("plain DNAT: %d connections in %v", 30+40+2*ksClients, time.Since(start).Round(time.Millisecond))
	t.Logf("compared with plain nft DNAT: the same exact rr/wrr cycles and the same stickiness by source; " +
		"nfhelperd also counts the connections per server (conntrack), keeps weights, quiesce and down servers " +
		"in the slot maps (TestKernelSchedWeights, TestKernelSchedServerDown) and persists by prefix (TestKernelSchedPersistence), " +
		"which the user's rules do not")
}

// waitActive waits until the active connections nfhelperctl counts for
// svc's servers (addresses at port) add up to n.
func (e *ksEnv) waitActive(svc string, addrs []string, port, n int) {
	t := e.t
	t.Helper()
	var last map[string]int64
	for end := time.Now().Add(topo.Scaled(10 * time.Second)); ; time.Sleep(50 * time.Millisecond) {
		all, err := e.d.services()
		if err != nil {
			t.Fatal(err)
		}
		sum := int64(0)
		last = map[string]int64{}
		for _, a := range addrs {
			rs := all[svc][net.JoinHostPort(a, strconv.Itoa(port))]
			sum += rs.Active
			last[a] = rs.Active
		}
		if sum == int64(n) {
			t.Logf("%s: %d active connections counted: %v", svc, n, last)
			return
		}
		if time.Now().After(end) {
			t.Fatalf("%s: active connections %v, want %d in all", svc, last, n)
		}
	}
}

// TestKernelSchedWeights: weights change by reload and by nfhelperctl
// server ... weight; wrr's shares follow at once (when the reload or the
// command returns) and exactly, a quiesced server (weight 0, by reload or
// by command) gets no new connections and the others share them.
func TestKernelSchedWeights(t *testing.T) {
	e := needKernelSched(t)
	hs1, hs2, hs3 := e.servers[0], e.servers[1], e.servers[2]
	for _, s := range e.servers {
		e.ksServe(s, []int{ksRR, ksWRR}, nil)
	}
	cfg := func(w1, w2 int) string {
		return hcConfig(
			ksService("k-rr", "tcp", "rr", ksRR, "", hs1.V4, hs2.V4, hs3.V4),
			ksService("k-wrr", "tcp", "wrr", ksWRR, "", fmt.Sprintf("%s %d", hs1.V4, w1), fmt.Sprintf("%s %d", hs2.V4, w2)),
		)
	}
	e.d = e.start(cfg(3, 1), "")
	q0 := ksQueued(t)
	ksCycle(t, "wrr 3:1", e.sequence(ksAddr(ksWRR), 40), map[string]int{hs1.Name: 3, hs2.Name: 1})

	e.d.reload(cfg(1, 3))
	ksCycle(t, "wrr 1:3 after reload", e.sequence(ksAddr(ksWRR), 40), map[string]int{hs1.Name: 1, hs2.Name: 3})
	e.d.reload(cfg(0, 3))
	if c := ksCounts(e.sequence(ksAddr(ksWRR), 20)); c[hs2.Name] != 20 {
		t.Errorf("wrr with %s quiesced by reload (weight 0): %v, want all on %s", hs1.Name, c, hs2.Name)
	}

	// The command's weight overrides the configuration's.
	e.mustCtl("k-wrr", hs1.V4+":"+strconv.Itoa(ksWRR), "weight", "5")
	ksCycle(t, "wrr 5:3 after nfhelperctl weight 5", e.sequence(ksAddr(ksWRR), 40), map[string]int{hs1.Name: 5, hs2.Name: 3})

	e.mustCtl("k-wrr", hs1.V4+":"+strconv.Itoa(ksWRR), "weight", "0")
	if c := ksCounts(e.sequence(ksAddr(ksWRR), 20)); c[hs2.Name] != 20 {
		t.Errorf("wrr with %s quiesced (weight 0): %v, want all on %s", hs1.Name, c, hs2.Name)
	}
	e.mustCtl("k-rr", hs2.V4+":"+strconv.Itoa(ksRR), "weight", "0")
	ksCycle(t, "rr with hs2 quiesced", e.sequence(ksAddr(ksRR), 20), map[string]int{hs1.Name: 1, hs3.Name: 1})

	// Weight 1 again gives hs2 its share back.
	e.mustCtl("k-rr", hs2.V4+":"+strconv.Itoa(ksRR), "weight", "1")
	ksCycle(t, "rr with hs2 back", e.sequence(ksAddr(ksRR), 30), map[string]int{hs1.Name: 1, hs2.Name: 1, hs3.Name: 1})
	if q := ksQueued(t); q != q0 {
		t.Errorf("kernel-scheduled connections queued %d packets to the daemon, want none", q-q0)
	}
}

// TestKernelSchedPersistence: rr with persistence by /24 (prefix4 24):
// every client of a network goes to the network's server, new networks are
// shared round robin, the templates are counted (nfhelperctl, the persist
// map) and survive a restart and a hand-over of the daemon. A quiesced
// server keeps its clients (IPVS's expire_quiescent_template=0) but gets
// no new ones; an operator's down moves its clients.
func TestKernelSchedPersistence(t *testing.T) {
	e := needKernelSched(t)
	hs1, hs2, hs3 := e.servers[0], e.servers[1], e.servers[2]
	for _, s := range e.servers {
		e.ksServe(s, []int{ksPersist}, nil)
	}
	persist := "    persistence:\n      timeout: 300s\n      prefix4: 24\n"
	e.d = e.start(hcConfig(ksService("k-persist", "tcp", "rr", ksPersist, persist, hs1.V4, hs2.V4, hs3.V4)), t.TempDir())
	e.checkScheduling(map[string]string{"k-persist": "kernel"})
	addr := ksAddr(ksPersist)
	q0 := ksQueued(t)

	// networks connects from both addresses of networks first..last-1,
	// twice each, and returns each network's server.
	networks := func(first, last int) map[int]string {
		t.Helper()
		m := map[int]string{}
		for n := first; n < last; n++ {
			got := []string{
				e.mustConnect(ksNetAddr(n, 1), addr), e.mustConnect(ksNetAddr(n, 2), addr),
				e.mustConnect(ksNetAddr(n, 1), addr), e.mustConnect(ksNetAddr(n, 2), addr),
			}
			if c := ksCounts(got); len(c) != 1 {
				t.Errorf("network 198.18.%d.0/24 went to %v, want one server", n, got)
			}
			m[n] = got[0]
		}
		return m
	}
	same := func(what string, want map[int]string) {
		t.Helper()
		got := networks(0, len(want))
		for n, s := range want {
			if got[n] != s {
				t.Errorf("%s: network %d went to %s, before to %s", what, n, got[n], s)
			}
		}
	}
	templates := func(want int) {
		t.Helper()
		rs := -1
		for end := time.Now().Add(topo.Scaled(5 * time.Second)); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			if rs = e.templates("k-persist"); rs == want {
				break
			}
		}
		if rs != want {
			t.Errorf("nfhelperctl services: %d templates, want %d", rs, want)
		}
		if n := ksElements(t, "persist_", fmt.Sprintf("_%d", ksPersist)); n != want {
			t.Errorf("the persist map holds %d templates, want %d", n, want)
		} else {
			t.Logf("%d templates (nfhelperctl and the persist map)", n)
		}
	}

	const first = 6
	owner := networks(0, first)
	per := map[string]int{}
	for _, s := range owner {
		per[s]++
	}
	// The misses are scheduled round robin: 6 networks, 2 per server.
	if !ksEqual(per, map[string]int{hs1.Name: 2, hs2.Name: 2, hs3.Name: 2}) {
		t.Errorf("6 networks by server: %v, want 2 each (rr over the misses)", per)
	}
	t.Logf("6 networks, both addresses twice each: network -> server %v", owner)
	templates(first)
	if q := ksQueued(t); q != q0 {
		t.Errorf("persistent kernel-scheduled connections queued %d packets, want none", q-q0)
	}

	e.d.restart()
	same("after a restart", owner)
	templates(first)
	e.d.handOver()
	same("after a hand-over", owner)
	templates(first)
	t.Logf("after a restart and a hand-over every network is on its server")

	// Quiesce the server of network 0: it keeps its networks, takes no new.
	victim := owner[0]
	vaddr := ""
	for _, s := range e.servers {
		if s.Name == victim {
			vaddr = s.V4 + ":" + strconv.Itoa(ksPersist)
		}
	}
	e.mustCtl("k-persist", vaddr, "weight", "0")
	same("with "+victim+" quiesced", owner)
	fresh := networks(first, first+4)
	for n, s := range fresh {
		if s == victim {
			t.Errorf("new network %d went to the quiesced %s", n, s)
		}
	}
	t.Logf("%s quiesced: its networks stay, 4 new ones went to %v", victim, fresh)
	templates(first + 4)

	// Down: its templates go, its networks move; the others stay.
	e.mustCtl("k-persist", vaddr, "down")
	moved := networks(0, first)
	for n, s := range moved {
		switch {
		case s == victim:
			t.Errorf("network %d still on %s, which is down", n, s)
		case owner[n] != victim && s != owner[n]:
			t.Errorf("network %d moved from %s to %s though its server is up", n, owner[n], s)
		}
	}
	t.Logf("%s down: networks now %v", victim, moved)
}

// templates is the persistence template count nfhelperctl reports for svc
// (-1 without persistence).
func (e *ksEnv) templates(svc string) int {
	t := e.t
	t.Helper()
	var v struct {
		Services []struct {
			Name        string `json:"name"`
			Persistence *struct {
				Templates int `json:"templates"`
			} `json:"persistence"`
		} `json:"services"`
	}
	ctlJSON(t, e.tp.ControlSocket(), "services", &v)
	for _, s := range v.Services {
		if s.Name == svc && s.Persistence != nil {
			return s.Persistence.Templates
		}
	}
	return -1
}

// TestKernelSchedServerDown: a server's listener stops; the tcp check
// takes it down and its clients go to the others at once: sh's (all
// clients hashed anew over the two left), mh's (only the down server's
// clients move, nearly), and a persistent service's (its templates go).
// When it is back, sh and mh give every client its first server again.
// A user's plain DNAT over the same servers keeps sending clients to the
// stopped server: refused.
func TestKernelSchedServerDown(t *testing.T) {
	e := needKernelSched(t)
	hs1, hs2, hs3 := e.servers[0], e.servers[1], e.servers[2]
	ports := []int{ksSH, ksMH, ksPersist}
	stops := map[*hcServer]func(){}
	for _, s := range e.servers {
		stops[s] = e.ksServe(s, ports, nil)
	}
	check := "    health_check:\n" + ksIndent(rhythm("tcp"), "      ")
	persist := "    persistence:\n      timeout: 300s\n      prefix4: 24\n"
	all := []string{hs1.V4, hs2.V4, hs3.V4}
	e.d = e.start(hcConfig(
		ksService("k-sh", "tcp", "sh", ksSH, check, all...),
		ksService("k-mh", "tcp", "mh", ksMH, check, all...),
		ksService("k-persist", "tcp", "rr", ksPersist, check+persist, all...),
	), "")
	for _, svc := range []struct {
		name string
		port int
	}{{"k-sh", ksSH}, {"k-mh", ksMH}, {"k-persist", ksPersist}} {
		for _, s := range e.servers {
			e.d.waitState(svc.name, s.V4+":"+strconv.Itoa(svc.port), "up", 5*time.Second)
		}
	}
	e.userDNAT(fmt.Sprintf("ip daddr %s tcp dport %d dnat to jhash ip saddr mod 3 seed 0x1 map { 0 : %s, 1 : %s, 2 : %s }",
		ksDNATVIP, ksSH, hs1.V4, hs2.V4, hs3.V4))
	clients := ksClientAddrs()
	sh0 := e.bySource(ksAddr(ksSH), clients)
	mh0 := e.bySource(ksAddr(ksMH), clients)
	var nets []netip.Addr
	for n := range 6 {
		nets = append(nets, ksNetAddr(n, 1))
	}
	p0 := e.bySource(ksAddr(ksPersist), nets)

	stops[hs2]()
	for _, svc := range []struct {
		name string
		port int
	}{{"k-sh", ksSH}, {"k-mh", ksMH}, {"k-persist", ksPersist}} {
		_, took := e.d.waitState(svc.name, hs2.V4+":"+strconv.Itoa(svc.port), "down", 10*time.Second)
		t.Logf("%s: %s down %v after its listener closed", svc.name, hs2.Name, took.Round(time.Millisecond))
	}
	// The checks' verdict reaches the kernel's slot maps in a batch of its
	// own: wait (polling) until a client of hs2 is answered by another.
	for _, c := range []struct {
		what string
		port int
		by   map[netip.Addr]string
	}{{"sh", ksSH, sh0}, {"mh", ksMH, mh0}, {"persistence", ksPersist, p0}} {
		e.waitMoved(c.what, ksAddr(c.port), c.by, hs2.Name)
	}
	left := ksNames(hs1, hs3)
	sh1 := e.bySource(ksAddr(ksSH), clients)
	ksSpread(t, "sh, hs2 down", sh1, left, ksClients/6)
	mh1 := e.bySource(ksAddr(ksMH), clients)
	ksSpread(t, "mh, hs2 down", mh1, left, ksClients/6)
	stay, movedOthers := 0, 0
	for c, s := range mh0 {
		if s == hs2.Name {
			continue
		}
		stay++
		if mh1[c] != s {
			movedOthers++
		}
	}
	t.Logf("mh: %d of the %d clients of hs1 and hs3 moved when hs2 went down", movedOthers, stay)
	if movedOthers*5 > stay {
		t.Errorf("mh: %d of %d clients whose server stayed up moved (Maglev's disruption should be small)", movedOthers, stay)
	}
	p1 := e.bySource(ksAddr(ksPersist), nets)
	for c, s := range p1 {
		switch {
		case s == hs2.Name:
			t.Errorf("persistent client %s still on %s, which is down", c, s)
		case p0[c] != hs2.Name && s != p0[c]:
			t.Errorf("persistent client %s moved from %s to %s though its server is up", c, p0[c], s)
		}
	}
	refused := 0
	for _, c := range clients {
		if _, err := e.ksConnect(c, net.JoinHostPort(ksDNATVIP, strconv.Itoa(ksSH))); err != nil {
			if !isRefused(err) {
				t.Errorf("plain DNAT from %s: %v", c, err)
			}
			refused++
		}
	}
	t.Logf("plain DNAT (jhash over the three, no checks) with hs2 stopped: %d of %d clients refused; nfhelperd: none", refused, len(clients))
	if refused == 0 {
		t.Errorf("plain DNAT refused no client with hs2 stopped: the comparison shows nothing (hs2 not stopped?)")
	}

	e.ksServe(hs2, ports, nil)
	for _, svc := range []struct {
		name string
		port int
	}{{"k-sh", ksSH}, {"k-mh", ksMH}} {
		e.d.waitState(svc.name, hs2.V4+":"+strconv.Itoa(svc.port), "up", 10*time.Second)
	}
	for what, m := range map[string]map[netip.Addr]string{"sh": sh0, "mh": mh0} {
		port := ksSH
		if what == "mh" {
			port = ksMH
		}
		back := e.bySource(ksAddr(port), clients)
		diff := 0
		for c, s := range m {
			if back[c] != s {
				diff++
			}
		}
		if diff > 0 {
			t.Errorf("%s: %d clients on another server than before hs2 went down and came back (the tables are deterministic)", what, diff)
		}
	}
}

// waitMoved polls, from a client that by names as being on server, until
// a connection to addr succeeds (reaches another server), and logs how
// long that took.
func (e *ksEnv) waitMoved(what, addr string, by map[netip.Addr]string, server string) {
	t := e.t
	t.Helper()
	var src netip.Addr
	for c, s := range by {
		if s == server {
			src = c
			break
		}
	}
	if !src.IsValid() {
		t.Fatalf("%s: no client was on %s: %v", what, server, by)
	}
	start := time.Now()
	for failed := 0; ; failed++ {
		got, err := e.ksConnect(src, addr)
		switch {
		case err == nil && got != server:
			t.Logf("%s: client %s moved from %s to %s %v after the check's verdict (%d connections failed meanwhile)",
				what, src, server, got, time.Since(start).Round(time.Millisecond), failed)
			return
		case err == nil:
			t.Fatalf("%s: client %s still reached %s, which is down", what, src, server)
		case time.Since(start) > topo.Scaled(5*time.Second):
			t.Fatalf("%s: client %s of %s still fails %v after the check's verdict: %v", what, src, server, time.Since(start), err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ksIndent prefixes every line of s.
func ksIndent(s, prefix string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		b.WriteString(prefix + l + "\n")
	}
	return b.String()
}

// ksFTPService is an FTP service at vip:21 (IPv4 or IPv6) over the
// servers' port 21 (addresses, without brackets).
func ksFTPService(name, vip, sched, extra string, v6 bool, servers ...string) string {
	host := vip + ":21"
	if v6 {
		host = "\"[" + vip + "]:21\""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "  - name: %s\n    vip: %s\n    scheduler: %s\n    helper: ftp\n%s    real_servers:\n", name, host, sched, extra)
	for _, s := range servers {
		// "address*weight" gives the server a weight.
		s, weight, weighted := strings.Cut(s, "*")
		if v6 {
			s = "\"[" + s + "]:21\""
		} else {
			s += ":21"
		}
		fmt.Fprintf(&b, "      - address: %s\n", s)
		if weighted {
			fmt.Fprintf(&b, "        weight: %s\n", weight)
		}
	}
	return b.String()
}

// TestKernelSchedFTP: FTP through services of each kernel-scheduled
// scheduler, rr, wrr (rs1 weight 2, rs2 1) and sh without persistence and
// mh with it, IPv4 and IPv6: every data mode with the Go client and curl
// (big.bin by hash, the 227 naming the VIP, active data from the VIP);
// rr's and wrr's control connections follow their exact cycles, sh's and
// mh's client stays on one server. On the compat datapath the daemon picks
// the control connection up at the server's SYN-ACK, on the kernel
// datapath at the first queued packet: it never sees the SYN.
func TestKernelSchedFTP(t *testing.T) {
	tp := needTopo(t)
	if harness.daemonBin == "" {
		t.Skip(harness.noDaemon)
	}
	ksFixture.once.Do(func() { ksFixture.err = setUpKernelSched(tp) })
	if ksFixture.err != nil {
		t.Fatalf("kernel scheduling fixture: %v", ksFixture.err)
	}
	e := &ksEnv{hcEnv: &hcEnv{t: t, tp: tp}}
	persist := "    persistence:\n      timeout: 300s\n"
	e.d = e.start(hcConfig(
		ksFTPService("kftp-rr", ksVIP4, "rr", "", false, topo.RS1V4, topo.RS2V4),
		ksFTPService("kftp-rr6", ksVIP6, "rr", "", true, topo.RS1V6, topo.RS2V6),
		ksFTPService("kftp-wrr", ksVIP4wrr, "wrr", "", false, topo.RS1V4+"*2", topo.RS2V4+"*1"),
		ksFTPService("kftp-wrr6", ksVIP6wrr, "wrr", "", true, topo.RS1V6+"*2", topo.RS2V6+"*1"),
		ksFTPService("kftp-sh", ksVIP4sh, "sh", "", false, topo.RS1V4, topo.RS2V4),
		ksFTPService("kftp-sh6", ksVIP6sh, "sh", "", true, topo.RS1V6, topo.RS2V6),
		ksFTPService("kftp-mh", ksVIP4mh, "mh", persist, false, topo.RS1V4, topo.RS2V4),
		ksFTPService("kftp-mh6", ksVIP6mh, "mh", persist, true, topo.RS1V6, topo.RS2V6),
	), "")
	e.checkScheduling(map[string]string{"kftp-rr": "kernel", "kftp-rr6": "kernel", "kftp-wrr": "kernel", "kftp-wrr6": "kernel",
		"kftp-sh": "kernel", "kftp-sh6": "kernel", "kftp-mh": "kernel", "kftp-mh6": "kernel"})
	for _, c := range []struct {
		name, v4, v6 string
		cycle        map[string]int // nil: one client, one server
	}{
		{"rr", ksVIP4, ksVIP6, map[string]int{"rs1": 1, "rs2": 1}},
		{"wrr", ksVIP4wrr, ksVIP6wrr, map[string]int{"rs1": 2, "rs2": 1}},
		{"sh", ksVIP4sh, ksVIP6sh, nil},
		{"mh-persistent", ksVIP4mh, ksVIP6mh, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			tg := target{ns: tp.Client, host4: c.v4, host6: c.v6, pasv4: c.v4, peer4: c.v4, peer6: c.v6}
			q0 := ksQueued(t)
			start := time.Now()
			runMatrix(t, tg, "go")
			runMatrix(t, tg, "curl")
			t.Logf("12 sessions (big.bin each) in %v, %d packets queued", time.Since(start).Round(time.Millisecond), ksQueued(t)-q0)
			for _, host := range []string{c.v4, c.v6} {
				seq := make([]string, 0, 6)
				for range 6 {
					r := runFtpget(t, tp.Client, net.JoinHostPort(host, "21"), "epsv", "server.txt", 1)
					seq = append(seq, strings.TrimSpace(r.results[0].Content))
				}
				if c.cycle == nil {
					if len(ksCounts(seq)) != 1 {
						t.Errorf("%s %s: one client's sessions went to %v", host, c.name, seq)
					} else {
						t.Logf("%s %s: the client's %d sessions all went to %s", host, c.name, len(seq), seq[0])
					}
					continue
				}
				ksCycle(t, host+" "+c.name, seq, c.cycle)
			}
		})
	}
}

// TestKernelSchedDaemonKilled: the kernel-scheduled services need no
// daemon. After a kill -9 (the table stays), rr keeps its exact cycle and
// a persistent client its server.
func TestKernelSchedDaemonKilled(t *testing.T) {
	e := needKernelSched(t)
	hs1, hs2, hs3 := e.servers[0], e.servers[1], e.servers[2]
	for _, s := range e.servers {
		e.ksServe(s, []int{ksRR, ksPersist}, nil)
	}
	all := []string{hs1.V4, hs2.V4, hs3.V4}
	persist := "    persistence:\n      timeout: 300s\n      prefix4: 24\n"
	e.d = e.start(hcConfig(
		ksService("k-rr", "tcp", "rr", ksRR, "", all...),
		ksService("k-persist", "tcp", "rr", ksPersist, persist, all...),
	), "")
	var nets []netip.Addr
	for n := range 6 {
		nets = append(nets, ksNetAddr(n, 1))
	}
	before := e.bySource(ksAddr(ksPersist), nets)
	if err := e.d.Kill(); err != nil {
		t.Fatal(err)
	}
	ksCycle(t, "rr, daemon killed", e.sequence(ksAddr(ksRR), 30), map[string]int{hs1.Name: 1, hs2.Name: 1, hs3.Name: 1})
	after := e.bySource(ksAddr(ksPersist), nets)
	for c, s := range before {
		if after[c] != s {
			t.Errorf("persistent client %s: %s before the kill, %s after", c, s, after[c])
		}
	}
}
