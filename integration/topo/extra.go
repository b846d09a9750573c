package topo

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// AddServer adds a real server namespace <ID>-<name> on the router's bridge,
// with address v4 (IPv4 only), serving what rs1 serves plus a server.txt
// holding name. vsftpd is not started: see StartVsftpd. Close deletes the
// namespace; a reaper of its own deletes it if this process dies.
func (t *Topo) AddServer(ctx context.Context, name, v4 string) (*Server, error) {
	if len(t.Servers) == 0 {
		return nil, fmt.Errorf("add server %s: the topology has no servers to copy files from", name)
	}
	ns := t.ID + "-" + name
	if err := run(ctx, "ip", "netns", "add", ns); err != nil {
		return nil, err
	}
	t.mu.Lock()
	t.created = append(t.created, ns)
	t.mu.Unlock()
	if err := t.startExtraReaper(ns); err != nil {
		return nil, err
	}
	if _, err := t.Run(ctx, ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"); err != nil {
		return nil, err
	}
	if err := t.pinBridgeAddress(ctx); err != nil {
		return nil, err
	}
	// The bridge port's name is short: interface names have 15 bytes.
	port := "vx" + name
	if len(port) > 15 {
		port = port[:15]
	}
	for _, s := range []struct{ ns, cmd string }{
		{ns, "link set lo up"},
		{t.Router, "link add " + port + " type veth peer name eth0 netns " + ns},
		{t.Router, "link set " + port + " master br0 up"},
		{ns, "addr add " + v4 + "/24 dev eth0"},
		{ns, "link set eth0 up"},
		{ns, "route add default via " + RouterLANV4},
	} {
		if err := ipn(ctx, s.ns, s.cmd); err != nil {
			return nil, err
		}
	}
	s := &Server{Name: name, NS: ns, V4: v4}
	base := filepath.Join(t.Dir, name)
	s.Root = filepath.Join(base, "root")
	s.Log = filepath.Join(base, "vsftpd.log")
	if err := os.MkdirAll(s.Root, 0o755); err != nil {
		return nil, err
	}
	for _, p := range []string{base, s.Root} {
		if err := os.Chmod(p, 0o755); err != nil {
			return nil, err
		}
	}
	for _, f := range []string{"small.bin", "big.bin"} {
		b, err := os.ReadFile(filepath.Join(t.Servers[0].Root, f))
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(s.Root, f), b, 0o644); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(s.Root, "server.txt"), []byte(name+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := waitReachable(ctx, t.Router, net.JoinHostPort(v4, "9")); err != nil {
		return nil, fmt.Errorf("router -> %s: %w", name, err)
	}
	return s, nil
}

// pinBridgeAddress sets br0's MAC address to the one it has. A bridge
// whose address was never set takes the lowest of its ports': a new port
// could change it, and the real servers' neighbour entries for the router
// would name a MAC that no longer answers until they are probed again
// (seconds: new IPv6 connections to them timed out meanwhile).
func (t *Topo) pinBridgeAddress(ctx context.Context) error {
	out, err := t.Run(ctx, t.Router, "cat", "/sys/class/net/br0/address")
	if err != nil {
		return err
	}
	return ipn(ctx, t.Router, "link set br0 address "+strings.TrimSpace(string(out)))
}

// startExtraReaper starts a reaper (see startReaper) for namespaces added
// after New. Its pipe stays open until this process exits.
func (t *Topo) startExtraReaper(names ...string) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	script := `read -r _; for ns in "$@"; do pids=$(ip netns pids "$ns" 2>/dev/null); [ -n "$pids" ] && kill -9 $pids 2>/dev/null; ip netns del "$ns" 2>/dev/null; done; exit 0`
	c := exec.Command("/bin/sh", append([]string{"-c", script, "nfht-reaper"}, names...)...)
	c.Stdin = r
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = c.Start()
	r.Close()
	if err != nil {
		w.Close()
		return err
	}
	// w stays open (and reachable: an unreachable os.File is closed by its
	// finalizer) for the process's life.
	extraReapers.Lock()
	extraReapers.w = append(extraReapers.w, w)
	extraReapers.Unlock()
	go func() { _ = c.Wait() }()
	return nil
}

// extraReapers holds the write ends of the extra reapers' pipes.
var extraReapers struct {
	sync.Mutex
	w []*os.File
}

// StartVsftpd starts vsftpd on s, configured as rs1's and rs2's (passive
// ports 40000-40999), and waits until it listens on s.V4 port 21. The log
// file is appended to across restarts.
func (t *Topo) StartVsftpd(ctx context.Context, s *Server) (*exec.Cmd, error) {
	empty := filepath.Join(t.Dir, "vsftpd-empty")
	if err := os.MkdirAll(empty, 0o755); err != nil {
		return nil, err
	}
	c, err := t.launchVsftpd(s, empty)
	if err != nil {
		return nil, err
	}
	if err := WaitListening(ctx, t.Router, net.JoinHostPort(s.V4, "21")); err != nil {
		b, _ := os.ReadFile(filepath.Join(filepath.Dir(s.Log), "vsftpd.stderr"))
		return nil, fmt.Errorf("vsftpd %s not listening: %w (stderr: %s)", s.Name, err, strings.TrimSpace(string(b)))
	}
	return c, nil
}

// launchVsftpd writes s's vsftpd.conf next to its log (the chroot's empty
// directory is empty) and starts vsftpd on it, without waiting for it to
// listen. Its stderr file is appended to across restarts.
func (t *Topo) launchVsftpd(s *Server, empty string) (*exec.Cmd, error) {
	base := filepath.Dir(s.Log)
	conf := strings.NewReplacer(
		"{{root}}", s.Root,
		"{{empty}}", empty,
		"{{xferlog}}", filepath.Join(base, "xferlog"),
		"{{log}}", s.Log,
	).Replace(vsftpdConf)
	confPath := filepath.Join(base, "vsftpd.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	errf, err := os.OpenFile(filepath.Join(base, "vsftpd.stderr"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	c := t.Exec(s.NS, "vsftpd", confPath)
	c.Stdout, c.Stderr = errf, errf
	err = t.Start(c)
	errf.Close()
	if err != nil {
		return nil, fmt.Errorf("start vsftpd %s: %w", s.Name, err)
	}
	return c, nil
}

// StopServer kills every process in s's namespace (its vsftpd and its
// sessions): the server stops answering, as a crashed one does.
// StartVsftpd starts it again.
func (t *Topo) StopServer(ctx context.Context, s *Server) { killNSProcs(ctx, s.NS) }

// StopGroup sends sig to the process group of c (started with Start) and
// waits up to wait for c to exit.
func (t *Topo) StopGroup(c *exec.Cmd, sig syscall.Signal, wait time.Duration) error {
	_ = syscall.Kill(-c.Process.Pid, sig)
	select {
	case <-t.Exited(c):
		return nil
	case <-time.After(wait):
		return fmt.Errorf("%s did not exit within %v of %v", c.Path, wait, sig)
	}
}
