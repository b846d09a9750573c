//go:build integration

package integration

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// vipTarget: clients in the client namespace talk to the VIPs. 227 replies
// must carry the VIP (rewritten by nfhelperd) and active data connections
// must arrive from the VIP (SNAT).
func vipTarget(tp *topo.Topo) target {
	return target{
		ns:    tp.Client,
		host4: topo.VIP4, host6: topo.VIP6,
		pasv4: topo.VIP4,
		peer4: topo.VIP4, peer6: topo.VIP6,
	}
}

func TestVIPCurl(t *testing.T) {
	needDaemon(t)
	runMatrix(t, vipTarget(harness.tp), "curl")
}

func TestVIPLftp(t *testing.T) {
	needDaemon(t)
	runMatrix(t, vipTarget(harness.tp), "lftp")
}

func TestVIPPython(t *testing.T) {
	needDaemon(t)
	runMatrix(t, vipTarget(harness.tp), "python")
}

func TestVIPGoClient(t *testing.T) {
	needDaemon(t)
	runMatrix(t, vipTarget(harness.tp), "go")
}

// TestVIPBothServers: rr with weights 1 and 2 over sequential control
// connections reaches both real servers.
func TestVIPBothServers(t *testing.T) {
	needDaemon(t)
	tp := harness.tp
	seen := map[string]int{}
	const conns = 6
	for i := 0; i < conns; i++ {
		r := runFtpget(t, tp.Client, net.JoinHostPort(topo.VIP4, "21"), "pasv", "server.txt", 1)
		seen[strings.TrimSpace(r.results[0].Content)]++
	}
	t.Logf("server.txt over %d control connections: %v", conns, seen)
	for _, s := range []string{"rs1", "rs2"} {
		if seen[s] == 0 {
			t.Errorf("real server %s never answered: %v", s, seen)
		}
	}
	if len(seen) != 2 {
		t.Errorf("unexpected server.txt contents: %v", seen)
	}
}

// TestVIPManyTransfersOneControl: 50 PASV transfers on one control
// connection, once where the helper keeps each 227's length (vsftpd's text
// absorbs the longer VIP) and once where it cannot (quirky "bare227":
// "10,0,0,11" -> "198,51,100,10", +5 bytes a reply), so that every later
// segment depends on nfhelperd's sequence/ack correction.
func TestVIPManyTransfersOneControl(t *testing.T) {
	needDaemon(t)
	tp := harness.tp
	const n = 50
	for _, c := range []struct{ name, port, user string }{
		// vsftpd's "227 Entering Passive Mode (...)" has text to absorb the
		// longer VIP: the length stays.
		{"length-kept", "21", ""},
		// "227 h1,...,p2": every rewrite adds 5 bytes, 250 in all.
		{"length-changed", "2321", "bare227"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.user != "" && harness.noQuirky != "" {
				t.Skip(harness.noQuirky)
			}
			invalid := conntrackInvalid(t, tp.Router)
			var extra []string
			if c.user != "" {
				extra = []string{"-user", c.user}
			}
			run := runFtpget(t, tp.Client, net.JoinHostPort(topo.VIP4, c.port), "pasv", "small.bin,big.bin", n, extra...)
			want := strings.ReplaceAll(topo.VIP4, ".", ",") + ","
			for _, r := range run.results {
				if r.SHA256 != tp.Files[r.File] {
					t.Errorf("transfer %d: %s sha256 %s (%d bytes), want %s", r.I, r.File, r.SHA256, r.Bytes, tp.Files[r.File])
				}
				if !strings.HasPrefix(r.PassiveReply, "227 ") || !strings.Contains(r.PassiveReply, want) {
					t.Errorf("transfer %d: 227 reply %q does not carry the VIP", r.I, r.PassiveReply)
				}
			}
			if len(run.results) != n {
				t.Errorf("%d transfers, want %d", len(run.results), n)
			}
			// Strict window tracking stays on: conntrack must have judged
			// no corrected packet invalid.
			if got := conntrackInvalid(t, tp.Router); got != invalid {
				t.Errorf("conntrack counted %d invalid packets during the transfers", got-invalid)
			}
			if t.Failed() {
				t.Logf("trace:\n%s", tailString(run.trace, 8000))
			}
		})
	}
}

// conntrackInvalid sums the invalid counters of `conntrack -S` in ns.
func conntrackInvalid(t *testing.T, ns string) int {
	t.Helper()
	out, _, err := execIn(t, 10*time.Second, ns, nil, "conntrack", "-S")
	if err != nil {
		t.Fatalf("conntrack -S: %v", err)
	}
	total, cpus := 0, 0
	for _, f := range strings.Fields(string(out)) {
		if v, ok := strings.CutPrefix(f, "invalid="); ok {
			cpus++
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("conntrack -S: %q", f)
			}
			total += n
		}
	}
	if cpus == 0 {
		t.Fatalf("conntrack -S printed no invalid counter:\n%s", out)
	}
	return total
}
