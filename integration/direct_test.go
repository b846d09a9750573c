//go:build integration

package integration

import (
	"testing"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// TestTopologyDirect needs no daemon: from the router namespace every client
// fetches big.bin from rs1 directly, in every mode, proving the topology, the
// vsftpd configuration and the clients. It runs first, before nfhelperd's
// rules exist.
func TestTopologyDirect(t *testing.T) {
	tp := needTopo(t)
	tg := target{
		ns:    tp.Router,
		host4: topo.RS1V4, host6: topo.RS1V6,
		pasv4: topo.RS1V4,
		peer4: topo.RS1V4, peer6: topo.RS1V6,
	}
	runMatrix(t, tg, "")

	t.Run("server.txt", func(t *testing.T) {
		for _, s := range []struct{ addr, mode, want string }{
			{topo.RS1V4 + ":21", "pasv", "rs1"},
			{topo.RS2V4 + ":21", "pasv", "rs2"},
			{"[" + topo.RS2V6 + "]:21", "epsv", "rs2"},
		} {
			r := runFtpget(t, tp.Router, s.addr, s.mode, "server.txt", 1)
			if got := r.results[0].Content; got != s.want+"\n" {
				t.Errorf("server.txt from %s = %q, want %q", s.addr, got, s.want+"\n")
			}
		}
	})
}
