package health

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"
)

// Check runs one check of the server k with spec s, bounded by its timeout,
// and returns nil if it passed. Type "none" always passes.
func Check(ctx context.Context, k Key, s Spec) error {
	if s.Type == "exec" {
		return RunCommand(ctx, s.Command, execEnv(k, s), s.timeout())
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	switch s.Type {
	case "none":
		return nil
	case "tcp":
		return checkTCP(ctx, s)
	case "ftp":
		return checkFTP(ctx, s)
	case "http", "https":
		return checkHTTP(ctx, s)
	}
	return fmt.Errorf("unknown check type %q", s.Type)
}

func execEnv(k Key, s Spec) []string {
	return []string{
		"NFHELPER_SERVICE=" + k.Service,
		"NFHELPER_SERVER_ADDRESS=" + s.Addr.Addr().String(),
		"NFHELPER_SERVER_PORT=" + strconv.Itoa(int(s.Addr.Port())),
	}
}

func checkTCP(ctx context.Context, s Spec) error {
	c, err := dial(ctx, s.Addr.String())
	if err != nil {
		return err
	}
	return c.Close()
}

func dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// bound makes c's I/O end at ctx's deadline, or at once when ctx is
// cancelled; the returned func undoes the latter.
func bound(ctx context.Context, c net.Conn) (stop func() bool) {
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	return context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
}
