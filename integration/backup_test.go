//go:build integration

package integration

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/integration/topo"
	"github.com/nfhelper/nfhelper/kernel"
	"github.com/nfhelper/nfhelper/nft"
)

// backupClient logs in to quirkyftpd as argv[3] (bare227: every 227 the
// daemon rewrites grows), fetches small.bin over PASV (connecting where the
// 227 says), sends one more PASV, reports, waits for a line on stdin, then
// fetches through the channel that last PASV announced and once more over a
// new PASV, and quits.
const backupClient = `import ftplib, hashlib, json, socket, sys
host, port, user = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = sys.stdout
sys.stdout = sys.stderr
ftp = ftplib.FTP(timeout=20)
ftp.set_debuglevel(1)
ftp.connect(host, port)
ftp.login(user, "x")
def retr(reply):
    h, p = ftplib.parse227(reply)
    conn = socket.create_connection((h, p), timeout=20)
    ftp.sendcmd("RETR small.bin")
    d = hashlib.sha256()
    with conn:
        while True:
            b = conn.recv(65536)
            if not b:
                break
            d.update(b)
    ftp.voidresp()
    return {"sha256": d.hexdigest(), "reply": reply}
first = retr(ftp.sendcmd("PASV"))
first["pre"] = ftp.sendcmd("PASV")
first["noop"] = ftp.voidcmd("NOOP")
first["client"] = ftp.sock.getsockname()[0]
first["client_port"] = ftp.sock.getsockname()[1]
out.write(json.dumps(first) + "\n"); out.flush()
sys.stdin.readline()
second = retr(first["pre"])
second["third"] = retr(ftp.sendcmd("PASV"))
second["quit"] = ftp.quit()
out.write(json.dumps(second) + "\n"); out.flush()
`

// TestBackupAdopts (compat datapath) plays a backup router after a
// failover, without keepalived: a control connection the suite's daemon
// helped (two lengthened 227s, the second one's channel not used yet) is
// left by a daemon killed with its table deleted, so that the next daemon
// knows nothing of it, as a backup's never saw it; its conntrack entry is
// then made again the way conntrackd commits it (NAT, mark, labels, TCP
// state, liberal tracking). The new daemon adopts it from the entry's event,
// with the offsets its labels carry: the channel the old daemon announced
// still leads to the server (bypassed4), and the next PASV is rewritten to
// the VIP, its data channel carrying the right bytes.
func TestBackupAdopts(t *testing.T) {
	d := needDaemon(t)
	needKind(t, "quirkyftpd")
	if kernelDatapath() {
		t.Skip("kernel datapath: offsets are seqadj records, adopted from NFQA_CT")
	}
	forgetOutageAfter(t)
	tp := harness.tp
	script := filepath.Join(t.TempDir(), "backup.py")
	if err := os.WriteFile(script, []byte(backupClient), 0o644); err != nil {
		t.Fatal(err)
	}
	trace := &topo.SyncBuffer{}
	stdin, lines := startScripted(t, 3*time.Minute, trace, script, topo.VIP4, fmt.Sprint(topo.QuirkyPort), "bare227")
	s := &failOpenSession{name: "backup", host: topo.VIP4, mode: "pasv", lines: lines, trace: trace}
	first := s.result(t, "before the switch")
	names := func(reply any) bool {
		r, _ := reply.(string)
		return strings.Contains(r, strings.ReplaceAll(topo.VIP4, ".", ",")+",")
	}
	if first["sha256"] != tp.Files["small.bin"] || !names(first["reply"]) || !names(first["pre"]) {
		t.Fatalf("before the switch: %v\n%s", first, tailString(trace.String(), 3000))
	}
	clientAddr, _ := first["client"].(string)
	clientPort, _ := first["client_port"].(float64)
	client := netip.AddrPortFrom(netip.MustParseAddr(clientAddr), uint16(clientPort))
	vip := netip.AddrPortFrom(netip.MustParseAddr(topo.VIP4), topo.QuirkyPort)

	// The master's side: the entry carries the offsets in its labels.
	flow := controlEntry(t, client, vip)
	off := kernel.OffsetsFromLabels(flow.Labels)
	if off[0] != 0 || off[1] <= 0 || flow.Mark&nft.FollowMark == 0 {
		t.Fatalf("control connection's entry: labels %x (offsets %v), mark %#x; want the server's direction grown and the follow mark",
			flow.Labels, off, flow.Mark)
	}
	t.Logf("labels carry offsets %v", off)

	// A router that fails loses what is in flight; it does not answer it.
	// Between the old table and the backup's commit a packet of the
	// connection (the client's delayed ACK of the NOOP's reply) would meet
	// a router without either and be reset: hold the client's packets as
	// a dead router would, until the connection is adopted.
	hold := fmt.Sprintf("table inet nfh_switch { chain pre { type filter hook prerouting priority -400; ip saddr %s tcp sport %d drop; }; }",
		client.Addr(), client.Port())
	if out, err := tp.Run(context.Background(), tp.Router, "nft", hold); err != nil {
		t.Fatalf("hold the client's packets: %v %s", err, out)
	}
	release := func() { tp.Run(context.Background(), tp.Router, "nft", "delete", "table", "inet", "nfh_switch") }
	defer release()
	harness.mu.Lock()
	harness.stopped = true
	harness.mu.Unlock()
	if err := d.Kill(); err != nil {
		t.Fatalf("SIGKILL: %v", err)
	}
	if out, err := tp.Run(context.Background(), tp.Router, "nft", "delete", "table", "inet", "nfhelper"); err != nil {
		t.Fatalf("delete the table: %v %s", err, out)
	}
	restartAfterKill(t)
	commitLikeConntrackd(t, flow)
	// (A new process counts from zero.)
	if !pollUntil(topo.Scaled(5*time.Second), func() bool { return suiteStat(t, "adopted_midstream") > 0 }) {
		t.Fatal("the committed control connection was not adopted")
	}
	release()

	io.WriteString(stdin, "go\n")
	after := s.result(t, "after the switch")
	if after["sha256"] != tp.Files["small.bin"] {
		t.Errorf("through the channel the old daemon announced: sha256 %v, want %s\n%s", after["sha256"], tp.Files["small.bin"], tailString(trace.String(), 3000))
	}
	third, _ := after["third"].(map[string]any)
	if third["sha256"] != tp.Files["small.bin"] || !names(third["reply"]) {
		t.Errorf("new PASV after the switch: %v, want small.bin through %s\n%s", third, topo.VIP4, tailString(trace.String(), 3000))
	}
	if q, _ := after["quit"].(string); !strings.HasPrefix(q, "221") {
		t.Errorf("QUIT answered %q", q)
	}
}

// controlEntry is the router's conntrack entry of the connection from
// client to vip.
func controlEntry(t *testing.T, client, vip netip.AddrPort) conntrack.Flow {
	t.Helper()
	var flow conntrack.Flow
	err := topo.Do(harness.tp.Router, func() error {
		c, err := conntrack.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		flow, err = c.Get(conntrack.NewFlow(unix.IPPROTO_TCP, 0, client.Addr(), vip.Addr(), client.Port(), vip.Port(), 0, 0))
		return err
	})
	if err != nil {
		t.Fatalf("conntrack entry of %v -> %v: %v", client, vip, err)
	}
	return flow
}

// Conntrack attributes conntrackd's commit sends (linux/netfilter/nfnetlink_conntrack.h).
const (
	ctaTupleOrig, ctaTupleReply, ctaStatus, ctaProtoinfo, ctaTimeout, ctaMark, ctaNatDst, ctaLabels = 1, 2, 3, 4, 7, 8, 13, 22

	ctaTupleIP, ctaTupleProto                       = 1, 2
	ctaIPv4Src, ctaIPv4Dst                          = 1, 2
	ctaProtoNum, ctaProtoSrcPort, ctaProtoDst       = 1, 2, 3
	ctaProtoinfoTCP, ctaTCPState                    = 1, 1
	ctaTCPFlagsOrig, ctaTCPFlagsReply               = 4, 5
	ctaNatV4MinIP, ctaNatV4MaxIP, ctaNatProto       = 1, 2, 3
	ctaProtonatPortMin, ctaProtonatPortMax          = 1, 2
	statusSeenReply, statusAssured, statusConfirmed = 1 << 1, 1 << 2, 1 << 3
	tcpFlagBeLiberal                                = 0x08
	ctMsgNew                                        = 0
	nfnlSubsysCtnetlink                             = 1
)

// commitLikeConntrackd deletes the router's entry f and creates it again
// as conntrackd's commit does (nl_create_conntrack): original and reply
// tuples, destination NAT to the real server, the mark and labels, the
// TCP state, tracking liberal both ways, seen-reply, assured, confirmed. The
// kernel reports it as a new connection.
func commitLikeConntrackd(t *testing.T, f conntrack.Flow) {
	t.Helper()
	tuple := func(ae *netlink.AttributeEncoder, typ uint16, src, dst netip.Addr, sport, dport uint16) {
		ae.Nested(typ, func(n *netlink.AttributeEncoder) error {
			n.Nested(ctaTupleIP, func(ip *netlink.AttributeEncoder) error {
				ip.Bytes(ctaIPv4Src, src.Unmap().AsSlice())
				ip.Bytes(ctaIPv4Dst, dst.Unmap().AsSlice())
				return nil
			})
			n.Nested(ctaTupleProto, func(p *netlink.AttributeEncoder) error {
				p.Uint8(ctaProtoNum, unix.IPPROTO_TCP)
				p.Uint16(ctaProtoSrcPort, sport)
				p.Uint16(ctaProtoDst, dport)
				return nil
			})
			return nil
		})
	}
	o, r := f.TupleOrig, f.TupleReply
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	tuple(ae, ctaTupleOrig, o.IP.SourceAddress, o.IP.DestinationAddress, o.Proto.SourcePort, o.Proto.DestinationPort)
	// The reply tuple as conntrackd sets it up (NFCT_SOPT_SETUP_REPLY):
	// the original's inverse, which the NAT below then changes.
	tuple(ae, ctaTupleReply, o.IP.DestinationAddress, o.IP.SourceAddress, o.Proto.DestinationPort, o.Proto.SourcePort)
	// The master's status as conntrackd sends it (confirmed included:
	// without it the kernel answers EBUSY).
	ae.Uint32(ctaStatus, statusSeenReply|statusAssured|statusConfirmed)
	ae.Uint32(ctaTimeout, 1800)
	ae.Uint32(ctaMark, f.Mark)
	ae.Bytes(ctaLabels, f.Labels)
	liberal := []byte{tcpFlagBeLiberal, tcpFlagBeLiberal}
	ae.Nested(ctaProtoinfo, func(n *netlink.AttributeEncoder) error {
		n.Nested(ctaProtoinfoTCP, func(p *netlink.AttributeEncoder) error {
			p.Uint8(ctaTCPState, uint8(kernel.CtTCPEstablished))
			p.Bytes(ctaTCPFlagsOrig, liberal)
			p.Bytes(ctaTCPFlagsReply, liberal)
			return nil
		})
		return nil
	})
	server := r.IP.SourceAddress.Unmap().AsSlice()
	ae.Nested(ctaNatDst, func(n *netlink.AttributeEncoder) error {
		n.Bytes(ctaNatV4MinIP, server)
		n.Bytes(ctaNatV4MaxIP, server)
		n.Nested(ctaNatProto, func(p *netlink.AttributeEncoder) error {
			p.Uint16(ctaProtonatPortMin, r.Proto.SourcePort)
			p.Uint16(ctaProtonatPortMax, r.Proto.SourcePort)
			return nil
		})
		return nil
	})
	attrs, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	err = topo.Do(harness.tp.Router, func() error {
		ct, err := conntrack.Dial(nil)
		if err != nil {
			return err
		}
		defer ct.Close()
		if err := ct.Delete(f); err != nil {
			return fmt.Errorf("delete: %w", err)
		}
		c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
		if err != nil {
			return err
		}
		defer c.Close()
		hdr := []byte{unix.AF_INET, 0, 0, 0} // struct nfgenmsg: family, version, res_id
		_, err = c.Execute(netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(nfnlSubsysCtnetlink<<8 | ctMsgNew),
				Flags: netlink.Request | netlink.Acknowledge | netlink.Create | netlink.Excl},
			Data: append(hdr, attrs...),
		})
		if err != nil {
			return fmt.Errorf("create: %w", err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("commit the entry like conntrackd: %v", err)
	}
}
