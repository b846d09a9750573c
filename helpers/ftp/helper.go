// Package ftp is the FTP helper: like Linux's ip_vs_ftp and nf_nat_ftp it
// makes the addresses in PASV replies name the virtual service instead of
// the real server, and it asks the datapath to let the data connections that
// PORT, EPRT, PASV and EPSV announce through.
package ftp

import (
	"bytes"
	"net/netip"

	"github.com/nfhelper/nfhelper/ipvs"
)

func init() { ipvs.Register(Helper{}) }

// minDataPort is the lowest port a client may announce for an active data
// connection; lower ones are services the server could be bounced to.
const minDataPort = 1024

// Helper is the FTP control-connection helper, registered as "ftp".
type Helper struct{}

// Name implements ipvs.Helper.
func (Helper) Name() string { return "ftp" }

// Inspect implements ipvs.Helper. It reads every complete line of payload
// that starts in it; a line without its "\n" yet is left alone, as Linux
// does, rather than buffered.
func (Helper) Inspect(s *ipvs.Session, dir ipvs.Direction, payload []byte, r *ipvs.Result) {
	for off := 0; off < len(payload); {
		n := bytes.IndexByte(payload[off:], '\n')
		if n < 0 {
			return
		}
		line := payload[off : off+n]
		if len(line) > 0 && line[len(line)-1] == '\r' {
			line = line[:len(line)-1]
		}
		switch dir {
		case ipvs.FromServer:
			reply(s, line, off, r)
		case ipvs.FromClient:
			command(s, line, r)
		}
		off += n + 1
	}
}

// reply handles one server reply line starting at off in the payload.
func reply(s *ipvs.Session, line []byte, off int, r *ipvs.Result) {
	switch {
	case hasPrefix(line, "227 "):
		vip := s.VIP.Addr()
		if !vip.Unmap().Is4() {
			return // PASV cannot name an IPv6 VIP; the client should use EPSV
		}
		ap, start, end, err := Parse227(line)
		// Only the real server may announce where it listens: anything else
		// would let it point clients elsewhere through our VIP.
		if err != nil || ap.Addr() != s.Server.Addr().Unmap() {
			return
		}
		var buf [len("255,255,255,255,255,255")]byte
		text := AppendHostPort(buf[:0], netip.AddrPortFrom(vip.Unmap(), ap.Port()))
		if !bytes.Equal(text, line[start:end]) {
			r.Replace(off+start, end-start, text)
		}
		r.Open(ipvs.Channel{
			Kind:   ipvs.ChannelPassive,
			Client: netip.AddrPortFrom(s.Client.Addr(), 0),
			Server: ap,
			VIP:    netip.AddrPortFrom(vip, ap.Port()),
		})
	case hasPrefix(line, "229 "):
		port, err := Parse229(line)
		if err != nil {
			return
		}
		r.Open(ipvs.Channel{
			Kind:   ipvs.ChannelPassive,
			Client: netip.AddrPortFrom(s.Client.Addr(), 0),
			Server: netip.AddrPortFrom(s.Server.Addr(), port),
			VIP:    netip.AddrPortFrom(s.VIP.Addr(), port),
		})
	}
}

// command handles one client command line. The real server sees the client's
// own address, so nothing needs rewriting; the server's connection to the
// client only needs to leave from the VIP.
func command(s *ipvs.Session, line []byte, r *ipvs.Result) {
	var ap netip.AddrPort
	var err error
	switch {
	case hasPrefix(line, "PORT "):
		ap, err = ParsePORT(line[len("PORT "):])
	case hasPrefix(line, "EPRT "):
		ap, err = ParseEPRT(line[len("EPRT "):])
	default:
		return
	}
	// Anti-bounce (RFC 2577): the data connection must go back to the client
	// itself, and not to a privileged port.
	if err != nil || ap.Addr().Unmap() != s.Client.Addr().Unmap() || ap.Port() < minDataPort {
		return
	}
	r.Open(ipvs.Channel{
		Kind:   ipvs.ChannelActive,
		Client: netip.AddrPortFrom(s.Client.Addr(), ap.Port()),
		Server: netip.AddrPortFrom(s.Server.Addr(), 0),
		VIP:    netip.AddrPortFrom(s.VIP.Addr(), 0),
	})
}
