//go:build integration

package integration

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/ctl"
	"github.com/nfhelper/nfhelper/integration/topo"
	"github.com/nfhelper/nfhelper/nfq"
)

// TestQueueFlood: 64,000 new UDP flows to a balanced VIP in one burst, far
// more than the queue holds (4096) or the workers answer meanwhile. The box
// never stalls: the kernel passes what does not fit (fail-open), an FTP
// session through the VIP during the flood and one after it complete
// byte-exact, the daemon answers, and the counters show how many flows
// went by the daemon.
func TestQueueFlood(t *testing.T) {
	d := needDaemon(t)
	tp := harness.tp
	sock := tp.ControlSocket()
	queued := func() (ids, waiting, dropped uint64) {
		t.Helper()
		out, _, err := execIn(t, 10*time.Second, tp.Router, nil, "cat", nfq.ProcQueueStats)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 8 {
				continue
			}
			var v [8]uint64
			for i := range v {
				v[i] = parseUint(f[i])
			}
			ids += v[7]
			waiting += v[2]
			dropped += v[5] + v[6]
		}
		return ids, waiting, dropped
	}
	var before ctl.Status
	ctlJSON(t, sock, "status", &before)
	ids0, _, dropped0 := queued()

	const flows = 64000
	sent := make(chan error, 1)
	go func() {
		sent <- udpFlood(tp.Client, netip.MustParseAddr(topo.ClientV4), netip.MustParseAddrPort(topo.VIP4+":7"), flows)
	}()
	during := runFtpget(t, tp.Client, net.JoinHostPort(topo.VIP4, "21"), "pasv", "small.bin", 1)
	if err := <-sent; err != nil {
		t.Fatalf("flood: %v", err)
	}
	if during.results[0].SHA256 != tp.Files["small.bin"] {
		t.Errorf("transfer during the flood: sha256 %s", during.results[0].SHA256)
	}
	// The daemon works its backlog off.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, waiting, _ := queued(); waiting == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("packets still waiting in the queues 30s after the flood")
		}
		time.Sleep(100 * time.Millisecond)
	}
	ids1, _, dropped1 := queued()
	var after ctl.Status
	ctlJSON(t, sock, "status", &after)
	viaDaemon := ids1 - ids0
	t.Logf("%d new flows: %d queued to the daemon, %d passed by the kernel (fail-open); kernel drops %d; daemon packets +%d, scheduled +%d",
		flows, viaDaemon, flows-min(viaDaemon, flows), dropped1-dropped0,
		after.Stats["packets"]-before.Stats["packets"], after.Stats["scheduled"]-before.Stats["scheduled"])
	if viaDaemon >= flows {
		t.Logf("every flow reached the daemon: the flood did not exceed the queue on this machine")
	}
	if dropped1 != dropped0 {
		t.Errorf("the kernel dropped %d queued packets (fail-open should pass them)", dropped1-dropped0)
	}
	if !d.Running() {
		t.Fatal("the daemon died in the flood")
	}
	if after.Stats["packets"] <= before.Stats["packets"] {
		t.Error("the daemon's reader took no packet during the flood")
	}
	r := runFtpget(t, tp.Client, net.JoinHostPort(topo.VIP4, "21"), "pasv", "small.bin", 1)
	if r.results[0].SHA256 != tp.Files["small.bin"] {
		t.Errorf("transfer after the flood: sha256 %s", r.results[0].SHA256)
	}
}

// udpFlood sends one datagram on each of n new flows (source ports
// 1024 and up, wrapping) from src to dst, as fast as a raw socket in ns
// takes them.
func udpFlood(ns string, src netip.Addr, dst netip.AddrPort, n int) error {
	return topo.Do(ns, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		pkt := make([]byte, 20+8+16)
		pkt[0], pkt[8], pkt[9] = 0x45, 64, unix.IPPROTO_UDP
		binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
		s, d := src.As4(), dst.Addr().As4()
		copy(pkt[12:], s[:])
		copy(pkt[16:], d[:])
		binary.BigEndian.PutUint16(pkt[22:], dst.Port())
		binary.BigEndian.PutUint16(pkt[24:], 8+16)
		to := &unix.SockaddrInet4{Addr: d}
		for i := range n {
			// The kernel fills in the IP checksum and id; UDP checksum 0
			// means none.
			binary.BigEndian.PutUint16(pkt[20:], uint16(1024+i%64000))
			if err := unix.Sendto(fd, pkt, 0, to); err != nil && err != unix.ENOBUFS {
				return err
			}
		}
		return nil
	})
}

func parseUint(s string) uint64 {
	var v uint64
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0
		}
		v = v*10 + uint64(c-'0')
	}
	return v
}
