//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// Add-on mode: the user's own nftables ruleset (table inet user, installed
// here in the router namespace) port-forwards the router's WAN addresses
// topo.WAN4:21 and [topo.WAN6]:21 to vsftpd on rs2; nfhelperd (config key
// helpers:, see addonConfig) only helps those control connections. These
// tests never touch table inet nfhelper, and remove table inet user when done.

// userRules describes the user's ruleset.
type userRules struct {
	fullNAT     bool // also SNAT forwarded control connections to the router's LAN address
	dropForward bool // forward policy drop, accepting established,related and forwarded port 21
	markRule    bool // with dropForward: the documented rule accepting nfhelperd's data connections
}

// addonMark is the conntrack mark bit nfhelperd sets on the data connections
// it opens in add-on mode.
const addonMark = "0x01000000"

func (u userRules) script() string {
	var b strings.Builder
	// Create-then-delete makes the replacement one atomic batch whether or
	// not the table exists.
	b.WriteString("table inet user\ndelete table inet user\ntable inet user {\n")
	fmt.Fprintf(&b, `	chain dstnat {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %[1]s tcp dport 21 dnat ip to %[2]s:21
		ip6 daddr %[3]s tcp dport 21 dnat ip6 to [%[4]s]:21
	}
`, topo.WAN4, topo.RS2V4, topo.WAN6, topo.RS2V6)
	if u.fullNAT {
		fmt.Fprintf(&b, `	chain srcnat {
		type nat hook postrouting priority srcnat; policy accept;
		ip daddr %[1]s tcp dport 21 ct status dnat snat ip to %[2]s
		ip6 daddr %[3]s tcp dport 21 ct status dnat snat ip6 to %[4]s
	}
`, topo.RS2V4, topo.RouterLANV4, topo.RS2V6, topo.RouterLANV6)
	}
	if u.dropForward {
		b.WriteString("\tcounter dropped {\n\t}\n")
		b.WriteString(`	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		ct status dnat tcp dport 21 accept
`)
		if u.markRule {
			fmt.Fprintf(&b, "\t\tct mark & %[1]s == %[1]s accept\n", addonMark)
		}
		// Counts what the policy is about to drop.
		b.WriteString("\t\tcounter name \"dropped\"\n\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// nftScript runs nft -f - with script in ns.
func nftScript(t *testing.T, ns, script string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := harness.tp.CommandContext(ctx, ns, "nft", "-f", "-")
	c.Stdin = strings.NewReader(script)
	out, err := c.CombinedOutput()
	if err != nil {
		return fmt.Errorf("nft -f -: %w\n%s\nscript:\n%s", err, out, script)
	}
	return nil
}

// installUserRules replaces the router's table inet user with u's ruleset
// and makes sure the table is gone when the test ends.
func installUserRules(t *testing.T, u userRules) {
	t.Helper()
	tp := harness.tp
	if err := nftScript(t, tp.Router, u.script()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeUserRules(t) })
}

func removeUserRules(t *testing.T) {
	tp := harness.tp
	if err := nftScript(t, tp.Router, "table inet user\ndelete table inet user\n"); err != nil {
		t.Errorf("remove table inet user: %v", err)
		return
	}
	out, _, err := execIn(t, 10*time.Second, tp.Router, nil, "nft", "list", "tables")
	if err != nil {
		t.Errorf("nft list tables: %v", err)
	} else if strings.Contains(string(out), "inet user") {
		t.Errorf("table inet user still present after removal:\n%s", out)
	}
}

// droppedPackets reads the named counter of the forward-drop ruleset.
func droppedPackets(t *testing.T) int {
	t.Helper()
	out, _, err := execIn(t, 10*time.Second, harness.tp.Router, nil, "nft", "list", "counter", "inet", "user", "dropped")
	if err != nil {
		t.Fatalf("nft list counter inet user dropped: %v", err)
	}
	m := regexp.MustCompile(`packets (\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no packet count in:\n%s", out)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// wanTarget: clients in the client namespace talk to the router's WAN
// addresses. 227 replies must carry the WAN address (rewritten by nfhelperd)
// and active data connections must arrive from it.
func wanTarget(tp *topo.Topo) target {
	return target{
		ns:    tp.Client,
		host4: topo.WAN4, host6: topo.WAN6,
		pasv4: topo.WAN4,
		peer4: topo.WAN4, peer6: topo.WAN6,
		// A 4 MiB transfer takes well under a second here; a client stuck
		// after a refused PORT/EPRT should not hold the run for minutes.
		maxTime: 30 * time.Second,
	}
}

// needAddon returns the running daemon, skipping when the add-on helpers are
// not in its config.
func needAddon(t *testing.T) *topo.Daemon {
	t.Helper()
	needTopo(t)
	if harness.noAddon != "" {
		t.Skip(harness.noAddon)
	}
	return needDaemon(t)
}

// rs2 returns rs2, whose vsftpd the user's rules forward to.
func rs2(t *testing.T) *topo.Server {
	t.Helper()
	for _, s := range harness.tp.Servers {
		if s.Name == "rs2" {
			return s
		}
	}
	t.Fatal("no rs2 in the topology")
	return nil
}

// logMark returns the current size of a log file; logSince what was appended
// after it.
func logMark(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("vsftpd log: %v", err)
	}
	return fi.Size()
}

func logSince(t *testing.T, path string, mark int64) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("vsftpd log: %v", err)
	}
	if int64(len(b)) < mark {
		return string(b)
	}
	return string(b[mark:])
}

// vsftpdLine is one log_ftp_protocol line of vsftpd.
type vsftpdLine struct {
	kind   string     // CONNECT, FTP command, FTP response
	client netip.Addr // unmapped
	text   string     // the command or response
}

var vsftpdLineRE = regexp.MustCompile(`\] (CONNECT|FTP command|FTP response): Client "([^"]+)"(?:, "(.*)")?$`)

func parseVsftpdLog(s string) []vsftpdLine {
	var out []vsftpdLine
	for _, line := range strings.Split(s, "\n") {
		m := vsftpdLineRE.FindStringSubmatch(strings.TrimRight(line, "\r"))
		if m == nil {
			continue
		}
		a, err := netip.ParseAddr(m[2])
		if err != nil {
			continue
		}
		out = append(out, vsftpdLine{kind: m[1], client: a.Unmap(), text: m[3]})
	}
	return out
}

// controlThroughWAN opens a control connection from the client to addr and
// checks that vsftpd on rs2 greets it and logs the connection from
// wantClient. It needs no helper: it proves the user's port forward.
func controlThroughWAN(t *testing.T, addr, wantClient string) {
	t.Helper()
	tp := harness.tp
	logPath := rs2(t).Log
	mark := logMark(t, logPath)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := topo.DialIn(ctx, tp.Client, "tcp", addr)
	if err != nil {
		t.Fatalf("control connection to %s: %v", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "220") {
		t.Fatalf("%s: greeting %q, %v; want 220", addr, line, err)
	}
	fmt.Fprintf(c, "QUIT\r\n")
	line, _ = r.ReadString('\n')
	if !strings.HasPrefix(line, "221") {
		t.Errorf("%s: QUIT answered %q, want 221", addr, line)
	}
	// vsftpd logs CONNECT as the session starts; allow it a moment.
	want := netip.MustParseAddr(wantClient)
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, l := range parseVsftpdLog(logSince(t, logPath, mark)) {
			if l.kind == "CONNECT" {
				if l.client != want {
					t.Errorf("%s: rs2's vsftpd saw the control connection from %s, want %s", addr, l.client, want)
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: no CONNECT in rs2's vsftpd log: not forwarded to rs2?\n%s", addr, logSince(t, logPath, mark))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// curlShort fetches big.bin through topo.WAN4 with short timeouts; it returns
// curl's trace and error.
func curlShort(t *testing.T, modeArgs []string) (string, error) {
	t.Helper()
	dir := t.TempDir()
	args := append([]string{"-q", "-sS", "-v", "-g", "--connect-timeout", "3", "--max-time", "10",
		"-o", filepath.Join(dir, "big.bin")}, modeArgs...)
	args = append(args, ftpURL(topo.WAN4, 21, "big.bin"))
	_, stderr, err := execIn(t, 30*time.Second, harness.tp.Client, nil, "curl", args...)
	return string(stderr), err
}

// checkServerView checks what rs2's vsftpd logged while a matrix ran: every
// control connection came from client4 or client6 (the address the server
// should see); PORT and EPRT named that address; 227 replies named rs2 itself.
func checkServerView(t *testing.T, log string, client4, client6 string) {
	t.Helper()
	lines := parseVsftpdLog(log)
	if len(lines) == 0 {
		t.Fatalf("nothing in rs2's vsftpd log:\n%s", log)
	}
	allowed := map[netip.Addr]bool{netip.MustParseAddr(client4): true, netip.MustParseAddr(client6): true}
	var ports, eprts, pasvs int
	for _, l := range lines {
		if !allowed[l.client] {
			t.Errorf("rs2's vsftpd saw client %s, want %s or %s: %s %q", l.client, client4, client6, l.kind, l.text)
		}
		up := strings.ToUpper(l.text)
		switch {
		case l.kind == "FTP command" && strings.HasPrefix(up, "PORT "):
			ports++
			want := strings.ReplaceAll(client4, ".", ",") + ","
			if !strings.HasPrefix(strings.TrimSpace(l.text[5:]), want) {
				t.Errorf("rs2 received %q, want a PORT naming %s", l.text, client4)
			}
		case l.kind == "FTP command" && strings.HasPrefix(up, "EPRT "):
			eprts++
			if a, ok := eprtAddr(l.text[5:]); !ok || !allowed[a] || a != l.client {
				t.Errorf("rs2 received %q from %s, want an EPRT naming the control connection's peer", l.text, l.client)
			}
		case l.kind == "FTP response" && strings.HasPrefix(l.text, "227 "):
			pasvs++
			want := strings.ReplaceAll(topo.RS2V4, ".", ",") + ","
			if !strings.Contains(l.text, want) {
				t.Errorf("rs2 replied %q, want a 227 naming %s", l.text, topo.RS2V4)
			}
		}
	}
	t.Logf("rs2's vsftpd: %d log lines, %d PORT, %d EPRT, %d 227, all from %s / %s", len(lines), ports, eprts, pasvs, client4, client6)
	if ports == 0 || eprts == 0 || pasvs == 0 {
		t.Errorf("rs2's vsftpd log lacks a PORT, EPRT or 227 (%d, %d, %d)", ports, eprts, pasvs)
	}
}

// eprtAddr returns the address of an EPRT argument such as |1|10.0.0.1|1234|
// (any delimiter).
func eprtAddr(arg string) (netip.Addr, bool) {
	arg = strings.TrimSpace(arg)
	if arg == "" {
		return netip.Addr{}, false
	}
	f := strings.Split(arg, arg[:1])
	if len(f) != 5 {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(f[2])
	return a.Unmap(), err == nil
}

// ctEntry is one conntrack -L line: its original and reply tuples and mark.
type ctEntry struct {
	origSrc, origDst, replySrc, replyDst netip.AddrPort
	mark                                 uint32
	line                                 string
}

// conntrackTCP lists the TCP conntrack entries of ns (both families).
func conntrackTCP(t *testing.T, ns string) []ctEntry {
	t.Helper()
	var out []ctEntry
	for _, fam := range []string{"ipv4", "ipv6"} {
		stdout, stderr, err := execIn(t, 10*time.Second, ns, nil, "conntrack", "-L", "-f", fam, "-p", "tcp")
		if err != nil {
			t.Fatalf("conntrack -L -f %s: %v\n%s", fam, err, stderr)
		}
		for _, line := range strings.Split(string(stdout), "\n") {
			var e ctEntry
			var src, dst []netip.Addr
			var sport, dport []uint16
			for _, f := range strings.Fields(line) {
				k, v, ok := strings.Cut(f, "=")
				if !ok {
					continue
				}
				switch k {
				case "src", "dst":
					a, err := netip.ParseAddr(v)
					if err != nil {
						continue
					}
					if k == "src" {
						src = append(src, a)
					} else {
						dst = append(dst, a)
					}
				case "sport", "dport":
					n, err := strconv.ParseUint(v, 10, 16)
					if err != nil {
						continue
					}
					if k == "sport" {
						sport = append(sport, uint16(n))
					} else {
						dport = append(dport, uint16(n))
					}
				case "mark":
					n, _ := strconv.ParseUint(v, 0, 32)
					e.mark = uint32(n)
				}
			}
			if len(src) < 2 || len(dst) < 2 || len(sport) < 2 || len(dport) < 2 {
				continue
			}
			e.origSrc, e.origDst = netip.AddrPortFrom(src[0], sport[0]), netip.AddrPortFrom(dst[0], dport[0])
			e.replySrc, e.replyDst = netip.AddrPortFrom(src[1], sport[1]), netip.AddrPortFrom(dst[1], dport[1])
			e.line = line
			out = append(out, e)
		}
	}
	return out
}

// checkDataTranslations looks in the router's conntrack table for the data
// connections of the matrix just run, per family: a passive one (client to
// the WAN address, not port 21, DNATed to rs2 and seen by rs2 as coming from
// seen) and an active one (rs2 port 20 to seen, leaving with the WAN address
// as source). Each must carry nfhelperd's mark bit.
func checkDataTranslations(t *testing.T, seen4, seen6 string) {
	t.Helper()
	entries := conntrackTCP(t, harness.tp.Router)
	for _, fam := range []struct{ client, wan, rs, seen string }{
		{topo.ClientV4, topo.WAN4, topo.RS2V4, seen4},
		{topo.ClientV6, topo.WAN6, topo.RS2V6, seen6},
	} {
		client, wan := netip.MustParseAddr(fam.client), netip.MustParseAddr(fam.wan)
		rs, seen := netip.MustParseAddr(fam.rs), netip.MustParseAddr(fam.seen)
		var passive, active []ctEntry
		for _, e := range entries {
			switch {
			case e.origSrc.Addr() == client && e.origDst.Addr() == wan && e.origDst.Port() != 21 &&
				e.replySrc.Addr() == rs && e.replyDst.Addr() == seen:
				passive = append(passive, e)
			case e.origSrc == netip.AddrPortFrom(rs, 20) && e.origDst.Addr() == seen &&
				e.replySrc.Addr() == client && e.replyDst.Addr() == wan:
				active = append(active, e)
			}
		}
		for _, c := range []struct {
			what string
			es   []ctEntry
		}{{"passive", passive}, {"active", active}} {
			if len(c.es) == 0 {
				t.Errorf("%s: no %s data connection translated as expected (%s -> %s, rs2 sees %s) in the router's conntrack table", fam.wan, c.what, fam.client, fam.wan, fam.seen)
				continue
			}
			unmarked := 0
			for _, e := range c.es {
				if e.mark&0x01000000 == 0 {
					unmarked++
					t.Errorf("%s data connection without mark bit %s: %s", c.what, addonMark, e.line)
				}
			}
			t.Logf("%s: %d %s data connections, %d without the mark bit, e.g. %s", fam.wan, len(c.es), c.what, unmarked, c.es[0].line)
		}
	}
	if t.Failed() {
		var b strings.Builder
		for _, e := range entries {
			b.WriteString(e.line + "\n")
		}
		t.Logf("router conntrack (tcp):\n%s", tailString(b.String(), 8000))
	}
}

// keepClosedConnections keeps the router's closed TCP entries (CLOSE, 10 s
// by default) for two minutes while the test runs, so that
// checkDataTranslations still finds the first data connections of the
// matrix on a slow machine (the emulated VM).
func keepClosedConnections(t *testing.T) {
	t.Helper()
	const closeTimeout = "net.netfilter.nf_conntrack_tcp_timeout_close"
	router := harness.tp.Router
	old, _, err := execIn(t, 10*time.Second, router, nil, "sysctl", "-n", closeTimeout)
	if err != nil {
		t.Fatalf("sysctl %s: %v", closeTimeout, err)
	}
	if _, stderr, err := execIn(t, 10*time.Second, router, nil, "sysctl", "-w", closeTimeout+"=120"); err != nil {
		t.Fatalf("sysctl -w %s: %v %s", closeTimeout, err, stderr)
	}
	t.Cleanup(func() {
		execIn(t, 10*time.Second, router, nil, "sysctl", "-w", closeTimeout+"="+strings.TrimSpace(string(old)))
	})
}

// TestWANPortForward: the user's ruleset DNATs the WAN addresses' port 21 to
// rs2; the server sees the client's own address. curl and the Go client in
// every mode, through nfhelperd's add-on helpers.
func TestWANPortForward(t *testing.T) {
	tp := needTopo(t)
	installUserRules(t, userRules{})

	t.Run("control", func(t *testing.T) {
		controlThroughWAN(t, net.JoinHostPort(topo.WAN4, "21"), topo.ClientV4)
		controlThroughWAN(t, net.JoinHostPort(topo.WAN6, "21"), topo.ClientV6)
	})
	if harness.noAddon != "" {
		// Without the helpers the data connection of EPSV goes to the WAN
		// address, where nothing forwards it: the test must see that fail.
		t.Run("unhelped-epsv-fails", func(t *testing.T) {
			trace, err := curlShort(t, curlEPSV)
			if err == nil {
				t.Errorf("EPSV through %s worked without nfhelperd's help:\n%s", topo.WAN4, trace)
			} else {
				t.Logf("as expected without the helpers: %v\n%s", err, tailString(trace, 1500))
			}
		})
	}

	needAddon(t)
	keepClosedConnections(t)
	mark := logMark(t, rs2(t).Log)
	t.Run("curl", func(t *testing.T) { runMatrix(t, wanTarget(tp), "curl") })
	t.Run("go", func(t *testing.T) { runMatrix(t, wanTarget(tp), "go") })
	t.Run("server-view", func(t *testing.T) {
		// No SNAT: vsftpd sees the client, and PORT/EPRT name it unchanged.
		checkServerView(t, logSince(t, rs2(t).Log, mark), topo.ClientV4, topo.ClientV6)
	})
	t.Run("conntrack", func(t *testing.T) { checkDataTranslations(t, topo.ClientV4, topo.ClientV6) })
}

// TestWANFullNAT: the user's ruleset also SNATs the forwarded control
// connections to the router's LAN address, so vsftpd sees the router. PORT
// and EPRT must reach it naming the router (vsftpd refuses a PORT naming
// another host than the control peer), 227 replies naming rs2 must reach the
// client naming the WAN address, and active data connections must arrive at
// the client from the WAN address.
func TestWANFullNAT(t *testing.T) {
	tp := needTopo(t)
	installUserRules(t, userRules{fullNAT: true})

	t.Run("control", func(t *testing.T) {
		controlThroughWAN(t, net.JoinHostPort(topo.WAN4, "21"), topo.RouterLANV4)
		controlThroughWAN(t, net.JoinHostPort(topo.WAN6, "21"), topo.RouterLANV6)
	})

	needAddon(t)
	keepClosedConnections(t)
	mark := logMark(t, rs2(t).Log)
	t.Run("curl", func(t *testing.T) { runMatrix(t, wanTarget(tp), "curl") })
	t.Run("go", func(t *testing.T) { runMatrix(t, wanTarget(tp), "go") })
	t.Run("server-view", func(t *testing.T) {
		checkServerView(t, logSince(t, rs2(t).Log, mark), topo.RouterLANV4, topo.RouterLANV6)
	})
	t.Run("conntrack", func(t *testing.T) { checkDataTranslations(t, topo.RouterLANV4, topo.RouterLANV6) })
	t.Run("227-rewritten", func(t *testing.T) {
		r := runFtpget(t, tp.Client, net.JoinHostPort(topo.WAN4, "21"), "pasv", "server.txt", 1).results[0]
		if r.Content != "rs2\n" {
			t.Errorf("server.txt = %q, want rs2 (the user's forward target)", r.Content)
		}
		wan := strings.ReplaceAll(topo.WAN4, ".", ",") + ","
		rs := strings.ReplaceAll(topo.RS2V4, ".", ",") + ","
		if !strings.Contains(r.PassiveReply, wan) || strings.Contains(r.PassiveReply, rs) {
			t.Errorf("client received %q, want a 227 naming %s (and not %s)", r.PassiveReply, topo.WAN4, topo.RS2V4)
		}
		t.Logf("client received %q over %s", r.PassiveReply, r.Control)
	})
}

// TestWANForwardPolicyDrop: the user's forward chain drops everything but
// established/related packets and the forwarded control connections. Without
// the documented rule `ct mark & 0x01000000 == 0x01000000 accept` nfhelperd's
// data connections are dropped; with it every mode works.
func TestWANForwardPolicyDrop(t *testing.T) {
	tp := needTopo(t)

	t.Run("without-mark-rule", func(t *testing.T) {
		installUserRules(t, userRules{dropForward: true})
		controlThroughWAN(t, net.JoinHostPort(topo.WAN4, "21"), topo.ClientV4)
		needAddon(t)
		before := droppedPackets(t)
		trace, err := curlShort(t, curlPASV)
		if err == nil {
			t.Fatalf("PASV transfer through %s succeeded although the user's forward chain drops data connections:\n%s", topo.WAN4, trace)
		}
		t.Logf("transfer failed as it must: %v", err)
		// The failure must be the dropped data connection: the control
		// connection was helped (227 rewritten to the WAN address).
		wan := strings.ReplaceAll(topo.WAN4, ".", ",") + ","
		if !strings.Contains(trace, "227 ") || !strings.Contains(trace, wan) {
			t.Errorf("no 227 naming %s before the failure:\n%s", topo.WAN4, trace)
		}
		if after := droppedPackets(t); after <= before {
			t.Errorf("the user's forward chain dropped nothing (%d -> %d packets)", before, after)
		} else {
			t.Logf("user's forward chain dropped %d packets", after-before)
		}
		if t.Failed() {
			t.Logf("curl trace:\n%s", trace)
		}
	})

	t.Run("with-mark-rule", func(t *testing.T) {
		installUserRules(t, userRules{dropForward: true, markRule: true})
		needAddon(t)
		t.Run("curl", func(t *testing.T) { runMatrix(t, wanTarget(tp), "curl") })
		t.Run("go", func(t *testing.T) { runMatrix(t, wanTarget(tp), "go") })
	})

	t.Run("full-nat-with-mark-rule", func(t *testing.T) {
		installUserRules(t, userRules{fullNAT: true, dropForward: true, markRule: true})
		needAddon(t)
		t.Run("go", func(t *testing.T) { runMatrix(t, wanTarget(tp), "go") })
	})
}

// TestWANUserTableGone: after the add-on tests nothing of the user's ruleset
// is left for the tests that follow.
func TestWANUserTableGone(t *testing.T) {
	tp := needTopo(t)
	out, _, err := execIn(t, 10*time.Second, tp.Router, nil, "nft", "list", "tables")
	if err != nil {
		t.Fatalf("nft list tables: %v", err)
	}
	if bytes.Contains(out, []byte("inet user")) {
		t.Errorf("table inet user left behind:\n%s", out)
	}
}
