package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

func TestTCPCheck(t *testing.T) {
	l := listen(t)
	s := Spec{Type: "tcp", Addr: addrOf(l), Timeout: time.Second}
	if err := Check(context.Background(), Key{}, s); err != nil {
		t.Errorf("listening: %v", err)
	}
	s.Addr = netip.AddrPortFrom(s.Addr.Addr(), uint16(closedPort(t)))
	if err := Check(context.Background(), Key{}, s); Cause(err) != "refused" {
		t.Errorf("closed: %v, cause %q", err, Cause(err))
	}
	s.Addr = netip.AddrPortFrom(s.Addr.Addr(), uint16(filteredPort(t)))
	s.Timeout = 200 * time.Millisecond
	if err := Check(context.Background(), Key{}, s); Cause(err) != "timeout" {
		t.Errorf("filtered: %v, cause %q", err, Cause(err))
	}
}

func TestTCPCheckIPv6(t *testing.T) {
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer l.Close()
	if err := Check(context.Background(), Key{}, Spec{Type: "tcp", Addr: addrOf(l), Timeout: time.Second}); err != nil {
		t.Error(err)
	}
}

func TestNoneAndUnknown(t *testing.T) {
	if err := Check(context.Background(), Key{}, Spec{Type: "none"}); err != nil {
		t.Error(err)
	}
	if err := Check(context.Background(), Key{}, Spec{Type: "smtp"}); err == nil || Cause(err) != "error" {
		t.Errorf("unknown type: %v", err)
	}
}

func TestCause(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{fmt.Errorf("dial: %w", syscall.ECONNREFUSED), "refused"},
		{&net.OpError{Op: "read", Err: syscall.ECONNRESET}, "reset"},
		{fmt.Errorf("x: %w", syscall.EHOSTUNREACH), "unreachable"},
		{fmt.Errorf("x: %w", syscall.ENETUNREACH), "unreachable"},
		{context.DeadlineExceeded, "timeout"},
		{fmt.Errorf("%w: %w", ErrGreeting, io.EOF), "greeting"},
		{fmt.Errorf("%w: %w", ErrLogin, context.DeadlineExceeded), "timeout"},
		{fmt.Errorf("%w: %w", ErrData, context.DeadlineExceeded), "data"},
		{fmt.Errorf("%w: %w", ErrKilled, context.DeadlineExceeded), "killed"},
		{ErrStatus, "status"},
		{ErrBody, "body"},
		{ErrTLS, "tls"},
		{ErrExit, "exit"},
		{errors.New("odd"), "error"},
	} {
		if got := Cause(tc.err); got != tc.want {
			t.Errorf("%v: %q, want %q", tc.err, got, tc.want)
		}
	}
}
