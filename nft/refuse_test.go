package nft

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/kernel"
)

// sorrySpec: an FTP service whose servers are all out (weight 0) with a
// sorry server, one with a server out and one in, a UDP service with a
// sorry server and a server in.
func sorrySpec() *Spec {
	ap := netip.MustParseAddrPort
	return &Spec{
		Table: "nfhelper", QueueNum: 100, QueueTotal: 1, MarkMask: 0x00ff0000,
		Services: []Service{
			{VIP: ap("198.51.100.10:21"), Helped: true, Servers: []Server{{ap("10.0.0.11:21"), 0x10000, 0, false}, {ap("10.0.0.12:21"), 0x20000, 0, false}},
				Sorry: &Server{ap("10.0.0.99:21"), 0x30000, 1, false}},
			{VIP: ap("198.51.100.10:80"), Servers: []Server{{ap("10.0.0.11:80"), 0x40000, 0, false}, {ap("10.0.0.12:80"), 0x50000, 2, false}}},
			{VIP: ap("[2001:db8:1::10]:53"), UDP: true, Servers: []Server{{ap("[fd00::11]:53"), 0x60000, 1, false}},
				Sorry: &Server{ap("[fd00::99]:53"), 0x70000, 0, false}},
		},
	}
}

// TestSorryElements lists what the sorry server and servers that are out
// put in the sets and maps.
func TestSorryElements(t *testing.T) {
	ns, c := testNetns(t)
	if _, err := Install(c, sorrySpec()); err != nil {
		t.Fatal(err)
	}
	list := func(set string) string {
		out, err := nftList(t, ns, "-j", "list", "set", "inet", "nfhelper", set)
		if err != nil {
			// Maps list with "list map".
			if out, err = nftList(t, ns, "-j", "list", "map", "inet", "nfhelper", set); err != nil {
				t.Fatalf("%s: %v: %s", set, err, out)
			}
		}
		return out
	}
	fb := list("fallback4")
	if n := strings.Count(fb, `"10.0.0.99"`); n != fallbackBuckets {
		t.Errorf("fallback4: %d buckets to the sorry server, want all %d:\n%s", n, fallbackBuckets, fb)
	}
	if n := strings.Count(fb, `"10.0.0.12"`); n != fallbackBuckets {
		t.Errorf("fallback4: %d buckets to the one server in for :80, want %d", n, fallbackBuckets)
	}
	if strings.Contains(fb, `"10.0.0.11"`) {
		t.Errorf("fallback4 names servers that are out:\n%s", fb)
	}
	// A server in: the sorry server gets no bucket.
	if fb6 := list("fallback_udp6"); strings.Contains(fb6, "fd00::99") || strings.Count(fb6, `"fd00::11"`) != fallbackBuckets {
		t.Errorf("fallback_udp6:\n%s", fb6)
	}
	sched := list("sched4")
	for _, want := range []string{`"10.0.0.99"`, `"10.0.0.11"`, `"10.0.0.12"`} {
		if !strings.Contains(sched, want) {
			t.Errorf("sched4 lacks %s:\n%s", want, sched)
		}
	}
	if s6 := list("sched6"); !strings.Contains(s6, "fd00::99") {
		t.Errorf("sched6 lacks the sorry server:\n%s", s6)
	}
	if servers := list("servers4"); !strings.Contains(servers, `"10.0.0.99"`) || strings.Contains(servers, "80") {
		t.Errorf("servers4 (helped services' servers and sorry server):\n%s", servers)
	}

	// A server comes back: the buckets go to it, none to the sorry server.
	rs, err := Install(c, sorrySpec())
	if err != nil {
		t.Fatal(err)
	}
	next := sorrySpec()
	next.Services[0].Servers[1].Weight = 1
	if err := rs.Update(c, next); err != nil {
		t.Fatal(err)
	}
	if fb := list("fallback4"); strings.Contains(fb, "10.0.0.99") || strings.Count(fb, `"10.0.0.12"`) != 2*fallbackBuckets {
		t.Errorf("fallback4 with a server back:\n%s", fb)
	}
}

// TestRefuseBuildsKernelDatapath: the refusal chains build with the kernel
// datapath's rules too (the kernel's own FTP helper stands in for the
// userspace one, which this kernel may lack).
func TestRefuseBuildsKernelDatapath(t *testing.T) {
	ns, c := testNetns(t)
	spec := sorrySpec()
	spec.CtHelper = KernelFTPHelper
	if _, err := Install(c, spec); err != nil {
		t.Fatal(err)
	}
	out, err := nftList(t, ns, "list", "table", "inet", "nfhelper")
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for _, want := range []string{"chain refuse_input", "chain refuse {", "jump refuse", "@vips4 reject with tcp reset", "@vips_udp6 reject"} {
		if !strings.Contains(out, want) {
			t.Errorf("%q missing:\n%s", want, out)
		}
	}
}

// inNetns runs f on a thread in network namespace ns; the thread is
// discarded afterwards.
func inNetns(t *testing.T, ns string, f func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		fd, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			done <- err
			return
		}
		defer fd.Close()
		if err := unix.Setns(int(fd.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		f()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func sh(t *testing.T, cmds ...string) {
	t.Helper()
	for _, cmd := range cmds {
		if out, err := exec.Command("sh", "-c", cmd).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", cmd, err, out)
		}
	}
}

// TestRefuse: with the daemon down and nothing in the fail-open map, a
// client's SYN to a VIP (local to the router or routed through it) gets a
// reset at once and a UDP datagram port unreachable; the router's own
// connection to a VIP over loopback is left alone; a sorry server in the
// map takes the connection.
func TestRefuse(t *testing.T) {
	router, client, c := refuseTopology(t)
	ap := netip.MustParseAddrPort
	spec := &Spec{
		Table: "nfhelper", QueueNum: 100, QueueTotal: 1, MarkMask: 0x00ff0000,
		Services: []Service{
			{VIP: ap("198.51.100.10:21"), Helped: true, Servers: []Server{{ap("10.0.0.11:21"), 0x10000, 0, false}}},
			{VIP: ap("198.51.100.11:80"), Servers: []Server{{ap("10.0.0.11:80"), 0x20000, 0, false}}},
			{VIP: ap("198.51.100.10:53"), UDP: true},
			{VIP: ap("[2001:db8:1::10]:21"), Servers: []Server{{ap("[fd00::11]:21"), 0x30000, 0, false}}},
			{VIP: ap("[2001:db8:1::10]:53"), UDP: true},
		},
	}
	spec.NativeQueue = kernel.ProbeNativeQueue(c) == nil
	rs, err := Install(c, spec)
	if err != nil {
		t.Fatal(err)
	}

	// The router itself serves every local VIP.port: a refusal can only
	// come from the rules; its own connections, over loopback, get through.
	for _, l := range []struct{ network, addr string }{
		{"tcp", "198.51.100.10:21"}, {"udp", "198.51.100.10:53"},
		{"tcp", "[2001:db8:1::10]:21"}, {"udp", "[2001:db8:1::10]:53"},
	} {
		serve(t, router, l.network, l.addr)
		inNetns(t, router, func() { err = dialRefused(l.network, l.addr) })
		if err != nil {
			t.Errorf("the router's own connection to %s %s: %v", l.network, l.addr, err)
		}
	}

	// Neighbours found first (a fresh link's first IPv6 exchange may wait
	// a second for neighbour discovery): the router's kernel resets these.
	inNetns(t, client, func() {
		dialRefused("tcp", "10.99.0.1:9")
		dialRefused("tcp", "[fd99::1]:9")
	})
	for _, tc := range []struct{ network, addr string }{
		{"tcp", "198.51.100.10:21"},
		{"udp", "198.51.100.10:53"},
		{"tcp", "[2001:db8:1::10]:21"},
		{"udp", "[2001:db8:1::10]:53"},
		{"tcp", "198.51.100.11:80"}, // forwarded
	} {
		start := time.Now()
		inNetns(t, client, func() { err = dialRefused(tc.network, tc.addr) })
		if took := time.Since(start); !errors.Is(err, syscall.ECONNREFUSED) || took > 500*time.Millisecond {
			t.Errorf("%s %s: %v after %v, want refused at once", tc.network, tc.addr, err, took.Round(time.Millisecond))
		}
	}

	// A sorry server (the router's own listener) takes them when every
	// bucket is its.
	serve(t, router, "tcp", "10.99.0.1:2121")
	spec.Services[0].Sorry = &Server{ap("10.99.0.1:2121"), 0x40000, 0, false}
	if err := rs.Update(c, spec); err != nil {
		t.Fatal(err)
	}
	inNetns(t, client, func() { err = dialRefused("tcp", "198.51.100.10:21") })
	if err != nil {
		t.Errorf("to the sorry server: %v", err)
	}
}

// refuseTopology: a client namespace and a router namespace (testNetns)
// joined by a veth pair; the router has the local VIPs 198.51.100.10 and
// 2001:db8:1::10 and routes 198.51.100.11 back to the client.
func refuseTopology(t *testing.T) (router, client string, c *nftables.Conn) {
	router, c = testNetns(t)
	client = fmt.Sprintf("nfht-nftc-%d", os.Getpid())
	sh(t, "ip netns add "+client)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", client).Run() })
	in := func(ns, cmd string) string { return "ip netns exec " + ns + " " + cmd }
	sh(t,
		// No duplicate address detection: the links' IPv6 is usable at once.
		in(client, "sysctl -qw net.ipv6.conf.default.accept_dad=0"), in(router, "sysctl -qw net.ipv6.conf.default.accept_dad=0"),
		"ip link add nfhc0 netns "+client+" type veth peer name nfhr0 netns "+router,
		in(client, "ip link set lo up"), in(router, "ip link set lo up"),
		in(client, "ip addr add 10.99.0.2/24 dev nfhc0"), in(client, "ip addr add fd99::2/64 dev nfhc0 nodad"),
		in(client, "ip link set nfhc0 up"),
		in(client, "ip route add 198.51.100.0/24 via 10.99.0.1"), in(client, "ip route add 2001:db8:1::/64 via fd99::1"),
		in(router, "ip addr add 10.99.0.1/24 dev nfhr0"), in(router, "ip addr add fd99::1/64 dev nfhr0 nodad"),
		in(router, "ip link set nfhr0 up"),
		// A local VIP (input hook) and a routed one (forward hook).
		in(router, "ip addr add 198.51.100.10/32 dev lo"), in(router, "ip addr add 2001:db8:1::10/128 dev lo nodad"),
		// Routed back out to the client: the forward hook sees it first.
		in(router, "ip route add 198.51.100.11/32 via 10.99.0.2"),
		in(router, "sysctl -qw net.ipv4.ip_forward=1"),
	)
	return router, client, c
}

// serve answers on addr in network namespace ns until the test ends: TCP
// connections are accepted and closed, UDP datagrams echoed.
func serve(t *testing.T, ns, network, addr string) {
	t.Helper()
	var c io.Closer
	var err error
	inNetns(t, ns, func() {
		if network == "udp" {
			c, err = net.ListenPacket(network, addr)
		} else {
			c, err = net.Listen(network, addr)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			switch l := c.(type) {
			case net.Listener:
				conn, err := l.Accept()
				if err != nil {
					return
				}
				conn.Close()
			case net.PacketConn:
				n, from, err := l.ReadFrom(buf)
				if err != nil {
					return
				}
				l.WriteTo(buf[:n], from)
			}
		}
	}()
}

// dialRefused connects (TCP) or sends a datagram and waits for an answer
// (UDP); it returns the error, ECONNREFUSED when refused, within two
// seconds.
func dialRefused(network, addr string) error {
	conn, err := net.DialTimeout(network, addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	if network == "tcp" {
		return nil
	}
	conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("x")); err != nil {
		return err
	}
	_, err = conn.Read(make([]byte, 16))
	return err
}
