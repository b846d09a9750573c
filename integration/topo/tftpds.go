package topo

// TFTP servers for the TFTP helper's tests, from Debian's packages
// (bookworm: tftpd-hpa/tftp-hpa 5.2+20150808-1.4, atftpd/atftp 0.8.0-3).
//
// What the packages do:
//   - tftpd-hpa Conflicts with atftpd (both provide tftp-server): they
//     cannot be installed together. The Makefile's PKGS installs the clients
//     (tftp-hpa, atftp) and the servers' libraries (libwrap0, libpcre2-8-0)
//     only; each server is taken from PATH or /usr/sbin when installed, else
//     fetched with `apt-get download` and unpacked into FTPDBinary's cache
//     (as proftpd is), where its maintainer scripts never run.
//   - tftpd-hpa's postinst writes /etc/default/tftpd-hpa (TFTP_ADDRESS=":69",
//     TFTP_DIRECTORY="/srv/tftp", --secure), adds the system user tftp,
//     creates /srv/tftp, enables /etc/init.d/tftpd-hpa (update-rc.d) and
//     starts it with invoke-rc.d. Where a policy-rc.d denies starting
//     services (containers: "exit 101", as on the machine these tests were
//     written on, where it is installed and nothing runs) or no init system
//     runs, nothing starts. On a host booted with systemd, in.tftpd then
//     serves /srv/tftp on *:69 of the root namespace until `systemctl
//     disable --now tftpd-hpa`: that is why PKGS leaves it out. The tests
//     would neither need nor mind it (their servers and clients live in
//     namespaces of their own).
//   - atftpd's postinst would write /etc/default/atftpd and enable and start
//     atftpd.service and atftpd.socket (0.0.0.0:69) under systemd.
//   - tftp-hpa and atftp (clients) have no maintainer scripts.
//
// How the servers run here:
//   - tftpd-hpa: `in.tftpd -L -u root -c -s -a ADDR:PORT DIR`, one process
//     per address (-a takes one; an IPv6 address in brackets), in the
//     foreground; each request is served by a forked child of the same
//     process group. It logs to syslog only (/dev/log, which this machine
//     lacks): OutPath stays empty. -c lets a WRQ create files (mode
//     0666, umask 0); without -p it serves world-readable files only.
//   - atftpd: its daemon mode (--daemon --no-fork --bind-address) opens an
//     AF_INET socket whatever the address: an IPv6 --bind-address makes it
//     bind 0.0.0.0 (and fail when that port is taken). So IPv4 addresses run
//     in daemon mode, as Debian's init script does, and IPv6 ones as a
//     socket-activated server (Debian's atftpd.socket and .service:
//     StandardInput=socket): this package binds the UDP socket in the
//     namespace and hands it over as the server's standard input;
//     --tftpd-timeout 0 keeps it running. It logs to its
//     output file (--logfile -, --verbose=7), which OutPath names.
//     Its transfer sockets bind the listening address (daemon mode) or the
//     wildcard address (socket mode), on a new port each.
//
// Every server process is started with Topo.Start (its own process group,
// killed by Close); Stop kills the groups with SIGKILL (the request
// children of in.tftpd too) and waits for them.

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// TFTPPort is the TFTP servers' port unless an address names another.
const TFTPPort = 69

// TFTP server kinds for StartTFTPD.
const (
	TFTPDHPA = "tftpd-hpa" // in.tftpd from Debian's tftpd-hpa
	ATFTPD   = "atftpd"    // atftpd from Debian's atftpd
)

// TFTPD is a TFTP server started by StartTFTPD: one process per address.
type TFTPD struct {
	Kind  string
	NS    string
	Dir   string   // the served directory; a WRQ writes its file here
	Addrs []string // host:port of each listening address
	// OutPath holds the processes' output: atftpd's log (requests,
	// negotiated options, errors); tftpd-hpa writes nothing there. It is in
	// the topology's directory.
	OutPath string

	t     *Topo
	procs []*exec.Cmd
	once  sync.Once
	err   error
}

var tftpdBins struct {
	sync.Mutex
	path map[string]string
}

// TFTPDBinary finds the server program of kind: in.tftpd of tftpd-hpa
// (NFH_TFTPD_HPA names another) or atftpd (NFH_ATFTPD), installed or
// unpacked from the Debian package into FTPDBinary's cache. The program's
// -V output is checked: Debian's atftpd also installs an in.tftpd.
func TFTPDBinary(ctx context.Context, kind string, logf func(string, ...any)) (string, error) {
	tftpdBins.Lock()
	defer tftpdBins.Unlock()
	if p := tftpdBins.path[kind]; p != "" {
		return p, nil
	}
	var env, pkg, bin, want string
	switch kind {
	case TFTPDHPA:
		env, pkg, bin, want = "NFH_TFTPD_HPA", "tftpd-hpa", "in.tftpd", "tftp-hpa"
	case ATFTPD:
		env, pkg, bin, want = "NFH_ATFTPD", "atftpd", "atftpd", "atftp"
	default:
		return "", fmt.Errorf("unknown TFTP server kind %q", kind)
	}
	p, err := FTPDBinary(ctx, env, pkg, bin, logf)
	if err != nil {
		return "", err
	}
	out, _ := exec.CommandContext(ctx, p, "-V").CombinedOutput()
	if !strings.Contains(string(out), want) {
		return "", fmt.Errorf("%s is not %s's %s (-V: %q): set %s", p, pkg, bin, strings.TrimSpace(string(out)), env)
	}
	if tftpdBins.path == nil {
		tftpdBins.path = map[string]string{}
	}
	tftpdBins.path[kind] = p
	return p, nil
}

// StartTFTPD starts a TFTP server of kind (TFTPDHPA or ATFTPD) in namespace
// ns, serving dir (created if missing; uploads land there), on each of addrs:
// an IP address (port TFTPPort) or host:port. It returns once every address
// answers a read request (of a file that does not exist) from inside ns.
// The processes run until Stop or the topology's Close; on error those
// already started are stopped.
func (t *Topo) StartTFTPD(ctx context.Context, ns, kind, dir string, addrs ...string) (d *TFTPD, err error) {
	if len(addrs) == 0 {
		return nil, errors.New("StartTFTPD: no address")
	}
	bin, err := TFTPDBinary(ctx, kind, t.logf)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	out, err := os.CreateTemp(t.Dir, "tftpd-"+kind+"-*.log")
	if err != nil {
		return nil, err
	}
	defer out.Close()
	d = &TFTPD{Kind: kind, NS: ns, Dir: dir, OutPath: out.Name(), t: t}
	defer func() {
		if err != nil {
			_ = d.Stop()
		}
	}()
	for _, a := range addrs {
		ap, err := tftpAddrPort(a)
		if err != nil {
			return d, err
		}
		hostPort := ap.String()
		var c *exec.Cmd
		var sock *os.File
		switch {
		case kind == TFTPDHPA:
			c = t.Exec(ns, bin, "-L", "-u", "root", "-c", "-s", "-a", hostPort, dir)
		case ap.Addr().Is4():
			c = t.Exec(ns, bin, "--daemon", "--no-fork", "--bind-address", ap.Addr().String(),
				"--port", strconv.Itoa(int(ap.Port())), "--user", "root", "--group", "root",
				"--logfile", "-", "--verbose=7", dir)
		default:
			if sock, err = udpSocketIn(ns, ap); err != nil {
				return d, fmt.Errorf("atftpd socket %s in %s: %w", hostPort, ns, err)
			}
			c = t.Exec(ns, bin, "--tftpd-timeout", "0", "--user", "root", "--group", "root",
				"--logfile", "-", "--verbose=7", dir)
			c.Stdin = sock
		}
		c.Stdout, c.Stderr = out, out
		err = t.Start(c)
		if sock != nil {
			sock.Close() // the server has its copy
		}
		if err != nil {
			return d, fmt.Errorf("start %s on %s in %s: %w", kind, hostPort, ns, err)
		}
		d.procs = append(d.procs, c)
		d.Addrs = append(d.Addrs, hostPort)
	}
	for i, a := range d.Addrs {
		if err := waitTFTP(ctx, ns, a, t.Exited(d.procs[i])); err != nil {
			return d, fmt.Errorf("%s in %s not answering on %s: %w (output: %s)", kind, ns, a, err, strings.TrimSpace(d.Output()))
		}
	}
	return d, nil
}

// Stop kills the server's processes (SIGKILL to each process group: the
// request children too) and waits for them. It is idempotent.
func (d *TFTPD) Stop() error {
	d.once.Do(func() {
		for _, c := range d.procs {
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		}
		var errs []error
		for _, c := range d.procs {
			select {
			case <-d.t.Exited(c):
			case <-time.After(5 * time.Second):
				errs = append(errs, fmt.Errorf("%s (pid %d) did not exit within 5s of SIGKILL", d.Kind, c.Process.Pid))
			}
		}
		d.err = errors.Join(errs...)
	})
	return d.err
}

// Output returns what the server processes wrote (see OutPath).
func (d *TFTPD) Output() string {
	b, _ := os.ReadFile(d.OutPath)
	return string(b)
}

// tftpAddrPort parses an address with or without a port.
func tftpAddrPort(a string) (netip.AddrPort, error) {
	if ip, err := netip.ParseAddr(a); err == nil {
		return netip.AddrPortFrom(ip, TFTPPort), nil
	}
	ap, err := netip.ParseAddrPort(a)
	if err != nil {
		return ap, fmt.Errorf("TFTP server address %q: want IP or host:port", a)
	}
	return ap, nil
}

// udpSocketIn returns a blocking UDP socket bound to ap, created in ns
// (IPv6 only for an IPv6 address), for a server started with it as stdin.
func udpSocketIn(ns string, ap netip.AddrPort) (*os.File, error) {
	var f *os.File
	err := Do(ns, func() error {
		domain := unix.AF_INET
		if ap.Addr().Is6() {
			domain = unix.AF_INET6
		}
		fd, err := unix.Socket(domain, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
		if err != nil {
			return err
		}
		var sa unix.Sockaddr
		if ap.Addr().Is6() {
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
				unix.Close(fd)
				return err
			}
			sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
		} else {
			sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
		}
		if err := unix.Bind(fd, sa); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind %s: %w", ap, err)
		}
		f = os.NewFile(uintptr(fd), "udp "+ap.String())
		return nil
	})
	return f, err
}

// waitTFTP polls until a read request from inside ns to addr is answered
// (see TFTPProbe), or the server exits, or ctx ends.
func waitTFTP(ctx context.Context, ns, addr string, exited <-chan struct{}) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := TFTPProbe(ctx, ns, addr, 300*time.Millisecond)
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("server exited (last probe: %v)", err)
		case <-ctx.Done():
			return fmt.Errorf("%w (last probe: %v)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// TFTPProbe sends, from inside ns, one read request for a file that does not
// exist to addr (host:port) and waits up to wait for an answer from any port
// of that host: DATA, ERROR (the usual: file not found) or OACK. An OACK or
// DATA is answered with an ERROR, ending the transfer.
func TFTPProbe(ctx context.Context, ns, addr string, wait time.Duration) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return err
	}
	network := "udp4"
	if ap.Addr().Is6() {
		network = "udp6"
	}
	return Do(ns, func() error {
		pc, err := net.ListenPacket(network, ":0")
		if err != nil {
			return err
		}
		defer pc.Close()
		dl := time.Now().Add(wait)
		if d, ok := ctx.Deadline(); ok && d.Before(dl) {
			dl = d
		}
		_ = pc.SetDeadline(dl)
		req := append([]byte{0, 1}, "nfht-probe-no-such-file\x00octet\x00"...)
		if _, err := pc.WriteTo(req, net.UDPAddrFromAddrPort(ap)); err != nil {
			return err
		}
		buf := make([]byte, 70000)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return err
			}
			fa, ok := from.(*net.UDPAddr)
			if !ok || fa.AddrPort().Addr().Unmap() != ap.Addr() || n < 4 {
				continue
			}
			switch op := binary.BigEndian.Uint16(buf); op {
			case 5: // ERROR
				return nil
			case 3, 6: // DATA, OACK: end it
				errPkt := append([]byte{0, 5, 0, 0}, "probe done\x00"...)
				_, _ = pc.WriteTo(errPkt, from)
				return nil
			default:
				return fmt.Errorf("answer with opcode %d", op)
			}
		}
	})
}

// WritePatternFile writes size bytes of pseudo-random content to path and
// returns their hex sha256. The content depends on seed only: the same seed
// and size give the same file in every run.
func WritePatternFile(path string, size int64, seed string) (string, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	src := rand.NewChaCha8(sha256.Sum256([]byte("nfht pattern " + seed)))
	_, err = io.CopyN(io.MultiWriter(f, h), src, size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// FileSHA256 returns the hex sha256 and the size of the file at path.
func FileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", n, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
