package health

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeFTP is a tiny FTP server: its greeting, one user, and what it answers
// to EPSV and PASV. The 227 names a bogus address: the check must ignore it.
type fakeFTP struct {
	greeting   string
	user, pass string
	epsv       bool
	dataPort   int
	quit       chan struct{} // gets a value when QUIT comes
}

func (f *fakeFTP) start(t *testing.T) netip.AddrPort {
	t.Helper()
	l := listen(t)
	f.quit = make(chan struct{}, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go f.serve(c)
		}
	}()
	return addrOf(l)
}

func (f *fakeFTP) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	fmt.Fprint(c, f.greeting)
	user := ""
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		cmd, arg, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		switch cmd {
		case "USER":
			user = arg
			fmt.Fprint(c, "331 password please\r\n")
		case "PASS":
			if user == f.user && arg == f.pass {
				fmt.Fprint(c, "230 in\r\n")
			} else {
				fmt.Fprint(c, "530 no\r\n")
			}
		case "EPSV":
			if f.epsv {
				fmt.Fprintf(c, "229 Entering Extended Passive Mode (|||%d|)\r\n", f.dataPort)
			} else {
				fmt.Fprint(c, "500 what?\r\n")
			}
		case "PASV":
			fmt.Fprintf(c, "227 Entering Passive Mode (192,0,2,9,%d,%d).\r\n", f.dataPort>>8, f.dataPort&0xff)
		case "QUIT":
			fmt.Fprint(c, "221 bye\r\n")
			f.quit <- struct{}{}
			return
		default:
			fmt.Fprint(c, "500 what?\r\n")
		}
	}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func addrOf(l net.Listener) netip.AddrPort { return l.Addr().(*net.TCPAddr).AddrPort() }

// dataListener accepts connections (and holds them) on a port of its own.
func dataListener(t *testing.T) int {
	l := listen(t)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	return int(addrOf(l).Port())
}

// closedPort is a port nothing listens on: a socket bound to it, not
// listening, keeps it from other listeners until the test ends.
func closedPort(t *testing.T) int {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return sa.(*syscall.SockaddrInet4).Port
}

// filteredPort is a port whose SYNs are dropped, as a firewall would: a
// listener with a backlog of 0 that never accepts and whose queue is full.
func filteredPort(t *testing.T) int {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	p := sa.(*syscall.SockaddrInet4).Port
	// Fill the queue until a connect does not complete.
	for i := 0; ; i++ {
		d := net.Dialer{Timeout: 200 * time.Millisecond}
		c, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			break
		}
		t.Cleanup(func() { c.Close() })
		if i > 10 {
			t.Fatal("cannot fill a listen queue")
		}
	}
	return p
}

func ftpSpec(addr netip.AddrPort) Spec {
	return Spec{Type: "ftp", Addr: addr, Timeout: 500 * time.Millisecond}
}

func TestFTPCheck(t *testing.T) {
	data := dataListener(t)
	for _, tc := range []struct {
		name       string
		srv        fakeFTP
		user, pass string
		cause      string
	}{
		{name: "greeting", srv: fakeFTP{greeting: "220 ready\r\n"}},
		{name: "multi-line greeting", srv: fakeFTP{greeting: "220-Welcome\r\nto the test\r\n220 ready\r\n"}},
		{name: "bad greeting", srv: fakeFTP{greeting: "421 too many users\r\n"}, cause: "greeting"},
		{name: "120 then 220", srv: fakeFTP{greeting: "120 in a minute\r\n220 ready\r\n"}, cause: "greeting"},
		{name: "not FTP", srv: fakeFTP{greeting: "SSH-2.0-OpenSSH\r\n"}, cause: "greeting"},
		{name: "login EPSV", srv: fakeFTP{greeting: "220 ok\r\n", user: "u", pass: "p", epsv: true, dataPort: data}, user: "u", pass: "p"},
		{name: "login PASV", srv: fakeFTP{greeting: "220 ok\r\n", user: "u", pass: "p", dataPort: data}, user: "u", pass: "p"},
		{name: "login failure", srv: fakeFTP{greeting: "220 ok\r\n", user: "u", pass: "p", dataPort: data}, user: "u", pass: "x", cause: "login"},
		{name: "line break in password", srv: fakeFTP{greeting: "220 ok\r\n", user: "u", pass: "p"}, user: "u", pass: "p\r\nDELE x", cause: "login"},
		{name: "closed data port", srv: fakeFTP{greeting: "220 ok\r\n", user: "u", pass: "p", epsv: true, dataPort: closedPort(t)}, user: "u", pass: "p", cause: "data"},
		{name: "filtered data port", srv: fakeFTP{greeting: "220 ok\r\n", user: "u", pass: "p", dataPort: filteredPort(t)}, user: "u", pass: "p", cause: "data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := ftpSpec(tc.srv.start(t))
			s.User, s.Password = tc.user, tc.pass
			start := time.Now()
			err := Check(context.Background(), Key{}, s)
			if got := Cause(err); got != tc.cause {
				t.Fatalf("cause %q (%v), want %q", got, err, tc.cause)
			}
			if d := time.Since(start); d > s.Timeout+2*time.Second { // bounded, with room for a loaded machine
				t.Errorf("took %v, timeout %v", d, s.Timeout)
			}
			if err == nil {
				select {
				case <-tc.srv.quit:
				case <-time.After(5 * time.Second):
					t.Error("no QUIT")
				}
			}
		})
	}
}

// A server that accepts and says nothing: the check ends at its timeout.
func TestFTPSilent(t *testing.T) {
	l := listen(t)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	s := ftpSpec(addrOf(l))
	s.Timeout = 200 * time.Millisecond
	start := time.Now()
	err := Check(context.Background(), Key{}, s)
	if Cause(err) != "timeout" || time.Since(start) > 3*time.Second {
		t.Errorf("%v after %v, want a timeout", err, time.Since(start))
	}
	// No timeout: the interval bounds the check.
	s.Timeout, s.Interval = 0, 200*time.Millisecond
	start = time.Now()
	err = Check(context.Background(), Key{}, s)
	if Cause(err) != "timeout" || time.Since(start) > 3*time.Second {
		t.Errorf("no timeout: %v after %v, want a timeout at the interval", err, time.Since(start))
	}
}
