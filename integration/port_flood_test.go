//go:build integration

package integration

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// TestPortFlood: one control connection announces 300 active data channels
// in a burst. The daemon keeps at most max_data_channels (1) of them in the
// kernel at a time, evicting the older ones, and goes on serving.
func TestPortFlood(t *testing.T) {
	needDaemon(t)
	tp := harness.tp
	const n, firstPort = 300, 50000
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := topo.DialIn(ctx, tp.Client, "tcp", net.JoinHostPort(topo.VIP4, "21"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(50 * time.Second))
	r := bufio.NewReader(conn)
	reply := func() string {
		t.Helper()
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("reading a reply: %v", err)
			}
			if len(line) >= 4 && line[3] == ' ' {
				return line
			}
		}
	}
	expect := func(code string) {
		t.Helper()
		if line := reply(); !strings.HasPrefix(line, code+" ") {
			t.Fatalf("want %s, got %q", code, line)
		}
	}
	expect("220")
	fmt.Fprintf(conn, "USER anonymous\r\n")
	if line := reply(); strings.HasPrefix(line, "331 ") {
		fmt.Fprintf(conn, "PASS x\r\n")
		expect("230")
	} else if !strings.HasPrefix(line, "230 ") {
		t.Fatalf("login: %q", line)
	}
	var burst strings.Builder
	for i := range n {
		p := firstPort + i
		fmt.Fprintf(&burst, "PORT 203,0,113,2,%d,%d\r\n", p>>8, p&0xff)
	}
	if _, err := conn.Write([]byte(burst.String())); err != nil {
		t.Fatal(err)
	}
	for range n {
		expect("200")
	}

	// Evicted channels go right after the verdicts that replaced them
	// (map elements; on the kernel datapath the kernel's max_expected):
	// poll until the kernel holds the flood's last channel only.
	var elems []nftElem
	flood, last := -1, false
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		elems = channelElems(t, "active4")
		// Earlier tests' active transfers may have left elements whose
		// client port falls in the flood's range: count only those of the
		// flood's server (the one of its last channel, once that is in).
		server := ""
		for _, e := range elems {
			if len(e.Key) == 3 && e.Key[1] == topo.ClientV4 && e.Key[2] == strconv.Itoa(firstPort+n-1) {
				server = e.Key[0]
			}
		}
		flood, last = 0, false
		for _, e := range elems {
			var p int
			if len(e.Key) != 3 || e.Key[1] != topo.ClientV4 || server != "" && e.Key[0] != server {
				continue
			}
			fmt.Sscan(e.Key[2], &p)
			if p >= firstPort && p < firstPort+n {
				flood++
				last = last || p == firstPort+n-1
			}
		}
		if flood <= 1 {
			break
		}
	}
	if flood != 1 {
		t.Errorf("%d of the flood's channels in the kernel, want the last one only:\n%v", flood, elems)
	}
	if !last {
		t.Errorf("the last announced channel is not the one kept:\n%v", elems)
	}
	// The connection and the daemon go on.
	fmt.Fprintf(conn, "NOOP\r\n")
	expect("200")
	res := runFtpget(t, tp.Client, net.JoinHostPort(topo.VIP4, "21"), "pasv", "small.bin", 1)
	if res.results[0].SHA256 != tp.Files["small.bin"] {
		t.Errorf("transfer after the flood: sha256 %s", res.results[0].SHA256)
	}
}
