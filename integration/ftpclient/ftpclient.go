// Package ftpclient is a minimal FTP client for nfhelper's integration tests:
// anonymous login and binary RETR over PASV, EPSV, PORT or EPRT data
// connections, for IPv4 and IPv6.
//
// Unlike most clients it always connects to the address of a 227 reply (never
// substituting the control connection's peer): the reply's address is what
// nfhelperd rewrites, so it is what the tests check.
package ftpclient

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Mode selects how data connections are made.
type Mode int

const (
	PASV Mode = iota // client connects to the address of a 227 reply (IPv4 only)
	EPSV             // client connects to the control peer at the 229 port
	PORT             // server connects to the client; IPv4 only
	EPRT             // server connects to the client; IPv4 or IPv6
)

func (m Mode) String() string {
	switch m {
	case PASV:
		return "PASV"
	case EPSV:
		return "EPSV"
	case PORT:
		return "PORT"
	case EPRT:
		return "EPRT"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Passive reports whether the client opens the data connection.
func (m Mode) Passive() bool { return m == PASV || m == EPSV }

// ParseMode parses "pasv", "epsv", "port" or "eprt" (any case).
func ParseMode(s string) (Mode, error) {
	for _, m := range []Mode{PASV, EPSV, PORT, EPRT} {
		if strings.EqualFold(s, m.String()) {
			return m, nil
		}
	}
	return 0, fmt.Errorf("unknown FTP data mode %q", s)
}

// DefaultTimeout bounds each protocol step when the context has no earlier
// deadline.
const DefaultTimeout = 30 * time.Second

// Client is one FTP control connection. It is not safe for concurrent use.
type Client struct {
	Mode Mode
	// Timeout bounds each step (command/reply exchange, data connection
	// set-up, a whole transfer); DefaultTimeout when zero.
	Timeout time.Duration
	// Trace, when set, receives the protocol exchange: "> CMD" and "< reply".
	Trace io.Writer

	// Filled by every transfer:
	LastPassiveReply string // the 227/229 reply text (passive modes)
	LastDataPeer     string // remote address of the data connection
	LastDataLocal    string // local address of the data connection

	conn   net.Conn
	tp     *textproto.Conn
	binary bool
}

// Dial connects to addr ("host:port") and reads the greeting.
func Dial(ctx context.Context, addr string) (*Client, error) {
	return DialWith(ctx, addr, &net.Dialer{})
}

// DialWith is Dial with a dialer of the caller's, for socket options on
// the control connection.
func DialWith(ctx context.Context, addr string, d *net.Dialer) (*Client, error) {
	c := &Client{}
	dctx, cancel := c.stepCtx(ctx)
	defer cancel()
	conn, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c.conn = conn
	c.tp = textproto.NewConn(conn)
	if _, _, err := c.read(ctx, 2); err != nil {
		conn.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	return c, nil
}

func (c *Client) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return DefaultTimeout
}

func (c *Client) stepCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.timeout())
}

func (c *Client) deadline(ctx context.Context) time.Time {
	d := time.Now().Add(c.timeout())
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	return d
}

func (c *Client) tracef(format string, args ...any) {
	if c.Trace != nil {
		fmt.Fprintf(c.Trace, format+"\n", args...)
	}
}

// read reads one (possibly multi-line) reply; expect is its first digit, as
// for textproto.Reader.ReadResponse.
func (c *Client) read(ctx context.Context, expect int) (int, string, error) {
	_ = c.conn.SetReadDeadline(c.deadline(ctx))
	code, msg, err := c.tp.ReadResponse(expect)
	if code != 0 {
		c.tracef("< %d %s", code, msg)
	}
	return code, msg, err
}

// Cmd sends a command and reads its reply, which must start with the digit expect.
func (c *Client) Cmd(ctx context.Context, expect int, format string, args ...any) (int, string, error) {
	line := fmt.Sprintf(format, args...)
	c.tracef("> %s", line)
	_ = c.conn.SetWriteDeadline(c.deadline(ctx))
	if _, err := c.tp.Cmd("%s", line); err != nil {
		return 0, "", err
	}
	return c.read(ctx, expect)
}

// Login logs in; an empty user means anonymous.
func (c *Client) Login(ctx context.Context, user, pass string) error {
	if user == "" {
		user, pass = "anonymous", "nfhelper@example.com"
	}
	code, _, err := c.Cmd(ctx, 0, "USER %s", user)
	if err != nil && code == 0 {
		return err
	}
	switch {
	case code == 230:
		return nil
	case code == 331:
		_, _, err = c.Cmd(ctx, 2, "PASS %s", pass)
		return err
	default:
		return fmt.Errorf("USER: %d", code)
	}
}

// LocalAddr and RemoteAddr are the control connection's addresses.
func (c *Client) LocalAddr() net.Addr  { return c.conn.LocalAddr() }
func (c *Client) RemoteAddr() net.Addr { return c.conn.RemoteAddr() }

var pasvRE = regexp.MustCompile(`(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})`)

// ParsePASV extracts the address of a 227 reply text.
func ParsePASV(msg string) (netip.AddrPort, error) {
	m := pasvRE.FindStringSubmatch(msg)
	if m == nil {
		return netip.AddrPort{}, fmt.Errorf("no address in 227 reply %q", msg)
	}
	var n [6]byte
	for i := range n {
		v, err := strconv.Atoi(m[i+1])
		if err != nil || v > 255 {
			return netip.AddrPort{}, fmt.Errorf("bad number in 227 reply %q", msg)
		}
		n[i] = byte(v)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(n[:4])), uint16(n[4])<<8|uint16(n[5])), nil
}

// ParseEPSV extracts the port of a 229 reply text: "(|||port|)" with any
// delimiter character.
func ParseEPSV(msg string) (uint16, error) {
	i := strings.IndexByte(msg, '(')
	j := strings.LastIndexByte(msg, ')')
	if i < 0 || j < i+5 {
		return 0, fmt.Errorf("no (|||port|) in 229 reply %q", msg)
	}
	s := msg[i+1 : j]
	d := s[0]
	if s[1] != d || s[2] != d || s[len(s)-1] != d {
		return 0, fmt.Errorf("bad 229 reply %q", msg)
	}
	p, err := strconv.ParseUint(s[3:len(s)-1], 10, 16)
	if err != nil || p == 0 {
		return 0, fmt.Errorf("bad port in 229 reply %q", msg)
	}
	return uint16(p), nil
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// Retr fetches name into memory.
func (c *Client) Retr(ctx context.Context, name string) ([]byte, error) {
	var b strings.Builder
	if _, err := c.RetrTo(ctx, name, &b); err != nil {
		return nil, err
	}
	return []byte(b.String()), nil
}

// RetrSHA256 fetches name and returns its size and sha256.
func (c *Client) RetrSHA256(ctx context.Context, name string) (int64, []byte, error) {
	var h hash.Hash = sha256.New()
	n, err := c.RetrTo(ctx, name, h)
	if err != nil {
		return n, nil, err
	}
	return n, h.Sum(nil), nil
}

// RetrTo fetches name in binary mode over a new data connection made as
// c.Mode says, writing it to w.
func (c *Client) RetrTo(ctx context.Context, name string, w io.Writer) (int64, error) {
	if !c.binary {
		if _, _, err := c.Cmd(ctx, 2, "TYPE I"); err != nil {
			return 0, fmt.Errorf("TYPE I: %w", err)
		}
		c.binary = true
	}
	c.LastPassiveReply, c.LastDataPeer, c.LastDataLocal = "", "", ""
	var (
		data net.Conn
		ln   *net.TCPListener
		err  error
	)
	if c.Mode.Passive() {
		data, err = c.openPassive(ctx)
	} else {
		ln, err = c.openActive(ctx)
	}
	if err != nil {
		return 0, err
	}
	if ln != nil {
		defer ln.Close()
	}
	if data != nil {
		defer data.Close()
	}

	if _, _, err := c.Cmd(ctx, 1, "RETR %s", name); err != nil {
		return 0, fmt.Errorf("RETR %s: %w", name, err)
	}
	if ln != nil {
		_ = ln.SetDeadline(c.deadline(ctx))
		data, err = ln.Accept()
		if err != nil {
			return 0, fmt.Errorf("accept data connection: %w", err)
		}
		defer data.Close()
		c.LastDataPeer = addrPortOf(data.RemoteAddr()).String()
		c.LastDataLocal = addrPortOf(data.LocalAddr()).String()
	}
	_ = data.SetDeadline(c.deadline(ctx))
	n, err := io.Copy(w, data)
	if err != nil {
		return n, fmt.Errorf("data transfer of %s: %w", name, err)
	}
	data.Close()
	if _, _, err := c.read(ctx, 2); err != nil {
		return n, fmt.Errorf("after RETR %s: %w", name, err)
	}
	return n, nil
}

func (c *Client) openPassive(ctx context.Context) (net.Conn, error) {
	var target netip.AddrPort
	switch c.Mode {
	case PASV:
		if !addrPortOf(c.conn.RemoteAddr()).Addr().Is4() {
			return nil, errors.New("PASV needs an IPv4 control connection")
		}
		code, msg, err := c.Cmd(ctx, 2, "PASV")
		if err != nil {
			return nil, fmt.Errorf("PASV: %w", err)
		}
		c.LastPassiveReply = fmt.Sprintf("%d %s", code, msg)
		if code != 227 {
			return nil, fmt.Errorf("PASV: unexpected reply %d %s", code, msg)
		}
		if target, err = ParsePASV(msg); err != nil {
			return nil, err
		}
	case EPSV:
		code, msg, err := c.Cmd(ctx, 2, "EPSV")
		if err != nil {
			return nil, fmt.Errorf("EPSV: %w", err)
		}
		c.LastPassiveReply = fmt.Sprintf("%d %s", code, msg)
		if code != 229 {
			return nil, fmt.Errorf("EPSV: unexpected reply %d %s", code, msg)
		}
		port, err := ParseEPSV(msg)
		if err != nil {
			return nil, err
		}
		target = netip.AddrPortFrom(addrPortOf(c.conn.RemoteAddr()).Addr(), port)
	}
	dctx, cancel := c.stepCtx(ctx)
	defer cancel()
	// From the control connection's address, as a host with several
	// would (and as the server expects of one client).
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: addrPortOf(c.conn.LocalAddr()).Addr().AsSlice()}}
	conn, err := d.DialContext(dctx, "tcp", target.String())
	if err != nil {
		return nil, fmt.Errorf("data connection to %s: %w", target, err)
	}
	c.LastDataPeer, c.LastDataLocal = target.String(), addrPortOf(conn.LocalAddr()).String()
	return conn, nil
}

func (c *Client) openActive(ctx context.Context) (*net.TCPListener, error) {
	local := addrPortOf(c.conn.LocalAddr()).Addr()
	if c.Mode == PORT && !local.Is4() {
		return nil, errors.New("PORT needs an IPv4 control connection")
	}
	ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, 0)))
	if err != nil {
		return nil, err
	}
	port := addrPortOf(ln.Addr()).Port()
	switch c.Mode {
	case PORT:
		a := local.As4()
		_, _, err = c.Cmd(ctx, 2, "PORT %d,%d,%d,%d,%d,%d", a[0], a[1], a[2], a[3], port>>8, port&0xff)
	case EPRT:
		af := 1
		if !local.Is4() {
			af = 2
		}
		_, _, err = c.Cmd(ctx, 2, "EPRT |%d|%s|%d|", af, local, port)
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("%v: %w", c.Mode, err)
	}
	return ln, nil
}

// Quit sends QUIT and closes the connection.
func (c *Client) Quit(ctx context.Context) error {
	_, _, err := c.Cmd(ctx, 2, "QUIT")
	if cerr := c.conn.Close(); err == nil {
		err = cerr
	}
	return err
}

// Close closes the control connection without QUIT.
func (c *Client) Close() error { return c.conn.Close() }
