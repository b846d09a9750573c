package nft

import (
	"bytes"
	"errors"
	"flag"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/internal/netnstest"
	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/kernel"
)

var update = flag.Bool("update", false, "rewrite golden files")

// testNetns creates a network namespace for the test and returns its name and
// an nftables connection inside it; both go away at cleanup.
func testNetns(t *testing.T) (string, *nftables.Conn) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs the nft command to list the ruleset")
	}
	name := netnstest.New(t, "nfht-nft-")
	f, err := os.Open(netnstest.Path(name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	// The specs without NativeQueue use the xtables target, which an inet
	// table cannot autoload (Debian's kernel): loaded as the daemon does.
	if err := kernel.ProbeXtQueue(c); err != nil {
		t.Logf("xt_NFQUEUE: %v", err)
	}
	return name, c
}

func nftList(t *testing.T, ns string, args ...string) (string, error) {
	t.Helper()
	// stdout only: nft warns on stderr that it cannot print xtables targets
	// in an inet table.
	var stderr bytes.Buffer
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, "nft"}, args...)...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out) + stderr.String(), err
	}
	return string(out), nil
}

// withoutExpiry drops the time elements have left (alive's) from a
// listing, for comparison.
func withoutExpiry(list string) string {
	return regexp.MustCompile(` expires [0-9hms]+`).ReplaceAllString(list, "")
}

func referenceSpec() *Spec {
	ap := netip.MustParseAddrPort
	return &Spec{
		Table: "nfhelper", QueueNum: 100, QueueTotal: 2, MarkMask: 0x00ff0000, KernelFTP: true, KernelTFTP: true,
		Services: []Service{
			{VIP: ap("198.51.100.10:21"), Helped: true, Servers: []Server{{ap("10.0.0.11:21"), 0x10000, 1, false}, {ap("10.0.0.12:21"), 0x20000, 3, false}}},
			{VIP: ap("[2001:db8:1::10]:21"), Helped: true, Servers: []Server{{ap("[fd00::11]:21"), 0x30000, 1, false}}},
			{VIP: ap("198.51.100.10:80"), Servers: []Server{{ap("10.0.0.11:80"), 0x60000, 0, false}}},
			{VIP: ap("198.51.100.10:53"), UDP: true, Servers: []Server{{ap("10.0.0.11:53"), 0x70000, 1, false}}},
			{VIP: ap("198.51.100.10:69"), UDP: true, Servers: []Server{{ap("10.0.0.11:69"), 0x80000, 1, false}}, Replies: 5 * time.Minute},
		},
		AddOns: []AddOn{{Match: ap("198.51.100.20:21"), Mark: 0x40000}, {Match: ap("[2001:db8:1::20]:21"), Mark: 0x50000},
			{Match: ap("198.51.100.20:69"), Mark: 0x60000, UDP: true, Replies: 5 * time.Minute}},
	}
}

func TestInstallGolden(t *testing.T) {
	ns, c := testNetns(t)
	// A user's own table must survive everything we do.
	if out, err := nftList(t, ns, "add table inet user; add chain inet user c { type filter hook input priority 0; }"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if _, err := Install(c, referenceSpec()); err != nil {
		t.Fatal(err)
	}
	got := checkGolden(t, ns, "ruleset.nft")

	// A second install replaces the stale copy instead of failing or doubling.
	if _, err := Install(c, referenceSpec()); err != nil {
		t.Fatalf("reinstall over a stale table: %v", err)
	}
	again, _ := nftList(t, ns, "list", "table", "inet", "nfhelper")
	if again = withoutExpiry(again); again != got {
		t.Errorf("reinstall changed the ruleset:\n%s", again)
	}

	if err := Remove(c, "nfhelper"); err != nil {
		t.Fatal(err)
	}
	if out, err := nftList(t, ns, "list", "table", "inet", "nfhelper"); err == nil {
		t.Errorf("table still there after Remove:\n%s", out)
	}
	if out, err := nftList(t, ns, "list", "table", "inet", "user"); err != nil {
		t.Errorf("user's table gone: %v %s", err, out)
	}
	if err := Remove(c, "nfhelper"); err != nil {
		t.Errorf("Remove of an absent table: %v", err)
	}
}

func TestOpenChannels(t *testing.T) {
	ns, c := testNetns(t)
	rs, err := Install(c, referenceSpec())
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort
	chs := []ipvs.Channel{
		{Kind: ipvs.ChannelPassive, Client: ap("203.0.113.2:0"), Server: ap("10.0.0.11:40001"), VIP: ap("198.51.100.10:40001"), Timeout: time.Minute},
		{Kind: ipvs.ChannelActive, Client: ap("203.0.113.2:50000"), Server: ap("10.0.0.12:0"), VIP: ap("198.51.100.10:0"), Timeout: time.Minute},
		{Kind: ipvs.ChannelPassive, Client: ap("[2001:db8:2::2]:0"), Server: ap("[fd00::11]:40002"), VIP: ap("[2001:db8:1::10]:40002"), Timeout: time.Minute},
		{Kind: ipvs.ChannelActive, Client: ap("[2001:db8:2::2]:50001"), Server: ap("[fd00::11]:0"), VIP: ap("[2001:db8:1::10]:0"), Timeout: time.Minute},
		// Behind the user's SNAT, and a learned server.
		{Kind: ipvs.ChannelPassive, Client: ap("203.0.113.3:0"), Server: ap("10.0.0.12:40003"), VIP: ap("198.51.100.20:40003"), NAT: ap("10.0.0.1:0"), Timeout: time.Minute},
		{Kind: ipvs.ChannelActive, Client: ap("203.0.113.3:50002"), Server: ap("10.0.0.12:0"), VIP: ap("198.51.100.20:0"), NAT: ap("10.0.0.1:50002"), Timeout: time.Minute},
		{Kind: ipvs.ChannelWatch, Server: ap("10.0.0.12:21")},
		// Pure ACKs of a control connection, one behind the user's SNAT.
		{Kind: ipvs.ChannelAcks, Client: ap("203.0.113.4:40000"), Server: ap("10.0.0.11:21")},
		{Kind: ipvs.ChannelAcks, Client: ap("203.0.113.5:40000"), Server: ap("10.0.0.12:21"), NAT: ap("10.0.0.1:40001")},
		{Kind: ipvs.ChannelAcks, Client: ap("[2001:db8:2::2]:40000"), Server: ap("[fd00::11]:21")},
	}
	if err := rs.OpenChannels(c, chs); err != nil {
		t.Fatal(err)
	}
	out, err := nftList(t, ns, "list", "table", "inet", "nfhelper")
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for _, want := range []string{
		"203.0.113.2 . 198.51.100.10 . 40001 timeout 1m",
		": 10.0.0.11 . 40001",
		"10.0.0.12 . 203.0.113.2 . 50000 timeout 1m",
		": 198.51.100.10",
		"2001:db8:2::2 . 2001:db8:1::10 . 40002 timeout 1m",
		": fd00::11 . 40002",
		"fd00::11 . 2001:db8:2::2 . 50001 timeout 1m",
		": 2001:db8:1::10",
		"203.0.113.3 . 10.0.0.12 . 40003 timeout 1m",
		": 10.0.0.1",
		"10.0.0.12 . 10.0.0.1 . 50002 timeout 1m",
		": 203.0.113.3 . 50002",
		"elements = { 10.0.0.12 . 21 }",
		"203.0.113.4 . 40000 . 10.0.0.11 . 21 timeout 2d",
		"203.0.113.5 . 40000 . 10.0.0.12 . 21 timeout 2d",
		"10.0.0.1 . 40001 . 10.0.0.12 . 21 timeout 2d",
		"2001:db8:2::2 . 40000 . fd00::11 . 21 timeout 2d",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("element %q missing from:\n%s", want, out)
		}
	}
	// Re-announcing a channel (a retransmitted reply) is no error.
	if err := rs.OpenChannels(c, chs[:1]); err != nil {
		t.Errorf("repeated channel: %v", err)
	}
	if err := rs.OpenChannels(c, []ipvs.Channel{{}}); err == nil {
		t.Error("a channel of no kind was accepted")
	}
	if err := rs.CloseChannels(c, chs); err != nil {
		t.Fatal(err)
	}
	out, _ = nftList(t, ns, "list", "table", "inet", "nfhelper")
	if strings.Contains(out, "203.0.113.") || strings.Contains(out, "2001:db8:2::2") || strings.Contains(out, "10.0.0.1 . 40001") {
		t.Errorf("closed channels still listed:\n%s", out)
	}
	if out, _ := nftList(t, ns, "list", "set", "inet", "nfhelper", "watched4"); strings.Contains(out, "elements") {
		t.Errorf("closed watch still listed:\n%s", out)
	}
}

func TestUpdateKeepsLive(t *testing.T) {
	ns, c := testNetns(t)
	rs, err := Install(c, referenceSpec())
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort
	next := referenceSpec()
	next.Services = next.Services[1:] // the IPv4 FTP service is gone
	next.LiveVIPs = []netip.AddrPort{ap("198.51.100.10:21")}
	next.LiveServers = []netip.AddrPort{ap("10.0.0.12:21")}
	if err := rs.Update(c, next); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ set, want, notWant string }{
		{"vips4", "198.51.100.10 . 80", "198.51.100.10 . 21"}, // no new connections are scheduled
		{"helped4", "198.51.100.10 . 21", ""},
		{"servers4", "10.0.0.12 . 21", "10.0.0.11"}, // a removed server without connections is not queued
	} {
		out, err := nftList(t, ns, "list", "set", "inet", "nfhelper", c.set)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, c.want) || c.notWant != "" && strings.Contains(out, c.notWant) {
			t.Errorf("%s after update:\n%s", c.set, out)
		}
	}
}

func TestFallbackSlots(t *testing.T) {
	ap := netip.MustParseAddrPort
	a, b, c := Server{ap("10.0.0.1:21"), 1, 1, false}, Server{ap("10.0.0.2:21"), 2, 3, false}, Server{ap("10.0.0.3:21"), 3, 0, false}
	slots := fallbackSlots([]Server{a, b, c})
	n := map[netip.AddrPort]int{}
	for _, s := range slots {
		n[s.Addr]++
	}
	if len(slots) != fallbackBuckets || n[a.Addr] != 16 || n[b.Addr] != 48 || n[c.Addr] != 0 {
		t.Errorf("slots by server %v", n)
	}
	// Interleaved: no long run of one server.
	if slots[0] == slots[1] && slots[1] == slots[2] && slots[2] == slots[3] {
		t.Errorf("not interleaved: %v", slots[:4])
	}
	if fallbackSlots([]Server{c}) != nil {
		t.Error("quiesced servers got slots")
	}
}

// TestOpenChannelReplacesStaleElement: a channel whose key is still in the
// map with other data (an ended connection's, not timed out) replaces it.
func TestOpenChannelReplacesStaleElement(t *testing.T) {
	ns, c := testNetns(t)
	rs, err := Install(c, referenceSpec())
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort
	old := ipvs.Channel{Kind: ipvs.ChannelActive, Client: ap("203.0.113.2:50000"), Server: ap("10.0.0.12:0"), VIP: ap("198.51.100.10:0"), Timeout: time.Minute}
	next := old
	next.VIP = ap("198.51.100.20:0")
	fresh := ipvs.Channel{Kind: ipvs.ChannelPassive, Client: ap("203.0.113.2:0"), Server: ap("10.0.0.11:40001"), VIP: ap("198.51.100.10:40001"), Timeout: time.Minute}
	if err := rs.OpenChannels(c, []ipvs.Channel{old}); err != nil {
		t.Fatal(err)
	}
	if err := rs.OpenChannels(c, []ipvs.Channel{fresh, next}); err != nil {
		t.Fatalf("replacing a stale element: %v", err)
	}
	out, _ := nftList(t, ns, "list", "map", "inet", "nfhelper", "active4")
	if !strings.Contains(out, "10.0.0.12 . 203.0.113.2 . 50000 timeout 1m") || !strings.Contains(out, ": 198.51.100.20") || strings.Contains(out, ": 198.51.100.10") {
		t.Errorf("active4 after the replacement:\n%s", out)
	}
	if out, _ := nftList(t, ns, "list", "map", "inet", "nfhelper", "passive4"); !strings.Contains(out, "203.0.113.2 . 198.51.100.10 . 40001") {
		t.Errorf("the batch's other channel is missing:\n%s", out)
	}
}

// TestInstallKernelGolden: the kernel datapath's variant, where the kernel
// has userspace conntrack helpers (Debian's stock kernel; skipped here).
func TestInstallKernelGolden(t *testing.T) {
	ns, c := testNetns(t)
	const helper = "nfhelper-gold"
	ch, err := kernel.DialCthelper()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		_, err := ch.Register(kernel.Helper{Name: helper, Family: fam, Proto: unix.IPPROTO_TCP, Queue: 100, PrivLen: kernel.StateLen, Enabled: true,
			Policies: []kernel.ExpectPolicy{{Name: "ftp", MaxExpected: 1, Timeout: 300}}})
		if errors.Is(err, kernel.ErrNoCthelper) {
			t.Skip(err)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer ch.Unregister(helper, fam, unix.IPPROTO_TCP)
	}
	spec := referenceSpec()
	spec.CtHelper = helper
	spec.NativeQueue = kernel.ProbeNativeQueue(c) == nil
	if _, err := Install(c, spec); err != nil {
		t.Fatal(err)
	}
	defer Remove(c, "nfhelper")
	got := checkGolden(t, ns, "ruleset-kernel.nft")
	for _, w := range []string{"ct helper nfhelper-gold {", `type "nfhelper-gold" protocol tcp`, "priority mangle", `ct helper set "nfhelper-gold"`, `ct helper set "ftp"`} {
		if !strings.Contains(got, w) {
			t.Errorf("%q missing", w)
		}
	}
}

// TestInstallKeepsLateBypassed: a bypassed element the kernel wrote after
// ReadStale (while the restarting daemon restored) is in the new table.
func TestInstallKeepsLateBypassed(t *testing.T) {
	ns, c := testNetns(t)
	if _, err := Install(c, referenceSpec()); err != nil {
		t.Fatal(err)
	}
	if out, err := nftList(t, ns, "add", "element", "inet", "nfhelper", "bypassed4", "{ 203.0.113.2 . 198.51.100.10 timeout 1m : 10.0.0.11 }"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	carried, err := ReadStale(c, "nfhelper")
	if err != nil {
		t.Fatal(err)
	}
	// Written by the packet path after the read: replaces the first.
	if out, err := nftList(t, ns, "delete", "element", "inet", "nfhelper", "bypassed4", "{ 203.0.113.2 . 198.51.100.10 }"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := nftList(t, ns, "add", "element", "inet", "nfhelper", "bypassed4", "{ 203.0.113.2 . 198.51.100.10 timeout 1m : 10.0.0.12 }"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	spec := referenceSpec()
	spec.Carried = carried
	if _, err := Install(c, spec); err != nil {
		t.Fatal(err)
	}
	out, _ := nftList(t, ns, "list", "map", "inet", "nfhelper", "bypassed4")
	if !strings.Contains(out, ": 10.0.0.12") || strings.Contains(out, ": 10.0.0.11") {
		t.Errorf("bypassed4 after the restart:\n%s", out)
	}
}

// checkGolden compares the table as nft lists it in ns (expiry times
// left out) with testdata/name, or rewrites that with -update, and
// returns the listing.
func checkGolden(t *testing.T, ns, name string) string {
	t.Helper()
	got, err := nftList(t, ns, "list", "table", "inet", "nfhelper")
	if err != nil {
		t.Fatalf("%v: %s", err, got)
	}
	got = withoutExpiry(got)
	golden := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			// A read-only tree (the VM): leave it where it can be copied from.
			os.WriteFile(os.Getenv("NFHELPER_GOLDEN_OUT"), []byte(got), 0o644)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("ruleset differs from %s (go test -run %s -update to accept):\n%s", golden, t.Name(), got)
	}
	return got
}
