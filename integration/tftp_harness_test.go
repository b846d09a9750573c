//go:build integration

package integration

// The TFTP harness: test files, TFTP servers on the real servers (package
// topo: tftpd-hpa, atftpd), the three TFTP clients run from a namespace
// (tftp-hpa, atftp, curl), and the kernel's own TFTP helper behind a DNAT
// as the reference to compare nfhelperd with.
//
// What each pair supports (Debian bookworm's packages, measured here):
//   - blksize (RFC 2348): atftp and curl ask for it (--option "blksize N",
//     --tftp-blksize N); tftp-hpa's client sends no options at all (always
//     512-byte blocks). Both servers grant it.
//   - windowsize (RFC 7440): atftp asks for it (--option "windowsize N");
//     only atftpd grants it (tftpd-hpa ignores the option and the transfer
//     runs with a window of 1). curl and tftp-hpa cannot ask.
//   - Block-number rollover (more than 65535 blocks: 64 MiB at 512 bytes):
//     every client with every server, both directions, wraps to block 0.
//   - IPv6: every client and server (atftpd through socket activation, see
//     topo.StartTFTPD).
// Quirks:
//   - tftp-hpa's client exits 0 when the server answers "File not found"
//     (or any error), leaving an empty local file: results are judged by the
//     bytes that arrived (sha256), never by exit status alone.
//   - curl exits 68 on "File not found" and reports it as "getpeername()
//     failed with errno 107". It needs -g (no URL globbing) for a bracketed
//     IPv6 host.
//   - tftpd-hpa logs only to syslog, which the namespaces lack; atftpd logs
//     to its output file (topo.TFTPD.OutPath).

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// TFTP clients.
const (
	tftpClientHPA   = "tftp-hpa" // tftp from Debian's tftp-hpa
	tftpClientAtftp = "atftp"    // atftp from Debian's atftp
	tftpClientCurl  = "curl"
)

// tftpClients are every client kind, in the order tests run them.
var tftpClients = []string{tftpClientHPA, tftpClientAtftp, tftpClientCurl}

// tftpClientBin is each client kind's program.
var tftpClientBin = map[string]string{tftpClientHPA: "tftp", tftpClientAtftp: "atftp", tftpClientCurl: "curl"}

// Files every TFTP server serves (see needTFTPFiles), by size.
const (
	tftpFile1M  = "tftp-1m.bin"
	tftpFile10M = "tftp-10m.bin"
	tftpFile64M = "tftp-64m.bin" // 131072 blocks of 512 bytes: the block number rolls over
)

// tftpFile is one of the test files.
type tftpFile struct {
	Name   string
	Size   int64
	SHA256 string
	Path   string // the original, in the topology's directory
}

var tftpFiles struct {
	once  sync.Once
	err   error
	files map[string]tftpFile
}

// needTFTPFiles returns the test files (tftpFile1M, tftpFile10M,
// tftpFile64M), written once per test binary into the topology's directory
// (removed with it) with deterministic pseudo-random content.
func needTFTPFiles(t *testing.T) map[string]tftpFile {
	t.Helper()
	tp := needTopo(t)
	tftpFiles.once.Do(func() {
		dir := filepath.Join(tp.Dir, "tftp-files")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			tftpFiles.err = err
			return
		}
		files := map[string]tftpFile{}
		for name, size := range map[string]int64{tftpFile1M: 1 << 20, tftpFile10M: 10 << 20, tftpFile64M: 64 << 20} {
			p := filepath.Join(dir, name)
			sum, err := topo.WritePatternFile(p, size, name)
			if err != nil {
				tftpFiles.err = err
				return
			}
			files[name] = tftpFile{Name: name, Size: size, SHA256: sum, Path: p}
		}
		tftpFiles.files = files
	})
	if tftpFiles.err != nil {
		t.Fatalf("TFTP test files: %v", tftpFiles.err)
	}
	return tftpFiles.files
}

// tftpServer is a TFTP server on one of the real servers.
type tftpServer struct {
	Name   string // rs1, rs2: also the content of its server.txt
	Kind   string // topo.TFTPDHPA, topo.ATFTPD
	NS     string
	V4, V6 string
	Dir    string // served directory: the test files, server.txt, uploads
	D      *topo.TFTPD
}

// Host returns the server's address of family "v4" or "v6".
func (s *tftpServer) Host(family string) string {
	if family == "v6" {
		return s.V6
	}
	return s.V4
}

// startTFTPServers starts, for the test, a TFTP server on rs1 and one on
// rs2, on both their addresses, port 69: kinds[0] on rs1 and kinds[1] on
// rs2, by default tftpd-hpa on rs1 and atftpd on rs2. Each serves a
// directory of its own (below the test's temporary directory) holding the
// test files (hard links to the originals every test shares: upload under
// other names) and a server.txt naming it. They are stopped when
// the test ends. A server program that is not available skips the test.
// udpSocketIn opens a UDP socket inside namespace ns (network "udp",
// "udp4" or "udp6"; local address laddr, nil for any), closed when the test
// ends: the tests that play a TFTP client or a stranger by hand.
func udpSocketIn(t *testing.T, ns, network string, laddr *net.UDPAddr) *net.UDPConn {
	t.Helper()
	var conn *net.UDPConn
	if err := topo.Do(ns, func() (err error) {
		conn, err = net.ListenUDP(network, laddr)
		return err
	}); err != nil {
		t.Fatalf("udp socket in %s: %v", ns, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func startTFTPServers(t *testing.T, kinds ...string) []*tftpServer {
	t.Helper()
	tp := needTopo(t)
	if len(kinds) == 0 {
		kinds = []string{topo.TFTPDHPA, topo.ATFTPD}
	}
	if len(kinds) > len(tp.Servers) {
		t.Fatalf("%d TFTP servers asked for, %d real servers", len(kinds), len(tp.Servers))
	}
	files := needTFTPFiles(t)
	ctx, cancel := context.WithTimeout(context.Background(), topo.Scaled(2*time.Minute))
	defer cancel()
	var out []*tftpServer
	for i, kind := range kinds {
		if _, err := topo.TFTPDBinary(ctx, kind, t.Logf); err != nil {
			t.Skipf("TFTP server %s unavailable: %v", kind, err)
		}
		rs := tp.Servers[i]
		s := &tftpServer{Name: rs.Name, Kind: kind, NS: rs.NS, V4: rs.V4, V6: rs.V6,
			Dir: filepath.Join(t.TempDir(), rs.Name+"-"+kind)}
		if err := os.MkdirAll(s.Dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			dst := filepath.Join(s.Dir, f.Name)
			if err := os.Link(f.Path, dst); err != nil {
				// Another file system: copy.
				if out, err := exec.Command("cp", f.Path, dst).CombinedOutput(); err != nil {
					t.Fatalf("cp %s: %v %s", f.Path, err, out)
				}
			}
		}
		if err := os.WriteFile(filepath.Join(s.Dir, "server.txt"), []byte(rs.Name+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		d, err := tp.StartTFTPD(ctx, s.NS, kind, s.Dir, s.V4, s.V6)
		if d != nil {
			t.Cleanup(func() {
				if err := d.Stop(); err != nil {
					t.Errorf("stop %s on %s: %v", kind, rs.Name, err)
				}
				if t.Failed() {
					if o := d.Output(); o != "" {
						t.Logf("%s on %s, output (tail):\n%s", kind, rs.Name, tailString(o, 4000))
					}
				}
			})
		}
		if err != nil {
			t.Fatalf("start %s on %s: %v", kind, rs.Name, err)
		}
		s.D = d
		out = append(out, s)
	}
	return out
}

// tftpOpts are a transfer's options.
type tftpOpts struct {
	Port       int           // the server's port; 0: 69
	Blksize    int           // blksize option; 0: none (512-byte blocks)
	Windowsize int           // windowsize option; 0 or 1: none
	Timeout    time.Duration // bound on the client's run; 0: 60 s (topo.Scaled)
	Retransmit int           // timeout option (RFC 2349), seconds; 0: none (atftp only)
	// ClientTimeout is the client's own wait before it sends its last
	// packet again (atftp --tftp-timeout), seconds; 0: the client's default
	// (atftp: 5 s). atftp only.
	ClientTimeout int
	Trace         bool // atftp --trace: every packet sent and received in the output (atftp only; others ignore it)
}

// String names the options, as subtests do: "bs1468-ws16".
func (o tftpOpts) String() string {
	bs, ws := o.Blksize, o.Windowsize
	if bs == 0 {
		bs = 512
	}
	if ws == 0 {
		ws = 1
	}
	return fmt.Sprintf("bs%d-ws%d", bs, ws)
}

// tftpClientSupports says why client cannot run a transfer with o (nil
// when it can).
func tftpClientSupports(client string, o tftpOpts) error {
	switch client {
	case tftpClientHPA:
		if o.Blksize != 0 && o.Blksize != 512 {
			return errors.New("tftp-hpa's client sends no blksize option (512-byte blocks only)")
		}
		if o.Windowsize > 1 || o.Retransmit > 0 {
			return errors.New("tftp-hpa's client sends no windowsize or timeout option")
		}
		if o.ClientTimeout > 0 {
			return errors.New("tftp-hpa's client takes no timeout argument here")
		}
	case tftpClientCurl:
		if o.Windowsize > 1 {
			return errors.New("curl has no windowsize option")
		}
		if o.Retransmit > 0 {
			return errors.New("curl sends no timeout option")
		}
		if o.ClientTimeout > 0 {
			return errors.New("curl has no retransmission timeout")
		}
	case tftpClientAtftp:
	default:
		return fmt.Errorf("unknown TFTP client %q", client)
	}
	return nil
}

// tftpServerSupports says why a server of kind would not grant o (nil when
// it would).
func tftpServerSupports(kind string, o tftpOpts) error {
	if kind == topo.TFTPDHPA && o.Windowsize > 1 {
		return errors.New("tftpd-hpa ignores the windowsize option")
	}
	return nil
}

// tftpServedFile writes a file of size bytes named name (deterministic
// content) into every server's directory: a file for one test.
func tftpServedFile(t *testing.T, servers []*tftpServer, name string, size int64) tftpFile {
	t.Helper()
	f := tftpFile{Name: name, Size: size}
	for _, s := range servers {
		sum, err := topo.WritePatternFile(filepath.Join(s.Dir, name), size, name)
		if err != nil {
			t.Fatal(err)
		}
		f.SHA256, f.Path = sum, filepath.Join(s.Dir, name)
	}
	return f
}

// tftpResult is the outcome of one client run.
type tftpResult struct {
	SHA256  string // RRQ: of the local file as it arrived ("" if none)
	Size    int64  // RRQ: its size
	Output  string // the client's stdout and stderr
	Elapsed time.Duration
	// Err is the client's failure: exit status, timeout. tftp-hpa exits 0
	// on a server's error: judge an RRQ by SHA256, a WRQ by the server's
	// file (tftpWaitUpload).
	Err error
}

// tftpGet runs client in ns to read remote from host (an IP address of
// either family) and returns the sha256 and size of what arrived. The
// local copy is removed.
func tftpGet(t *testing.T, ns, client, host, remote string, o tftpOpts) tftpResult {
	t.Helper()
	local := filepath.Join(t.TempDir(), "get-"+filepath.Base(remote))
	r := runTFTPClient(t, ns, client, host, false, local, remote, o)
	if sum, n, err := topo.FileSHA256(local); err == nil {
		r.SHA256, r.Size = sum, n
	}
	os.Remove(local)
	return r
}

// tftpServerName reads server.txt from host with client (from ns) and
// returns its content without the newline ("" when nothing arrived).
func tftpServerName(t *testing.T, ns, client, host string, o tftpOpts) (string, tftpResult) {
	t.Helper()
	local := filepath.Join(t.TempDir(), "server.txt")
	r := runTFTPClient(t, ns, client, host, false, local, "server.txt", o)
	b, _ := os.ReadFile(local)
	return strings.TrimSpace(string(b)), r
}

// tftpPut runs client in ns to write local to host as remote. Check the
// server's copy with tftpWaitUpload.
func tftpPut(t *testing.T, ns, client, host, local, remote string, o tftpOpts) tftpResult {
	t.Helper()
	return runTFTPClient(t, ns, client, host, true, local, remote, o)
}

// tftpClientArgs returns client's program and arguments for one transfer.
func tftpClientArgs(client, host string, put bool, local, remote string, o tftpOpts) (string, []string, error) {
	if err := tftpClientSupports(client, o); err != nil {
		return "", nil, err
	}
	port := o.Port
	if port == 0 {
		port = topo.TFTPPort
	}
	var args []string
	switch client {
	case tftpClientHPA:
		// -c must come last; tftp-hpa takes an IPv6 host without brackets.
		args = []string{"-m", "binary", "-v", host, strconv.Itoa(port), "-c"}
		if put {
			args = append(args, "put", local, remote)
		} else {
			args = append(args, "get", remote, local)
		}
	case tftpClientAtftp:
		if o.Blksize != 0 {
			args = append(args, "--option", fmt.Sprintf("blksize %d", o.Blksize))
		}
		if o.Windowsize > 1 {
			args = append(args, "--option", fmt.Sprintf("windowsize %d", o.Windowsize))
		}
		if o.Retransmit > 0 {
			args = append(args, "--option", fmt.Sprintf("timeout %d", o.Retransmit))
		}
		if o.ClientTimeout > 0 {
			args = append(args, "--tftp-timeout", strconv.Itoa(o.ClientTimeout))
		}
		if o.Trace {
			args = append(args, "--trace")
		}
		if put {
			args = append(args, "-p")
		} else {
			args = append(args, "-g")
		}
		args = append(args, "-r", remote, "-l", local, host, strconv.Itoa(port))
	case tftpClientCurl:
		args = []string{"-sS", "-g"}
		if o.Blksize != 0 {
			args = append(args, "--tftp-blksize", strconv.Itoa(o.Blksize))
		}
		url := "tftp://" + net.JoinHostPort(host, strconv.Itoa(port)) + "/" + remote
		if put {
			args = append(args, "-T", local, url)
		} else {
			args = append(args, "-o", local, url)
		}
	}
	return tftpClientBin[client], args, nil
}

func runTFTPClient(t *testing.T, ns, client, host string, put bool, local, remote string, o tftpOpts) tftpResult {
	t.Helper()
	name, args, err := tftpClientArgs(client, host, put, local, remote, o)
	if err != nil {
		t.Fatalf("%s: %v", client, err)
	}
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("TFTP client %s unavailable: %v (make deps)", client, err)
	}
	timeout := o.Timeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	timeout = topo.Scaled(timeout)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c := harness.tp.CommandContext(ctx, ns, name, args...)
	start := time.Now()
	out, err := c.CombinedOutput()
	r := tftpResult{Output: string(out), Elapsed: time.Since(start), Err: err}
	if ctx.Err() != nil {
		r.Err = fmt.Errorf("%w (timeout %v)", err, timeout)
	}
	return r
}

// tftpWaitUpload waits (up to 10 s) for the server's copy of an upload,
// path, to have the sha256 want: the client's run ends with the last ACK,
// the server may still be closing the file. It returns the last sha256 seen
// and the file's size.
func tftpWaitUpload(path, want string) (sum string, size int64, ok bool) {
	ok = pollUntil(topo.Scaled(10*time.Second), func() bool {
		var err error
		sum, size, err = topo.FileSHA256(path)
		return err == nil && sum == want
	})
	return sum, size, ok
}

// tftpCheckGet runs tftpGet and fails t unless file arrived whole.
func tftpCheckGet(t *testing.T, ns, client, host string, f tftpFile, o tftpOpts) tftpResult {
	t.Helper()
	r := tftpGet(t, ns, client, host, f.Name, o)
	if r.SHA256 != f.SHA256 {
		t.Errorf("%s RRQ %s from %s (%s): got %d bytes sha256 %.12s, want %d bytes %.12s; err %v; output:\n%s",
			client, f.Name, host, o, r.Size, r.SHA256, f.Size, f.SHA256, r.Err, r.Output)
	} else if r.Err != nil {
		t.Errorf("%s RRQ %s from %s (%s): file whole but the client failed: %v; output:\n%s", client, f.Name, host, o, r.Err, r.Output)
	}
	return r
}

// tftpCheckPut runs tftpPut of f as remote and fails t unless the server's
// directory dir has it whole afterwards; the server's copy is removed.
func tftpCheckPut(t *testing.T, ns, client, host string, f tftpFile, dir, remote string, o tftpOpts) tftpResult {
	t.Helper()
	r := tftpPut(t, ns, client, host, f.Path, remote, o)
	p := filepath.Join(dir, remote)
	if r.Err != nil {
		t.Errorf("%s WRQ %s to %s (%s): %v; output:\n%s", client, remote, host, o, r.Err, r.Output)
	} else if sum, size, ok := tftpWaitUpload(p, f.SHA256); !ok {
		t.Errorf("%s WRQ %s to %s (%s): server has %d bytes sha256 %.12s, want %d bytes %.12s; output:\n%s",
			client, remote, host, o, size, sum, f.Size, f.SHA256, r.Output)
	}
	os.Remove(p)
	return r
}

// Spare VIPs for the kernel's TFTP helper (kernelTFTPReference); nothing
// else in the integration tests uses them.
const (
	tftpRefVIP4  = "198.51.100.60"
	tftpRefVIP6  = "2001:db8:1::60"
	tftpRefTable = "nfht_tftpref" // table inet, in the router
)

// kernelTFTPReference makes the router forward TFTP to vip (port 69; the
// address is added to its lo if missing) to server (port 69) with the
// kernel's own TFTP helper: the user's table inet nfht_tftpref assigns the
// helper (an nft ct helper object) to requests to port 69 and DNATs vip to
// server; nf_nat_tftp maps the server's answers from its new port back to
// vip. It may be called once per family and test (one table, a DNAT rule
// each). When the test ends the table, the address (if added here) and the
// router's conntrack entries to or NATed from vip are removed.
func kernelTFTPReference(t *testing.T, tp *topo.Topo, vip, server string) {
	t.Helper()
	v, err1 := netip.ParseAddr(vip)
	s, err2 := netip.ParseAddr(server)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatalf("kernelTFTPReference: %v", err)
	}
	if v.Is4() != s.Is4() {
		t.Fatalf("kernelTFTPReference: %s and %s are of different families", vip, server)
	}
	fam, l3, plen := "ipv4", "ip", "/32"
	if v.Is6() {
		fam, l3, plen = "ipv6", "ip6", "/128"
	}
	ctx := context.Background()
	// The address.
	out, err := tp.Run(ctx, tp.Router, "ip", "-o", "addr", "show", "dev", "lo", "to", vip+plen)
	if err != nil {
		t.Fatal(err)
	}
	if len(strings.TrimSpace(string(out))) == 0 {
		args := []string{"addr", "add", vip + plen, "dev", "lo"}
		if v.Is6() {
			args = append(args, "nodad")
		}
		if _, err := tp.Run(ctx, tp.Router, "ip", args...); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if _, err := tp.Run(context.Background(), tp.Router, "ip", "addr", "del", vip+plen, "dev", "lo"); err != nil {
				t.Errorf("remove %s from the router: %v", vip, err)
			}
		})
	}
	// Conntrack entries: the requests (to vip) and the transfers (their
	// reply direction NATed to vip); after the table is gone where this call
	// creates it (cleanups run last first).
	t.Cleanup(func() {
		for _, sel := range []string{"-d", "-q"} {
			if out, err := tp.Run(context.Background(), tp.Router, "conntrack", "-D", "-f", fam, sel, vip); err != nil &&
				!strings.Contains(err.Error(), "0 flow entries") {
				t.Errorf("conntrack -D %s %s: %v %s", sel, vip, err, out)
			}
		}
	})
	// The table: created with the helper and its rule by the first call.
	if _, err := tp.Run(ctx, tp.Router, "nft", "list", "table", "inet", tftpRefTable); err != nil {
		script := fmt.Sprintf(`table inet %[1]s {
	ct helper tftp {
		type "tftp" protocol udp;
		l3proto inet;
	}
	chain pre {
		type filter hook prerouting priority -150; policy accept;
		udp dport 69 ct state new ct helper set "tftp"
	}
	chain nat {
		type nat hook prerouting priority dstnat; policy accept;
	}
}
`, tftpRefTable)
		if err := nftScript(t, tp.Router, script); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := nftScript(t, tp.Router, "table inet "+tftpRefTable+"\ndelete table inet "+tftpRefTable+"\n"); err != nil {
				t.Errorf("remove table inet %s: %v", tftpRefTable, err)
			}
		})
	}
	rule := fmt.Sprintf("add rule inet %s nat %s daddr %s udp dport 69 dnat %s to %s\n", tftpRefTable, l3, vip, l3, server)
	if err := nftScript(t, tp.Router, rule); err != nil {
		t.Fatal(err)
	}
}

// tftpConntrack returns the router's conntrack entries (conntrack -L -o
// extended) of family fam ("ipv4", "ipv6") selected by args (e.g. "-d",
// vip).
func tftpConntrack(t *testing.T, fam string, args ...string) []string {
	t.Helper()
	out, err := harness.tp.Run(context.Background(), harness.tp.Router, "conntrack",
		append([]string{"-L", "-f", fam, "-o", "extended"}, args...)...)
	if err != nil {
		t.Fatalf("conntrack -L %v: %v", args, err)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}
