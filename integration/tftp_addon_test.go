//go:build integration

package integration

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/ctl"
	"github.com/nfhelper/nfhelper/integration/topo"
)

// tftpFwdTable is the user's own port forward of TFTP in the router.
const tftpFwdTable = "nfht_tftpfwd"

// tftpForward installs the user's ruleset: the router's WAN addresses'
// port 69 forwarded to tftpd-hpa on rs1 (IPv4) and atftpd on rs2 (IPv6),
// and with masquerade the requests also leave from the router's LAN
// address, as a gateway whose servers route elsewhere would have them. The
// table goes when the test ends.
func tftpForward(t *testing.T, masquerade bool) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %[1]s\ndelete table inet %[1]s\ntable inet %[1]s {\n", tftpFwdTable)
	fmt.Fprintf(&b, `	chain dstnat {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %s udp dport 69 dnat ip to %s:69
		ip6 daddr %s udp dport 69 dnat ip6 to [%s]:69
	}
`, topo.WAN4, topo.RS1V4, topo.WAN6, topo.RS2V6)
	if masquerade {
		fmt.Fprintf(&b, `	chain srcnat {
		type nat hook postrouting priority srcnat; policy accept;
		ct status dnat ip daddr %s udp dport 69 snat ip to %s
		ct status dnat ip6 daddr %s udp dport 69 snat ip6 to %s
	}
`, topo.RS1V4, topo.RouterLANV4, topo.RS2V6, topo.RouterLANV6)
	}
	b.WriteString("}\n")
	if err := nftScript(t, harness.tp.Router, b.String()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := nftScript(t, harness.tp.Router, "table inet "+tftpFwdTable+"\ndelete table inet "+tftpFwdTable+"\n"); err != nil {
			t.Errorf("remove table inet %s: %v", tftpFwdTable, err)
		}
	})
}

// TestTFTPAddOn: the tftp helper bound to a gateway's own UDP port forward
// (helpers:, match protocol udp). The user's DNAT picks the server; the
// daemon sees each request after it and lets the server's answer from its
// new port leave as the WAN address. Every client reads and writes, v4
// (tftpd-hpa) and v6 (atftpd), checked by sha256:
//   - behind the user's DNAT alone, with every option set the pair speaks;
//   - behind the user's DNAT and SNAT to the router's LAN address: the
//     answer, addressed to the router, goes back to the client;
//   - a datagram from another host to a client port awaiting its answer
//     passes untranslated and is counted (refused_foreign_reply);
//   - with the daemon killed (kill -9), new requests get the kernel's own
//     TFTP helper (fail-open) and complete alike: the kernel helper's
//     figures beside nfhelperd's.
func TestTFTPAddOn(t *testing.T) {
	tp := needTopo(t)
	if harness.daemonBin == "" {
		t.Skip(harness.noDaemon)
	}
	if harness.noAddon != "" {
		t.Skip(harness.noAddon)
	}
	servers := startTFTPServers(t)
	// 256 KiB: 512 lockstep blocks at the default size. What the add-on
	// adds is the translation of each transfer's first packet; the long
	// transfers (rollover) run through a VIP in TestTFTPThroughVIP.
	f := tftpServedFile(t, servers, "tftp-addon.bin", 256<<10)
	// Under emulation (integration/vm) each pair runs its first option
	// set only: the option sets cross the add-on as they cross a VIP.
	allOptions := topo.Scaled(time.Second) == time.Second
	e := &hcEnv{t: t, tp: tp}
	d := e.start("helpers:\n"+
		"  - name: gw-tftp\n    helper: tftp\n    match:\n      destination: "+topo.WAN4+":69\n      protocol: udp\n"+
		"  - name: gw-tftp6\n    helper: tftp\n    match:\n      destination: \"["+topo.WAN6+"]:69\"\n      protocol: udp\n", "")
	t.Logf("datapath %s", d.Datapath)
	wan := map[string]string{"v4": topo.WAN4, "v6": topo.WAN6}
	kind := map[string]string{"v4": topo.TFTPDHPA, "v6": topo.ATFTPD}
	elapsed := map[string][]time.Duration{}
	transfers := func(phase string, allOptions bool) {
		t.Helper()
		for _, client := range tftpClients {
			for _, fam := range tftpFamilies {
				opts := tftpPairOptions(client, kind[fam])
				if !allOptions {
					opts = opts[:1]
				}
				for _, o := range opts {
					t.Run(phase+"/"+client+"/"+fam+"/RRQ-"+o.String(), func(t *testing.T) {
						r := tftpCheckGet(t, tp.Client, client, wan[fam], f, o)
						elapsed[phase] = append(elapsed[phase], r.Elapsed)
					})
					t.Run(phase+"/"+client+"/"+fam+"/WRQ-"+o.String(), func(t *testing.T) {
						remote := fmt.Sprintf("addon-%s-%s-%s-%s.bin", phase, client, fam, o)
						r := tftpPut(t, tp.Client, client, wan[fam], f.Path, remote, o)
						if who := tftpUploaded(servers, remote, f.SHA256); r.Err != nil || who == "" {
							t.Errorf("WRQ through %s: %v, on no server whole; output:\n%s", wan[fam], r.Err, r.Output)
						}
						elapsed[phase] = append(elapsed[phase], r.Elapsed)
					})
				}
			}
		}
	}
	stats := func() map[string]uint64 {
		st, err := d.client.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return st.Stats
	}

	tftpForward(t, false)
	transfers("dnat", allOptions)
	t.Run("conns", func(t *testing.T) {
		if r := tftpGet(t, tp.Client, tftpClientHPA, topo.WAN4, f.Name, tftpOpts{}); r.SHA256 != f.SHA256 {
			t.Fatalf("RRQ: %v", r.Err)
		}
		var cs ctl.Conns
		found := pollUntil(topo.Scaled(5*time.Second), func() bool {
			ctlJSON(t, tp.ControlSocket(), "conns", &cs)
			for _, c := range cs.Conns {
				if c.Protocol == "UDP" && c.Helper == "tftp" && c.VIP.String() == topo.WAN4+":69" && c.Server.Addr().String() == topo.RS1V4 &&
					len(c.Replies) == 1 && c.Replies[0].VIP.Addr().String() == topo.WAN4 {
					return true
				}
			}
			return false
		})
		if !found {
			t.Errorf("no request to %s:69 with its transfer in conns: %+v", topo.WAN4, cs.Conns)
		}
	})
	st := stats()
	t.Logf("adopted %d, reply_flows %d, replies_started %d", st["adopted"], st["reply_flows"], st["replies_started"])
	if st["adopted"] == 0 || st["reply_flows"] == 0 || st["replies_started"] == 0 {
		t.Errorf("stats %v: want adopted, reply_flows and replies_started counted", st)
	}
	// Per helper: all of it is tftp's, none ftp's.
	full, err := d.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tftp, ftp := full.HelperStats["tftp"], full.HelperStats["ftp"]
	t.Logf("per helper: tftp %v", tftp)
	if tftp["sessions"] < st["adopted"] || tftp["channels_opened"] != full.Stats["reply_flows"] || tftp["channels_used"] != full.Stats["replies_started"] || ftp["sessions"] != 0 {
		t.Errorf("per-helper counters tftp %v, ftp %v; engine-wide %v", tftp, ftp, full.Stats)
	}

	t.Run("foreign reply", func(t *testing.T) {
		tftpForeignReply(t, d, topo.WAN4)
	})

	tftpForward(t, true)
	flushConntrack(t)
	transfers("dnat+snat", false)

	// Fail-open: the daemon killed, the kernel's TFTP helper takes the
	// new requests.
	if strings.Contains(d.Log(), "new TFTP requests to a server, but their answers cannot pass") {
		t.Logf("the kernel's TFTP helper is unavailable (datapath %s): no fail-open phase", d.Datapath)
		return
	}
	if err := d.Kill(); err != nil {
		t.Fatal(err)
	}
	flushConntrack(t)
	transfers("killed", false)
	helped, all := 0, 0
	for fam, addr := range map[string]string{"ipv4": topo.WAN4, "ipv6": topo.WAN6} {
		for _, l := range tftpConntrack(t, fam, "-p", "udp", "-d", addr, "--dport", "69") {
			all++
			if strings.Contains(l, "helper=tftp") {
				helped++
			}
		}
	}
	t.Logf("daemon killed: %d of %d requests in conntrack with the kernel's TFTP helper", helped, all)
	if all == 0 || helped != all {
		t.Errorf("%d of %d requests made while the daemon was dead have the kernel's TFTP helper", helped, all)
	}
	for _, phase := range []string{"dnat+snat", "killed"} {
		var sum time.Duration
		for _, d := range elapsed[phase] {
			sum += d
		}
		if n := len(elapsed[phase]); n > 0 {
			t.Logf("%s: %d transfers of 256 KiB, mean %v", phase, n, (sum / time.Duration(n)).Round(time.Millisecond))
		}
	}
	t.Log("killed: the kernel's nf_conntrack_tftp + nf_nat_tftp on the user's port forward, the same transfers (both need no queue per packet of a transfer)")
}

// TestTFTPForeignReply: through a balanced VIP (rs2 quiesced, so rs1
// answers), on either datapath, an answer from another host is counted.
func TestTFTPForeignReply(t *testing.T) {
	tp := needTopo(t)
	if harness.daemonBin == "" {
		t.Skip(harness.noDaemon)
	}
	startTFTPServers(t)
	e := &hcEnv{t: t, tp: tp}
	d := e.start(hcConfig(tftpService("tftp", topo.VIP4, "wrr", false, 1, 0)), "")
	t.Logf("datapath %s", d.Datapath)
	tftpForeignReply(t, d, topo.VIP4)
}

// tftpForeignReply: a client asks host (IPv4) and gets its answer from
// rs1; then a datagram from rs2 (not the request's server) to the same
// client port passes untranslated and counts as refused_foreign_reply.
func tftpForeignReply(t *testing.T, d *hcDaemon, host string) {
	tp := harness.tp
	refused := func() uint64 {
		st, err := d.client.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return st.Stats["refused_foreign_reply"]
	}
	before := refused()
	conn := udpSocketIn(t, tp.Client, "udp4", &net.UDPAddr{})
	if _, err := conn.WriteTo([]byte("\x00\x01server.txt\x00octet\x00"), &net.UDPAddr{IP: net.ParseIP(host), Port: 69}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	conn.SetReadDeadline(time.Now().Add(topo.Scaled(5 * time.Second)))
	n, from, err := conn.ReadFromUDP(buf)
	if err != nil {
		t.Fatalf("no answer to the request: %v", err)
	}
	if from.IP.String() != host || n < 4 || buf[1] != 3 || !strings.HasPrefix(string(buf[4:n]), "rs1") {
		t.Fatalf("answer from %v (%d bytes, opcode %d: %q), want DATA \"rs1\" from %s", from, n, buf[1], buf[4:n], host)
	}
	client := conn.LocalAddr().(*net.UDPAddr)
	stranger := udpSocketIn(t, tp.RS2, "udp4", &net.UDPAddr{IP: net.ParseIP(topo.RS2V4)})
	to := &net.UDPAddr{IP: net.ParseIP(topo.ClientV4), Port: client.Port}
	if _, err := stranger.WriteTo([]byte("\x00\x03\x00\x01foreign"), to); err != nil {
		t.Fatal(err)
	}
	if !pollUntil(topo.Scaled(3*time.Second), func() bool { return refused() > before }) {
		t.Errorf("refused_foreign_reply stays %d after a datagram from %s to the waiting %v", before, topo.RS2V4, to)
	}
	conn.SetReadDeadline(time.Now().Add(topo.Scaled(3 * time.Second)))
	for {
		n, from, err = conn.ReadFromUDP(buf)
		if err != nil {
			t.Errorf("the foreign datagram did not reach the client: %v", err)
			return
		}
		if strings.HasSuffix(string(buf[:n]), "foreign") {
			break // the server's retransmissions of DATA 1 come in between
		}
	}
	if from.IP.String() != topo.RS2V4 {
		t.Errorf("the foreign datagram came from %v, want %s untranslated", from, topo.RS2V4)
	}
	if !pollUntil(topo.Scaled(2*time.Second), func() bool {
		return strings.Contains(d.Log(), `msg="refused reply flow" reason=foreign_reply`) && strings.Contains(d.Log(), "from="+topo.RS2V4)
	}) {
		t.Errorf("no log line of the foreign reply:\n%s", tailString(d.Log(), 2000))
	}
	t.Logf("refused_foreign_reply %d -> %d; the datagram reached the client from %v", before, refused(), from)
}
