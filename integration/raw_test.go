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
	"net/textproto"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/integration/ftpclient"
	"github.com/nfhelper/nfhelper/integration/topo"
)

// rawFTP is a control connection from the client namespace on which the
// test writes commands exactly as it wants them on the wire (TCP_NODELAY,
// one write per part, a short pause between parts so that each part leaves
// as its own segment).
type rawFTP struct {
	t     *testing.T
	c     *net.TCPConn
	r     *textproto.Reader
	trace strings.Builder
}

// segmentPause separates the writes of a split command (the split is the
// behaviour under test, not a synchronisation).
const segmentPause = 5 * time.Millisecond

func dialRaw(t *testing.T, addr string) *rawFTP {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := topo.DialIn(ctx, harness.tp.Client, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	f := &rawFTP{t: t, c: c.(*net.TCPConn), r: textproto.NewReader(bufio.NewReader(c))}
	_ = f.c.SetNoDelay(true)
	t.Cleanup(func() { f.c.Close() })
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("control connection %s:\n%s", addr, f.trace.String())
		}
	})
	f.expect(2)
	return f
}

// send writes the parts of one command, one write each.
func (f *rawFTP) send(parts ...string) {
	f.t.Helper()
	_ = f.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	for i, p := range parts {
		if i > 0 {
			time.Sleep(segmentPause)
		}
		if _, err := io.WriteString(f.c, p); err != nil {
			f.t.Fatalf("write %q: %v", p, err)
		}
	}
	fmt.Fprintf(&f.trace, "> %q\n", parts)
}

// bytewise splits s into one part per byte.
func bytewise(s string) []string {
	out := make([]string, len(s))
	for i := range s {
		out[i] = s[i : i+1]
	}
	return out
}

// reply reads one reply (multi-line aware).
func (f *rawFTP) reply() (int, string, error) {
	_ = f.c.SetReadDeadline(time.Now().Add(15 * time.Second))
	code, msg, err := f.r.ReadResponse(0)
	fmt.Fprintf(&f.trace, "< %d %q %v\n", code, msg, err)
	return code, msg, err
}

// expect reads a reply whose code starts with digit (any when 0) and
// returns it.
func (f *rawFTP) expect(digit int) (int, string) {
	f.t.Helper()
	code, msg, err := f.reply()
	if err != nil || digit != 0 && code/100 != digit {
		f.t.Fatalf("reply %d %q (%v), want %dxx", code, msg, err, digit)
	}
	return code, msg
}

func (f *rawFTP) cmd(line string, digit int) (int, string) {
	f.t.Helper()
	f.send(line + "\r\n")
	return f.expect(digit)
}

func (f *rawFTP) login(user string) {
	f.t.Helper()
	if code, _ := f.cmd("USER "+user, 0); code == 331 {
		f.cmd("PASS nfhelper@example.com", 2)
	} else if code != 230 {
		f.t.Fatalf("USER %s: reply %d", user, code)
	}
	f.cmd("TYPE I", 2)
}

// listenClient listens in the client namespace on an ephemeral port.
func listenClient(t *testing.T, v6 bool) (net.Listener, uint16) {
	t.Helper()
	addr := net.JoinHostPort(topo.ClientV4, "0")
	if v6 {
		addr = net.JoinHostPort(topo.ClientV6, "0")
	}
	ln, err := topo.ListenIn(harness.tp.Client, "tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, ln.Addr().(*net.TCPAddr).AddrPort().Port()
}

// retrActive sends RETR small.bin, accepts the server's data connection on
// ln, and checks the content and that it came from wantPeer.
func (f *rawFTP) retrActive(ln net.Listener, wantPeer string) {
	f.t.Helper()
	f.send("RETR small.bin\r\n")
	accepted := make(chan net.Conn, 1)
	go func() {
		_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(20 * time.Second))
		c, err := ln.Accept()
		if err != nil {
			c = nil
		}
		accepted <- c
	}()
	code, msg, err := f.reply()
	if err != nil || code != 150 && code != 125 {
		f.t.Fatalf("RETR: reply %d %q (%v)", code, msg, err)
	}
	data := <-accepted
	if data == nil {
		f.t.Fatal("no data connection arrived within 20s")
	}
	defer data.Close()
	peer := data.RemoteAddr().(*net.TCPAddr).AddrPort()
	if peer.Addr().Unmap().String() != wantPeer {
		f.t.Errorf("data connection from %s, want %s", peer, wantPeer)
	}
	f.readData(data)
}

// retrPassive connects to target, sends RETR small.bin and checks the content.
func (f *rawFTP) retrPassive(target string) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	data, err := topo.DialIn(ctx, harness.tp.Client, "tcp", target)
	if err != nil {
		f.t.Fatalf("data connection to %s: %v", target, err)
	}
	defer data.Close()
	f.send("RETR small.bin\r\n")
	if code, msg, err := f.reply(); err != nil || code != 150 && code != 125 {
		f.t.Fatalf("RETR: reply %d %q (%v)", code, msg, err)
	}
	f.readData(data)
}

func (f *rawFTP) readData(data net.Conn) {
	f.t.Helper()
	_ = data.SetDeadline(time.Now().Add(30 * time.Second))
	b, err := io.ReadAll(data)
	if err != nil {
		f.t.Fatalf("data: %v after %d bytes", err, len(b))
	}
	if got, want := sha256Hex(b), harness.tp.Files["small.bin"]; got != want {
		f.t.Errorf("small.bin sha256 %s (%d bytes), want %s", got, len(b), want)
	}
	f.expect(2)
}

func portArg(a netip.Addr, port uint16) string {
	b := a.As4()
	return fmt.Sprintf("%d,%d,%d,%d,%d,%d", b[0], b[1], b[2], b[3], port>>8, port&0xff)
}

// TestVIPRawCommands: commands the client sends in odd shapes (split over
// segments, byte by byte, lower case, another EPRT delimiter) must still be
// recognised by the helper and lead to working data transfers through the
// VIP. vsftpd serves the standard forms; quirkyftpd the EPRT with '!'
// delimiters, which vsftpd refuses.
func TestVIPRawCommands(t *testing.T) {
	needDaemon(t)
	client4 := netip.MustParseAddr(topo.ClientV4)
	vip4 := net.JoinHostPort(topo.VIP4, "21")
	vip6 := net.JoinHostPort(topo.VIP6, "21")
	quirky4 := net.JoinHostPort(topo.VIP4, fmt.Sprint(topo.QuirkyPort))

	active := []struct {
		name   string
		addr   string
		v6     bool
		quirky bool
		parts  func(port uint16) []string
	}{
		{"port-lowercase-bytewise", vip4, false, false, func(p uint16) []string {
			return bytewise("port " + portArg(client4, p) + "\r\n")
		}},
		{"PORT-split-in-numbers", vip4, false, false, func(p uint16) []string {
			s := "PORT " + portArg(client4, p) + "\r\n"
			return []string{s[:len("PORT 203,0,11")], s[len("PORT 203,0,11"):]}
		}},
		{"PORT-split-after-verb", vip4, false, false, func(p uint16) []string {
			s := "PORT " + portArg(client4, p) + "\r\n"
			return []string{"PORT", s[4:]}
		}},
		{"PORT-split-before-LF", vip4, false, false, func(p uint16) []string {
			s := "PORT " + portArg(client4, p) + "\r\n"
			return []string{s[:len(s)-1], "\n"}
		}},
		{"EPRT-bytewise", vip4, false, false, func(p uint16) []string {
			return bytewise(fmt.Sprintf("EPRT |1|%s|%d|\r\n", topo.ClientV4, p))
		}},
		{"eprt6-lowercase-split", vip6, true, false, func(p uint16) []string {
			s := fmt.Sprintf("eprt |2|%s|%d|\r\n", topo.ClientV6, p)
			return []string{s[:12], s[12:]}
		}},
		{"EPRT-bang-delimiter", quirky4, false, true, func(p uint16) []string {
			return []string{fmt.Sprintf("EPRT !1!%s!%d!\r\n", topo.ClientV4, p)}
		}},
		{"EPRT-bang-delimiter-bytewise", quirky4, false, true, func(p uint16) []string {
			return bytewise(fmt.Sprintf("EPRT !1!%s!%d!\r\n", topo.ClientV4, p))
		}},
	}
	for _, c := range active {
		t.Run(c.name, func(t *testing.T) {
			if c.quirky {
				needKind(t, "quirkyftpd")
			}
			f := dialRaw(t, c.addr)
			f.login("anonymous")
			ln, port := listenClient(t, c.v6)
			f.send(c.parts(port)...)
			f.expect(2)
			want := topo.VIP4
			if c.v6 {
				want = topo.VIP6
			}
			f.retrActive(ln, want)
			f.cmd("QUIT", 2)
		})
	}

	passive := []struct {
		name  string
		addr  string
		parts []string
	}{
		{"PASV-split", vip4, []string{"PA", "SV\r\n"}},
		{"pasv-lowercase-bytewise", vip4, bytewise("pasv\r\n")},
		{"EPSV-split", vip4, []string{"EP", "SV\r\n"}},
		{"epsv6-bytewise", vip6, bytewise("epsv\r\n")},
	}
	for _, c := range passive {
		t.Run(c.name, func(t *testing.T) {
			f := dialRaw(t, c.addr)
			f.login("anonymous")
			f.send(c.parts...)
			code, msg := f.expect(2)
			host, _, _ := net.SplitHostPort(c.addr)
			var target string
			switch code {
			case 227:
				ap, err := ftpclient.ParsePASV(msg)
				if err != nil {
					t.Fatal(err)
				}
				if ap.Addr().String() != topo.VIP4 {
					t.Errorf("227 reply %q names %s, want the VIP %s", msg, ap.Addr(), topo.VIP4)
				}
				target = ap.String()
			case 229:
				p, err := ftpclient.ParseEPSV(msg)
				if err != nil {
					t.Fatal(err)
				}
				target = net.JoinHostPort(host, fmt.Sprint(p))
			default:
				t.Fatalf("reply %d %q, want 227 or 229", code, msg)
			}
			f.retrPassive(target)
			f.cmd("QUIT", 2)
		})
	}
}

// nftElems lists map inet nfhelper <name> in the router namespace; each
// element is its key and value as flat lists of strings (addresses, ports).
func nftElems(t *testing.T, name string) []nftElem {
	t.Helper()
	out, stderr, err := execIn(t, 10*time.Second, harness.tp.Router, nil, "nft", "-j", "list", "map", "inet", "nfhelper", name)
	if err != nil {
		t.Fatalf("nft list map inet nfhelper %s: %v: %s", name, err, stderr)
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatalf("nft -j output: %v\n%s", err, out)
	}
	var elems []nftElem
	for _, o := range doc.Nftables {
		raw, ok := o["map"]
		if !ok {
			continue
		}
		var m struct {
			Elem []json.RawMessage `json:"elem"`
		}
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("nft -j map: %v", err)
		}
		for _, e := range m.Elem {
			var kv []any
			if err := json.Unmarshal(e, &kv); err != nil || len(kv) != 2 {
				t.Fatalf("nft -j element %s: %v", e, err)
			}
			elems = append(elems, nftElem{Key: flatten(kv[0]), Val: flatten(kv[1])})
		}
	}
	return elems
}

type nftElem struct{ Key, Val []string }

func (e nftElem) String() string {
	return strings.Join(e.Key, " . ") + " : " + strings.Join(e.Val, " . ")
}

// flatten returns the scalars of an nft JSON key or value: {"concat": [...]}
// and {"elem": {"val": ...}} (elements with timeouts) are unwrapped.
func flatten(v any) []string {
	switch x := v.(type) {
	case map[string]any:
		if c, ok := x["concat"]; ok {
			return flatten(c)
		}
		if e, ok := x["elem"]; ok {
			return flatten(e)
		}
		if val, ok := x["val"]; ok {
			return flatten(val)
		}
		if p, ok := x["prefix"]; ok {
			return flatten(p)
		}
		return nil
	case []any:
		var out []string
		for _, y := range x {
			out = append(out, flatten(y)...)
		}
		return out
	case float64:
		return []string{fmt.Sprint(int64(x))}
	case string:
		return []string{x}
	}
	return nil
}

func matches(have, want []string) bool {
	if len(have) != len(want) {
		return false
	}
	for i := range want {
		if want[i] != "*" && want[i] != have[i] {
			return false
		}
	}
	return true
}

// findElem returns the elements of map name whose key and value match (a "*"
// matches anything; a nil value matches any value).
func findElem(t *testing.T, name string, key, val []string) []nftElem {
	t.Helper()
	var out []nftElem
	for _, e := range channelElems(t, name) {
		if matches(e.Key, key) && (val == nil || matches(e.Val, val)) {
			out = append(out, e)
		}
	}
	return out
}

// waitElem polls map name until an element matches.
func waitElem(t *testing.T, name string, key, val []string) nftElem {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if e := findElem(t, name, key, val); len(e) > 0 {
			return e[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no element %v : %v in map %s within 10s; elements:\n%v", key, val, name, channelElems(t, name))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitLog polls the daemon's output until re matches, up to 10s, and logs
// the first matching line.
func waitLog(t *testing.T, d *topo.Daemon, re *regexp.Regexp) bool {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if line := re.FindString(d.Log()); line != "" {
			t.Logf("%s", line)
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// refusals records how many refused announcements of each reason the
// bounce tests provoked, for the counter check at shutdown.
var refusals struct {
	sync.Mutex
	n map[string]int
}

func countRefusal(reason string) {
	refusals.Lock()
	defer refusals.Unlock()
	if refusals.n == nil {
		refusals.n = map[string]int{}
	}
	refusals.n[reason]++
}

// provokeRefusal sends the running daemon one bounce (a PORT naming rs2,
// through the quirky server, which would accept it) and counts it, so that
// a test checking the daemon's refusal counters has one whatever ran
// before. It returns false where quirkyftpd does not run.
func provokeRefusal(t *testing.T) bool {
	t.Helper()
	if harness.noQuirky != "" {
		return false
	}
	f := dialRaw(t, net.JoinHostPort(topo.VIP4, fmt.Sprint(topo.QuirkyPort)))
	f.login("anonymous")
	// The server's reply comes after the daemon refused the command.
	f.send("PORT 10,0,0,12,156,64\r\n")
	code, msg, err := f.reply()
	if err != nil {
		t.Fatalf("bounce: no reply: %v", err)
	}
	if code/100 == 2 {
		t.Errorf("a bounce reached the server and was accepted: %d %s", code, msg)
	}
	countRefusal("bounce")
	f.cmd("QUIT", 2)
	return true
}

func refusedLogRE(reason string) *regexp.Regexp {
	return regexp.MustCompile(`(?m)^.*msg="refused data channel".*\breason="?` + reason + `\b.*$`)
}

// TestVIPBounce: through the VIP, PORT/EPRT commands naming a third party
// or a low port must not open a data channel (no element in active4/6)
// while a legitimate PORT/EPRT right after them does; the daemon must log the
// refusals. quirkyftpd accepts any PORT/EPRT, so only the daemon stands in
// the way.
func TestVIPBounce(t *testing.T) {
	d := needDaemon(t)
	needKind(t, "quirkyftpd")
	qport := fmt.Sprint(topo.QuirkyPort)

	for _, fam := range []struct {
		name, vip, client, rs1 string
		v6                     bool
		bad                    []struct{ reason, addr, port, cmd string }
	}{
		{"v4", topo.VIP4, topo.ClientV4, topo.RS1V4, false, []struct{ reason, addr, port, cmd string }{
			{"bounce", "10.0.0.12", "40000", "PORT 10,0,0,12,156,64"},
			{"bounce", "203.0.113.99", "40001", "EPRT |1|203.0.113.99|40001|"},
			{"bounce", "10.0.0.12", "40002", "port 10,0,0,12,156,66"},
			{"low_port", topo.ClientV4, "25", "PORT 203,0,113,2,0,25"},
			{"low_port", topo.ClientV4, "1023", "EPRT |1|" + topo.ClientV4 + "|1023|"},
		}},
		{"v6", topo.VIP6, topo.ClientV6, topo.RS1V6, true, []struct{ reason, addr, port, cmd string }{
			{"bounce", "2001:db8:2::99", "40003", "EPRT |2|2001:db8:2::99|40003|"},
			{"bounce", "fd00::12", "40004", "EPRT |2|fd00::12|40004|"},
			{"low_port", topo.ClientV6, "25", "EPRT |2|" + topo.ClientV6 + "|25|"},
		}},
	} {
		t.Run(fam.name, func(t *testing.T) {
			mapName := "active4"
			if fam.v6 {
				mapName = "active6"
			}
			f := dialRaw(t, net.JoinHostPort(fam.vip, qport))
			f.login("anonymous")
			for _, b := range fam.bad {
				f.send(b.cmd + "\r\n")
				code, msg, err := f.reply()
				if err != nil {
					t.Fatalf("%s: no reply: %v", b.cmd, err)
				}
				t.Logf("%s -> %d %s", b.cmd, code, msg)
				if code/100 == 2 {
					// The quirky server accepts any address: only the
					// refused command's lost verb stops the bounce.
					t.Errorf("%s reached the server and was accepted: %d %s", b.cmd, code, msg)
				}
				countRefusal(b.reason)
			}
			// The legitimate announcement after them: once its element is
			// there, the daemon has processed the bad ones before it.
			ln, port := listenClient(t, fam.v6)
			if fam.v6 {
				f.cmd(fmt.Sprintf("EPRT |2|%s|%d|", topo.ClientV6, port), 2)
			} else {
				f.cmd("PORT "+portArg(netip.MustParseAddr(topo.ClientV4), port), 2)
			}
			e := waitElem(t, mapName, []string{fam.rs1, fam.client, fmt.Sprint(port)}, nil)
			t.Logf("legitimate announcement: %s", e)
			for _, b := range fam.bad {
				if got := findElem(t, mapName, []string{"*", b.addr, b.port}, nil); len(got) > 0 {
					t.Errorf("%q (%s) opened a data channel: %v", b.cmd, b.reason, got)
				}
			}
			f.retrActive(ln, fam.vip)
			f.cmd("QUIT", 2)
		})
	}

	t.Run("log", func(t *testing.T) {
		for _, reason := range []string{"bounce", "low_port"} {
			if !waitLog(t, d, refusedLogRE(reason)) {
				t.Errorf(`daemon logged no msg="refused data channel" reason=%s line`, reason)
			}
		}
	})
}

// TestVIPBounce227: a 227 reply naming another host than the server that
// sent it (quirkyftpd bounce227: rs2's 10.0.0.12; bounce227ext: 192.0.2.1)
// must pass unrewritten and open no passive4 element, while the correct 227
// after it on the same connection is rewritten and opens one.
func TestVIPBounce227(t *testing.T) {
	d := needDaemon(t)
	needKind(t, "quirkyftpd")
	vipNums := strings.ReplaceAll(topo.VIP4, ".", ",") + ","
	for _, c := range []struct{ user, addr string }{
		{"bounce227", "10.0.0.12"},
		{"bounce227ext", "192.0.2.1"},
	} {
		t.Run(c.user, func(t *testing.T) {
			f := dialRaw(t, net.JoinHostPort(topo.VIP4, fmt.Sprint(topo.QuirkyPort)))
			f.login(c.user)
			_, msg := f.cmd("PASV", 2)
			bad, err := ftpclient.ParsePASV(msg)
			if err != nil {
				t.Fatal(err)
			}
			if bad.Addr().String() != c.addr {
				t.Errorf("227 %q was rewritten (names %s), want %s passed unchanged", msg, bad.Addr(), c.addr)
			}
			countRefusal("bounce")
			_, msg = f.cmd("PASV", 2)
			good, err := ftpclient.ParsePASV(msg)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(msg, vipNums) {
				t.Errorf("second, correct 227 %q does not carry the VIP", msg)
			}
			e := waitElem(t, "passive4", []string{topo.ClientV4, topo.VIP4, fmt.Sprint(good.Port())}, []string{topo.RS1V4, "*"})
			t.Logf("correct 227: %s", e)
			for _, m := range [][2][]string{
				{{"*", "*", "*"}, {c.addr, fmt.Sprint(bad.Port())}},
				{{topo.ClientV4, "*", fmt.Sprint(bad.Port())}, nil},
			} {
				if got := findElem(t, "passive4", m[0], m[1]); len(got) > 0 {
					t.Errorf("227 naming %s opened a passive channel: %v", bad, got)
				}
			}
			f.retrPassive(good.String())
			f.cmd("QUIT", 2)
		})
	}
	t.Run("log", func(t *testing.T) {
		if !waitLog(t, d, refusedLogRE("bounce")) {
			t.Errorf(`daemon logged no msg="refused data channel" reason=bounce line`)
		}
	})
}
