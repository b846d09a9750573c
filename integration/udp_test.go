//go:build integration

package integration

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// echoServer answers every UDP datagram on port 7 and every TCP connection
// there with the server's name, from the real server's namespace.
const echoServer = `
import socket, sys, threading
name = sys.argv[1]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
u.bind(("0.0.0.0", 7))
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 7)); t.listen(64)
def tcp():
    while True:
        c, _ = t.accept(); c.sendall(name.encode()); c.close()
threading.Thread(target=tcp, daemon=True).start()
print("ready", flush=True)
while True:
    data, peer = u.recvfrom(2048)
    u.sendto(name.encode() + b" " + data, peer)
`

// echoClient sends one datagram from each of n source ports to the UDP VIP
// (twice each: a flow keeps its server) and connects n times over TCP.
const echoClient = `
import socket, sys
vip, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
    s.connect((vip, 7))
    first = None
    for j in range(2):
        s.send(b"ping%d" % i)
        data, peer = s.recvfrom(2048)
        if peer[0] != vip: print("udp reply from", peer[0]); sys.exit(1)
        who = data.split()[0].decode()
        if first is not None and who != first: print("udp flow moved", first, who); sys.exit(1)
        first = who
    print("udp", first)
for i in range(n):
    c = socket.create_connection((vip, 7), timeout=3)
    print("tcp", c.recv(64).decode()); c.close()
`

// TestUDPAndPlainTCP balances a UDP service and a TCP service without a
// helper on the same VIP and port: every flow is answered through the VIP,
// a UDP flow keeps its server, both servers take flows.
func TestUDPAndPlainTCP(t *testing.T) {
	needDaemon(t)
	tp := harness.tp
	for ns, name := range map[string]string{tp.RS1: "rs1", tp.RS2: "rs2"} {
		cmd := tp.Exec(ns, "python3", "-c", echoServer, name)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := tp.Start(cmd); err != nil {
			t.Fatalf("echo server on %s: %v", name, err)
		}
		t.Cleanup(func() { cmd.Process.Kill() })
		buf := make([]byte, 6)
		if _, err := io.ReadFull(out, buf); err != nil || string(buf) != "ready\n" {
			t.Fatalf("echo server on %s did not start: %q %v", name, buf, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := tp.CommandContext(ctx, tp.Client, "python3", "-c", echoClient, topo.VIP4, "8").CombinedOutput()
	if err != nil {
		t.Fatalf("echo client: %v\n%s", err, out)
	}
	seen := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		seen[line]++
	}
	t.Logf("answers: %v", seen)
	for _, want := range []string{"udp rs1", "udp rs2", "tcp rs1", "tcp rs2"} {
		if seen[want] == 0 {
			t.Errorf("no %q among %v", want, seen)
		}
	}
}
