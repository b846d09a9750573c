//go:build integration

package integration

import (
	"fmt"
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
