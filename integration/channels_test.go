//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// kernelDatapath reports whether the running daemon uses the kernel
// datapath, whose data channels are conntrack expectations instead of nft
// map elements.
func kernelDatapath() bool {
	harness.mu.Lock()
	defer harness.mu.Unlock()
	return harness.daemon != nil && strings.Trim(harness.daemon.Datapath, `"`) == "kernel"
}

// channelElems lists the data channels the datapath holds in the router,
// in the shape of the compat datapath's map name (passive4/6: client . VIP
// . port : server . port; active4/6: server . client . port : VIP): its
// map elements, or on the kernel datapath the matching expectations.
func channelElems(t *testing.T, name string) []nftElem {
	t.Helper()
	if !kernelDatapath() {
		return nftElems(t, name)
	}
	return expectElems(t, name)
}

// ctExpect is one line of integration/cmd/ctexpect.
type ctExpect struct {
	Src, Dst  string
	MasterDst string `json:"master_dst"`
	Function  string
	NATDir    int    `json:"nat_dir"`
	NATSrc    string `json:"nat_src"`
}

func expectElems(t *testing.T, name string) []nftElem {
	t.Helper()
	out, stderr, err := execIn(t, 10*time.Second, harness.tp.Router, nil, harness.ctexpect)
	if err != nil {
		t.Fatalf("ctexpect: %v: %s", err, stderr)
	}
	v6 := strings.HasSuffix(name, "6")
	passive := strings.HasPrefix(name, "passive")
	var elems []nftElem
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var e ctExpect
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("ctexpect output %q: %v", sc.Text(), err)
		}
		dst, err1 := netip.ParseAddrPort(e.Dst)
		nat, err2 := netip.ParseAddrPort(e.NATSrc)
		master, err3 := netip.ParseAddrPort(e.MasterDst)
		if err1 != nil || err2 != nil || err3 != nil || dst.Addr().Is6() != v6 || e.Function != "nat-follow-master" {
			continue
		}
		switch {
		case passive && e.NATDir == 0:
			elems = append(elems, nftElem{
				Key: []string{e.Src, dst.Addr().String(), fmt.Sprint(dst.Port())},
				Val: []string{nat.Addr().String(), fmt.Sprint(nat.Port())},
			})
		case !passive && e.NATDir == 1:
			elems = append(elems, nftElem{
				Key: []string{e.Src, dst.Addr().String(), fmt.Sprint(dst.Port())},
				Val: []string{master.Addr().String()},
			})
		}
	}
	return elems
}
