package topo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// Ports of the additional FTP servers on rs1 and rs2 (both families).
const (
	ProFTPDPort  = 2121
	PureFTPDPort = 2221
	QuirkyPort   = 2321 // rs1 only
)

// FTPDBinary finds the program bin of the Debian package pkg (proftpd-core or
// pure-ftpd). Debian's FTP servers all provide and conflict with ftp-server,
// so they cannot be installed next to vsftpd: when bin is not in PATH (or
// /usr/sbin) the package is fetched with `apt-get download` and unpacked with
// dpkg-deb into a cache directory (NFH_FTPD_CACHE, default
// $XDG_CACHE_HOME/nfhelper-integration), where later runs find it. env, when
// set in the environment, names the binary to use instead.
func FTPDBinary(ctx context.Context, env, pkg, bin string, logf func(string, ...any)) (string, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if p := os.Getenv(env); p != "" {
		return p, checkLibs(ctx, p)
	}
	if p, err := exec.LookPath(bin); err == nil {
		return p, checkLibs(ctx, p)
	}
	if p := filepath.Join("/usr/sbin", bin); isExec(p) {
		return p, checkLibs(ctx, p)
	}
	cache := os.Getenv("NFH_FTPD_CACHE")
	if cache == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return "", err
		}
		cache = filepath.Join(base, "nfhelper-integration")
	}
	if m, _ := filepath.Glob(filepath.Join(cache, pkg+"_*", "usr", "sbin", bin)); len(m) > 0 && isExec(m[len(m)-1]) {
		return m[len(m)-1], checkLibs(ctx, m[len(m)-1])
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return "", fmt.Errorf("%s not installed and no apt-get to fetch package %s", bin, pkg)
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(cache, "download-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	// _apt cannot write into a 0700 directory of root's: let it.
	_ = os.Chmod(tmp, 0o777)
	logf("fetching Debian package %s (apt-get download) into %s", pkg, cache)
	c := exec.CommandContext(ctx, "apt-get", "download", pkg)
	c.Dir = tmp
	if out, err := c.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download %s: %w: %s", pkg, err, strings.TrimSpace(string(out)))
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, pkg+"_*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download %s: got %v", pkg, debs)
	}
	dest := filepath.Join(cache, strings.TrimSuffix(filepath.Base(debs[0]), ".deb"))
	part := dest + ".part"
	_ = os.RemoveAll(part)
	if err := run(ctx, "dpkg-deb", "-x", debs[0], part); err != nil {
		return "", err
	}
	if err := os.Rename(part, dest); err != nil {
		return "", err
	}
	p := filepath.Join(dest, "usr", "sbin", bin)
	if !isExec(p) {
		return "", fmt.Errorf("package %s has no usr/sbin/%s", pkg, bin)
	}
	return p, checkLibs(ctx, p)
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// checkLibs reports shared libraries the binary lacks (the libraries of an
// unpacked, not installed, package must be installed separately: see PKGS in
// the Makefile).
func checkLibs(ctx context.Context, bin string) error {
	out, err := exec.CommandContext(ctx, "ldd", bin).CombinedOutput()
	if err != nil {
		return nil // not dynamic, or no ldd: let it fail when run
	}
	var missing []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "not found") {
			missing = append(missing, strings.Fields(l)[0])
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s needs missing libraries %s (make deps)", bin, strings.Join(missing, ", "))
	}
	return nil
}

// serverDir returns (and creates) the working directory of one program on
// server s.
func (t *Topo) serverDir(s *Server, prog string) (string, error) {
	d := filepath.Join(t.Dir, s.Name, prog)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return "", err
	}
	return d, os.Chmod(d, 0o755)
}

// startFTPD starts c on s with stdout/stderr in dir/stderr and waits until
// port listens on each of addrs.
func (t *Topo) startFTPD(ctx context.Context, what string, s *Server, c *exec.Cmd, dir string, port int, addrs ...string) error {
	errPath := filepath.Join(dir, "stderr")
	errf, err := os.Create(errPath)
	if err != nil {
		return err
	}
	c.Stdout, c.Stderr = errf, errf
	err = t.Start(c)
	errf.Close()
	if err != nil {
		return fmt.Errorf("start %s on %s: %w", what, s.Name, err)
	}
	t.mu.Lock()
	t.extraLogs = append(t.extraLogs, extraLog{s.Name + " " + what, dir})
	t.mu.Unlock()
	for _, a := range addrs {
		if err := WaitListening(ctx, t.Router, net.JoinHostPort(a, strconv.Itoa(port))); err != nil {
			b, _ := os.ReadFile(errPath)
			return fmt.Errorf("%s on %s not listening on %s port %d: %w (output: %s)", what, s.Name, a, port, err, strings.TrimSpace(string(b)))
		}
	}
	return nil
}

const proftpdConf = `ServerType standalone
ServerName "nfht {{name}}"
DefaultServer on
DefaultAddress {{v4}} {{v6}}
SocketBindTight on
Port {{port}}
UseIPv6 on
User nobody
Group nogroup
PidFile {{dir}}/proftpd.pid
ScoreboardFile {{dir}}/proftpd.scoreboard
DelayTable none
WtmpLog off
UseReverseDNS off
RequireValidShell off
AuthOrder mod_auth_file.c
AuthUserFile {{dir}}/passwd
AuthGroupFile {{dir}}/group
SystemLog {{dir}}/proftpd.log
TransferLog {{dir}}/xferlog
MaxInstances 200
TimeoutIdle 120
<Anonymous {{root}}>
  User ftp
  Group ftp
  UserAlias anonymous ftp
  RequireValidShell off
  <Limit WRITE>
    DenyAll
  </Limit>
</Anonymous>
`

// StartProFTPD runs proftpd (bin) in the foreground on every real server, on
// ProFTPDPort of both its addresses, serving the same files as vsftpd to
// anonymous users. Its own AuthUserFile names the anonymous user, so neither
// a system ftp user nor its home is needed.
func (t *Topo) StartProFTPD(ctx context.Context, bin string) error {
	for _, s := range t.Servers {
		dir, err := t.serverDir(s, "proftpd")
		if err != nil {
			return err
		}
		files := map[string]string{
			"passwd": "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\nftp:x:65534:65534:nfht anonymous:" + s.Root + ":/usr/sbin/nologin\n",
			"group":  "root:x:0:\nnogroup:x:65534:\nftp:x:65534:\n",
			"proftpd.conf": strings.NewReplacer("{{name}}", s.Name, "{{v4}}", s.V4, "{{v6}}", s.V6,
				"{{port}}", strconv.Itoa(ProFTPDPort), "{{dir}}", dir, "{{root}}", s.Root).Replace(proftpdConf),
		}
		for name, data := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
				return err
			}
		}
		c := t.Exec(s.NS, bin, "-n", "-c", filepath.Join(dir, "proftpd.conf"))
		if err := t.startFTPD(ctx, "proftpd", s, c, dir, ProFTPDPort, s.V4, s.V6); err != nil {
			return err
		}
	}
	return nil
}

// StartPureFTPD runs pure-ftpd (bin) in the foreground on every real server,
// anonymous only, on PureFTPDPort of all addresses. pure-ftpd serves
// anonymous users from the home directory of the system user ftp; a passwd
// file naming the server root as that home is bind-mounted over /etc/passwd
// in the private mount namespace `ip netns exec` gives the server (the
// host's /etc/passwd is untouched).
func (t *Topo) StartPureFTPD(ctx context.Context, bin string) error {
	hostPasswd, err := os.ReadFile("/etc/passwd")
	if err != nil {
		return err
	}
	for _, s := range t.Servers {
		dir, err := t.serverDir(s, "pure-ftpd")
		if err != nil {
			return err
		}
		// pure-ftpd and vsftpd both make active data connections from port
		// 20 of the same address; pure-ftpd binds without SO_REUSEADDR, so
		// a TIME_WAIT socket of either makes the other's bind fail ("500
		// OOPS: vsf_sysutil_bind") for a minute. The servers' namespaces keep
		// no TIME_WAIT sockets.
		if _, err := t.Run(ctx, s.NS, "sysctl", "-qw", "net.ipv4.tcp_max_tw_buckets=0"); err != nil {
			return err
		}
		var pw strings.Builder
		for _, l := range strings.Split(strings.TrimRight(string(hostPasswd), "\n"), "\n") {
			if !strings.HasPrefix(l, "ftp:") {
				pw.WriteString(l + "\n")
			}
		}
		pw.WriteString("ftp:x:65534:65534:nfht anonymous:" + s.Root + ":/usr/sbin/nologin\n")
		passwd := filepath.Join(dir, "passwd")
		if err := os.WriteFile(passwd, []byte(pw.String()), 0o644); err != nil {
			return err
		}
		// -e anonymous only, -i no uploads, -A chroot, -H no DNS, -f none no
		// syslog, -S bind every address (both families) on the port.
		script := `mount --bind "$1" /etc/passwd && shift && exec "$@"`
		c := t.Exec(s.NS, "/bin/sh", "-c", script, "nfht-pure-ftpd", passwd,
			bin, "-S", ","+strconv.Itoa(PureFTPDPort), "-e", "-i", "-A", "-H", "-f", "none", "-c", "200", "-C", "200")
		if err := t.startFTPD(ctx, "pure-ftpd", s, c, dir, PureFTPDPort, s.V4, s.V6); err != nil {
			return err
		}
	}
	return nil
}

// StartQuirky runs integration/cmd/quirkyftpd (bin) on rs1, QuirkyPort of
// both its addresses.
func (t *Topo) StartQuirky(ctx context.Context, bin string) error {
	if len(t.Servers) == 0 {
		return errors.New("no servers")
	}
	s := t.Servers[0]
	dir, err := t.serverDir(s, "quirkyftpd")
	if err != nil {
		return err
	}
	var listen []string
	for _, a := range s.addrs() {
		listen = append(listen, net.JoinHostPort(a, strconv.Itoa(QuirkyPort)))
	}
	c := t.Exec(s.NS, bin, "-root", s.Root, "-listen", strings.Join(listen, ","))
	return t.startFTPD(ctx, "quirkyftpd", s, c, dir, QuirkyPort, s.addrs()...)
}
