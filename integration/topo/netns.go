package topo

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// DialIn opens a TCP connection from inside the named network namespace. The
// socket is created while the calling OS thread is switched into the namespace,
// so it belongs there for its whole life; the thread is switched back before
// it is released.
func DialIn(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := doInNS(ns, func() error {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		conn = c
		return err
	})
	return conn, err
}

// Do runs fn on an OS thread switched into the named network namespace;
// sockets it creates stay there.
func Do(ns string, fn func() error) error { return doInNS(ns, fn) }

func doInNS(ns string, fn func() error) error {
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer target.Close()

	// A dedicated goroutine: if switching back fails it exits still locked,
	// and the runtime then discards its OS thread.
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			done <- err
			return
		}
		defer self.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		fnErr := fn()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("setns back: %w (after %v)", err, fnErr)
			return
		}
		runtime.UnlockOSThread()
		done <- fnErr
	}()
	return <-done
}

// ListenIn opens a TCP listener inside the named network namespace.
func ListenIn(ns, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := doInNS(ns, func() error {
		l, err := net.Listen(network, addr)
		ln = l
		return err
	})
	return ln, err
}
