//go:build integration

package integration

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// serverKind is one FTP server implementation behind its own VIP port.
type serverKind struct {
	name    string
	port    int
	rs1Only bool // runs on rs1 only
	skip    func() string
}

func serverKinds() []serverKind {
	return []serverKind{
		{name: "proftpd", port: topo.ProFTPDPort, skip: func() string { return harness.noProFTPD }},
		{name: "pure-ftpd", port: topo.PureFTPDPort, skip: func() string { return harness.noPureFTPD }},
		{name: "quirkyftpd", port: topo.QuirkyPort, rs1Only: true, skip: func() string { return harness.noQuirky }},
	}
}

func needKind(t *testing.T, name string) serverKind {
	t.Helper()
	for _, k := range serverKinds() {
		if k.name == name {
			if s := k.skip(); s != "" {
				t.Skip(s)
			}
			return k
		}
	}
	t.Fatalf("no server kind %s", name)
	return serverKind{}
}

// testVIPServer runs the curl and Go client matrices (every mode, both
// families) against one server kind through the VIP, and checks that both
// real servers answer the IPv4 service.
func testVIPServer(t *testing.T, kind string) {
	needDaemon(t)
	k := needKind(t, kind)
	tg := vipTarget(harness.tp)
	tg.port = k.port
	for _, tool := range []string{"curl", "go"} {
		t.Run(tool, func(t *testing.T) { runMatrix(t, tg, tool) })
	}
	t.Run("both-servers", func(t *testing.T) {
		seen := map[string]int{}
		for i := 0; i < 4; i++ {
			r := runFtpget(t, harness.tp.Client, net.JoinHostPort(topo.VIP4, fmt.Sprint(k.port)), "pasv", "server.txt", 1)
			seen[strings.TrimSpace(r.results[0].Content)]++
			if i < 2 {
				t.Logf("227 through the VIP: %q", r.results[0].PassiveReply)
			}
		}
		if seen["rs1"] == 0 || seen["rs2"] == 0 || len(seen) != 2 {
			t.Errorf("server.txt over 4 control connections: %v, want rs1 and rs2", seen)
		}
	})
}

func TestVIPProFTPD(t *testing.T)  { testVIPServer(t, "proftpd") }
func TestVIPPureFTPD(t *testing.T) { testVIPServer(t, "pure-ftpd") }
