//go:build integration

package integration

import (
	"net"
	"strings"
	"testing"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// TestIPOptionsAndExtensionHeaders: the client's control packets carry IPv4
// options or an IPv6 destination-options header, which the daemon's parser
// steps over: PORT/EPRT still open channels, 227/229 still get rewritten,
// two transfers each, both through one sequence-mapped control connection.
func TestIPOptionsAndExtensionHeaders(t *testing.T) {
	needDaemon(t)
	tp := harness.tp
	for _, c := range []struct{ host, mode string }{
		{topo.VIP4, "pasv"}, {topo.VIP4, "port"}, {topo.VIP6, "epsv"}, {topo.VIP6, "eprt"},
	} {
		t.Run(c.mode+"-"+map[bool]string{true: "v6", false: "v4"}[strings.Contains(c.host, ":")], func(t *testing.T) {
			run := runFtpget(t, tp.Client, net.JoinHostPort(c.host, "21"), c.mode, "small.bin,big.bin", 2, "-ipopts")
			for _, r := range run.results {
				if r.SHA256 != tp.Files[r.File] {
					t.Errorf("%s: sha256 %s, want %s", r.File, r.SHA256, tp.Files[r.File])
				}
			}
			if c.mode == "pasv" && !strings.Contains(run.results[0].PassiveReply, "198,51,100,10") {
				t.Errorf("227 not rewritten: %q", run.results[0].PassiveReply)
			}
		})
	}
}
