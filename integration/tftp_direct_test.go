//go:build integration

package integration

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// tftpOptionSets are the option combinations the TFTP tests try; each pair
// runs those both it and the server support (tftpClientSupports,
// tftpServerSupports).
var tftpOptionSets = []tftpOpts{
	{Blksize: 512}, {Blksize: 1468},
	{Blksize: 512, Windowsize: 16}, {Blksize: 1468, Windowsize: 16},
}

// tftpPairOptions returns the option sets client and a server of kind both
// support. tftp-hpa's client sends no options: its one set is the default.
func tftpPairOptions(client, kind string) []tftpOpts {
	if client == tftpClientHPA {
		return []tftpOpts{{}}
	}
	var out []tftpOpts
	for _, o := range tftpOptionSets {
		if tftpClientSupports(client, o) == nil && tftpServerSupports(kind, o) == nil {
			out = append(out, o)
		}
	}
	return out
}

var tftpFamilies = []string{"v4", "v6"}

// tftpGranted returns a check, to call after one transfer with o, that
// atftpd (whose log says so) granted o's blksize and windowsize. For
// tftpd-hpa, which logs nothing here, the check does nothing.
func tftpGranted(t *testing.T, s *tftpServer, o tftpOpts) func() {
	t.Helper()
	var want []string
	if s.Kind == topo.ATFTPD && o.Blksize != 0 {
		want = append(want, fmt.Sprintf("blksize option -> %d", o.Blksize))
	}
	if s.Kind == topo.ATFTPD && o.Windowsize > 1 {
		want = append(want, fmt.Sprintf("windowsize option -> %d", o.Windowsize))
	}
	before := make([]int, len(want))
	for i, w := range want {
		before[i] = strings.Count(s.D.Output(), w)
	}
	return func() {
		t.Helper()
		for i, w := range want {
			if !pollUntil(topo.Scaled(2*time.Second), func() bool { return strings.Count(s.D.Output(), w) > before[i] }) {
				t.Errorf("atftpd's log has no new %q", w)
			}
		}
	}
}

// TestTFTPDirect needs no daemon: the client reads (RRQ) and writes (WRQ)
// files on rs1 (tftpd-hpa) and rs2 (atftpd) at the servers' own addresses,
// routed by the router without NAT, with every client, both families and
// the options each pair supports, checked by sha256; a missing file must
// bring nothing (tftp-hpa exits 0 all the same); and one 64 MiB RRQ at
// 512-byte blocks rolls the block number over (131072 blocks).
func TestTFTPDirect(t *testing.T) {
	if os.Getenv("NFHVM") != "" {
		t.Skip("the harness's own check, without NAT or the daemon: the guest's kernel adds nothing to it, and under emulation it takes two minutes per datapath")
	}
	tp := needTopo(t)
	servers := startTFTPServers(t)
	files := needTFTPFiles(t)
	// 1 MiB: 2048 blocks of 512 bytes, each a round trip through the
	// router (window 1); the host's latency makes that 0.1 to 0.3 s here.
	f := files[tftpFile1M]
	start := time.Now()
	for _, s := range servers {
		t.Run(s.Name+"-"+s.Kind, func(t *testing.T) {
			for _, client := range tftpClients {
				t.Run(client, func(t *testing.T) {
					for _, fam := range tftpFamilies {
						t.Run(fam, func(t *testing.T) {
							host := s.Host(fam)
							for _, o := range tftpPairOptions(client, s.Kind) {
								t.Run("RRQ-"+o.String(), func(t *testing.T) {
									granted := tftpGranted(t, s, o)
									r := tftpCheckGet(t, tp.Client, client, host, f, o)
									granted()
									t.Logf("%d bytes in %v", r.Size, r.Elapsed.Round(time.Millisecond))
								})
								t.Run("WRQ-"+o.String(), func(t *testing.T) {
									granted := tftpGranted(t, s, o)
									remote := fmt.Sprintf("up-%s-%s-%s.bin", client, fam, o)
									r := tftpCheckPut(t, tp.Client, client, host, f, s.Dir, remote, o)
									granted()
									t.Logf("%d bytes in %v", f.Size, r.Elapsed.Round(time.Millisecond))
								})
							}
						})
					}
				})
			}
			t.Run("server.txt", func(t *testing.T) {
				for _, fam := range tftpFamilies {
					for _, client := range tftpClients {
						name, r := tftpServerName(t, tp.Client, client, s.Host(fam), tftpOpts{})
						if name != s.Name {
							t.Errorf("%s %s: server.txt from %s = %q, want %q (err %v, output %s)", client, fam, s.Host(fam), name, s.Name, r.Err, r.Output)
						}
					}
				}
			})
			t.Run("missing", func(t *testing.T) {
				for _, client := range tftpClients {
					r := tftpGet(t, tp.Client, client, s.V4, "no-such-file.bin", tftpOpts{})
					if r.Size != 0 {
						t.Errorf("%s: a missing file brought %d bytes", client, r.Size)
					}
					switch {
					case client == tftpClientHPA && r.Err == nil:
						t.Logf("%s: exit status 0 for a missing file (expected quirk): %s", client, strings.TrimSpace(r.Output))
					case r.Err == nil:
						t.Errorf("%s: exit status 0 for a missing file; output: %s", client, r.Output)
					default:
						t.Logf("%s: %v: %s", client, r.Err, strings.TrimSpace(r.Output))
					}
				}
			})
		})
	}
	t.Logf("matrix: %v", time.Since(start).Round(time.Millisecond))

	// Block-number rollover: tftp-hpa and tftpd-hpa (every pair wraps to 0,
	// see tftp_harness_test.go; one is enough to prove the path).
	t.Run("rollover/"+servers[0].Name+"-"+servers[0].Kind+"/"+tftpClientHPA+"/v4/RRQ-64MiB-bs512", func(t *testing.T) {
		big := files[tftpFile64M]
		r := tftpCheckGet(t, tp.Client, tftpClientHPA, servers[0].V4, big, tftpOpts{Timeout: 3 * time.Minute})
		t.Logf("%d bytes (%d blocks) in %v", r.Size, r.Size/512+1, r.Elapsed.Round(time.Millisecond))
	})
}

// TestTFTPKernelReference needs no daemon: the kernel's own TFTP helper
// (nf_conntrack_tftp, nf_nat_tftp) behind a user's DNAT of the spare VIPs
// (kernelTFTPReference) carries an RRQ and a WRQ with every client in both
// families to each server; the router's conntrack table shows the helper on
// the request and the transfer NATed back to the VIP. The reference later
// tests compare nfhelperd with.
func TestTFTPKernelReference(t *testing.T) {
	tp := needTopo(t)
	servers := startTFTPServers(t)
	f := needTFTPFiles(t)[tftpFile1M]
	for _, s := range servers {
		t.Run(s.Name+"-"+s.Kind, func(t *testing.T) {
			kernelTFTPReference(t, tp, tftpRefVIP4, s.V4)
			kernelTFTPReference(t, tp, tftpRefVIP6, s.V6)
			for _, fam := range tftpFamilies {
				vip, ctFam := tftpRefVIP4, "ipv4"
				if fam == "v6" {
					vip, ctFam = tftpRefVIP6, "ipv6"
				}
				for _, client := range tftpClients {
					o := tftpOpts{}
					if client != tftpClientHPA {
						o.Blksize = 1468
					}
					t.Run(client+"/"+fam, func(t *testing.T) {
						name, r := tftpServerName(t, tp.Client, client, vip, o)
						if name != s.Name {
							t.Fatalf("server.txt through %s = %q, want %q (err %v, output %s)", vip, name, s.Name, r.Err, r.Output)
						}
						tftpCheckGet(t, tp.Client, client, vip, f, o)
						tftpCheckPut(t, tp.Client, client, vip, f, s.Dir, fmt.Sprintf("ref-%s-%s.bin", client, fam), o)
					})
				}
				// The kernel's helper did it: requests to the VIP carry it,
				// and transfers from the server are NATed back to the VIP.
				reqs := tftpConntrack(t, ctFam, "-d", vip, "-p", "udp", "--dport", "69")
				helped := 0
				for _, l := range reqs {
					if strings.Contains(l, "helper=tftp") {
						helped++
					}
				}
				xfers := tftpConntrack(t, ctFam, "-q", vip, "-p", "udp")
				if helped == 0 || len(xfers) == 0 {
					t.Errorf("%s: %d requests to %s with helper=tftp, %d transfers NATed to it; requests:\n%s\ntransfers:\n%s",
						fam, helped, vip, len(xfers), strings.Join(reqs, "\n"), strings.Join(xfers, "\n"))
				} else {
					t.Logf("%s: %d requests with helper=tftp, %d transfers NATed back to %s, e.g.\n%s", fam, helped, len(xfers), vip, xfers[0])
				}
			}
		})
	}
}
