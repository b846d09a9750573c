package nft

import (
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

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
	router, client, c := refuseTopology(t)
	srv := router + "s"
	sh(t, "ip netns add "+srv)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", srv).Run() })
	in := func(ns, cmd string) string { return "ip netns exec " + ns + " " + cmd }
	sh(t, "ip link add nfhs0 netns "+srv+" type veth peer name nfhrs0 netns "+router,
		in(srv, "ip link set lo up"), in(srv, "ip addr add 10.98.0.2/24 dev nfhs0"), in(srv, "ip link set nfhs0 up"),
		in(srv, "ip route add default via 10.98.0.1"),
		in(router, "ip addr add 10.98.0.1/24 dev nfhrs0"), in(router, "ip link set nfhrs0 up"))
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

	// The server answers each request from a new port, then once more
	// from another to a port the client did not request from.
	type answer struct{ from, gotBack, stray string }
	answers := make(chan answer, 2)
	inNetns(t, srv, func() {
		l, err := net.ListenPacket("udp4", server.String())
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
				var a answer
				inNetns(t, srv, func() {
					d, err := net.ListenPacket("udp4", "10.98.0.2:0")
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
	sh(t, in(client, "ip route add 10.98.0.0/24 via 10.99.0.1"))
	request := func(port int) (from string) {
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
