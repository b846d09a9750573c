//go:build integration

package integration

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
	"github.com/nfhelper/nfhelper/kernel"
)

// TestQueuedPureAcks: a control connection's segments that only acknowledge
// reach the daemon only while its streams need them (issue 8). vsftpd's 227
// is rewritten at its own length (the free text gives way): none of them
// is queued. quirkyftpd's bare 227 has no free text: after the rewrite
// changed its length every segment needs its seq or ack corrected, and all
// are queued.
func TestQueuedPureAcks(t *testing.T) {
	d := needDaemon(t)
	if d.Datapath == kernel.DatapathKernel {
		t.Skip("kernel datapath: its conntrack helper queues every packet of a helped connection")
	}
	tp := harness.tp
	// Control packets through the VIP, as the router forwards them: all,
	// and those that only acknowledge (no payload; doff 5 or 8, with
	// timestamps).
	rules := fmt.Sprintf(`table ip nfhqcount {
	counter ctl { }
	counter pure { }
	chain count {
		type filter hook forward priority filter - 10; policy accept;
		meta l4proto tcp ct original ip daddr %[1]s ct original proto-dst { 21, 2321 } counter name "ctl"
		meta l4proto tcp ct original ip daddr %[1]s ct original proto-dst { 21, 2321 } tcp flags & (fin|syn|rst|ack) == ack tcp doff 5 ip length 40 counter name "pure"
		meta l4proto tcp ct original ip daddr %[1]s ct original proto-dst { 21, 2321 } tcp flags & (fin|syn|rst|ack) == ack tcp doff 8 ip length 52 counter name "pure"
	}
}
`, topo.VIP4)
	p := filepath.Join(tp.Dir, "queued-count.nft")
	if err := os.WriteFile(p, []byte(rules), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := execIn(t, 10*time.Second, tp.Router, nil, "nft", "-f", p); err != nil {
		t.Fatalf("counting table: %v %s", err, stderr)
	}
	t.Cleanup(func() { execIn(t, 10*time.Second, tp.Router, nil, "nft", "delete", "table", "ip", "nfhqcount") })
	read := func() (c count) {
		out, _, err := execIn(t, 10*time.Second, tp.Router, nil, "nft", "list", "counters", "table", "ip", "nfhqcount")
		if err != nil {
			t.Fatalf("counters: %v", err)
		}
		for _, m := range regexp.MustCompile(`counter (ctl|pure) \{\s*packets (\d+)`).FindAllStringSubmatch(string(out), -1) {
			n, _ := strconv.ParseInt(m[2], 10, 64)
			if m[1] == "ctl" {
				c.all = n
			} else {
				c.pure = n
			}
		}
		q, _, err := execIn(t, 10*time.Second, tp.Router, nil, "cat", "/proc/net/netfilter/nfnetlink_queue")
		if err != nil {
			t.Fatalf("queues: %v", err)
		}
		for _, line := range strings.Split(string(q), "\n") {
			if f := strings.Fields(line); len(f) >= 8 {
				n, _ := strconv.ParseInt(f[7], 10, 64) // id_sequence: packets queued so far
				c.queued += n
			}
		}
		return c
	}
	// A pause after each reply lets the client's delayed ACK go out alone.
	const ackDelay = 100 * time.Millisecond
	session := func(port, user string) (before, after count) {
		c0 := read()
		f := dialRaw(t, topo.VIP4+":"+port)
		time.Sleep(ackDelay)
		f.login(user)
		time.Sleep(ackDelay)
		f.cmd("NOOP", 2)
		time.Sleep(ackDelay)
		c1 := read()
		_, msg := f.cmd("PASV", 2)
		if !strings.Contains(msg, strings.ReplaceAll(topo.VIP4, ".", ",")) {
			t.Fatalf("227 not rewritten to the VIP: %q", msg)
		}
		time.Sleep(ackDelay)
		f.cmd("NOOP", 2)
		time.Sleep(ackDelay)
		f.cmd("NOOP", 2)
		time.Sleep(ackDelay)
		c2 := read()
		before, after = c1.sub(c0), c2.sub(c1)
		t.Logf("%s (%s): before the 227 %d control packets, %d only acknowledging, %d queued; after: %d, %d, %d",
			port, user, before.all, before.pure, before.queued, after.all, after.pure, after.queued)
		if before.pure < 3 || after.pure < 3 {
			t.Fatalf("too few segments that only acknowledge: the test shows nothing")
		}
		return before, after
	}
	// Other tests' connections are gone; a straggler of theirs could only
	// add to the queue's count.
	before, after := session("21", "anonymous")
	for _, c := range []count{before, after} {
		if c.queued > c.all-c.pure {
			t.Errorf("vsftpd: %d packets were queued, want at most %d (%d control packets less %d that only acknowledge)",
				c.queued, c.all-c.pure, c.all, c.pure)
		}
	}
	if harness.noQuirky != "" {
		t.Skip(harness.noQuirky)
	}
	before, after = session("2321", "bare227")
	if before.queued > before.all-before.pure {
		t.Errorf("quirkyftpd before the 227: %d packets were queued, want at most %d", before.queued, before.all-before.pure)
	}
	if after.queued < after.all {
		t.Errorf("quirkyftpd after a length-changing 227: %d of %d control packets were queued (%d only acknowledging), want all",
			after.queued, after.all, after.pure)
	}
}

type count struct{ all, pure, queued int64 }

func (c count) sub(d count) count { return count{c.all - d.all, c.pure - d.pure, c.queued - d.queued} }

// TestEndedConnectionsLeaveNoElements: a connection whose 227s change length
// gets stream offsets (offsets4) and its pure ACKs queued (acks4); once it
// has ended (QUIT, closed, its conntrack entry gone) both elements go, not
// just after their 48 h timeout: at hundreds of sessions a second they
// would pile up in the kernel.
func TestEndedConnectionsLeaveNoElements(t *testing.T) {
	d := needDaemon(t)
	if d.Datapath == kernel.DatapathKernel {
		t.Skip("kernel datapath: no offsets or acks elements")
	}
	if harness.noQuirky != "" {
		t.Skip(harness.noQuirky)
	}
	tp := harness.tp
	// Closed connections linger in TIME_WAIT for 2 minutes: shorten it in
	// the router for this test (longer than the daemon's 2 s grace for a
	// destroy right after a packet).
	const tw = "net.netfilter.nf_conntrack_tcp_timeout_time_wait"
	old, _, err := execIn(t, 10*time.Second, tp.Router, nil, "sysctl", "-n", tw)
	if err != nil {
		t.Fatalf("sysctl %s: %v", tw, err)
	}
	if _, stderr, err := execIn(t, 10*time.Second, tp.Router, nil, "sysctl", "-w", tw+"=4"); err != nil {
		t.Fatalf("sysctl -w %s: %v %s", tw, err, stderr)
	}
	t.Cleanup(func() {
		execIn(t, 10*time.Second, tp.Router, nil, "sysctl", "-w", tw+"="+strings.TrimSpace(string(old)))
	})
	list := func(set string) string {
		kind := "set"
		if strings.HasPrefix(set, "offsets") {
			kind = "map"
		}
		out, stderr, err := execIn(t, 10*time.Second, tp.Router, nil, "nft", "list", kind, "inet", "nfhelper", set)
		if err != nil {
			t.Fatalf("nft list set %s: %v %s", set, err, stderr)
		}
		return string(out)
	}
	// An element's key starts with the client's address and port.
	holds := func(set string, client netip.AddrPort) bool {
		return strings.Contains(list(set), fmt.Sprintf("%s . %d . ", client.Addr(), client.Port()))
	}
	var clients []netip.AddrPort
	vip := netip.MustParseAddrPort(topo.VIP4 + ":2321")
	for range 3 {
		f := dialRaw(t, vip.String())
		f.login("bare227")
		if _, msg := f.cmd("PASV", 2); !strings.Contains(msg, strings.ReplaceAll(topo.VIP4, ".", ",")) {
			t.Fatalf("227 not rewritten to the VIP: %q", msg)
		}
		client := netip.MustParseAddrPort(f.c.LocalAddr().String())
		clients = append(clients, client)
		// The lengthened 227's elements are in before its verdict.
		for _, set := range []string{"offsets4", "acks4"} {
			if !holds(set, client) {
				t.Fatalf("%s has no element for %s after a lengthened 227:\n%s", set, client, list(set))
			}
		}
		f.cmd("QUIT", 2)
		// The server closes; read to its FIN, then close ours.
		_ = f.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, f.c); err != nil {
			t.Fatalf("after QUIT: %v", err)
		}
		f.c.Close()
	}
	gone := func() (string, bool) {
		for _, e := range conntrackTCP(t, tp.Router) {
			for _, c := range clients {
				// By destination too: earlier tests' connections from the
				// same client port may still be in TIME_WAIT (2 minutes,
				// set before the shorter timeout above).
				if e.origSrc == c && e.origDst == vip {
					return "conntrack entry " + e.line, false
				}
			}
		}
		for _, set := range []string{"offsets4", "acks4"} {
			for _, c := range clients {
				if holds(set, c) {
					return fmt.Sprintf("%s element for %s", set, c), false
				}
			}
		}
		return "", true
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		what, ok := gone()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("60 s after the sessions ended, still a %s\noffsets4:\n%s\nacks4:\n%s", what, list("offsets4"), list("acks4"))
		}
		time.Sleep(200 * time.Millisecond) // polling
	}
}
