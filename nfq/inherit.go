package nfq

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Inherit returns a copy of the queue's socket that survives exec, for a
// successor process that goes on reading the queue where this one stopped
// (Adopt): packets the kernel queues meanwhile wait in the socket. The
// reader must have stopped; verdicts still buffered are sent first.
func (q *Queue) Inherit() (*os.File, error) {
	q.mu.Lock()
	err := q.flushLocked()
	q.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("nfqueue %d: flush verdicts: %w", q.Num, err)
	}
	var nfd int
	cerr := q.rc.Control(func(fd uintptr) {
		// dup leaves close-on-exec off.
		nfd, err = unix.Dup(int(fd))
	})
	if cerr != nil {
		return nil, fmt.Errorf("nfqueue %d: %w", q.Num, cerr)
	}
	if err != nil {
		return nil, fmt.Errorf("nfqueue %d: dup: %w", q.Num, err)
	}
	return os.NewFile(uintptr(nfd), fmt.Sprintf("nfqueue %d", q.Num)), nil
}

// Adopt reads queue c.Num from fd, a socket a predecessor bound to it and
// handed over across exec (Inherit). The binding and its flags are the
// predecessor's.
func Adopt(fd int, c Config) (*Queue, error) {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err != nil || typ != unix.NETLINK_NETFILTER {
		return nil, fmt.Errorf("adopt nfqueue %d: fd %d is not a netfilter netlink socket (%v)", c.Num, fd, err)
	}
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("adopt nfqueue %d: %w", c.Num, err)
	}
	q, err := newQueue(fd, c)
	if err != nil {
		return nil, fmt.Errorf("adopt nfqueue %d: %w", c.Num, err)
	}
	return q, nil
}
