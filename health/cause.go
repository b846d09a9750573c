package health

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"
)

// Phase errors: a check that fails wraps one of these (or a network error)
// so that Cause can name the failure with a short fixed word.
var (
	ErrGreeting = errors.New("greeting")
	ErrLogin    = errors.New("login")
	ErrData     = errors.New("data")
	ErrStatus   = errors.New("status")
	ErrBody     = errors.New("body")
	ErrTLS      = errors.New("tls")
	ErrExit     = errors.New("exit")
	ErrKilled   = errors.New("killed")
)

// Failure causes besides the phase errors' texts.
const (
	CauseRefused     = "refused"
	CauseTimeout     = "timeout"
	CauseReset       = "reset"
	CauseUnreachable = "unreachable"
	CauseError       = "error"
)

// Cause is the short word for a failed check's error: the data channel and
// a killed command first (what failed matters more there than how), then
// what the network said, then the phase the check failed in.
func Cause(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrData):
		return ErrData.Error()
	case errors.Is(err, ErrKilled):
		return ErrKilled.Error()
	case isTimeout(err):
		return CauseTimeout
	case errors.Is(err, syscall.ECONNREFUSED):
		return CauseRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED):
		return CauseReset
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, syscall.EHOSTDOWN), errors.Is(err, syscall.ENETDOWN), errors.Is(err, syscall.EADDRNOTAVAIL):
		return CauseUnreachable
	}
	for _, e := range []error{ErrGreeting, ErrLogin, ErrStatus, ErrBody, ErrTLS, ErrExit} {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	return CauseError
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, syscall.ETIMEDOUT) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
