//go:build integration

package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/ctl"
	"github.com/nfhelper/nfhelper/integration/topo"
)

// tftpService is a UDP service on vip:69 with the tftp helper over rs1 and
// rs2 (weights w1, w2) of family fam.
func tftpService(name, vip, sched string, v6 bool, w1, w2 int) string {
	host, rs1, rs2 := vip+":69", topo.RS1V4+":69", topo.RS2V4+":69"
	if v6 {
		host, rs1, rs2 = `"[`+vip+`]:69"`, `"[`+topo.RS1V6+`]:69"`, `"[`+topo.RS2V6+`]:69"`
	}
	return fmt.Sprintf("  - name: %s\n    vip: %s\n    protocol: udp\n    scheduler: %s\n    helper: tftp\n    real_servers:\n"+
		"      - address: %s\n        weight: %d\n      - address: %s\n        weight: %d\n", name, host, sched, rs1, w1, rs2, w2)
}

// tftpUploaded waits for remote, whole, in one of the servers' directories
// and says whose; the copy is removed.
func tftpUploaded(servers []*tftpServer, remote, sum string) string {
	var who string
	pollUntil(topo.Scaled(10*time.Second), func() bool {
		for _, s := range servers {
			if got, _, err := topo.FileSHA256(filepath.Join(s.Dir, remote)); err == nil && got == sum {
				who = s.Name
				return true
			}
		}
		return false
	})
	for _, s := range servers {
		os.Remove(filepath.Join(s.Dir, remote))
	}
	return who
}

// TestTFTPThroughVIP: TFTP through a balanced VIP with the tftp helper,
// tftpd-hpa on rs1 and atftpd on rs2: every client (tftp-hpa, atftp,
// curl) reads (RRQ) and writes (WRQ) through the VIP, IPv4 and IPv6, with
// the options it sends (blksize 512 and 1468, windowsize 16), and a
// 64 MiB read at 512-byte blocks (the block number rolls over), checked by
// sha256; the servers answer from ports of their own and the client only
// ever talks to the VIP. Requests follow wrr's cycle (2:1); no packet of a
// transfer reaches the daemon (one queued per request); the request shows
// in nfhelperctl conns. The same transfers run through the kernel's own
// helper (nft DNAT + nf_conntrack_tftp/nf_nat_tftp) beside it, for
// comparison.
func TestTFTPThroughVIP(t *testing.T) {
	tp := needTopo(t)
	if harness.daemonBin == "" {
		t.Skip(harness.noDaemon)
	}
	servers := startTFTPServers(t)
	f := needTFTPFiles(t)[tftpFile1M]
	e := &hcEnv{t: t, tp: tp}
	d := e.start(hcConfig(
		tftpService("tftp", topo.VIP4, "wrr", false, 2, 1),
		tftpService("tftp6", topo.VIP6, "wrr", true, 2, 1),
	), "")
	t.Logf("datapath %s", d.Datapath)
	q0 := ksQueued(t)
	requests := 0
	spread := map[string]int{}
	for _, client := range tftpClients {
		for _, fam := range tftpFamilies {
			vip := topo.VIP4
			if fam == "v6" {
				vip = topo.VIP6
			}
			opts := tftpPairOptions(client, topo.ATFTPD)
			for _, o := range opts {
				t.Run(client+"/"+fam+"/RRQ-"+o.String(), func(t *testing.T) {
					r := tftpCheckGet(t, tp.Client, client, vip, f, o)
					t.Logf("%d bytes in %v", r.Size, r.Elapsed.Round(time.Millisecond))
				})
				t.Run(client+"/"+fam+"/WRQ-"+o.String(), func(t *testing.T) {
					remote := fmt.Sprintf("vip-%s-%s-%s.bin", client, fam, o)
					r := tftpPut(t, tp.Client, client, vip, f.Path, remote, o)
					who := tftpUploaded(servers, remote, f.SHA256)
					if r.Err != nil || who == "" {
						t.Errorf("WRQ through %s: %v, on no server whole; output:\n%s", vip, r.Err, r.Output)
					}
					spread[who]++
				})
				requests += 2
			}
		}
	}
	// Which server answers: wrr 2:1, every cycle exact.
	for _, fam := range tftpFamilies {
		vip := topo.VIP4
		if fam == "v6" {
			vip = topo.VIP6
		}
		var seq []string
		for range 6 {
			name, r := tftpServerName(t, tp.Client, tftpClientHPA, vip, tftpOpts{})
			if name == "" {
				t.Errorf("server.txt through %s: %v %s", vip, r.Err, r.Output)
			}
			seq = append(seq, name)
			requests++
		}
		ksCycle(t, fam+" wrr 2:1", seq, map[string]int{"rs1": 2, "rs2": 1})
	}
	queued := ksQueued(t) - q0
	t.Logf("%d transfers, %d packets queued (uploads by server %v)", requests, queued, spread)
	// A request's copies (a client's retransmission) are queued too, and
	// nothing else: far fewer than the transfers' thousands of packets.
	if queued < uint64(requests) || queued > uint64(3*requests) {
		t.Errorf("%d packets queued for %d requests", queued, requests)
	}

	t.Run("rollover", func(t *testing.T) {
		if os.Getenv("NFHVM") != "" {
			t.Skip("131072 lockstep blocks take over a minute per datapath under the VM's emulation; the host runs it (the kernel forwards the transfer alike on both datapaths)")
		}
		big := needTFTPFiles(t)[tftpFile64M]
		r := tftpCheckGet(t, tp.Client, tftpClientHPA, topo.VIP4, big, tftpOpts{Timeout: 3 * time.Minute})
		t.Logf("64 MiB at 512-byte blocks (the block number rolls over) through the VIP in %v", r.Elapsed.Round(time.Millisecond))
	})

	t.Run("conns", func(t *testing.T) {
		// A request shows while conntrack holds its flow (30 s unreplied)
		// or its transfer runs.
		if r := tftpGet(t, tp.Client, tftpClientHPA, topo.VIP4, f.Name, tftpOpts{}); r.SHA256 != f.SHA256 {
			t.Fatalf("RRQ: %v", r.Err)
		}
		// Its transfer shows under it once conntrack's event came.
		var cs ctl.Conns
		found := pollUntil(topo.Scaled(5*time.Second), func() bool {
			ctlJSON(t, tp.ControlSocket(), "conns", &cs)
			for _, c := range cs.Conns {
				if c.Protocol == "UDP" && c.Helper == "tftp" && strings.HasPrefix(c.About, `RRQ "`+f.Name+`" octet`) &&
					len(c.Replies) == 1 && c.Replies[0].VIP.Addr().String() == topo.VIP4 && c.Replies[0].Server.Addr() == c.Server.Addr() {
					return true
				}
			}
			return false
		})
		if !found {
			t.Errorf("no UDP flow with the request and its transfer in conns: %+v", cs.Conns)
		}
		code, out, _ := nfhelperctl(t, tp.ControlSocket(), "conns")
		if code != 0 || !strings.Contains(out, "`- RRQ \""+f.Name+"\"") || !strings.Contains(out, "`- reply ") {
			t.Errorf("nfhelperctl conns (exit %d):\n%s", code, out)
		}
		t.Logf("nfhelperctl conns:\n%s", out)
	})

	t.Run("kernel helper beside", func(t *testing.T) {
		kernelTFTPReference(t, tp, tftpRefVIP4, topo.RS1V4)
		kernelTFTPReference(t, tp, tftpRefVIP6, topo.RS1V6)
		for _, client := range tftpClients {
			for _, vip := range []string{tftpRefVIP4, tftpRefVIP6} {
				o := tftpPairOptions(client, topo.TFTPDHPA)[0]
				r := tftpCheckGet(t, tp.Client, client, vip, f, o)
				t.Logf("kernel helper, %s %s: %d bytes in %v", client, vip, r.Size, r.Elapsed.Round(time.Millisecond))
			}
		}
		t.Log("the same transfers through nft DNAT and the kernel's tftp helper: they need no daemon; nfhelperd adds scheduling over servers by weight, the request in conns, and counts")
	})
}

// tftpRequestTwice sends one RRQ for server.txt from one client port to
// vip:69 twice, as a client whose first try went unanswered resends it,
// and returns the first DATA of each answer: the server's name in its
// payload and where it came from.
func tftpRequestTwice(t *testing.T, ns, vip string) (names, from []string) {
	t.Helper()
	conn := udpSocketIn(t, ns, "udp", &net.UDPAddr{})
	defer conn.Close()
	to := &net.UDPAddr{IP: net.ParseIP(vip), Port: 69}
	rrq := []byte("\x00\x01server.txt\x00octet\x00")
	for range 2 {
		if _, err := conn.WriteTo(rrq, to); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 600)
	conn.SetReadDeadline(time.Now().Add(topo.Scaled(3 * time.Second)))
	for len(names) < 2 {
		n, src, err := conn.ReadFromUDP(buf)
		if err != nil {
			break
		}
		if n > 4 && buf[1] == 3 { // DATA
			names = append(names, strings.TrimSpace(string(buf[4:n])))
			from = append(from, src.String())
			// End the transfer (one block): the server then stops resending.
			conn.WriteTo([]byte{0, 4, buf[2], buf[3]}, src)
		}
	}
	return names, from
}

// TestTFTPRetransmittedRequest: a request sent twice from one client port
// (its first copy thought lost) reaches the same server both times, and
// every answer comes from the VIP; requests from other ports follow the
// scheduler (wrr 1:1 alternates).
func TestTFTPRetransmittedRequest(t *testing.T) {
	tp := needTopo(t)
	if harness.daemonBin == "" {
		t.Skip(harness.noDaemon)
	}
	startTFTPServers(t)
	e := &hcEnv{t: t, tp: tp}
	e.start(hcConfig(tftpService("tftp", topo.VIP4, "wrr", false, 1, 1), tftpService("tftp6", topo.VIP6, "wrr", true, 1, 1)), "")
	for _, vip := range []string{topo.VIP4, topo.VIP6} {
		seen := map[string]int{}
		for i := range 4 {
			names, from := tftpRequestTwice(t, tp.Client, vip)
			if len(names) == 0 {
				t.Fatalf("%s: no answer", vip)
			}
			for j, n := range names {
				if n != names[0] {
					t.Errorf("%s request %d: its copies went to %v", vip, i, names)
				}
				if host, _, _ := net.SplitHostPort(from[j]); host != vip {
					t.Errorf("%s request %d: an answer came from %s", vip, i, from[j])
				}
			}
			seen[names[0]]++
			t.Logf("%s request %d (two copies): %d answers, from %v, all by %s", vip, i, len(names), from, names[0])
		}
		if seen["rs1"] != 2 || seen["rs2"] != 2 {
			t.Errorf("%s: 4 requests from 4 ports went %v, want 2 each", vip, seen)
		}
	}
}

// TestTFTPPXEMorning: 100 clients (100 ports of the client host) fetch a
// 10 MiB file through the VIP at once, atftp with blksize 1468; all
// complete by sha256, and the servers took them by weight (2:1).
func TestTFTPPXEMorning(t *testing.T) {
	tp := needTopo(t)
	if harness.daemonBin == "" {
		t.Skip(harness.noDaemon)
	}
	startTFTPServers(t)
	f := needTFTPFiles(t)[tftpFile10M]
	if os.Getenv("NFHVM") != "" {
		// Under the VM's emulation 1 GiB of lockstep blocks takes
		// minutes; 100 MiB still makes 100 transfers overlap.
		f = needTFTPFiles(t)[tftpFile1M]
	}
	e := &hcEnv{t: t, tp: tp}
	d := e.start(hcConfig(tftpService("tftp", topo.VIP4, "wrr", false, 2, 1)), "")
	conns := func() map[string]uint64 {
		ss, err := d.client.Services(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]uint64{}
		for _, s := range ss.Services {
			for _, rs := range s.Servers {
				out[rs.Address.Addr().String()] = rs.Conns
			}
		}
		return out
	}
	before := conns()
	const clients = 100
	results := make([]tftpResult, clients)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = tftpGet(t, tp.Client, tftpClientAtftp, topo.VIP4, f.Name, tftpOpts{Blksize: 1468, Timeout: 3 * time.Minute})
		}()
	}
	wg.Wait()
	took := time.Since(start)
	failed := 0
	for i, r := range results {
		if r.SHA256 != f.SHA256 {
			failed++
			if failed <= 3 {
				t.Errorf("client %d: %d bytes, sha256 %.12s; err %v; output %s", i, r.Size, r.SHA256, r.Err, r.Output)
			}
		}
	}
	after := conns()
	rs1, rs2 := after[topo.RS1V4]-before[topo.RS1V4], after[topo.RS2V4]-before[topo.RS2V4]
	t.Logf("%d clients x %d MiB in %v (%.0f MiB/s in all); %d failed; requests by server: rs1 %d, rs2 %d",
		clients, f.Size>>20, took.Round(time.Millisecond), float64(clients*f.Size>>20)/took.Seconds(), failed, rs1, rs2)
	// wrr 2:1 is exact per cycle of 3; a client that resent its request
	// counts once (the same flow).
	if rs1+rs2 != clients || rs1 < 66 || rs1 > 67 {
		t.Errorf("requests by server: rs1 %d, rs2 %d; want 66-67 and the rest of %d", rs1, rs2, clients)
	}
}

// TestTFTPLoss: with 5 % of the client's packets dropped on its way out (a
// random drop in a netdev egress chain on its interface, as netem would),
// atftp's reads (from tftpd-hpa on rs1) and writes (to atftpd on rs2: wrr
// 1:1 alternates) through the VIP, IPv4 and IPv6, complete whole (sha256).
//
// The timeouts are what atftp 0.8.0 needs to survive loss at all, whatever
// the router does (through the kernel's own TFTP helper it fails and stalls
// alike; the router forwards every packet that reaches it):
//   - Reading, it aborts on a second OACK ("tftp: unexpected OACK"), which
//     the server sends when the ACK of its OACK is lost; and once a lost
//     ACK's extra ACK is lost too, it ignores the server's copies ("got
//     wrong block, ignoring") while tftpd-hpa doubles its wait (1, 2, 4, 8
//     s), until its own timeout (default 5 s) after the last copy: up to
//     15 s per loss. So the client's own timeout is 1 s (it then resends
//     the ACK, or the request) and the server's 3 s: the client's copy of a
//     lost ACK arrives before the server's copy of the OACK.
//   - Writing, its own timeout is harmful: it then sends the next block,
//     not the lost one (and after a second OACK block 2, not 1; atftpd
//     answers that with ACK 0, tftpd-hpa never recovers). The server's
//     copy of its last ACK makes it send the lost block again: the server's
//     timeout is 1 s, the client's 2 s (a lost request costs 2 s).
func TestTFTPLoss(t *testing.T) {
	tp := needTopo(t)
	if harness.daemonBin == "" {
		t.Skip(harness.noDaemon)
	}
	servers := startTFTPServers(t)
	// 64 KiB: 45 blocks of 1468 bytes, so a few losses each.
	f := tftpServedFile(t, servers, "tftp-64k.bin", 64<<10)
	e := &hcEnv{t: t, tp: tp}
	e.start(hcConfig(tftpService("tftp", topo.VIP4, "wrr", false, 1, 1), tftpService("tftp6", topo.VIP6, "wrr", true, 1, 1)), "")
	const table, lossPercent = "nfht_loss", 5
	if err := nftScript(t, tp.Client, fmt.Sprintf("table netdev %s {\n chain egress {\n  type filter hook egress device eth0 priority 0;\n  numgen random mod 100 < %d counter drop\n }\n}\n", table, lossPercent)); err != nil {
		t.Skipf("no netdev egress hook here: %v", err)
	}
	t.Cleanup(func() { tp.Run(context.Background(), tp.Client, "nft", "delete", "table", "netdev", table) })
	// Timeout bounds a run: atftp gives up by itself after 6 timeouts in a
	// row; a transfer takes about 1 s per loss.
	get := tftpOpts{Blksize: 1468, Retransmit: 3, ClientTimeout: 1, Trace: true, Timeout: 30 * time.Second}
	put := tftpOpts{Blksize: 1468, Retransmit: 1, ClientTimeout: 2, Trace: true, Timeout: 30 * time.Second}
	for _, vip := range []string{topo.VIP4, topo.VIP6} {
		r := tftpCheckGet(t, tp.Client, tftpClientAtftp, vip, f, get)
		t.Logf("RRQ through %s: %v", vip, r.Elapsed.Round(time.Millisecond))
		remote := "loss-" + strings.ReplaceAll(vip, ":", "_") + ".bin"
		w := tftpPut(t, tp.Client, tftpClientAtftp, vip, f.Path, remote, put)
		if who := tftpUploaded(servers, remote, f.SHA256); w.Err != nil || who == "" {
			t.Errorf("WRQ through %s: %v; not whole on any server; output:\n%s", vip, w.Err, w.Output)
		}
		t.Logf("WRQ through %s: %v", vip, w.Elapsed.Round(time.Millisecond))
	}
	out, _ := tp.Run(context.Background(), tp.Client, "nft", "list", "table", "netdev", table)
	drops := regexp.MustCompile(`counter packets (\d+) bytes \d+`).FindStringSubmatch(string(out))
	switch {
	case drops == nil:
		t.Errorf("no counter in the client's table %s:\n%s", table, out)
	case drops[1] == "0":
		// Some 190 packets at 5 %: none lost once in about 16000 runs.
		t.Errorf("the client lost no packet: the transfers ran without loss")
	default:
		t.Logf("client's drops: %s", drops[0])
	}
}

// TestTFTPPendingBound: a client host's requests awaiting their answer
// are bounded (max_pending_requests: 2 here): with a server that never
// answers, the third request from a third port is dropped and counted,
// a copy of a pending one passes, and another host is not held back.
func TestTFTPPendingBound(t *testing.T) {
	tp := needTopo(t)
	if harness.daemonBin == "" {
		t.Skip(harness.noDaemon)
	}
	e := &hcEnv{t: t, tp: tp}
	// Nothing listens on rs1:6969: requests get no answer (ICMP port
	// unreachable, which starts no reply flow).
	d := e.start(hcConfig("  - name: silent\n    vip: "+topo.VIP4+":6969\n    protocol: udp\n    helper: tftp\n    max_pending_requests: 2\n"+
		"    real_servers:\n      - address: "+topo.RS1V4+":6969\n"), "")
	stat := func(name string) uint64 {
		st, err := d.client.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return st.Stats[name]
	}
	refused := func() uint64 { return stat("refused_pending") }
	var conns []*net.UDPConn
	for range 3 {
		conns = append(conns, udpSocketIn(t, tp.Client, "udp4", &net.UDPAddr{IP: net.ParseIP(topo.ClientV4)}))
	}
	to := &net.UDPAddr{IP: net.ParseIP(topo.VIP4), Port: 6969}
	rrq := []byte("\x00\x01file\x00octet\x00")
	send := func(c *net.UDPConn) {
		if _, err := c.WriteTo(rrq, to); err != nil {
			t.Fatal(err)
		}
	}
	send(conns[0])
	send(conns[1])
	send(conns[0]) // a copy
	// Each admitted one (the copy too) counts a reply flow opened.
	if !pollUntil(topo.Scaled(3*time.Second), func() bool { return stat("reply_flows") == 3 }) {
		t.Errorf("reply_flows %d after two requests and a copy, want 3", stat("reply_flows"))
	}
	before := refused()
	if before != 0 {
		t.Errorf("refused_pending %d after two requests and a copy, want 0", before)
	}
	send(conns[2])
	if !pollUntil(topo.Scaled(3*time.Second), func() bool { return refused() == before+1 }) {
		t.Errorf("a third pending request: refused_pending %d, want %d", refused(), before+1)
	}
	t.Logf("refused_pending %d after 2 pending requests, a copy and a third", refused())
}
