// Package topo builds the network-namespace topology used by nfhelper's
// integration tests and demo: a client, a router (where nfhelperd runs, with
// the VIPs on its lo) and two real servers running vsftpd behind a bridge.
//
// Everything lives in namespaces named <Prefix><pid>-<random>-<role>; the
// host's own network and firewall are never touched.
package topo

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Addresses of the topology.
const (
	ClientV4       = "203.0.113.2"
	ClientV6       = "2001:db8:2::2"
	RouterClientV4 = "203.0.113.1"
	RouterClientV6 = "2001:db8:2::1"
	RouterLANV4    = "10.0.0.1"
	RouterLANV6    = "fd00::1"
	VIP4           = "198.51.100.10"
	VIP6           = "2001:db8:1::10"
	RS1V4          = "10.0.0.11"
	RS1V6          = "fd00::11"
	RS2V4          = "10.0.0.12"
	RS2V6          = "fd00::12"
	// The router's "WAN" addresses, port-forwarded by a user's own nftables
	// ruleset (nfhelperd's add-on mode, config key helpers:).
	WAN4 = "198.51.100.20"
	WAN6 = "2001:db8:1::20"

	// DefaultPrefix starts the name of every namespace this package creates.
	DefaultPrefix = "nfht-"

	SmallSize = 4 << 10
	BigSize   = 4 << 20
)

// ReferenceConfig is the project's reference nfhelperd configuration for this
// topology.
const ReferenceConfig = `services:
  - name: ftp
    vip: 198.51.100.10:21
    scheduler: rr
    helper: ftp
    real_servers:
      - address: 10.0.0.11:21
      - address: 10.0.0.12:21
        weight: 2
  - name: ftp6
    vip: "[2001:db8:1::10]:21"
    scheduler: rr
    helper: ftp
    real_servers:
      - address: "[fd00::11]:21"
`

// Options tune New. The zero value is fine.
type Options struct {
	// Prefix of the namespace names; DefaultPrefix when empty. Leftovers of
	// earlier runs with this prefix whose owning process is gone are removed.
	Prefix string
	// Dir is the working directory (server roots, logs, configs). When empty
	// a temporary directory is created and removed by Close.
	Dir string
	// Logf, when set, receives progress messages.
	Logf func(format string, args ...any)
	// NoServers leaves out vsftpd.
	NoServers bool
	// Timeout bounds the setup; 30s (Scaled) when zero.
	Timeout time.Duration
}

// Server is one real server.
type Server struct {
	Name string // "rs1" or "rs2"; also the content of server.txt
	NS   string
	V4   string
	V6   string
	Root string // anon_root
	Log  string // vsftpd_log_file
}

// Topo is a running topology. Close it.
type Topo struct {
	ID     string
	Client string // namespace names
	Router string
	RS1    string
	RS2    string

	Dir     string
	Servers []*Server
	// Files maps the name of each file both servers serve identically
	// (small.bin, big.bin) to its hex sha256.
	Files map[string]string
	// DaemonEnv are extra environment entries (KEY=value) for the daemons
	// StartDaemon starts, after the inherited environment and the control
	// socket default (see ControlSocket); later entries win.
	DaemonEnv []string

	logf func(string, ...any)

	mu      sync.Mutex
	procs   []*exec.Cmd
	exited  map[*exec.Cmd]chan struct{} // closed when the process was waited for
	created []string
	ownDir  bool
	closed  bool
	reaperW *os.File
	reaper  *exec.Cmd

	extraLogs []extraLog // directories of the other FTP servers
	// moreNS are namespaces beyond the four roles (the HA topology's).
	moreNS []string
}

type extraLog struct{ what, dir string }

// begin fills in opts' defaults, removes what an earlier run with the
// same prefix left, and names a new topology: the first steps of New and
// NewHA. cancel ends ctx, the bound of the whole build.
func (opts *Options) begin() (ctx context.Context, cancel context.CancelFunc, logf func(string, ...any), id string, err error) {
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if opts.Timeout == 0 {
		opts.Timeout = Scaled(30 * time.Second)
	}
	logf = opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	ctx, cancel = context.WithTimeout(context.Background(), opts.Timeout)
	removeLeftovers(ctx, opts.Prefix, logf)
	var rnd [3]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		cancel()
		return nil, nil, nil, "", err
	}
	return ctx, cancel, logf, fmt.Sprintf("%s%d-%x", opts.Prefix, os.Getpid(), rnd), nil
}

// makeDir makes the topology's directory: dir, or a new temporary one
// (named after kind) that Close removes. vsftpd chroots into directories
// below it.
func (t *Topo) makeDir(dir, kind string) error {
	if dir == "" {
		d, err := MkdirTemp(kind)
		if err != nil {
			return err
		}
		t.Dir, t.ownDir = d, true
	} else {
		t.Dir = dir
		if err := os.MkdirAll(t.Dir, 0o755); err != nil {
			return err
		}
	}
	return os.Chmod(t.Dir, 0o755)
}

// New builds the topology. On error everything already set up is torn down.
func New(opts Options) (t *Topo, err error) {
	ctx, cancel, logf, id, err := opts.begin()
	if err != nil {
		return nil, err
	}
	defer cancel()
	t = &Topo{
		ID:     id,
		Client: id + "-c",
		Router: id + "-r",
		RS1:    id + "-s1",
		RS2:    id + "-s2",
		Files:  map[string]string{},
		exited: map[*exec.Cmd]chan struct{}{},
		logf:   logf,
	}
	defer func() {
		if err != nil {
			t.Close()
			t = nil
		}
	}()

	if err := t.makeDir(opts.Dir, "topo"); err != nil {
		return t, err
	}

	if err := t.startReaper(); err != nil {
		return t, fmt.Errorf("start reaper: %w", err)
	}
	if err := t.buildNetwork(ctx); err != nil {
		return t, err
	}
	if opts.NoServers {
		return t, nil
	}
	if err := t.startServers(ctx, []*Server{
		{Name: "rs1", NS: t.RS1, V4: RS1V4, V6: RS1V6},
		{Name: "rs2", NS: t.RS2, V4: RS2V4, V6: RS2V6},
	}); err != nil {
		return t, err
	}
	logf("topology %s ready in %s", t.ID, t.Dir)
	return t, nil
}

// Namespaces returns the namespaces of the topology.
func (t *Topo) Namespaces() []string {
	return append([]string{t.Client, t.Router, t.RS1, t.RS2}, t.moreNS...)
}

// Exec returns a command that runs name in namespace ns.
func (t *Topo) Exec(ns, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// CommandContext is Exec bound to ctx: the program is killed when ctx ends
// (ip netns exec execs the program, so the killed PID is the program's).
func (t *Topo) CommandContext(ctx context.Context, ns, name string, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
	c.WaitDelay = 5 * time.Second
	return c
}

// Run runs name in ns and returns its stdout. A failure's error carries stderr.
func (t *Topo) Run(ctx context.Context, ns, name string, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	c := t.CommandContext(ctx, ns, name, args...)
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s in %s: %w: %s", strings.Join(c.Args[4:], " "), ns, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

func run(ctx context.Context, name string, args ...string) error {
	c := exec.CommandContext(ctx, name, args...)
	out, err := c.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Start starts c (usually from Exec) in its own process group and tracks it so
// that Close kills it. Start waits for the process itself: do not call
// c.Wait; use Wait.
func (t *Topo) Start(c *exec.Cmd) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return errors.New("topology closed")
	}
	if c.SysProcAttr == nil {
		c.SysProcAttr = &syscall.SysProcAttr{}
	}
	c.SysProcAttr.Setpgid = true
	if err := c.Start(); err != nil {
		return err
	}
	t.procs = append(t.procs, c)
	done := make(chan struct{})
	t.exited[c] = done
	go func() {
		_ = c.Wait()
		close(done)
	}()
	return nil
}

// Exited returns a channel closed once a process started with Start has
// exited and been waited for; c.ProcessState is valid then.
func (t *Topo) Exited(c *exec.Cmd) <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.exited[c]
}

// startReaper starts a small shell, in its own process group, that waits for
// EOF on a pipe whose only writer is this process. When this process goes
// away in any manner (even a panic or SIGKILL) the shell kills whatever runs
// in our namespaces and deletes them.
func (t *Topo) startReaper() error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	script := `read -r _; for ns in "$@"; do pids=$(ip netns pids "$ns" 2>/dev/null); [ -n "$pids" ] && kill -9 $pids 2>/dev/null; ip netns del "$ns" 2>/dev/null; done; exit 0`
	args := append([]string{"-c", script, "nfht-reaper"}, t.Namespaces()...)
	c := exec.Command("/bin/sh", args...)
	c.Stdin = r
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.Start(); err != nil {
		r.Close()
		w.Close()
		return err
	}
	r.Close()
	t.reaperW, t.reaper = w, c
	return nil
}

// MkdirTemp creates a temporary directory named nfht-<pid>-<kind>-*: if this
// process dies without removing it, the next New removes it.
func MkdirTemp(kind string) (string, error) {
	d, err := os.MkdirTemp("", fmt.Sprintf("%s%d-%s-", DefaultPrefix, os.Getpid(), kind))
	if err != nil {
		return "", err
	}
	// Servers and binaries in it run as other users (ftp, nobody).
	if err := os.Chmod(d, 0o755); err != nil {
		os.RemoveAll(d)
		return "", err
	}
	return d, nil
}

// ownerGone parses "<pid>-..." and reports whether that process is gone.
func ownerGone(rest string) bool {
	pidStr, _, ok := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(pidStr)
	if !ok || err != nil || pid <= 0 {
		return false // not a name we make
	}
	_, err = os.Stat(fmt.Sprintf("/proc/%d", pid))
	return errors.Is(err, os.ErrNotExist)
}

// removeLeftovers deletes namespaces with our prefix whose owning process (the
// pid in the name) no longer exists. Processes left inside them are killed.
func removeLeftovers(ctx context.Context, prefix string, logf func(string, ...any)) {
	out, err := exec.CommandContext(ctx, "ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], prefix) {
			continue
		}
		name := f[0]
		if !ownerGone(strings.TrimPrefix(name, prefix)) {
			continue // not ours, or its owner is still alive (a concurrent run)
		}
		logf("removing leftover namespace %s", name)
		killNSProcs(ctx, name)
		_ = run(ctx, "ip", "netns", "del", name)
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), DefaultPrefix+"*"))
	for _, d := range dirs {
		if fi, err := os.Lstat(d); err != nil || !fi.IsDir() || !ownerGone(strings.TrimPrefix(filepath.Base(d), DefaultPrefix)) {
			continue
		}
		logf("removing leftover directory %s", d)
		_ = os.RemoveAll(d)
	}
}

func killNSProcs(ctx context.Context, ns string) {
	out, err := exec.CommandContext(ctx, "ip", "netns", "pids", ns).Output()
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func (t *Topo) buildNetwork(ctx context.Context) error {
	for _, ns := range t.Namespaces() {
		if err := run(ctx, "ip", "netns", "add", ns); err != nil {
			return err
		}
		t.mu.Lock()
		t.created = append(t.created, ns)
		t.mu.Unlock()
		// Before any interface exists, so that new interfaces inherit it.
		if _, err := t.Run(ctx, ns, "sysctl", "-qw",
			"net.ipv6.conf.all.accept_dad=0",
			"net.ipv6.conf.default.accept_dad=0",
			"net.ipv4.conf.all.rp_filter=0",
			"net.ipv4.conf.default.rp_filter=0",
		); err != nil {
			return err
		}
		if err := ipn(ctx, ns, "link set lo up"); err != nil {
			return err
		}
	}
	if _, err := t.Run(ctx, t.Router, "sysctl", "-qw",
		"net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"); err != nil {
		return err
	}

	r, c := t.Router, t.Client
	steps := []struct{ ns, cmd string }{
		{r, "link add c0 type veth peer name eth0 netns " + c},
		{r, "link add br0 type bridge"},
		{r, "link set br0 up"},
		{r, "addr add " + RouterClientV4 + "/24 dev c0"},
		{r, "addr add " + RouterClientV6 + "/64 dev c0 nodad"},
		{r, "link set c0 up"},
		{r, "addr add " + RouterLANV4 + "/24 dev br0"},
		{r, "addr add " + RouterLANV6 + "/64 dev br0 nodad"},
		{r, "addr add " + VIP4 + "/32 dev lo"},
		{r, "addr add " + VIP6 + "/128 dev lo nodad"},
		{r, "addr add " + WAN4 + "/32 dev lo"},
		{r, "addr add " + WAN6 + "/128 dev lo nodad"},
		{c, "addr add " + ClientV4 + "/24 dev eth0"},
		{c, "addr add " + ClientV6 + "/64 dev eth0 nodad"},
		{c, "link set eth0 up"},
		{c, "route add default via " + RouterClientV4},
		{c, "-6 route add default via " + RouterClientV6},
	}
	for i, rs := range []struct{ ns, v4, v6 string }{{t.RS1, RS1V4, RS1V6}, {t.RS2, RS2V4, RS2V6}} {
		port := fmt.Sprintf("vs%d", i+1)
		steps = append(steps,
			struct{ ns, cmd string }{r, "link add " + port + " type veth peer name eth0 netns " + rs.ns},
			struct{ ns, cmd string }{r, "link set " + port + " master br0 up"},
			struct{ ns, cmd string }{rs.ns, "addr add " + rs.v4 + "/24 dev eth0"},
			struct{ ns, cmd string }{rs.ns, "addr add " + rs.v6 + "/64 dev eth0 nodad"},
			struct{ ns, cmd string }{rs.ns, "link set eth0 up"},
			struct{ ns, cmd string }{rs.ns, "route add default via " + RouterLANV4},
			struct{ ns, cmd string }{rs.ns, "-6 route add default via " + RouterLANV6},
		)
	}
	for _, s := range steps {
		if err := ipn(ctx, s.ns, s.cmd); err != nil {
			return err
		}
	}
	// Reachability, polled: a connection refused by the router proves the
	// client link works in both families.
	for _, a := range []string{RouterClientV4, RouterClientV6} {
		if err := waitReachable(ctx, t.Client, net.JoinHostPort(a, "9")); err != nil {
			return fmt.Errorf("client -> router: %w", err)
		}
	}
	for _, a := range []string{RS1V4, RS1V6, RS2V4, RS2V6} {
		if err := waitReachable(ctx, t.Router, net.JoinHostPort(a, "9")); err != nil {
			return fmt.Errorf("router -> real server: %w", err)
		}
	}
	return nil
}

func ipn(ctx context.Context, ns, cmd string) error {
	return run(ctx, "ip", append([]string{"-n", ns}, strings.Fields(cmd)...)...)
}

// waitReachable polls until a TCP connect to addr from ns is either accepted
// or refused (both prove the path works).
func waitReachable(ctx context.Context, ns, addr string) error {
	return poll(ctx, 20*time.Millisecond, func() error {
		dctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		c, err := DialIn(dctx, ns, "tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			return nil
		}
		return err
	})
}

// WaitListening polls until a TCP connect from ns to addr succeeds.
func WaitListening(ctx context.Context, ns, addr string) error {
	return poll(ctx, 20*time.Millisecond, func() error {
		dctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		c, err := DialIn(dctx, ns, "tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

func poll(ctx context.Context, every time.Duration, f func() error) error {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

const vsftpdConf = `listen=NO
listen_ipv6=YES
listen_port=21
background=NO
anonymous_enable=YES
no_anon_password=YES
anon_root={{root}}
anon_upload_enable=NO
anon_mkdir_write_enable=NO
local_enable=NO
write_enable=NO
pasv_enable=YES
pasv_min_port=40000
pasv_max_port=40999
port_enable=YES
connect_from_port_20=YES
ftp_data_port=20
seccomp_sandbox=NO
isolate=NO
isolate_network=NO
secure_chroot_dir={{empty}}
ssl_enable=NO
tcp_wrappers=NO
dirmessage_enable=NO
use_localtime=NO
syslog_enable=NO
xferlog_enable=YES
dual_log_enable=YES
log_ftp_protocol=YES
xferlog_file={{xferlog}}
vsftpd_log_file={{log}}
idle_session_timeout=120
data_connection_timeout=60
max_clients=0
max_per_ip=0
`

// startServers starts vsftpd on servers (their roots get server.txt,
// small.bin and big.bin) and adds them to t.Servers.
func (t *Topo) startServers(ctx context.Context, servers []*Server) error {
	small := make([]byte, SmallSize)
	big := make([]byte, BigSize)
	if _, err := rand.Read(small); err != nil {
		return err
	}
	if _, err := rand.Read(big); err != nil {
		return err
	}
	t.Files["small.bin"] = sum(small)
	t.Files["big.bin"] = sum(big)

	empty := filepath.Join(t.Dir, "vsftpd-empty")
	if err := os.MkdirAll(empty, 0o755); err != nil {
		return err
	}
	for _, s := range servers {
		base := filepath.Join(t.Dir, s.Name)
		s.Root = filepath.Join(base, "root")
		s.Log = filepath.Join(base, "vsftpd.log")
		if err := os.MkdirAll(s.Root, 0o755); err != nil {
			return err
		}
		for _, p := range []string{base, s.Root} {
			if err := os.Chmod(p, 0o755); err != nil {
				return err
			}
		}
		for name, data := range map[string][]byte{
			"server.txt": []byte(s.Name + "\n"),
			"small.bin":  small,
			"big.bin":    big,
		} {
			if err := os.WriteFile(filepath.Join(s.Root, name), data, 0o644); err != nil {
				return err
			}
		}
		if _, err := t.launchVsftpd(s, empty); err != nil {
			return err
		}
		t.Servers = append(t.Servers, s)
	}
	for _, s := range t.Servers {
		for _, a := range s.addrs() {
			if err := WaitListening(ctx, t.Router, net.JoinHostPort(a, "21")); err != nil {
				b, _ := os.ReadFile(filepath.Join(t.Dir, s.Name, "vsftpd.stderr"))
				return fmt.Errorf("vsftpd %s not listening on %s: %w (stderr: %s)", s.Name, a, err, strings.TrimSpace(string(b)))
			}
		}
	}
	return nil
}

// addrs are the server's addresses, IPv4 first; a family it lacks is left out.
func (s *Server) addrs() []string {
	var a []string
	for _, ip := range []string{s.V4, s.V6} {
		if ip != "" {
			a = append(a, ip)
		}
	}
	return a
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// WriteConfig writes ReferenceConfig into the topology directory and returns
// its path.
func (t *Topo) WriteConfig() (string, error) {
	p := filepath.Join(t.Dir, "nfhelper.yaml")
	return p, os.WriteFile(p, []byte(ReferenceConfig), 0o644)
}

// Close kills every process started through the topology and every other
// process still inside its namespaces, deletes the namespaces and, if it
// created it, the working directory. It is idempotent.
func (t *Topo) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	for _, c := range t.procs {
		if c.Process != nil {
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
			_ = c.Process.Kill()
		}
	}
	for _, c := range t.procs {
		select {
		case <-t.exited[c]:
		case <-time.After(5 * time.Second):
		}
	}
	var errs []error
	for _, ns := range t.created {
		killNSProcs(ctx, ns)
		if err := run(ctx, "ip", "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	if t.reaperW != nil {
		t.reaperW.Close() // the reaper finds nothing left and exits
		waitTimeout(t.reaper, 5*time.Second)
		t.reaperW = nil
	}
	if t.ownDir && t.Dir != "" {
		if err := os.RemoveAll(t.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func waitTimeout(c *exec.Cmd, d time.Duration) {
	done := make(chan struct{})
	go func() {
		_ = c.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(d):
	}
}

// Logs returns the vsftpd logs, for failure diagnostics.
func (t *Topo) Logs() string {
	var b strings.Builder
	for _, s := range t.Servers {
		for _, f := range []string{s.Log, filepath.Join(filepath.Dir(s.Log), "vsftpd.stderr")} {
			data, err := os.ReadFile(f)
			if err != nil || len(data) == 0 {
				continue
			}
			fmt.Fprintf(&b, "--- %s %s\n%s", s.Name, filepath.Base(f), tail(data, 4000))
		}
	}
	t.mu.Lock()
	extra := append([]extraLog(nil), t.extraLogs...)
	t.mu.Unlock()
	for _, e := range extra {
		for _, f := range []string{"stderr", "proftpd.log"} {
			data, err := os.ReadFile(filepath.Join(e.dir, f))
			if err != nil || len(data) == 0 {
				continue
			}
			fmt.Fprintf(&b, "--- %s %s\n%s", e.what, f, tail(data, 3000))
		}
	}
	return b.String()
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return append([]byte("...\n"), b[len(b)-n:]...)
	}
	return b
}
