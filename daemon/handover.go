package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/nfq"
)

// A hand-over (SIGUSR2) restarts the daemon in place: the process execs
// its binary again (a new version after an upgrade), handing the queue
// sockets over. The kernel keeps queueing into them meanwhile, so no
// packet passes unhelped; the table stays, and the successor takes it and
// the connections over as after a crash (restore.go).
// Daemon.HandOver stops and passes things on, Exec execs.

// envQueueFDs names the handed-over queue sockets: "num=fd,num=fd".
const envQueueFDs = "NFHELPER_QUEUE_FDS"

// inheritedQueues takes the handed-over queue sockets from the environment,
// and removes the variable so that nothing this process starts sees it.
func inheritedQueues() map[uint16]int {
	v, ok := os.LookupEnv(envQueueFDs)
	if !ok {
		return nil
	}
	os.Unsetenv(envQueueFDs)
	m := map[uint16]int{}
	for _, kv := range strings.Split(v, ",") {
		num, fd, ok := strings.Cut(kv, "=")
		n, err1 := strconv.ParseUint(num, 10, 16)
		f, err2 := strconv.Atoi(fd)
		if ok && err1 == nil && err2 == nil && f > 2 {
			m[uint16(n)] = f
		}
	}
	return m
}

// openQueue adopts queue c.Num's handed-over socket, as bound by the
// predecessor, or binds the queue as c says.
func openQueue(c nfq.Config, inherited map[uint16]int) (*nfq.Queue, error) {
	if fd, ok := inherited[c.Num]; ok {
		delete(inherited, c.Num)
		return nfq.Adopt(fd, c)
	}
	return nfq.Open(c)
}

// closeUnused closes handed-over sockets of queues the configuration no
// longer has.
func closeUnused(inherited map[uint16]int) {
	for _, fd := range inherited {
		syscall.Close(fd)
	}
}

// SelfPath is the binary to exec at a hand-over: the one the daemon was
// started as, by path, so that an upgraded binary takes over. Ask before an
// upgrade can replace the file.
func SelfPath() string {
	p, err := exec.LookPath(os.Args[0])
	if err == nil {
		p, err = filepath.Abs(p)
	}
	if err != nil {
		p, _ = os.Executable()
	}
	return p
}

// Exec replaces the process with exe, passing it the queue sockets
// (Daemon.HandOver); it returns only on failure.
func Exec(exe string, queues map[uint16]*os.File) error {
	var fds []string
	for num, f := range queues {
		fds = append(fds, fmt.Sprintf("%d=%d", num, f.Fd()))
	}
	env := append(os.Environ(), envQueueFDs+"="+strings.Join(fds, ","))
	return syscall.Exec(exe, os.Args, env)
}

// envHelperState names the descriptor through which a hand-over passes the
// helpers' state words (ipvs.StateSaver) to the successor: one line per
// connection, "client vip word".
const envHelperState = "NFHELPER_HELPER_STATE_FD"

// passHelperStates writes e's helper states to a memory file the exec'd
// successor inherits, named in the environment.
func passHelperStates(e *ipvs.Engine) error {
	fd, err := unix.MemfdCreate("nfhelper-helper-state", 0) // no CLOEXEC: the successor reads it
	if err != nil {
		return fmt.Errorf("memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "helper-state")
	w := bufio.NewWriter(f)
	e.HelperStates(func(client, vip netip.AddrPort, word uint64) {
		fmt.Fprintf(w, "%s %s %d\n", client, vip, word)
	})
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return os.Setenv(envHelperState, strconv.Itoa(fd))
}

// takeHelperStates loads the helper states a predecessor passed on into
// e's connections (taken back from the stale table before); how many.
func takeHelperStates(e *ipvs.Engine) (int, error) {
	v := os.Getenv(envHelperState)
	if v == "" {
		return 0, nil
	}
	os.Unsetenv(envHelperState)
	fd, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: %w", envHelperState, v, err)
	}
	f := os.NewFile(uintptr(fd), "helper-state")
	defer f.Close()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var cs, vs string
		var word uint64
		if _, err := fmt.Sscan(sc.Text(), &cs, &vs, &word); err != nil {
			return n, fmt.Errorf("helper state %q: %w", sc.Text(), err)
		}
		client, err1 := netip.ParseAddrPort(cs)
		vip, err2 := netip.ParseAddrPort(vs)
		if err := errors.Join(err1, err2); err != nil {
			return n, fmt.Errorf("helper state %q: %w", sc.Text(), err)
		}
		if e.LoadHelperState(client, vip, word) {
			n++
		}
	}
	return n, sc.Err()
}
