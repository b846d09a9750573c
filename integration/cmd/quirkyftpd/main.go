// Command quirkyftpd is a small anonymous, read-only FTP server for nfhelper's
// integration tests. It serves RETR of the files in -root over PASV, EPSV,
// PORT and EPRT, but sends its 227/229 replies in odd ways, chosen per
// control connection by the USER name:
//
//	anonymous, ftp  227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)
//	split227        TCP_NODELAY, the 227 reply in two writes 50 ms apart,
//	                split inside the address
//	split227nagle   the same with Nagle's algorithm left on
//	split227crlf    the 227 reply split between its CR and LF
//	byte227         TCP_NODELAY, one write per byte (1 ms apart)
//	multi227        227-Entering Passive Mode / 227 (h1,...,p2)
//	multi227first   227-Entering Passive Mode (h1,...,p2) / 227 OK
//	dot227          227 Entering passive mode. h1,...,p2
//	listen227       227 Data transfer will passively listen to h1,...,p2
//	bare227         227 h1,...,p2
//	split229        the 229 reply in two writes 50 ms apart, inside the port
//	byte229         the 229 reply one byte per write
//	bounce227       the first 227 names 10.0.0.12 (another real server);
//	                later ones are normal
//	bounce227ext    the first 227 names 192.0.2.1; later ones are normal
//
// The 227 address is the control connection's local address (its own).
// PORT and EPRT are accepted for any address and port (a "promiscuous"
// server) and EPRT with any delimiter character; commands are
// case-insensitive. Every command is logged to stderr.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

func main() {
	root := flag.String("root", "", "directory whose files are served")
	listen := flag.String("listen", "", "comma-separated host:port addresses to listen on")
	flag.Parse()
	if *root == "" || *listen == "" {
		log.Fatal("-root and -listen are required")
	}
	log.SetFlags(log.Lmicroseconds)
	var wg sync.WaitGroup
	for _, a := range strings.Split(*listen, ",") {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			log.Fatal(err)
		}
		log.Printf("listening on %s", ln.Addr())
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					log.Printf("accept: %v", err)
					return
				}
				go (&session{root: *root, c: c.(*net.TCPConn), variant: "anonymous"}).serve()
			}
		}()
	}
	wg.Wait()
}

type session struct {
	root    string
	c       *net.TCPConn
	variant string
	pasvN   int

	ln     net.Listener   // passive listener
	active netip.AddrPort // PORT/EPRT target
}

func (s *session) logf(format string, args ...any) {
	log.Printf("%s %s: "+format, append([]any{s.c.RemoteAddr(), s.variant}, args...)...)
}

func (s *session) reply(text string) error {
	_ = s.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	_, err := io.WriteString(s.c, text)
	return err
}

// writeParts writes the parts one write each, pause apart.
func (s *session) writeParts(pause time.Duration, parts ...string) error {
	_ = s.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	for i, p := range parts {
		if i > 0 {
			time.Sleep(pause)
		}
		if _, err := io.WriteString(s.c, p); err != nil {
			return err
		}
	}
	return nil
}

func bytesOf(s string) []string {
	out := make([]string, len(s))
	for i := range s {
		out[i] = s[i : i+1]
	}
	return out
}

func (s *session) serve() {
	defer s.c.Close()
	defer s.closeData()
	s.logf("connected")
	if err := s.reply("220 quirkyftpd ready\r\n"); err != nil {
		return
	}
	r := bufio.NewReader(s.c)
	for {
		_ = s.c.SetReadDeadline(time.Now().Add(2 * time.Minute))
		line, err := r.ReadString('\n')
		if err != nil {
			s.logf("read: %v", err)
			return
		}
		line = strings.TrimRight(line, "\r\n")
		verb, arg, _ := strings.Cut(line, " ")
		verb = strings.ToUpper(verb)
		s.logf("< %q", line)
		if err := s.handle(verb, arg); err != nil {
			s.logf("%s: %v", verb, err)
			return
		}
		if verb == "QUIT" {
			return
		}
	}
}

func (s *session) handle(verb, arg string) error {
	switch verb {
	case "USER":
		s.variant = strings.ToLower(arg)
		if s.variant == "split227nagle" {
			_ = s.c.SetNoDelay(false)
		}
		return s.reply("331 any password will do\r\n")
	case "PASS":
		return s.reply("230 logged in\r\n")
	case "SYST":
		return s.reply("215 UNIX Type: L8\r\n")
	case "TYPE", "MODE", "STRU", "NOOP":
		return s.reply("200 OK\r\n")
	case "PWD":
		return s.reply("257 \"/\" is the current directory\r\n")
	case "CWD":
		return s.reply("250 OK\r\n")
	case "FEAT":
		return s.reply("211-Features:\r\n EPSV\r\n EPRT\r\n SIZE\r\n211 End\r\n")
	case "SIZE":
		fi, err := os.Stat(s.path(arg))
		if err != nil || !fi.Mode().IsRegular() {
			return s.reply("550 no such file\r\n")
		}
		return s.reply(fmt.Sprintf("213 %d\r\n", fi.Size()))
	case "PASV":
		return s.pasv()
	case "EPSV":
		return s.epsv(arg)
	case "PORT":
		ap, err := parsePORT(arg)
		if err != nil {
			return s.reply("501 " + err.Error() + "\r\n")
		}
		s.closeData()
		s.active = ap
		return s.reply("200 PORT command successful\r\n")
	case "EPRT":
		ap, err := parseEPRT(arg)
		if err != nil {
			return s.reply("501 " + err.Error() + "\r\n")
		}
		s.closeData()
		s.active = ap
		return s.reply("200 EPRT command successful\r\n")
	case "RETR":
		return s.retr(arg)
	case "QUIT":
		return s.reply("221 bye\r\n")
	default:
		return s.reply("502 not implemented\r\n")
	}
}

func (s *session) path(name string) string {
	return filepath.Join(s.root, filepath.Base("/"+name))
}

func (s *session) closeData() {
	if s.ln != nil {
		s.ln.Close()
		s.ln = nil
	}
	s.active = netip.AddrPort{}
}

func (s *session) listen() (uint16, error) {
	s.closeData()
	local := s.c.LocalAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
	ln, err := net.Listen("tcp", net.JoinHostPort(local.String(), "0"))
	if err != nil {
		return 0, err
	}
	s.ln = ln
	return ln.Addr().(*net.TCPAddr).AddrPort().Port(), nil
}

func (s *session) pasv() error {
	local := s.c.LocalAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
	if !local.Is4() {
		return s.reply("425 PASV needs IPv4; use EPSV\r\n")
	}
	port, err := s.listen()
	if err != nil {
		return s.reply("425 " + err.Error() + "\r\n")
	}
	s.pasvN++
	addr := local.As4()
	switch {
	case s.variant == "bounce227" && s.pasvN == 1:
		addr = [4]byte{10, 0, 0, 12}
	case s.variant == "bounce227ext" && s.pasvN == 1:
		addr = [4]byte{192, 0, 2, 1}
	}
	nums := fmt.Sprintf("%d,%d,%d,%d,%d,%d", addr[0], addr[1], addr[2], addr[3], port>>8, port&0xff)
	std := "227 Entering Passive Mode (" + nums + ")\r\n"
	s.logf("> 227 %s", nums)
	switch s.variant {
	case "split227", "split227nagle":
		cut := len("227 Entering Passive Mode (") + 4 // inside the address
		return s.writeParts(50*time.Millisecond, std[:cut], std[cut:])
	case "split227crlf":
		return s.writeParts(50*time.Millisecond, std[:len(std)-1], std[len(std)-1:])
	case "byte227":
		return s.writeParts(time.Millisecond, bytesOf(std)...)
	case "multi227":
		return s.reply("227-Entering Passive Mode\r\n227 (" + nums + ")\r\n")
	case "multi227first":
		return s.reply("227-Entering Passive Mode (" + nums + ")\r\n227 OK\r\n")
	case "dot227":
		return s.reply("227 Entering passive mode. " + nums + "\r\n")
	case "listen227":
		return s.reply("227 Data transfer will passively listen to " + nums + "\r\n")
	case "bare227":
		return s.reply("227 " + nums + "\r\n")
	default:
		return s.reply(std)
	}
}

func (s *session) epsv(arg string) error {
	if strings.EqualFold(arg, "ALL") {
		return s.reply("200 EPSV ALL ok\r\n")
	}
	port, err := s.listen()
	if err != nil {
		return s.reply("425 " + err.Error() + "\r\n")
	}
	std := fmt.Sprintf("229 Extended Passive mode OK (|||%d|)\r\n", port)
	s.logf("> 229 %d", port)
	switch s.variant {
	case "split229":
		cut := strings.Index(std, "|||") + 4 // inside the port
		return s.writeParts(50*time.Millisecond, std[:cut], std[cut:])
	case "byte229":
		return s.writeParts(time.Millisecond, bytesOf(std)...)
	default:
		return s.reply(std)
	}
}

func (s *session) retr(name string) error {
	f, err := os.Open(s.path(name))
	if err != nil {
		return s.reply("550 no such file\r\n")
	}
	defer f.Close()
	var data net.Conn
	switch {
	case s.ln != nil:
		if err := s.reply("150 Opening BINARY mode data connection\r\n"); err != nil {
			return err
		}
		_ = s.ln.(*net.TCPListener).SetDeadline(time.Now().Add(30 * time.Second))
		data, err = s.ln.Accept()
	case s.active.IsValid():
		local := s.c.LocalAddr().(*net.TCPAddr).AddrPort().Addr()
		d := net.Dialer{Timeout: 30 * time.Second, LocalAddr: &net.TCPAddr{IP: local.AsSlice()}}
		data, err = d.Dial("tcp", s.active.String())
		if err == nil {
			err = s.reply("150 Opening BINARY mode data connection\r\n")
		}
	default:
		return s.reply("425 use PASV, EPSV, PORT or EPRT first\r\n")
	}
	s.closeData()
	if err != nil {
		s.logf("data connection: %v", err)
		return s.reply("425 can't open data connection\r\n")
	}
	s.logf("data connection %s -> %s", data.LocalAddr(), data.RemoteAddr())
	_ = data.SetDeadline(time.Now().Add(2 * time.Minute))
	n, err := io.Copy(data, f)
	cerr := data.Close()
	if err != nil || cerr != nil {
		s.logf("sent %d bytes: %v %v", n, err, cerr)
		return s.reply("426 transfer aborted\r\n")
	}
	s.logf("sent %d bytes", n)
	return s.reply("226 Transfer complete\r\n")
}

func parsePORT(arg string) (netip.AddrPort, error) {
	f := strings.Split(strings.TrimSpace(arg), ",")
	if len(f) != 6 {
		return netip.AddrPort{}, fmt.Errorf("bad PORT %q", arg)
	}
	var n [6]byte
	for i, s := range f {
		v, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || v < 0 || v > 255 {
			return netip.AddrPort{}, fmt.Errorf("bad PORT %q", arg)
		}
		n[i] = byte(v)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(n[:4])), uint16(n[4])<<8|uint16(n[5])), nil
}

// parseEPRT parses <d>af<d>addr<d>port<d> with any delimiter d (RFC 2428).
func parseEPRT(arg string) (netip.AddrPort, error) {
	arg = strings.TrimSpace(arg)
	if len(arg) < 7 {
		return netip.AddrPort{}, fmt.Errorf("bad EPRT %q", arg)
	}
	f := strings.Split(arg, arg[:1])
	if len(f) != 5 || f[0] != "" || f[4] != "" {
		return netip.AddrPort{}, fmt.Errorf("bad EPRT %q", arg)
	}
	a, err := netip.ParseAddr(f[2])
	if err != nil || (f[1] == "1") != a.Is4() || (f[1] != "1" && f[1] != "2") {
		return netip.AddrPort{}, fmt.Errorf("bad EPRT address %q", arg)
	}
	p, err := strconv.ParseUint(f[3], 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad EPRT port %q", arg)
	}
	return netip.AddrPortFrom(a, uint16(p)), nil
}
