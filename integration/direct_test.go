//go:build integration

package integration

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// TestTopologyDirect needs no daemon: from the router namespace every client
// fetches big.bin from rs1 directly, in every mode, proving the topology, the
// vsftpd configuration and the clients. The router's own connections are
// not the daemon's: a running daemon passes their packets unchanged.
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

// TestDirectOtherServers: without the daemon, from the router namespace, the
// Go client fetches small.bin from proftpd, pure-ftpd and quirkyftpd on each
// server directly, in every mode, and logs how each server words its 227 and
// 229 replies.
func TestDirectOtherServers(t *testing.T) {
	tp := needTopo(t)
	for _, k := range serverKinds() {
		t.Run(k.name, func(t *testing.T) {
			if k.skip() != "" {
				t.Skip(k.skip())
			}
			servers := tp.Servers
			if k.rs1Only {
				servers = servers[:1]
			}
			for _, s := range servers {
				for _, c := range []struct{ host, mode string }{
					{s.V4, "pasv"}, {s.V4, "epsv"}, {s.V4, "port"}, {s.V4, "eprt"},
					{s.V6, "epsv"}, {s.V6, "eprt"},
				} {
					addr := net.JoinHostPort(c.host, fmt.Sprint(k.port))
					r := runFtpget(t, tp.Router, addr, c.mode, "small.bin,server.txt", 2)
					if r.results[0].SHA256 != tp.Files["small.bin"] {
						t.Errorf("%s %s: small.bin sha256 %s, want %s", addr, c.mode, r.results[0].SHA256, tp.Files["small.bin"])
					}
					if got := r.results[1].Content; got != s.Name+"\n" {
						t.Errorf("%s %s: server.txt = %q, want %q", addr, c.mode, got, s.Name+"\n")
					}
					if c.mode == "pasv" {
						want := strings.ReplaceAll(c.host, ".", ",") + ","
						if !strings.Contains(r.results[0].PassiveReply, want) {
							t.Errorf("%s: 227 reply %q does not name the server's own address %s", addr, r.results[0].PassiveReply, c.host)
						}
					}
					if pr := r.results[0].PassiveReply; pr != "" {
						t.Logf("%s %s reply: %q", addr, c.mode, pr)
					} else {
						t.Logf("%s %s: data connection from %s", addr, c.mode, r.results[0].DataPeer)
					}
				}
			}
		})
	}
}
