//go:build integration

package ipvs

import (
	"fmt"
	"os"
	"os/exec"
	"testing"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// TestConntrackAlive asks a namespace's conntrack about a connection by
// its original tuple, as checkIdle does: there, then gone.
func TestConntrackAlive(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	name := fmt.Sprintf("ipvsit%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns delete %s: %v %s", name, err, out)
		}
	})
	ns, err := os.Open("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	ct, err := conntrack.Dial(&netlink.Config{NetNS: int(ns.Fd())})
	if err != nil {
		t.Fatal(err)
	}
	a := &conntrackAlive{conn: ct}
	defer a.close()

	for _, s := range []Session{
		{Client: ap("203.0.113.2:40000"), VIP: ap("198.51.100.10:21"), Server: ap("10.0.0.11:21")},
		{Client: ap("[2001:db8::2]:40000"), VIP: ap("[2001:db8:1::10]:21"), Server: ap("[fd00::11]:21")},
	} {
		c := &Conn{Session: s}
		if there, err := a.alive(c); there || err != nil {
			t.Fatalf("%v before its entry: %v %v", s, there, err)
		}
		f := conntrack.NewFlow(unix.IPPROTO_TCP, conntrack.StatusConfirmed, s.Client.Addr(), s.VIP.Addr(), s.Client.Port(), s.VIP.Port(), 600, 0)
		f.TupleReply.IP.SourceAddress, f.TupleReply.Proto.SourcePort = s.Server.Addr(), s.Server.Port()
		f.ProtoInfo.TCP = &conntrack.ProtoInfoTCP{State: ctTCPEstablished}
		if err := ct.Create(f); err != nil {
			t.Fatalf("create %v: %v", s, err)
		}
		if there, err := a.alive(c); !there || err != nil {
			t.Fatalf("%v with its entry: %v %v", s, there, err)
		}
		if err := ct.Delete(f); err != nil {
			t.Fatal(err)
		}
		if there, err := a.alive(c); there || err != nil {
			t.Fatalf("%v after its entry: %v %v", s, there, err)
		}
	}
}
