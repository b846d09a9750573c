//go:build integration

package nft

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/internal/netnstest"
	"github.com/nfhelper/nfhelper/kernel"
)

// ktopo: a client namespace (addresses 10.99.0.2-17, 10.98.0.2 and
// fd99::2-3) and a server namespace (10.0.0.11-13, fd00::11-12, each
// answering with its own address and the MSS it sends with) on either
// side of the router, whose loopback holds the VIPs 198.51.100.10 and
// 2001:db8:1::10.
type ktopo struct {
	router, client, server string
	c                      *nftables.Conn
}

var (
	kServers  = []string{"10.0.0.11", "10.0.0.12", "10.0.0.13", "fd00::11", "fd00::12"}
	kVIP      = netip.MustParseAddr("198.51.100.10")
	kVIP6     = netip.MustParseAddr("2001:db8:1::10")
	kClients  = clientAddrs()
	kClient6  = []netip.Addr{netip.MustParseAddr("fd99::2"), netip.MustParseAddr("fd99::3")}
	kFarAway  = netip.MustParseAddr("10.98.0.2")
	kSrvPorts = []int{21, 53, 80, 81, 82}
)

func clientAddrs() []netip.Addr {
	var as []netip.Addr
	for i := 2; i < 18; i++ {
		as = append(as, netip.AddrFrom4([4]byte{10, 99, 0, byte(i)}))
	}
	return as
}

func newKTopo(t *testing.T) *ktopo {
	tp := &ktopo{}
	tp.router, tp.c = testNetns(t)
	tp.client = netnstest.New(t, "nfht-kc-")
	tp.server = netnstest.New(t, "nfht-ks-")
	in := func(ns, cmd string) string { return "ip netns exec " + ns + " " + cmd }
	cmds := []string{}
	for _, ns := range []string{tp.router, tp.client, tp.server} {
		cmds = append(cmds, in(ns, "sysctl -qw net.ipv6.conf.default.accept_dad=0"), in(ns, "sysctl -qw net.ipv6.conf.all.accept_dad=0"))
	}
	cmds = append(cmds,
		"ip link add nfkc0 netns "+tp.client+" type veth peer name nfkr0 netns "+tp.router,
		"ip link add nfks0 netns "+tp.server+" type veth peer name nfkr1 netns "+tp.router,
		in(tp.router, "ip addr add 10.99.0.1/24 dev nfkr0"), in(tp.router, "ip addr add fd99::1/64 dev nfkr0 nodad"),
		in(tp.router, "ip addr add 10.0.0.1/24 dev nfkr1"), in(tp.router, "ip addr add fd00::1/64 dev nfkr1 nodad"),
		in(tp.router, "ip addr add 198.51.100.10/32 dev lo"), in(tp.router, "ip addr add 2001:db8:1::10/128 dev lo nodad"),
		in(tp.router, "ip link set nfkr0 up"), in(tp.router, "ip link set nfkr1 up"),
		in(tp.router, "sysctl -qw net.ipv4.ip_forward=1"), in(tp.router, "sysctl -qw net.ipv6.conf.all.forwarding=1"),
		in(tp.router, "ip route add 10.98.0.0/24 via 10.99.0.2"),
		in(tp.client, "ip link set nfkc0 up"), in(tp.client, "ip addr add 10.98.0.2/24 dev nfkc0"),
		in(tp.server, "ip link set nfks0 up"),
	)
	for i, a := range kClients {
		if i == 0 {
			cmds = append(cmds, in(tp.client, "ip addr add "+a.String()+"/24 dev nfkc0"))
		} else {
			cmds = append(cmds, in(tp.client, "ip addr add "+a.String()+"/32 dev nfkc0"))
		}
	}
	for _, a := range kClient6 {
		cmds = append(cmds, in(tp.client, "ip addr add "+a.String()+"/64 dev nfkc0 nodad"))
	}
	for i, a := range kServers {
		pfx := "/24"
		if strings.Contains(a, ":") {
			pfx = "/64 nodad"
		}
		if i != 0 && i != 3 {
			pfx = "/32"
			if strings.Contains(a, ":") {
				pfx = "/128 nodad"
			}
		}
		cmds = append(cmds, in(tp.server, "ip addr add "+a+pfx+" dev nfks0"))
	}
	cmds = append(cmds,
		in(tp.client, "ip route add default via 10.99.0.1"), in(tp.client, "ip -6 route add default via fd99::1"),
		in(tp.server, "ip route add default via 10.0.0.1"), in(tp.server, "ip -6 route add default via fd00::1"),
	)
	sh(t, cmds...)
	for _, a := range kServers {
		for _, p := range kSrvPorts {
			tp.serveAddr(t, "tcp", net.JoinHostPort(a, strconv.Itoa(p)))
			tp.serveAddr(t, "udp", net.JoinHostPort(a, strconv.Itoa(p)))
		}
	}
	return tp
}

// serveAddr answers every TCP connection or UDP datagram to addr in the
// server namespace with "address mss".
func (tp *ktopo) serveAddr(t *testing.T, network, addr string) {
	var l net.Listener
	var pc net.PacketConn
	var err error
	inNetns(t, tp.server, func() {
		if network == "udp" {
			pc, err = net.ListenPacket(network, addr)
		} else {
			l, err = net.Listen(network, addr)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if pc != nil {
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 64)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo([]byte(pc.LocalAddr().String()+" 0\n"), from)
			}
		}()
		return
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			mss := 0
			if rc, err := conn.(*net.TCPConn).SyscallConn(); err == nil {
				rc.Control(func(fd uintptr) { mss, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG) })
			}
			fmt.Fprintf(conn, "%s %d\n", conn.LocalAddr(), mss)
			conn.Close()
		}
	}()
}

// dial connects from src in the client namespace to dst and returns the
// server's answer: its address (and the MSS it sends with).
func (tp *ktopo) dial(t *testing.T, network string, src netip.Addr, dst netip.AddrPort) (string, int) {
	t.Helper()
	var line string
	var err error
	inNetns(t, tp.client, func() {
		d := net.Dialer{Timeout: 2 * time.Second}
		if network == "udp" {
			d.LocalAddr = &net.UDPAddr{IP: src.AsSlice()}
		} else {
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
		var conn net.Conn
		if conn, err = d.Dial(network, dst.String()); err != nil {
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		if network == "udp" {
			conn.Write([]byte("x"))
		}
		line, err = bufio.NewReader(conn).ReadString('\n')
	})
	if err != nil {
		t.Fatalf("%s %v -> %v: %v", network, src, dst, err)
	}
	f := strings.Fields(line)
	mss, _ := strconv.Atoi(f[1])
	ap := netip.MustParseAddrPort(f[0])
	return ap.Addr().String(), mss
}

// refused: a connection from src to dst is refused at once.
func (tp *ktopo) refused(t *testing.T, src netip.Addr, dst netip.AddrPort) bool {
	var err error
	inNetns(t, tp.client, func() {
		d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
		var conn net.Conn
		if conn, err = d.Dial("tcp", dst.String()); err == nil {
			conn.Close()
		}
	})
	return err != nil && strings.Contains(err.Error(), syscall.ECONNREFUSED.Error())
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func kSpec(svcs ...Service) *Spec {
	return &Spec{Table: "nfhelper", QueueNum: 100, QueueTotal: 1, MarkMask: 0x00ff0000, Services: svcs}
}

func install(t *testing.T, c *nftables.Conn, spec *Spec) *Ruleset {
	t.Helper()
	spec.NativeQueue = kernel.ProbeNativeQueue(c) == nil
	rs, err := Install(c, spec)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// TestKernelCounter: rr and wrr services share connections exactly by
// their runs, over TCP and UDP; no SYN is queued (nothing reads the
// queue: one would stall or be dropped) and a service without servers
// refuses.
func TestKernelCounter(t *testing.T) {
	tp := newKTopo(t)
	s1, s2 := ap("10.0.0.11:80"), ap("10.0.0.12:80")
	u1, u2 := ap("10.0.0.11:53"), ap("10.0.0.12:53")
	install(t, tp.c, kSpec(
		Service{VIP: netip.AddrPortFrom(kVIP, 80), Servers: []Server{{Addr: s1, Weight: 1}, {Addr: s2, Weight: 1}},
			Kernel: &KernelSched{By: ByCounter, Size: 2, Slots: []SlotRun{{0, 0, s1}, {1, 1, s2}}}},
		Service{VIP: netip.AddrPortFrom(kVIP, 81), Servers: []Server{{Addr: ap("10.0.0.11:81"), Weight: 3}, {Addr: ap("10.0.0.12:81"), Weight: 1}},
			Kernel: &KernelSched{By: ByCounter, Size: 4, Slots: []SlotRun{{0, 2, ap("10.0.0.11:81")}, {3, 3, ap("10.0.0.12:81")}}}},
		Service{VIP: netip.AddrPortFrom(kVIP, 53), UDP: true, Servers: []Server{{Addr: u1, Weight: 1}, {Addr: u2, Weight: 1}},
			Kernel: &KernelSched{By: ByCounter, Size: 2, Slots: []SlotRun{{0, 0, u1}, {1, 1, u2}}}},
		Service{VIP: netip.AddrPortFrom(kVIP, 82), Kernel: &KernelSched{By: ByCounter, Size: 1}},
	))
	var rr, wrr, udp []string
	for i := range 8 {
		a, _ := tp.dial(t, "tcp", kClients[i], netip.AddrPortFrom(kVIP, 80))
		rr = append(rr, a)
		a, _ = tp.dial(t, "tcp", kClients[0], netip.AddrPortFrom(kVIP, 81))
		wrr = append(wrr, a)
		a, _ = tp.dial(t, "udp", kClients[i], netip.AddrPortFrom(kVIP, 53))
		udp = append(udp, a)
	}
	alt := "10.0.0.11 10.0.0.12 10.0.0.11 10.0.0.12 10.0.0.11 10.0.0.12 10.0.0.11 10.0.0.12"
	if got := strings.Join(rr, " "); got != alt {
		t.Errorf("rr: %s", got)
	}
	if got := strings.Join(udp, " "); got != alt {
		t.Errorf("udp rr: %s", got)
	}
	if got := strings.Join(wrr, " "); got != "10.0.0.11 10.0.0.11 10.0.0.11 10.0.0.12 10.0.0.11 10.0.0.11 10.0.0.11 10.0.0.12" {
		t.Errorf("wrr 3:1: %s", got)
	}
	if !tp.refused(t, kClients[0], netip.AddrPortFrom(kVIP, 82)) {
		t.Error("a service without servers did not refuse")
	}
}

// TestKernelHash: sh (by source) and mh (by source and port) services
// send a client to the same server every time, spread clients over the
// servers, and do so again after a reinstall (the hash seed is fixed).
func TestKernelHash(t *testing.T) {
	tp := newKTopo(t)
	s1, s2 := ap("10.0.0.11:80"), ap("10.0.0.12:80")
	v1, v2 := ap("[fd00::11]:80"), ap("[fd00::12]:80")
	m1, m2 := ap("10.0.0.11:81"), ap("10.0.0.12:81")
	spec := kSpec(
		Service{VIP: netip.AddrPortFrom(kVIP, 80), Servers: []Server{{Addr: s1, Weight: 1}, {Addr: s2, Weight: 1}},
			Kernel: &KernelSched{By: BySource, Size: 256, Slots: []SlotRun{{0, 127, s1}, {128, 255, s2}}}},
		Service{VIP: netip.AddrPortFrom(kVIP6, 80), Servers: []Server{{Addr: v1, Weight: 1}, {Addr: v2, Weight: 1}},
			Kernel: &KernelSched{By: BySource, Size: 256, Slots: []SlotRun{{0, 99, v1}, {100, 255, v2}}}},
		Service{VIP: netip.AddrPortFrom(kVIP, 81), Servers: []Server{{Addr: m1, Weight: 1}, {Addr: m2, Weight: 1}},
			Kernel: &KernelSched{By: BySourcePort, Size: 251, Slots: alternating(251, m1, m2)}},
	)
	install(t, tp.c, spec)
	first := map[netip.Addr]string{}
	for round := range 2 {
		for _, cl := range kClients {
			a, _ := tp.dial(t, "tcp", cl, netip.AddrPortFrom(kVIP, 80))
			if round == 0 {
				first[cl] = a
			} else if a != first[cl] {
				t.Errorf("sh: client %v went to %s, then to %s", cl, first[cl], a)
			}
		}
		if round == 0 {
			// The same again after a reinstall.
			install(t, tp.c, spec)
		}
	}
	if n := countOf(first, "10.0.0.11"); n == 0 || n == len(kClients) {
		t.Errorf("sh: %d of %d clients on 10.0.0.11", n, len(kClients))
	}
	for _, cl := range kClient6 {
		a, _ := tp.dial(t, "tcp", cl, netip.AddrPortFrom(kVIP6, 80))
		if b, _ := tp.dial(t, "tcp", cl, netip.AddrPortFrom(kVIP6, 80)); a != b || !strings.HasPrefix(a, "fd00::1") {
			t.Errorf("sh over IPv6: %s then %s", a, b)
		}
	}
	// By source and port: one client's connections spread.
	seen := map[string]int{}
	for range 16 {
		a, _ := tp.dial(t, "tcp", kClients[0], netip.AddrPortFrom(kVIP, 81))
		seen[a]++
	}
	if len(seen) != 2 {
		t.Errorf("mh by source and port: one client's connections went to %v", seen)
	}
}

// alternating runs of 7 slots over a and b.
func alternating(size uint32, a, b netip.AddrPort) []SlotRun {
	var runs []SlotRun
	for first := uint32(0); first < size; first += 7 {
		s := a
		if first/7%2 == 1 {
			s = b
		}
		runs = append(runs, SlotRun{first, min(first+6, size-1), s})
	}
	return runs
}

func countOf(m map[netip.Addr]string, v string) int {
	n := 0
	for _, x := range m {
		if x == v {
			n++
		}
	}
	return n
}

// TestKernelPersistence: a template (per /24) keeps a client's network on
// its server past rr; Templates counts them; a reinstall carries them; a
// server down loses its templates in the update's batch.
func TestKernelPersistence(t *testing.T) {
	tp := newKTopo(t)
	s1, s2 := ap("10.0.0.11:80"), ap("10.0.0.12:80")
	vip := netip.AddrPortFrom(kVIP, 80)
	svc := Service{VIP: vip, Servers: []Server{{Addr: s1, Weight: 1}, {Addr: s2, Weight: 1}},
		Kernel: &KernelSched{By: ByCounter, Size: 2, Slots: []SlotRun{{0, 0, s1}, {1, 1, s2}},
			Persist: &Persist{Timeout: time.Minute, Prefix4: 24, Prefix6: 64}}}
	rs := install(t, tp.c, kSpec(svc))
	a, _ := tp.dial(t, "tcp", kClients[0], vip) // slot 0
	b, _ := tp.dial(t, "tcp", kFarAway, vip)    // slot 1
	if a != "10.0.0.11" || b != "10.0.0.12" {
		t.Fatalf("first connections went to %s and %s", a, b)
	}
	for _, cl := range kClients[:6] {
		if got, _ := tp.dial(t, "tcp", cl, vip); got != a {
			t.Errorf("client %v of the first one's /24 went to %s", cl, got)
		}
	}
	if got, _ := tp.dial(t, "tcp", kFarAway, vip); got != b {
		t.Errorf("the other network's client went to %s", got)
	}
	if n, err := rs.Templates(tp.c, vip, false); n != 2 || err != nil {
		t.Errorf("Templates: %d, %v", n, err)
	}
	out, _ := nftList(t, tp.router, "list", "map", "inet", "nfhelper", "persist_"+kernelID(vip, false))
	if !regexp.MustCompile(`10\.99\.0\.0 (timeout 1m )?expires`).MatchString(out) || !strings.Contains(out, ": 10.0.0.11 . 80") {
		t.Errorf("persistence map:\n%s", out)
	}

	// A restart: the counter starts again at slot 0 (10.0.0.11), the
	// carried template still sends the other network to 10.0.0.12.
	carried, err := ReadStale(tp.c, "nfhelper")
	if err != nil {
		t.Fatal(err)
	}
	spec := kSpec(svc)
	spec.Carried = carried
	rs = install(t, tp.c, spec)
	if got, _ := tp.dial(t, "tcp", kFarAway, vip); got != b {
		t.Errorf("after a restart the other network's client went to %s", got)
	}
	if n, _ := rs.Templates(tp.c, vip, false); n != 2 {
		t.Errorf("%d templates after a restart", n)
	}

	// 10.0.0.11 goes down: its template goes in the update.
	down := svc
	down.Servers = []Server{{Addr: s1, Weight: 0, Down: true}, {Addr: s2, Weight: 1}}
	down.Kernel = &KernelSched{By: ByCounter, Size: 1, Slots: []SlotRun{{0, 0, s2}}, Persist: svc.Kernel.Persist}
	if err := rs.Update(tp.c, kSpec(down)); err != nil {
		t.Fatal(err)
	}
	if n, _ := rs.Templates(tp.c, vip, false); n != 1 {
		t.Errorf("%d templates after a server went down, want 1", n)
	}
	if got, _ := tp.dial(t, "tcp", kClients[1], vip); got != "10.0.0.12" {
		t.Errorf("after 10.0.0.11 went down: %s", got)
	}

	// Both down: the sorry server takes every connection and gets no
	// template; the down servers' templates are gone.
	sorry := down
	sorry.Servers = []Server{{Addr: s1, Down: true}, {Addr: s2, Down: true}}
	sorry.Sorry = &Server{Addr: ap("10.0.0.13:80")}
	sorry.Kernel = &KernelSched{By: ByCounter, Size: 1, Persist: svc.Kernel.Persist}
	if err := rs.Update(tp.c, kSpec(sorry)); err != nil {
		t.Fatal(err)
	}
	for _, cl := range []netip.Addr{kClients[0], kFarAway} {
		if got, _ := tp.dial(t, "tcp", cl, vip); got != "10.0.0.13" {
			t.Errorf("with every server down %v went to %s", cl, got)
		}
	}
	if n, _ := rs.Templates(tp.c, vip, false); n != 0 {
		t.Errorf("%d templates with only the sorry server", n)
	}
}

// TestKernelUpdateDiff: an update changes only the slot map elements that
// changed (nft monitor counts them), and connections follow the new maps;
// a service changes its key kind, gains persistence, goes and comes back.
func TestKernelUpdateDiff(t *testing.T) {
	tp := newKTopo(t)
	s1, s2, s3 := ap("10.0.0.11:80"), ap("10.0.0.12:80"), ap("10.0.0.13:80")
	h1, h2 := ap("10.0.0.11:81"), ap("10.0.0.12:81")
	wrr := func(runs ...SlotRun) Service {
		return Service{VIP: netip.AddrPortFrom(kVIP, 80), Servers: []Server{{Addr: s1, Weight: 1}, {Addr: s2, Weight: 1}, {Addr: s3, Weight: 1}},
			Kernel: &KernelSched{By: ByCounter, Size: runs[len(runs)-1].Last + 1, Slots: runs}}
	}
	mh := func(runs []SlotRun) Service {
		return Service{VIP: netip.AddrPortFrom(kVIP, 81), Servers: []Server{{Addr: h1, Weight: 1}, {Addr: h2, Weight: 1}},
			Kernel: &KernelSched{By: BySource, Size: 251, Slots: runs}}
	}
	hashRuns := alternating(251, h1, h2)
	rs := install(t, tp.c, kSpec(wrr(SlotRun{0, 4, s1}, SlotRun{5, 9, s2}, SlotRun{10, 14, s3}), mh(hashRuns)))

	// Boundaries move (a run shrinks, the next grows) and one hash slot
	// run (7 slots) changes server.
	changed := append([]SlotRun(nil), hashRuns...)
	changed[3].Server = h1
	next := kSpec(wrr(SlotRun{0, 4, s1}, SlotRun{5, 7, s2}, SlotRun{8, 14, s3}), mh(changed))
	events := tp.monitor(t, func() {
		if err := rs.Update(tp.c, next); err != nil {
			t.Fatal(err)
		}
	})
	wrrMap, mhMap := "slots_"+kernelID(netip.AddrPortFrom(kVIP, 80), false), "slots_"+kernelID(netip.AddrPortFrom(kVIP, 81), false)
	// Two runs of the interval map out and in (a start and an end each);
	// seven hash slots out and in.
	if d, a := events.count("delete", wrrMap), events.count("add", wrrMap); d != 2 || a != 2 {
		t.Errorf("interval map: %d deleted, %d added elements, want 2 runs each:\n%s", d, a, events)
	}
	if d, a := events.count("delete", mhMap), events.count("add", mhMap); d != 7 || a != 7 {
		t.Errorf("hash map: %d deleted, %d added elements, want 7 each:\n%s", d, a, events)
	}
	var got []string
	for range 15 {
		a, _ := tp.dial(t, "tcp", kClients[0], netip.AddrPortFrom(kVIP, 80))
		got = append(got, strings.TrimPrefix(a, "10.0.0."))
	}
	// The counter kept counting: it went on from 0.
	if s := strings.Join(got, " "); s != "11 11 11 11 11 12 12 12 13 13 13 13 13 13 13" {
		t.Errorf("wrr after the update: %s", s)
	}

	// The wrr service becomes sh with persistence, the hash one goes.
	sh := wrr(SlotRun{0, 127, s1}, SlotRun{128, 255, s3})
	sh.Kernel.By, sh.Kernel.Persist = BySource, &Persist{Timeout: time.Minute}
	if err := rs.Update(tp.c, kSpec(sh)); err != nil {
		t.Fatal(err)
	}
	a, _ := tp.dial(t, "tcp", kClients[0], netip.AddrPortFrom(kVIP, 80))
	if b, _ := tp.dial(t, "tcp", kClients[0], netip.AddrPortFrom(kVIP, 80)); a != b || a == "10.0.0.12" {
		t.Errorf("sh after the change: %s then %s", a, b)
	}
	if n, _ := rs.Templates(tp.c, netip.AddrPortFrom(kVIP, 80), false); n != 1 {
		t.Errorf("%d templates", n)
	}
	if out, _ := nftList(t, tp.router, "list", "table", "inet", "nfhelper"); strings.Contains(out, mhMap) {
		t.Errorf("the removed service's map is still there")
	}
	if !tp.refused(t, kClients[0], netip.AddrPortFrom(kVIP, 81)) {
		t.Error("the removed service's VIP did not refuse")
	}
	// Back again; the other loses its persistence, then goes.
	noPers := sh
	noPers.Kernel = &KernelSched{By: BySource, Size: 256, Slots: sh.Kernel.Slots}
	if err := rs.Update(tp.c, kSpec(noPers, mh(hashRuns))); err != nil {
		t.Fatal(err)
	}
	if err := rs.Update(tp.c, kSpec(sh, mh(hashRuns))); err != nil {
		t.Fatal(err)
	}
	if err := rs.Update(tp.c, kSpec(mh(hashRuns))); err != nil {
		t.Fatal(err)
	}
	if a, _ := tp.dial(t, "tcp", kClients[0], netip.AddrPortFrom(kVIP, 81)); a != "10.0.0.11" && a != "10.0.0.12" {
		t.Errorf("the service back: %s", a)
	}
	if out, err := nftList(t, tp.router, "list", "table", "inet", "nfhelper"); err != nil {
		t.Errorf("nft list after the updates: %v\n%s", err, out)
	}
}

type monitorLog string

// count is how many elements of set the log shows kind ("add" or
// "delete") events for.
func (l monitorLog) count(kind, set string) int {
	n := 0
	for _, line := range strings.Split(string(l), "\n") {
		if !strings.HasPrefix(line, kind+" element inet nfhelper "+set+" ") {
			continue
		}
		body := line[strings.Index(line, "{")+1 : strings.LastIndex(line, "}")]
		n += len(strings.Split(body, ","))
	}
	return n
}

// monitor runs f under nft monitor in the router namespace. A marker
// element, added and deleted before and after, tells when the monitor
// listens and when it has seen everything.
func (tp *ktopo) monitor(t *testing.T, f func()) monitorLog {
	cmd := exec.Command("ip", "netns", "exec", tp.router, "nft", "monitor", "elements")
	out := &syncBuilder{}
	cmd.Stdout = out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	mark := func(port int) {
		el := fmt.Sprintf("{ udp . 192.0.2.1 . %d }", port)
		for start := time.Now(); time.Since(start) < 20*time.Second; {
			sh(t, "ip netns exec "+tp.router+" nft add element inet nfhelper kvips4 '"+el+"'",
				"ip netns exec "+tp.router+" nft delete element inet nfhelper kvips4 '"+el+"'")
			time.Sleep(100 * time.Millisecond)
			if strings.Contains(out.String(), fmt.Sprintf("192.0.2.1 . %d", port)) {
				return
			}
		}
		t.Fatal("nft monitor saw no marker")
	}
	mark(1)
	f()
	mark(2)
	return monitorLog(out.String())
}

type syncBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuilder) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuilder) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestKernelKeepAlive: a heartbeat restarts the alive element's timeout,
// also once it expired, without a ruleset transaction (the generation
// stays), and leaves no conntrack entry.
func TestKernelKeepAlive(t *testing.T) {
	ns, c := testNetns(t)
	sh(t, "ip -n "+ns+" link set lo up")
	rs := install(t, c, kSpec())
	left := func() time.Duration {
		els, err := c.GetSetElements(rs.alive)
		if err != nil || len(els) == 0 {
			return 0
		}
		return els[0].Expires
	}
	beat := func() {
		inNetns(t, ns, func() {
			if err := Heartbeat(); err != nil {
				t.Error(err)
			}
		})
	}
	gen, err := c.GetGen()
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(AliveTimeout / 2)
	if l := left(); l > AliveTimeout/2+100*time.Millisecond || l == 0 {
		t.Fatalf("alive has %v left", l)
	}
	beat()
	if l := left(); l < AliveTimeout-200*time.Millisecond {
		t.Errorf("after a heartbeat alive has %v left", l)
	}
	// Waiting out the timeout is what is tested.
	time.Sleep(AliveTimeout + 200*time.Millisecond)
	if l := left(); l != 0 {
		t.Errorf("alive still there: %v left", l)
	}
	beat()
	if l := left(); l < AliveTimeout-200*time.Millisecond {
		t.Errorf("after a late heartbeat alive has %v left", l)
	}
	if now, err := c.GetGen(); err != nil || now.ID != gen.ID {
		t.Errorf("heartbeats changed the ruleset's generation: %v -> %v (%v)", gen.ID, now.ID, err)
	}
	if out, err := exec.Command("ip", "netns", "exec", ns, "conntrack", "-L").CombinedOutput(); err != nil || strings.Contains(string(out), "dport=9 ") {
		t.Errorf("a heartbeat left a conntrack entry (%v):\n%s", err, out)
	}
	// (Debian's 6.1 also shows the element's timeout, equal to the set's.)
	if out, err := nftList(t, ns, "list", "set", "inet", "nfhelper", "alive"); err != nil || !regexp.MustCompile(`elements = \{ tcp (timeout 1s )?expires`).MatchString(out) {
		t.Errorf("%v\n%s", err, out)
	}
}

// TestKernelHelped: a helped kernel-scheduled service on the compat
// datapath lowers the client's MSS, marks its connections FollowMark
// (a plain one's not) and gives the kernel's FTP helper only while the
// daemon is not alive; on the kernel datapath (the kernel's helper
// standing in for the daemon's) the helper only while it is.
func TestKernelHelped(t *testing.T) {
	tp := newKTopo(t)
	f1, p1 := ap("10.0.0.11:21"), ap("10.0.0.11:80")
	ftp, plain := netip.AddrPortFrom(kVIP, 21), netip.AddrPortFrom(kVIP, 80)
	spec := kSpec(
		Service{VIP: ftp, Helped: true, Servers: []Server{{Addr: f1, Weight: 1}}, Kernel: &KernelSched{By: ByCounter, Size: 1, Slots: []SlotRun{{0, 0, f1}}}},
		Service{VIP: plain, Servers: []Server{{Addr: p1, Weight: 1}}, Kernel: &KernelSched{By: ByCounter, Size: 1, Slots: []SlotRun{{0, 0, p1}}}},
	)
	spec.KernelFTP, spec.MSSRoom = true, 576
	install(t, tp.c, spec)
	_, mss := tp.dial(t, "tcp", kClients[0], ftp)
	if mss > 880 || mss < 800 {
		t.Errorf("the server sends segments of %d bytes, want 880 less options", mss)
	}
	if _, mss := tp.dial(t, "tcp", kClients[1], plain); mss < 1400 {
		t.Errorf("a plain service's MSS was lowered to %d", mss)
	}
	if ct := tp.conntrack(t, kClients[0], 21); !strings.Contains(ct, "mark=67108864") || strings.Contains(ct, "helper=") {
		t.Errorf("helped connection with the daemon alive:\n%s", ct)
	}
	if ct := tp.conntrack(t, kClients[1], 80); !strings.Contains(ct, "mark=0 ") {
		t.Errorf("plain connection:\n%s", ct)
	}
	sh(t, "ip netns exec "+tp.router+" nft flush set inet nfhelper alive")
	tp.dial(t, "tcp", kClients[2], ftp)
	if ct := tp.conntrack(t, kClients[2], 21); !strings.Contains(ct, "helper=ftp") || !strings.Contains(ct, "mark=83886080") {
		t.Errorf("helped connection with the daemon gone:\n%s", ct)
	}

	// The kernel datapath.
	spec.KernelFTP, spec.CtHelper = false, KernelFTPHelper
	install(t, tp.c, spec)
	tp.dial(t, "tcp", kClients[3], ftp)
	if ct := tp.conntrack(t, kClients[3], 21); !strings.Contains(ct, "helper=ftp") {
		t.Errorf("kernel datapath, daemon alive:\n%s", ct)
	}
	sh(t, "ip netns exec "+tp.router+" nft flush set inet nfhelper alive")
	tp.dial(t, "tcp", kClients[4], ftp)
	if ct := tp.conntrack(t, kClients[4], 21); strings.Contains(ct, "helper=") {
		t.Errorf("kernel datapath, daemon gone:\n%s", ct)
	}
	inNetns(t, tp.router, func() {
		if err := Heartbeat(); err != nil {
			t.Error(err)
		}
	})
	tp.dial(t, "tcp", kClients[5], ftp)
	if ct := tp.conntrack(t, kClients[5], 21); !strings.Contains(ct, "helper=ftp") {
		t.Errorf("kernel datapath, daemon back:\n%s", ct)
	}
}

// conntrack lists the router's connections from src to the VIP's port.
func (tp *ktopo) conntrack(t *testing.T, src netip.Addr, port int) string {
	out, err := exec.Command("ip", "netns", "exec", tp.router, "conntrack", "-L", "-p", "tcp", "-s", src.String(),
		"-d", kVIP.String(), "--dport", strconv.Itoa(port)).CombinedOutput()
	if err != nil {
		t.Fatalf("conntrack: %v: %s", err, out)
	}
	return string(out)
}

// TestKernelLargeTables: an mh table of 65537 slots over 10 servers (both
// families) installs, and one server leaving changes about its share by
// difference, in one batch, quickly enough for a health check's pace.
func TestKernelLargeTables(t *testing.T) {
	ns, c := testNetns(t)
	servers := func(n int, v6 bool) []netip.AddrPort {
		var s []netip.AddrPort
		for i := range n {
			a := netip.AddrFrom4([4]byte{10, 0, 1, byte(i + 1)})
			if v6 {
				a = netip.AddrFrom16([16]byte{0xfd, 0, 15: byte(i + 1)})
			}
			s = append(s, netip.AddrPortFrom(a, 80))
		}
		return s
	}
	// A stand-in for maglev: slot k to server k mod n, so that a leaving
	// server's slots go round the others.
	table := func(ss []netip.AddrPort, gone int) []SlotRun {
		var live []netip.AddrPort
		for i, s := range ss {
			if i != gone {
				live = append(live, s)
			}
		}
		runs := make([]SlotRun, 65537)
		for k := range runs {
			s := ss[k%len(ss)]
			if k%len(ss) == gone {
				s = live[k%len(live)]
			}
			runs[k] = SlotRun{uint32(k), uint32(k), s}
		}
		return runs
	}
	v4, v6 := servers(10, false), servers(10, true)
	svc := func(vip netip.Addr, ss []netip.AddrPort, gone int) Service {
		return Service{VIP: netip.AddrPortFrom(vip, 80), Kernel: &KernelSched{By: BySource, Size: 65537, Slots: table(ss, gone)}}
	}
	start := time.Now()
	rs := install(t, c, kSpec(svc(kVIP, v4, -1), svc(kVIP6, v6, -1)))
	t.Logf("install: %v", time.Since(start))
	start = time.Now()
	if err := rs.Update(c, kSpec(svc(kVIP, v4, 3), svc(kVIP6, v6, -1))); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("update, one of 10 servers gone: %v", took)
	if took > 2*time.Second {
		t.Errorf("the update took %v", took)
	}
	els, err := c.GetSetElements(rs.kern[kernelID(netip.AddrPortFrom(kVIP, 80), false)].slots)
	if err != nil || len(els) != 65537 {
		t.Fatalf("%d elements, %v", len(els), err)
	}
	for _, e := range els {
		if parseAddrPort(e.Val) == v4[3] {
			t.Fatalf("slot %x still names the server gone", e.Key)
		}
	}
	if out, err := nftList(t, ns, "list", "chain", "inet", "nfhelper", "dstnat"); err != nil {
		t.Errorf("%v: %s", err, out)
	}
}
