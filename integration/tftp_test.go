//go:build integration

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
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
// the options it sends (blksize 512 and 1468, windowsize 16), checked by
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

	t.Run("conns", func(t *testing.T) {
		// A request shows while conntrack holds its flow (30 s unreplied).
		if r := tftpGet(t, tp.Client, tftpClientHPA, topo.VIP4, f.Name, tftpOpts{}); r.SHA256 != f.SHA256 {
			t.Fatalf("RRQ: %v", r.Err)
		}
		var cs ctl.Conns
		ctlJSON(t, tp.ControlSocket(), "conns", &cs)
		found := false
		for _, c := range cs.Conns {
			if c.Protocol == "UDP" && c.Helper == "tftp" && strings.HasPrefix(c.About, `RRQ "`+f.Name+`" octet`) {
				found = true
			}
		}
		if !found {
			t.Errorf("no UDP flow with the request in conns: %+v", cs.Conns)
		}
		code, out, _ := nfhelperctl(t, tp.ControlSocket(), "conns")
		if code != 0 || !strings.Contains(out, "`- RRQ \""+f.Name+"\"") {
			t.Errorf("nfhelperctl conns (exit %d):\n%s", code, out)
		}
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
