// Command vm runs a command inside Debian's stock kernel (linux-image-amd64)
// under qemu, with this machine's userland, and exits with the command's exit
// status. It is how nfhelper's integration suite and reference report run on
// a kernel with IPVS, nft_queue, NFQA_CT and nfnetlink_cthelper when the
// host's own kernel lacks them (make vmtest). Run it as root:
//
//	go run ./integration/vm [flags] -- command [args...]
//
// What it does, in order:
//
//   - finds the package linux-image-amd64 currently depends on (apt-cache),
//     fetches it with `apt-get download` and unpacks it with dpkg-deb into
//     -cache (default /var/cache/nfhelper-vm), runs depmod there; later runs
//     reuse the unpacked kernel;
//   - builds an initramfs: static busybox, the virtio/9p modules and an init
//     script;
//   - boots the kernel with qemu (-accel tcg -nographic -no-reboot, -mem,
//     -smp), sharing the host's / read-only over 9p and -share (a writable
//     directory) at the same path;
//   - the init script mounts the root share (cache=loose), fresh proc, sys,
//     dev, and tmpfs on /tmp, /run and /var/tmp, mounts the writable share
//     over its own path, points /proc/sys/kernel/modprobe at a script that
//     runs `modprobe -d <unpacked kernel>` inside the chroot, and chroots
//     into the root share to run a generated script: it loads the modules
//     -modprobe names (nothing else: like a freshly booted router, every
//     netfilter module comes through the kernel's own autoloading), sets
//     the -env variables, changes to -dir and runs the command;
//   - the command's exit status comes back through a file in the writable
//     share (and a marker line on the console); then the guest powers off.
//
// -timeout bounds the whole run: qemu is killed when it expires, and the
// program exits 124. The console is copied to stdout and to -log.
//
// With -prebuild, the integration test binary and the programs the tests and
// the reference report run are built on the host into -share first, and the
// environment that makes the tests use them (NFH_PREBUILT_DIR,
// NFH_DAEMON_BIN, NFH_MODULE_ROOT, NFH_PROFTPD, NFH_PUREFTPD) is added:
// the Go toolchain inside the VM would be slow, and the root share is
// read-only.
//
//	go run ./integration/vm -prebuild -share bin/vm -- bin/vm/integration.test -test.v
package main

import (
	"bufio"
	"context"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// initModules are loaded by the initramfs, in this order, to reach the 9p
// root (virtio-rng only feeds the guest's entropy pool).
var initModules = []string{
	"virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
	"netfs", "fscache", "9pnet", "9pnet_virtio", "9p", "virtio-rng",
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

type options struct {
	cache    string
	share    string
	dir      string
	mem      string
	smp      int
	timeout  time.Duration
	env      multiFlag
	modprobe multiFlag
	logPath  string
	prebuild bool
	quiet    bool
	kernel   string
	cmd      []string
}

func main() {
	var o options
	defCache := os.Getenv("NFHVM_CACHE")
	if defCache == "" {
		defCache = "/var/cache/nfhelper-vm"
	}
	flag.StringVar(&o.cache, "cache", defCache, "cache of unpacked kernels ($NFHVM_CACHE)")
	flag.StringVar(&o.share, "share", "", "writable directory shared with the guest at the same path (default: a new directory under -cache, removed at the end); must not be below /tmp, /run or /var/tmp")
	flag.StringVar(&o.dir, "dir", "", "working directory of the command in the guest (default: the current directory)")
	flag.StringVar(&o.mem, "mem", "4G", "guest memory")
	flag.IntVar(&o.smp, "smp", 2, "guest CPUs")
	flag.DurationVar(&o.timeout, "timeout", 45*time.Minute, "bound of the whole run, boot included")
	flag.Var(&o.env, "env", "KEY=VALUE for the command (repeatable)")
	flag.Var(&o.modprobe, "modprobe", "a module with parameters loaded before the command, e.g. 'ip_vs_ftp ports=21,2321' (repeatable); nothing else is preloaded")
	flag.StringVar(&o.logPath, "log", "", "copy of the console (default: console.log in -share)")
	flag.BoolVar(&o.prebuild, "prebuild", false, "build the integration test binary and the tools into -share first and point the tests at them")
	flag.BoolVar(&o.quiet, "quiet", false, "do not copy the console to stdout")
	flag.StringVar(&o.kernel, "kernel-package", "", "kernel package (default: what linux-image-amd64 depends on)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: go run ./integration/vm [flags] -- command [args...]\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	o.cmd = flag.Args()
	if len(o.cmd) == 0 {
		flag.Usage()
		os.Exit(2)
	}
	for _, e := range o.env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			fmt.Fprintf(os.Stderr, "vm: -env %q: want KEY=VALUE\n", e)
			os.Exit(2)
		}
	}
	code, err := run(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vm:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "vm: "+format+"\n", args...)
}

func run(o options) (int, error) {
	if err := checkHost(); err != nil {
		return 2, err
	}
	busybox, err := staticBusybox()
	if err != nil {
		return 2, err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()

	if err := os.MkdirAll(o.cache, 0o755); err != nil {
		return 1, err
	}
	krn, err := ensureKernel(ctx, o.cache, o.kernel)
	if err != nil {
		return 1, err
	}

	if o.share == "" {
		d, err := os.MkdirTemp(o.cache, "run-")
		if err != nil {
			return 1, err
		}
		defer os.RemoveAll(d)
		o.share = d
	}
	if code, err := o.settlePaths(); err != nil {
		return code, err
	}

	env := []string{}
	if o.prebuild {
		pe, err := prebuild(ctx, o.share)
		if err != nil {
			return 1, err
		}
		env = append(env, pe...)
	}
	env = append(env, o.env...)

	work, err := os.MkdirTemp(o.cache, "boot-")
	if err != nil {
		return 1, err
	}
	defer os.RemoveAll(work)
	exitFile := filepath.Join(o.share, ".nfhvm-exit")
	os.Remove(exitFile)
	guest := filepath.Join(o.share, ".nfhvm-guest.sh")
	if err := os.WriteFile(guest, []byte(guestScript(o, krn, env)), 0o755); err != nil {
		return 1, err
	}
	initrd := filepath.Join(work, "initrd.cpio")
	if err := buildInitramfs(ctx, initrd, busybox, krn, o.share, guest, exitFile); err != nil {
		return 1, err
	}
	return boot(ctx, o, krn, initrd, exitFile)
}

// checkHost: run needs root and the tools of make vm-deps.
func checkHost() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (qemu's 9p export of / and the cache)")
	}
	for _, tool := range []string{"qemu-system-x86_64", "cpio", "depmod", "modprobe", "apt-get", "apt-cache", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (make vm-deps)", tool)
		}
	}
	return nil
}

// settlePaths makes the share absolute and checks it, and fills in the
// defaults of the working directory and the console log. Its exit code
// is 2 for a -share the guest cannot use.
func (o *options) settlePaths() (int, error) {
	var err error
	if o.share, err = filepath.Abs(o.share); err != nil {
		return 1, err
	}
	for _, bad := range []string{"/tmp", "/run", "/var/tmp", "/proc", "/sys", "/dev"} {
		if o.share == bad || strings.HasPrefix(o.share, bad+"/") {
			return 2, fmt.Errorf("-share %s: the guest mounts a fresh filesystem on %s", o.share, bad)
		}
	}
	if strings.ContainsAny(o.share, " \t\n'\"\\,") {
		return 2, fmt.Errorf("-share %q: no spaces, quotes, backslashes or commas", o.share)
	}
	if err := os.MkdirAll(o.share, 0o755); err != nil {
		return 1, err
	}
	if o.dir == "" {
		if o.dir, err = os.Getwd(); err != nil {
			return 1, err
		}
	}
	if o.logPath == "" {
		o.logPath = filepath.Join(o.share, "console.log")
	}
	return 0, nil
}

// boot runs the guest under qemu, copying its console to the log (and
// stdout), and returns the command's exit status the guest reported.
func boot(ctx context.Context, o options, krn kernel, initrd, exitFile string) (int, error) {
	logFile, err := os.Create(o.logPath)
	if err != nil {
		return 1, err
	}
	defer logFile.Close()
	var out io.Writer = logFile
	if !o.quiet {
		out = io.MultiWriter(os.Stdout, logFile)
	}

	args := []string{
		"-accel", "tcg", "-cpu", "max", "-nographic", "-no-reboot",
		"-m", o.mem, "-smp", strconv.Itoa(o.smp),
		"-kernel", krn.vmlinuz, "-initrd", initrd,
		"-append", "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init",
		"-nic", "none",
		"-device", "virtio-rng-pci",
		"-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
		"-virtfs", "local,path=" + o.share + ",mount_tag=nfhshare,security_model=none,multidevs=remap",
	}
	logf("booting %s (%s, -m %s -smp %d, timeout %v); console: %s", krn.version, krn.pkg, o.mem, o.smp, o.timeout, o.logPath)
	start := time.Now()
	q := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	q.WaitDelay = 10 * time.Second
	q.Stdin = nil
	pr, pw := io.Pipe()
	q.Stdout, q.Stderr = pw, pw
	markerRE := regexp.MustCompile(`NFHVM-EXIT (\d+)`)
	// The firmware's and qemu's terminal control sequences.
	escRE := regexp.MustCompile(`\x1b(\[[0-9;?]*[A-Za-z]|c)`)
	marker := -1
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := escRE.ReplaceAllString(strings.TrimRight(sc.Text(), "\r"), "")
			if m := markerRE.FindStringSubmatch(line); m != nil {
				marker, _ = strconv.Atoi(m[1])
			}
			fmt.Fprintln(out, line)
		}
		io.Copy(io.Discard, pr)
	}()
	err = q.Run()
	pw.Close()
	<-copied
	elapsed := time.Since(start).Round(time.Second)
	if ctx.Err() != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return 124, fmt.Errorf("timed out after %v; qemu killed (console: %s)", o.timeout, o.logPath)
		}
		return 130, fmt.Errorf("interrupted; qemu killed")
	}
	if err != nil {
		return 1, fmt.Errorf("qemu: %w (console: %s)", err, o.logPath)
	}
	code := marker
	if b, err := os.ReadFile(exitFile); err == nil {
		if c, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			code = c
		}
	}
	if code < 0 {
		return 1, fmt.Errorf("the guest ended after %v without reporting the command's exit status (console: %s)", elapsed, o.logPath)
	}
	logf("command exited %d; VM run took %v", code, elapsed)
	return code, nil
}

// staticBusybox finds a statically linked busybox (package busybox-static):
// the initramfs has no libraries.
func staticBusybox() (string, error) {
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		f, err := elf.Open(p)
		if err != nil {
			continue
		}
		dynamic := false
		for _, ph := range f.Progs {
			dynamic = dynamic || ph.Type == elf.PT_INTERP
		}
		f.Close()
		if dynamic {
			return "", fmt.Errorf("%s is dynamically linked (make vm-deps installs busybox-static)", p)
		}
		return p, nil
	}
	return "", errors.New("busybox not found (make vm-deps installs busybox-static)")
}

// kernel is an unpacked kernel package.
type kernel struct {
	pkg     string // e.g. linux-image-6.1.0-56-amd64
	root    string // where the package is unpacked (modprobe -d)
	version string // uname -r
	vmlinuz string
}

func ensureKernel(ctx context.Context, cache, pkg string) (kernel, error) {
	var k kernel
	if pkg == "" {
		out, err := exec.CommandContext(ctx, "apt-cache", "depends", "linux-image-amd64").Output()
		if err == nil {
			for _, l := range strings.Split(string(out), "\n") {
				l = strings.TrimSpace(l)
				if name, ok := strings.CutPrefix(l, "Depends: "); ok && strings.HasPrefix(name, "linux-image-") {
					pkg = strings.TrimSpace(name)
					break
				}
			}
		}
		if pkg == "" {
			// No package lists: the newest kernel already in the cache.
			m, _ := filepath.Glob(filepath.Join(cache, "linux-image-*"))
			for i := len(m) - 1; i >= 0; i-- {
				if fi, err := os.Stat(m[i]); err == nil && fi.IsDir() && !strings.HasSuffix(m[i], ".part") {
					pkg = filepath.Base(m[i])
					break
				}
			}
			if pkg == "" {
				return k, fmt.Errorf("apt-cache depends linux-image-amd64 found no kernel package (apt-get update?)")
			}
		}
	}
	k.pkg = pkg
	k.root = filepath.Join(cache, pkg)
	if _, err := os.Stat(k.root); err != nil {
		if err := fetchKernel(ctx, cache, pkg); err != nil {
			return k, err
		}
	}
	m, _ := filepath.Glob(filepath.Join(k.root, "boot", "vmlinuz-*"))
	if len(m) != 1 {
		return k, fmt.Errorf("%s: want one boot/vmlinuz-*, found %v (remove the directory to fetch again)", k.root, m)
	}
	k.vmlinuz = m[0]
	k.version = strings.TrimPrefix(filepath.Base(m[0]), "vmlinuz-")
	return k, nil
}

func fetchKernel(ctx context.Context, cache, pkg string) error {
	dl, err := os.MkdirTemp(cache, "download-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dl)
	_ = os.Chmod(dl, 0o777) // apt-get download runs as _apt
	logf("fetching %s (apt-get download) into %s", pkg, cache)
	c := exec.CommandContext(ctx, "apt-get", "download", pkg)
	c.Dir = dl
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get download %s: %w: %s", pkg, err, strings.TrimSpace(string(out)))
	}
	debs, _ := filepath.Glob(filepath.Join(dl, pkg+"_*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("apt-get download %s: got %v", pkg, debs)
	}
	part := filepath.Join(cache, pkg+".part")
	os.RemoveAll(part)
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], part).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg-deb -x: %w: %s", err, out)
	}
	m, _ := filepath.Glob(filepath.Join(part, "lib", "modules", "*"))
	if len(m) != 1 {
		return fmt.Errorf("%s: want one lib/modules/*, found %v", pkg, m)
	}
	if out, err := exec.CommandContext(ctx, "depmod", "-b", part, filepath.Base(m[0])).CombinedOutput(); err != nil {
		return fmt.Errorf("depmod: %w: %s", err, out)
	}
	return os.Rename(part, filepath.Join(cache, pkg))
}

// q quotes s for sh.
func q(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

const initScript = `#!/bin/busybox sh
# nfhelper vm init (generated by integration/vm)
/bin/busybox mkdir -p /proc /sys /dev /newroot /usr/bin /usr/sbin /sbin
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in {{initmods}}; do
	[ -f /mods/$m.ko ] && insmod /mods/$m.ko
done
fail() { echo "nfhvm: $*"; echo "NFHVM-EXIT 125"; reboot -f; }
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot /newroot || fail "cannot mount the host's root"
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 shm /newroot/dev/shm
mount -t tmpfs -o mode=1777 tmp /newroot/tmp
mount -t tmpfs -o mode=0755 run /newroot/run
mount -t tmpfs -o mode=1777 vartmp /newroot/var/tmp
mount -t 9p -o trans=virtio,version=9p2000.L,cache=mmap,msize=262144 nfhshare /newroot{{share}} || fail "cannot mount the share"
echo /modprobe-chroot > /proc/sys/kernel/modprobe
chroot /newroot /bin/sh {{guest}} </dev/null
rc=$?
echo $rc > /newroot{{exitfile}}
sync
umount /newroot{{share}} 2>/dev/null
echo "NFHVM-EXIT $rc"
reboot -f
`

// buildInitramfs writes an uncompressed newc cpio archive: busybox, the
// modules that reach the 9p root, /init and the kernel's modprobe helper.
func buildInitramfs(ctx context.Context, out, busybox string, k kernel, share, guest, exitFile string) error {
	stage, err := os.MkdirTemp(filepath.Dir(out), "initramfs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	for _, d := range []string{"bin", "mods", "proc", "sys", "dev", "newroot"} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			return err
		}
	}
	if err := copyFile(busybox, filepath.Join(stage, "bin", "busybox"), 0o755); err != nil {
		return err
	}
	modDir := filepath.Join(k.root, "lib", "modules", k.version)
	var mods []string
	for _, m := range initModules {
		found, _ := findModule(modDir, m)
		if found == "" {
			continue // built in, or absent
		}
		if err := copyFile(found, filepath.Join(stage, "mods", m+".ko"), 0o644); err != nil {
			return err
		}
		mods = append(mods, m)
	}
	modprobe, err := exec.LookPath("modprobe")
	if err != nil {
		return err
	}
	// The kernel runs its module helper in the initramfs root, outside the
	// chroot: hand the request to the userland's modprobe inside it.
	helper := "#!/bin/sh\nexec /bin/chroot /newroot " + q(modprobe) + " -d " + q(k.root) + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(stage, "modprobe-chroot"), []byte(helper), 0o755); err != nil {
		return err
	}
	init := strings.NewReplacer(
		"{{initmods}}", strings.Join(mods, " "),
		"{{share}}", q(share),
		"{{guest}}", q(guest),
		"{{exitfile}}", q(exitFile),
	).Replace(initScript)
	if err := os.WriteFile(filepath.Join(stage, "init"), []byte(init), 0o755); err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	c := exec.CommandContext(ctx, "sh", "-c", "find . -print0 | cpio --null -o -H newc --quiet")
	c.Dir = stage
	var stderr strings.Builder
	c.Stdout, c.Stderr = f, &stderr
	if err := c.Run(); err != nil {
		return fmt.Errorf("cpio: %w: %s", err, stderr.String())
	}
	return f.Close()
}

func findModule(modDir, name string) (string, error) {
	var found string
	alt := strings.ReplaceAll(name, "-", "_")
	err := filepath.WalkDir(filepath.Join(modDir, "kernel"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || found != "" {
			return nil
		}
		base := strings.TrimSuffix(d.Name(), ".ko")
		if strings.HasSuffix(d.Name(), ".ko") && (base == name || strings.ReplaceAll(base, "-", "_") == alt) {
			found = p
			return filepath.SkipAll
		}
		return nil
	})
	return found, err
}

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, mode)
}

// guestScript is what the guest runs in the chroot: modules, environment,
// working directory, the command.
func guestScript(o options, k kernel, env []string) string {
	var b strings.Builder
	b.WriteString("#!/bin/sh\n# generated by integration/vm\n")
	b.WriteString("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/go/bin\n")
	b.WriteString("export HOME=/root TERM=dumb LANG=C.UTF-8 TMPDIR=/tmp\n")
	fmt.Fprintf(&b, "export NFHVM=1 NFHVM_MODROOT=%s NFHVM_KERNEL=%s NFHVM_SHARE=%s\n", q(k.root), q(k.version), q(o.share))
	b.WriteString("echo \"nfhvm: guest up after $(cut -d' ' -f1 /proc/uptime)s, kernel $(uname -r)\"\n")
	// Like a freshly booted router, the guest has loaded no netfilter
	// module: everything else comes through the kernel's autoloading (the
	// chroot's modprobe helper). Only what -modprobe names is loaded by
	// hand, and the command learns which (NFHVM_MODPROBE).
	for _, m := range o.modprobe {
		fmt.Fprintf(&b, "modprobe -d \"$NFHVM_MODROOT\" %s || echo \"nfhvm: modprobe %s failed\"\n", m, strings.ReplaceAll(m, `"`, ""))
	}
	fmt.Fprintf(&b, "export NFHVM_MODPROBE=%s\n", q(strings.Join(o.modprobe, "; ")))
	b.WriteString("echo \"nfhvm: modules loaded by hand: ${NFHVM_MODPROBE:-none}\"\n")
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		fmt.Fprintf(&b, "export %s=%s\n", k, q(v))
	}
	fmt.Fprintf(&b, "cd %s || exit 126\n", q(o.dir))
	b.WriteString("echo \"nfhvm: running:")
	for _, a := range o.cmd {
		b.WriteString(" " + strings.ReplaceAll(strings.ReplaceAll(a, `\`, `\\`), `"`, `\"`))
	}
	b.WriteString("\"\n")
	b.WriteString("start=$(cut -d' ' -f1 /proc/uptime)\n")
	var quoted []string
	for _, a := range o.cmd {
		quoted = append(quoted, q(a))
	}
	b.WriteString(strings.Join(quoted, " ") + " 2>&1\n")
	b.WriteString("rc=$?\n")
	b.WriteString("echo \"nfhvm: command exited $rc after $(awk -v s=$start '{printf \"%.0f\", $1-s}' /proc/uptime)s\"\n")
	b.WriteString("exit $rc\n")
	return b.String()
}

// prebuild builds, into dir, the integration test binary and every program
// the tests and the reference report run, and returns the environment that
// points them there.
func prebuild(ctx context.Context, dir string) ([]string, error) {
	root, err := topo.ModuleRoot()
	if err != nil {
		return nil, err
	}
	logf("building the integration test binary and tools into %s", dir)
	steps := [][]string{
		{"go", "test", "-c", "-tags", "integration", "-o", filepath.Join(dir, "integration.test"), "./integration"},
		{"go", "build", "-o", dir + "/", "./cmd/nfhelperd", "./cmd/nfhelperctl",
			"./integration/cmd/ftpget", "./integration/cmd/quirkyftpd", "./integration/cmd/connbench",
			"./integration/cmd/ctexpect", "./integration/cmd/ftpload"},
	}
	if _, err := os.Stat(filepath.Join(root, "integration", "reference")); err == nil {
		steps = append(steps, []string{"go", "build", "-o", dir + "/", "./integration/reference"})
	}
	for _, s := range steps {
		c := exec.CommandContext(ctx, s[0], s[1:]...)
		c.Dir = root
		if out, err := c.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("%s: %w\n%s", strings.Join(s, " "), err, out)
		}
	}
	env := []string{
		"NFH_PREBUILT_DIR=" + dir,
		"NFH_DAEMON_BIN=" + filepath.Join(dir, "nfhelperd"),
		"NFH_MODULE_ROOT=" + root,
	}
	// proftpd and pure-ftpd are unpacked on the host when not installed: the
	// guest has no network.
	for _, f := range []struct{ env, pkg, bin string }{
		{"NFH_PROFTPD", "proftpd-core", "proftpd"},
		{"NFH_PUREFTPD", "pure-ftpd", "pure-ftpd"},
	} {
		if p, err := topo.FTPDBinary(ctx, f.env, f.pkg, f.bin, logf); err == nil {
			env = append(env, f.env+"="+p)
		} else {
			logf("%s: %v (its tests will skip)", f.bin, err)
		}
	}
	return env, nil
}
