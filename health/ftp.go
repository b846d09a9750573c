package health

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// checkFTP reads the greeting and passes on a 220. With a user it logs in
// and asks for a passive data channel (EPSV, else PASV), then connects to
// the port announced on the checked address: a server whose data side is
// broken is down.
func checkFTP(ctx context.Context, s Spec) error {
	c, err := dial(ctx, s.Addr.String())
	if err != nil {
		return err
	}
	defer c.Close()
	defer bound(ctx, c)()
	f := &ftpConn{c: c, r: bufio.NewReaderSize(c, maxReplyLine)}
	code, text, err := readReply(f.r)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrGreeting, err)
	}
	if code != 220 {
		return fmt.Errorf("%w: %d %s", ErrGreeting, code, text)
	}
	if s.User != "" {
		if err := f.login(s.User, s.Password); err != nil {
			return err
		}
		if err := f.data(ctx, s.Addr.Addr()); err != nil {
			return err
		}
	}
	// The check has passed; how the server takes its leave does not matter.
	f.cmd("QUIT")
	return nil
}

type ftpConn struct {
	c net.Conn
	r *bufio.Reader
}

// cmd sends line and reads the reply.
func (f *ftpConn) cmd(line string) (int, string, error) {
	if _, err := f.c.Write([]byte(line + "\r\n")); err != nil {
		return 0, "", err
	}
	return readReply(f.r)
}

func (f *ftpConn) login(user, password string) error {
	if strings.ContainsAny(user+password, "\r\n") {
		return fmt.Errorf("%w: line break in user or password", ErrLogin)
	}
	code, text, err := f.cmd("USER " + user)
	if err == nil && code == 331 {
		code, text, err = f.cmd("PASS " + password)
	}
	switch {
	case err != nil:
		return fmt.Errorf("%w: %w", ErrLogin, err)
	case code != 230 && code != 202:
		return fmt.Errorf("%w: %d %s", ErrLogin, code, text)
	}
	return nil
}

// data asks for a passive data port and connects to it on addr, as curl
// does, whatever address a 227 names.
func (f *ftpConn) data(ctx context.Context, addr netip.Addr) error {
	code, text, err := f.cmd("EPSV")
	if err != nil {
		return err
	}
	p, perr := parse229(text)
	if code != 229 || perr != nil {
		if code, text, err = f.cmd("PASV"); err != nil {
			return err
		}
		if code != 227 {
			return fmt.Errorf("%w: no passive mode: %d %s", ErrData, code, text)
		}
		if p, err = parse227(text); err != nil {
			return fmt.Errorf("%w: %w", ErrData, err)
		}
	}
	d, err := dial(ctx, netip.AddrPortFrom(addr, p).String())
	if err != nil {
		return fmt.Errorf("%w: port %d: %w", ErrData, p, err)
	}
	return d.Close()
}
