package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/nfhelper/nfhelper/nfq"
)

// A hand-over (SIGUSR2) restarts the daemon in place: the process execs
// its binary again (a new version after an upgrade), handing the queue
// sockets over. The kernel keeps queueing into them meanwhile, so no
// packet passes unhelped; the table stays, and the successor takes it and
// the connections over as after a crash (restore.go).

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

// openQueue adopts queue num's handed-over socket, or binds the queue.
func openQueue(num uint16, inherited map[uint16]int) (*nfq.Queue, error) {
	if fd, ok := inherited[num]; ok {
		delete(inherited, num)
		return nfq.Adopt(fd, nfq.Config{Num: num})
	}
	return nfq.OpenQueue(num, 4096)
}

// closeUnused closes handed-over sockets of queues the configuration no
// longer has.
func closeUnused(inherited map[uint16]int) {
	for _, fd := range inherited {
		syscall.Close(fd)
	}
}

// selfPath is the binary to exec at a hand-over: the one the daemon was
// started as, by path, so that an upgraded binary takes over.
func selfPath() string {
	p, err := exec.LookPath(os.Args[0])
	if err == nil {
		p, err = filepath.Abs(p)
	}
	if err != nil {
		p, _ = os.Executable()
	}
	return p
}

// handOver replaces the process with exe, passing it the queue sockets;
// it returns only on failure.
func handOver(exe string, queues map[uint16]*os.File) error {
	var fds []string
	for num, f := range queues {
		fds = append(fds, fmt.Sprintf("%d=%d", num, f.Fd()))
	}
	env := append(os.Environ(), envQueueFDs+"="+strings.Join(fds, ","))
	return syscall.Exec(exe, os.Args, env)
}
