package nft

import (
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/nfhelper/nfhelper/kernel"
)

// TestReplies: a request to a UDP service with Replies, marked as the
// daemon's verdict marks it (here by a user's chain just after the queue
// rule, which nothing reads), gets its answer from a new port of the
// server translated as the VIP's, and the client's next datagram to that
// port reaches the server's; the answer's flow carries ChannelMark. A
// flow from the server to another client port is not translated, and a
// request without ReplyMark opens nothing.
func TestReplies(t *testing.T) {
	router, client, srv, c := repliesTopology(t)
	ap := netip.MustParseAddrPort
	server := ap("10.98.0.2:69")
	spec := &Spec{Table: "nfhelper", QueueNum: 100, QueueTotal: 1, MarkMask: 0x00ff0000, Services: []Service{
		{VIP: ap("198.51.100.11:69"), UDP: true, Servers: []Server{{server, 0x10000, 1, false}}, Replies: time.Minute},
	}}
	spec.NativeQueue = kernel.ProbeNativeQueue(c) == nil
	if _, err := Install(c, spec); err != nil {
		t.Fatal(err)
	}
	// The daemon's verdict, for requests from client port 1069 only.
	if out, err := nftList(t, router, "add table ip verdict; add chain ip verdict v { type filter hook prerouting priority mangle + 1; }; "+
		"add rule ip verdict v udp sport 1069 ct state new meta mark set meta mark | 0x08010000; "+
		"add rule ip verdict v udp sport 1070 ct state new meta mark set meta mark | 0x00010000"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	out, err := nftList(t, router, "list", "chain", "inet", "nfhelper", "reply_open")
	if err != nil || !strings.Contains(out, "update @replies4 { ct reply ip saddr . ct reply ip daddr . ct reply proto-dst timeout 1m : ct original ip daddr }") {
		t.Fatalf("reply_open (%v):\n%s", err, out)
	}

	answers := repliesServer(t, srv, server)
	request := func(port int) string { return repliesRequest(t, client, port) }
	got := request(1069)
	a := <-answers
	_, port, _ := net.SplitHostPort(a.from)
	if got != "198.51.100.11:"+port || a.gotBack != "ACK from 10.99.0.2:1069" {
		t.Errorf("answer from %s reached the client from %s; the client's ACK: %q", a.from, got, a.gotBack)
	}
	ct, _ := exec.Command("ip", "netns", "exec", router, "conntrack", "-L", "-p", "udp", "--src", "10.98.0.2").CombinedOutput()
	if !strings.Contains(string(ct), "sport="+port+" dport=1069 ") || !strings.Contains(string(ct), "mark=16777216") {
		t.Errorf("the answer's flow, translated and with ChannelMark:\n%s", ct)
	}
	for _, l := range strings.Split(string(ct), "\n") {
		if strings.Contains(l, " dport=1070 ") && strings.Contains(l, "198.51.100.11") {
			t.Errorf("a flow to a port no request came from was translated:\n%s", l)
		}
	}
	// Without ReplyMark: the answer goes out from the server's own address
	// (and the client, which asked the VIP, does not take it).
	if got := request(1070); strings.HasPrefix(got, "198.51.100.11:") {
		t.Errorf("an unmarked request's answer came from %s", got)
	}
	<-answers
}

// repliesAnswer is what a repliesServer did with one request: the address
// it answered from, the client's datagram back to that port, if any.
type repliesAnswer struct{ from, gotBack string }

// repliesServer serves, in namespace srv on server, requests as a TFTP
// server would: each answered from a new port, which then waits a second
// for the client's ACK and sends once more, to a port the client did not
// request from.
func repliesServer(t *testing.T, srv string, server netip.AddrPort) <-chan repliesAnswer {
	answers := make(chan repliesAnswer, 2)
	network := "udp4"
	if server.Addr().Is6() {
		network = "udp6"
	}
	inNetns(t, srv, func() {
		l, err := net.ListenPacket(network, server.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			b := make([]byte, 64)
			for {
				_, from, err := l.ReadFrom(b)
				if err != nil {
					return
				}
				var a repliesAnswer
				inNetns(t, srv, func() {
					d, err := net.ListenPacket(network, netip.AddrPortFrom(server.Addr(), 0).String())
					if err != nil {
						return
					}
					defer d.Close()
					a.from = d.LocalAddr().String()
					d.WriteTo([]byte("DATA"), from)
					d.SetReadDeadline(time.Now().Add(time.Second))
					if n, back, err := d.ReadFrom(b); err == nil {
						a.gotBack = string(b[:n]) + " from " + back.String()
					}
					stray := *from.(*net.UDPAddr)
					stray.Port++
					d.WriteTo([]byte("STRAY"), &stray)
				})
				answers <- a
			}
		}()
	})
	return answers
}

// repliesRequest sends, from namespace client's 10.99.0.2:port, an RRQ to
// the VIP 198.51.100.11:69 and acknowledges the answer; it returns where
// the answer came from (or the error).
func repliesRequest(t *testing.T, client string, port int) (from string) {
	inNetns(t, client, func() {
		cl, err := net.ListenPacket("udp4", "10.99.0.2:"+strconv.Itoa(port))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		vip, _ := net.ResolveUDPAddr("udp4", "198.51.100.11:69")
		cl.WriteTo([]byte("\x00\x01f\x00octet\x00"), vip)
		cl.SetReadDeadline(time.Now().Add(time.Second))
		b := make([]byte, 64)
		n, src, err := cl.ReadFrom(b)
		if err != nil {
			from = err.Error()
			return
		}
		from = src.String()
		if string(b[:n]) == "DATA" {
			cl.WriteTo([]byte("ACK"), src)
		}
	})
	return from
}

// repliesTopology is refuseTopology with a server namespace, 10.98.0.2,
// behind the router (10.98.0.1), which the client can route to.
func repliesTopology(t *testing.T) (router, client, srv string, c *nftables.Conn) {
	router, client, c = refuseTopology(t)
	srv = router + "s"
	sh(t, "ip netns add "+srv)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", srv).Run() })
	in := func(ns, cmd string) string { return "ip netns exec " + ns + " " + cmd }
	sh(t, "ip link add nfhs0 netns "+srv+" type veth peer name nfhrs0 netns "+router,
		in(srv, "ip link set lo up"), in(srv, "ip addr add 10.98.0.2/24 dev nfhs0"), in(srv, "ip link set nfhs0 up"),
		in(srv, "ip route add default via 10.98.0.1"),
		in(router, "ip addr add 10.98.0.1/24 dev nfhrs0"), in(router, "ip link set nfhrs0 up"),
		in(client, "ip route add 10.98.0.0/24 via 10.99.0.1"))
	return router, client, srv, c
}

// TestRepliesFailOpen: with the daemon down (its queue has no reader: the
// request passes unmarked), a new request to a TFTP service gets the
// kernel's TFTP helper in dstnat, before the fallback DNAT; nf_nat_tftp
// then translates the server's answer from its new port as the VIP, the
// client's ACK reaches that port, and the answer's flow carries
// ChannelMark (inherited). A flow to another client port is not
// translated, and a request the daemon marked gets no kernel helper.
func TestRepliesFailOpen(t *testing.T) {
	router, client, srv, c := repliesTopology(t)
	if err := kernel.ProbeKernelTFTP(c); err != nil {
		t.Skip(err)
	}
	ap := netip.MustParseAddrPort
	server := ap("10.98.0.2:69")
	spec := &Spec{Table: "nfhelper", QueueNum: 100, QueueTotal: 1, MarkMask: 0x00ff0000, KernelTFTP: true, Services: []Service{
		{VIP: ap("198.51.100.11:69"), UDP: true, Servers: []Server{{server, 0x10000, 1, false}}, Replies: time.Minute},
	}}
	spec.NativeQueue = kernel.ProbeNativeQueue(c) == nil
	if _, err := Install(c, spec); err != nil {
		t.Fatal(err)
	}
	// The daemon's verdict, for requests from client port 1069 only.
	if out, err := nftList(t, router, "add table ip verdict; add chain ip verdict v { type filter hook prerouting priority mangle + 1; }; "+
		"add rule ip verdict v udp sport 1069 ct state new meta mark set meta mark | 0x08010000"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := nftList(t, router, "list", "chain", "inet", "nfhelper", "dstnat"); err != nil ||
		!strings.Contains(out, `ip daddr . udp dport @replies_vips4 ct helper set "tftp" ct mark set ct mark | 0x01000000`) {
		t.Errorf("dstnat (%v):\n%s", err, out)
	}
	if out, err := nftList(t, router, "list", "set", "inet", "nfhelper", "replies_vips4"); err != nil || !strings.Contains(out, "198.51.100.11 . 69") {
		t.Fatalf("replies_vips4 (%v):\n%s", err, out)
	}
	answers := repliesServer(t, srv, server)
	conntrack := func() string {
		out, _ := exec.Command("ip", "netns", "exec", router, "conntrack", "-L", "-p", "udp").CombinedOutput()
		return string(out)
	}

	// Unseen: the kernel's helper.
	got := repliesRequest(t, client, 1071)
	a := <-answers
	_, port, _ := net.SplitHostPort(a.from)
	if got != "198.51.100.11:"+port || a.gotBack != "ACK from 10.99.0.2:1071" {
		t.Errorf("unseen request: answer from %s reached the client from %s; the client's ACK: %q", a.from, got, a.gotBack)
	}
	ct := conntrack()
	var request, answer string
	for _, l := range strings.Split(ct, "\n") {
		switch {
		case strings.Contains(l, "sport=1071 dport=69 "):
			request = l
		case strings.Contains(l, "src=10.98.0.2 dst=10.99.0.2 sport="+port+" dport=1071 "):
			answer = l
		case strings.Contains(l, " dport=1072 ") && strings.Contains(l, "198.51.100.11"):
			t.Errorf("a flow to a port no request came from was translated:\n%s", l)
		}
	}
	if !strings.Contains(request, "helper=tftp") || !strings.Contains(request, "mark=16777216") {
		t.Errorf("the unseen request's flow, with the kernel's helper and ChannelMark: %q\n%s", request, ct)
	}
	if !strings.Contains(answer, "dst=198.51.100.11 sport=1071 dport="+port+" ") || !strings.Contains(answer, "mark=16777216") {
		t.Errorf("the answer's flow, translated by nf_nat_tftp and with ChannelMark: %q\n%s", answer, ct)
	}
	if out, _ := nftList(t, router, "list", "map", "inet", "nfhelper", "replies4"); strings.Contains(out, "1071") {
		t.Errorf("an unseen request wrote replies4:\n%s", out)
	}

	// Seen (the daemon's verdict marked it): replies4, no kernel helper.
	got = repliesRequest(t, client, 1069)
	a = <-answers
	_, port, _ = net.SplitHostPort(a.from)
	if got != "198.51.100.11:"+port || a.gotBack != "ACK from 10.99.0.2:1069" {
		t.Errorf("marked request: answer from %s reached the client from %s; the client's ACK: %q", a.from, got, a.gotBack)
	}
	for _, l := range strings.Split(conntrack(), "\n") {
		if strings.Contains(l, "sport=1069 dport=69 ") && strings.Contains(l, "helper=") {
			t.Errorf("a request the daemon saw got a kernel helper:\n%s", l)
		}
	}
}

// TestRepliesCarried: requests awaiting their answer (replies4/6) are
// carried over a restart after a crash (Install over the stale table)
// with the time they have left, and are no helped connections: no hook of
// a helped connection comes with them, srcnat does (until the next
// Update).
func TestRepliesCarried(t *testing.T) {
	ns, c := testNetns(t)
	ap := netip.MustParseAddrPort
	tftp := Service{VIP: ap("198.51.100.11:69"), UDP: true, Servers: []Server{{ap("10.98.0.2:69"), 0x10000, 1, false}}, Replies: time.Minute}
	spec := &Spec{Table: "nfhelper", QueueNum: 100, QueueTotal: 1, MarkMask: 0x00ff0000, KernelTFTP: true, Services: []Service{tftp}}
	spec.NativeQueue = kernel.ProbeNativeQueue(c) == nil
	if _, err := Install(c, spec); err != nil {
		t.Fatal(err)
	}
	if out, err := nftList(t, ns, "add element inet nfhelper replies4 { 10.98.0.2 . 10.99.0.2 . 1069 timeout 50s : 198.51.100.11 }; "+
		"add element inet nfhelper replies6 { fd00::2 . 2001:db8::2 . 1070 timeout 40s : 2001:db8:1::11 }"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	cr, err := ReadStale(c, "nfhelper")
	if err != nil {
		t.Fatal(err)
	}
	if cr.Len() != 2 || cr.helped() || !cr.replies() {
		t.Fatalf("carried %d elements, helped %v, replies %v", cr.Len(), cr.helped(), cr.replies())
	}
	// A configuration without the service: srcnat stays for the carried
	// answers, nothing else does.
	plain := Service{VIP: ap("198.51.100.11:80"), Servers: []Server{{ap("10.98.0.2:80"), 0x20000, 1, false}},
		Kernel: &KernelSched{By: ByCounter, Size: 1, Slots: []SlotRun{{0, 0, ap("10.98.0.2:80")}}}}
	next := &Spec{Table: "nfhelper", QueueNum: 100, QueueTotal: 1, MarkMask: 0x00ff0000, KernelTFTP: true, Services: []Service{plain},
		NativeQueue: spec.NativeQueue, Carried: cr}
	rs, err := Install(c, next)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		m, key string
		max    int
	}{{"replies4", "10.98.0.2 . 10.99.0.2 . 1069", 50}, {"replies6", "fd00::2 . 2001:db8::2 . 1070", 40}} {
		out, err := nftList(t, ns, "list", "map", "inet", "nfhelper", w.m)
		// The time left when read, at most what it was given.
		m := regexp.MustCompile(regexp.QuoteMeta(w.key) + ` timeout (\d+)s`).FindStringSubmatch(out)
		if err != nil || m == nil {
			t.Errorf("%s after the restart (%v):\n%s", w.m, err, out)
			continue
		}
		if left, _ := strconv.Atoi(m[1]); left <= 0 || left > w.max {
			t.Errorf("%s: timeout %ss after the restart, want the time left of %ds:\n%s", w.m, m[1], w.max, out)
		}
	}
	if got, want := baseChains(t, c), []string{"dstnat", "heartbeat", "prerouting", "refuse_input", "srcnat"}; !slices.Equal(got, want) {
		t.Errorf("base chains %v, want %v", got, want)
	}
	if err := rs.Update(c, next); err != nil {
		t.Fatal(err)
	}
	if got, want := baseChains(t, c), []string{"dstnat", "heartbeat", "refuse_input"}; !slices.Equal(got, want) {
		t.Errorf("after an Update: base chains %v, want %v", got, want)
	}

	// The kernel datapath carries the replies maps alone
	// (ReadStaleReplies): not a bypassed element. (The two elements
	// carried before are still there.)
	if out, err := nftList(t, ns, "add element inet nfhelper replies4 { 10.98.0.2 . 10.99.0.2 . 1071 timeout 50s : 198.51.100.11 }; "+
		"add element inet nfhelper bypassed4 { 10.99.0.2 . 198.51.100.11 timeout 50s : 10.98.0.2 }"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if all, err := ReadStale(c, "nfhelper"); err != nil || all.Len() != 4 || !all.helped() {
		t.Fatalf("ReadStale: %v, helped %v (%v)", all.Len(), all.helped(), err)
	}
	kr, err := ReadStaleReplies(c, "nfhelper")
	if err != nil || kr.Len() != 3 || kr.helped() || !kr.replies() {
		t.Fatalf("ReadStaleReplies: %d elements, helped %v (%v)", kr.Len(), kr.helped(), err)
	}
	next.Carried = kr
	if _, err := Install(c, next); err != nil {
		t.Fatal(err)
	}
	if out, _ := nftList(t, ns, "list", "map", "inet", "nfhelper", "replies4"); !strings.Contains(out, "10.98.0.2 . 10.99.0.2 . 1071 timeout") {
		t.Errorf("replies4 not carried (kernel datapath):\n%s", out)
	}
	if out, _ := nftList(t, ns, "list", "map", "inet", "nfhelper", "bypassed4"); strings.Contains(out, "10.99.0.2") {
		t.Errorf("bypassed4 carried by ReadStaleReplies:\n%s", out)
	}
}
