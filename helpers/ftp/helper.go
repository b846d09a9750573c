// Package ftp is the FTP helper: like Linux's ip_vs_ftp and nf_nat_ftp it
// makes the addresses in PASV replies name the virtual service instead of
// the real server, and it asks the core to let the data connections that
// PORT, EPRT, PASV and EPSV announce through.
//
// Unlike the kernel helpers it reads the control connection as two byte
// streams rather than as packets: a line split over segments is carried
// (and, where it may need an edit, held back from the peer) until it is
// complete, and multi-line replies are followed, so that what it does does
// not depend on how the peers or the network segment the stream.
package ftp

import (
	"bytes"
	"net/netip"
	"strconv"

	"github.com/nfhelper/nfhelper/ipvs"
)

func init() { ipvs.Register(Helper{}) }

// minDataPort is the lowest port a data channel may use unless the policy
// allows lower ones; lower ones are services the peer could be bounced to.
const minDataPort = 1024

// maxPending bounds how many PASV (or EPSV) commands may await their reply:
// every 227 a pipelining client asked for must be rewritten, however many
// it asked for at once (an unrewritten one would show the real server).
const maxPending = 1<<16 - 1

// Helper is the FTP control-connection helper, registered as "ftp".
type Helper struct{}

// Name implements ipvs.Helper.
func (Helper) Name() string { return "ftp" }

// Bind implements ipvs.Helper. The returned state is the connection's only
// allocation: Inspect does not allocate.
func (Helper) Bind(s *ipvs.Session, p *ipvs.Policy) ipvs.ConnHelper {
	c := &conn{}
	if s != nil {
		c.s = *s
	}
	if p == nil {
		p = &ipvs.DefaultPolicy
	}
	// The policy is read once: a service reconfigured later applies to new
	// connections, and Inspect never races with the writer.
	c.loose, c.lowPorts, c.block = p.Loose, p.AllowLowPorts, p.BlockRefused
	return c
}

// conn is one control connection's state.
type conn struct {
	s               ipvs.Session
	loose, lowPorts bool
	block           bool // refused PORT/EPRT lose their verb

	// Client commands awaiting their reply. They are counters, not flags,
	// so that a pipelining client's PASV replies are all honoured.
	pasv, epsv uint16
	epsvAll    bool // EPSV ALL was sent: PORT, PASV, EPRT are refused
	auth       bool // AUTH was sent: 234 (or 235 after ADAT) means TLS
	stopped    bool
	// adopted: taken up mid-stream (ipvs.Adoptable): the commands sent
	// before are unknown, so a 227 or 229 nobody asked for here answers a
	// PASV or EPSV sent before.
	adopted bool

	dir [2]stream
}

// stream is where one direction's byte stream stands at data[0] of the next
// Inspect call. Only bytes the helper has handled change it: a carried line
// is handled when it is complete, so the state stays the one at its start.
type stream struct {
	// skip: data[0] is inside a line whose start was already handled (it
	// was too long to carry, or of no interest): skip to its "\n".
	skip bool
	// Server: the code of the multi-line reply being read ("ddd-" seen,
	// "ddd " not yet), 0 outside one; found: the current 227 or 229 reply
	// already had its numbers handled.
	multi uint16
	found bool
	// resync: the next data may start inside a line (adopted
	// mid-stream): unless it starts like one, skip to its end.
	resync bool
}

// Adopted implements ipvs.Adoptable.
func (c *conn) Adopted() {
	c.adopted = true
	for d := range c.dir {
		c.dir[d].resync = true
	}
}

// startsLine reports whether data, the first bytes of a stream taken up
// mid-stream, may start a line of direction dir: a reply's three digits
// and a space or "-", a command's letters and a space or CR LF. Bytes that
// may still become one count as one.
func startsLine(dir ipvs.Direction, data []byte) bool {
	if dir == ipvs.FromServer {
		for i := range min(len(data), 3) {
			if data[i] < '0' || data[i] > '9' {
				return false
			}
		}
		return len(data) < 4 || data[3] == ' ' || data[3] == '-'
	}
	i := 0
	for i < len(data) && (data[i]|0x20 >= 'a' && data[i]|0x20 <= 'z') {
		i++
	}
	switch {
	case i == len(data):
		return true
	case i == 0:
		return false
	case data[i] == ' ':
		return true
	}
	return data[i] == '\r' && (i+1 == len(data) || data[i+1] == '\n')
}

// SaveState implements ipvs.StateSaver: the pending commands in bits 0-31,
// the flags from bit 32, each direction's stream in 12 bits from bit 40
// (skip, found, then the 10-bit code of a multi-line reply). Zero is the
// state of a new connection.
func (c *conn) SaveState() uint64 {
	w := uint64(c.pasv) | uint64(c.epsv)<<16
	for i, b := range []bool{c.epsvAll, c.auth, c.stopped, c.adopted} {
		if b {
			w |= 1 << (32 + i)
		}
	}
	for d := range c.dir {
		st := &c.dir[d]
		v := uint64(st.multi&0x3ff) << 2
		if st.skip {
			v |= 1
		}
		if st.found {
			v |= 2
		}
		w |= v << (40 + 12*d)
	}
	return w
}

// LoadState implements ipvs.StateSaver.
func (c *conn) LoadState(w uint64) {
	c.pasv, c.epsv = uint16(w), uint16(w>>16)
	c.epsvAll, c.auth, c.stopped, c.adopted = w&(1<<32) != 0, w&(1<<33) != 0, w&(1<<34) != 0, w&(1<<35) != 0
	for d := range c.dir {
		v := w >> (40 + 12*d)
		c.dir[d] = stream{skip: v&1 != 0, found: v&2 != 0, multi: uint16(v>>2) & 0x3ff}
	}
}

// Inspect implements ipvs.ConnHelper.
func (c *conn) Inspect(dir ipvs.Direction, data []byte, fixed int, fin bool, r *ipvs.Result) {
	if c.stopped || dir > ipvs.FromServer {
		return
	}
	fixed = min(max(fixed, 0), len(data))
	st := &c.dir[dir]
	off := 0
	if st.resync && len(data) > 0 {
		st.resync = false
		st.skip = !startsLine(dir, data)
	}
	if st.skip {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			return
		}
		st.skip = false
		off = i + 1
	}
	for off < len(data) {
		n := bytes.IndexByte(data[off:], '\n')
		if n < 0 {
			break
		}
		// A line longer than MaxCarry is only parsed as far as its start
		// tells (the reply code), whether or not it came in one segment:
		// had it been split, the helper could not have carried it.
		c.line(dir, st, data, off, n, n <= ipvs.MaxCarry, fixed, r)
		if c.stopped {
			return
		}
		off += n + 1
	}
	if off == len(data) {
		return
	}
	tail := data[off:]
	if !fin && len(tail) <= ipvs.MaxCarry {
		if hold, ok := c.carry(dir, st, tail); ok {
			r.Carry = len(tail)
			r.Hold = max(0, len(tail)-hold)
			return
		}
	}
	// Not carried: handle what the start of the line tells, and skip the
	// rest of it in the next calls.
	c.line(dir, st, data, off, len(tail), false, fixed, r)
	st.skip = !fin && !c.stopped
}

// line handles the line data[off:off+n] (without its "\n"). Its text is
// parsed only if full; otherwise only its start counts.
func (c *conn) line(dir ipvs.Direction, st *stream, data []byte, off, n int, full bool, fixed int, r *ipvs.Result) {
	line := data[off : off+n]
	if full && n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if dir == ipvs.FromClient {
		switch {
		case full:
			c.command(data, off, line, fixed, r)
		case hasPrefix(line, "PORT ") || hasPrefix(line, "EPRT "):
			// Too long to read, so not what the helper would let through.
			r.Refuse(ipvs.RefuseMalformed)
			c.neutralize(off, fixed, false, r)
		}
		return
	}
	c.reply(st, data, off, line, full, fixed, r)
}

// carry reports whether the incomplete line tail may still need to be parsed
// and from which of its bytes it may be edited (len(tail) if none).
func (c *conn) carry(dir ipvs.Direction, st *stream, tail []byte) (hold int, ok bool) {
	if dir == ipvs.FromClient {
		// PORT and EPRT are rewritten behind the user's SNAT, and refused
		// ones lose their verb; other commands are only read.
		for _, p := range [...]string{"PORT ", "EPRT "} {
			if prefixFold(tail, p) {
				return 0, true
			}
		}
		for _, p := range [...]string{"PASV", "EPSV", "AUTH "} {
			if prefixFold(tail, p) {
				return len(tail), true
			}
		}
		return 0, false
	}
	code, sep := replyCode(tail)
	// Whether the line is a reply's first or last line is not known yet:
	// "ddd" may go on with " ", "-" or "\r\n".
	undecided := len(tail) < 4 && allDigits(tail) || len(tail) == 4 && tail[3] == '\r' && code >= 0
	switch st.multi {
	case 0:
		switch {
		case undecided:
			return len(tail), true
		case code == 227 && (sep == ' ' || sep == '-'), code == 229 && sep == ' ':
			return 4, true
		case (code == 234 || code == 235) && sep == ' ':
			return len(tail), c.auth
		}
		return 0, false
	case 227:
		if !st.found {
			// The numbers may be on any line of the reply.
			if code == 227 && (sep == ' ' || sep == '-') {
				return 4, true
			}
			return 0, true
		}
	case 229:
		if code == 229 && sep == ' ' {
			return 4, true
		}
	case 234, 235:
		if c.auth && code == int(st.multi) && sep == ' ' {
			return len(tail), true
		}
	}
	// Only whether it is the reply's last line matters.
	return len(tail), undecided && isCodePrefix(tail, st.multi)
}

// command handles one full client command line, without its terminator,
// that starts at off in data.
func (c *conn) command(data []byte, off int, line []byte, fixed int, r *ipvs.Result) {
	const argsAt = len("PORT ")
	args := line[min(argsAt, len(line)):]
	switch {
	case hasPrefix(line, "PORT "):
		ap, err := ParsePORT(args)
		switch to, rewrite, ok, must := c.announce(ap, err, r); {
		case !ok:
			c.neutralize(off, fixed, must, r)
		case rewrite && off+argsAt >= fixed && to.Addr().Is4():
			var buf [len("255,255,255,255,255,255")]byte
			r.Replace(off+argsAt, len(args), AppendHostPort(buf[:0], to))
		}
	case hasPrefix(line, "EPRT "):
		ap, err := ParseEPRT(args)
		switch to, rewrite, ok, must := c.announce(ap, err, r); {
		case !ok:
			c.neutralize(off, fixed, must, r)
		case rewrite && off+argsAt >= fixed:
			var buf [64]byte
			r.Replace(off+argsAt, len(args), appendEPRT(buf[:0], args[0], to))
		}
	case isCommand(line, "PASV"):
		if c.epsvAll {
			r.Refuse(ipvs.RefuseEPSVAll)
		} else if c.pasv < maxPending {
			c.pasv++
		}
	case isCommand(line, "EPSV"):
		switch arg := bytes.Trim(line[len("EPSV"):], " "); {
		case hasPrefix(arg, "ALL") && len(arg) == 3:
			// RFC 2428: the client will use EPSV only; a PASV reply still
			// awaited would no longer be one it asked for.
			c.epsvAll, c.pasv = true, 0
		case len(arg) == 0, len(arg) == 1 && (arg[0] == '1' || arg[0] == '2'):
			if c.epsv < maxPending {
				c.epsv++
			}
		}
	case hasPrefix(line, "AUTH "):
		c.auth = true
	}
}

// announce checks a PORT or EPRT announcement (ap, or the error parsing
// it) and opens its channel; rewrite reports that the server must be told
// to instead, !ok that the command must not reach the server as one where
// the policy blocks refused announcements, and must that it must not
// whatever the policy.
func (c *conn) announce(ap netip.AddrPort, err error, r *ipvs.Result) (to netip.AddrPort, rewrite, ok, must bool) {
	switch {
	case c.epsvAll:
		r.Refuse(ipvs.RefuseEPSVAll)
		return to, false, false, false
	case err != nil:
		r.Refuse(ipvs.RefuseMalformed)
		return to, false, false, false
	}
	return c.active(ap, r)
}

// neutralVerb replaces the verb of a refused PORT or EPRT where the policy
// blocks refused announcements: no server knows it, so the server answers
// 500 rather than connect where the client asked (a bounce to a host or
// port behind the balancer, or an address the server may read otherwise
// than the helper did).
const neutralVerb = "XPRT"

// neutralize makes the command line at off in data one the server
// refuses, where the policy says so or must says it must.
func (c *conn) neutralize(off, fixed int, must bool, r *ipvs.Result) {
	if (c.block || must) && off >= fixed {
		r.Replace(off, len(neutralVerb), []byte(neutralVerb))
	}
}

// appendEPRT appends EPRT arguments for ap with delimiter d.
func appendEPRT(b []byte, d byte, ap netip.AddrPort) []byte {
	proto := byte('1')
	if ap.Addr().Is6() {
		proto = '2'
	}
	b = append(b, d, proto, d)
	b = ap.Addr().AppendTo(b)
	b = append(b, d)
	b = strconv.AppendUint(b, uint64(ap.Port()), 10)
	return append(b, d)
}

// active handles the address a PORT or EPRT command announces; rewrite
// reports that the server must be told to instead, !ok a refusal, must one
// the server must not see as an announcement whatever the policy.
func (c *conn) active(ap netip.AddrPort, r *ipvs.Result) (to netip.AddrPort, rewrite, ok, must bool) {
	client := c.s.Client.Addr()
	addr := ap.Addr()
	switch {
	case addr.Unmap() == client.Unmap():
		addr = client // the form the core knows the client by
	case !c.loose || addr.Unmap().Is4() != client.Unmap().Is4():
		// Even a loose policy cannot send an IPv4 session's data to an
		// IPv6 host or back.
		r.Refuse(ipvs.RefuseBounce)
		return netip.AddrPort{}, false, false, false
	case client.Is4():
		addr = addr.Unmap()
	}
	if ap.Port() < minDataPort && !c.lowPorts {
		r.Refuse(ipvs.RefuseLowPort)
		return netip.AddrPort{}, false, false, false
	}
	if r.Opener == nil {
		return netip.AddrPort{}, false, true, false
	}
	announced := netip.AddrPortFrom(addr, ap.Port())
	to, opened := r.OpenActive(announced)
	if !opened {
		// No port on the client's translated address leads back to it:
		// the server, told the untranslated one, would connect where the
		// client is not. It answers 500 instead, which the client
		// understands.
		r.Refuse(ipvs.RefuseNoPort)
		return netip.AddrPort{}, false, false, true
	}
	return to, to != announced, true, false
}

// reply handles one server line, without its terminator, that starts at off
// in data; full tells whether all of it is there.
func (c *conn) reply(st *stream, data []byte, off int, line []byte, full bool, fixed int, r *ipvs.Result) {
	code, sep := replyCode(line)
	if !full && len(line) < 4 {
		sep = 0 // the rest of the line is unknown: neither end nor "-"
	}
	var last bool // line ends a reply of code reply
	reply := int(st.multi)
	if st.multi == 0 {
		if code < 0 || sep == 0 {
			return // not a reply (or not one we can tell)
		}
		reply = code
		if sep == '-' {
			st.multi, st.found = uint16(code), false
		} else {
			last, st.found = true, false
		}
	} else {
		last = code == reply && (sep == ' ' || sep == '\n')
	}
	if full && !st.found {
		switch {
		case reply == 227:
			from := 0
			if code == 227 {
				from = 4
			}
			if ap, start, end, err := scanHostPort(line, from); err == nil {
				st.found = true
				if !c.passive227(data, off, from, start, end, ap, fixed, r) {
					noPort(data, off, len(line), last && code == 227, start, end, "0,0,0,0,0,0", fixed, r)
				}
			}
		case reply == 229 && last && code == 229 && sep == ' ':
			if port, paren, start, end, err := parse229(line); err == nil {
				st.found = true
				if !c.passive229(data, off, paren, start, end, port, fixed, r) {
					noPort(data, off, len(line), true, start, end, "0", fixed, r)
				}
			}
		}
	}
	if !last {
		return
	}
	// The reply is complete. A 227 or 229 without usable numbers still
	// answers a PASV or EPSV; a 234 (235) after AUTH ends inspection.
	switch reply {
	case 227:
		if !st.found && c.pasv > 0 {
			c.pasv--
		}
	case 229:
		if !st.found && c.epsv > 0 {
			c.epsv--
		}
	case 234, 235:
		if c.auth {
			// The connection turns to TLS (RFC 4217) or is protected by
			// the GSSAPI security exchange (RFC 2228).
			c.stopped, r.Stop = true, true
		}
	}
	st.multi, st.found = 0, false
}

// noReply replaces a 227 or 229 reply for which no VIP port could be had,
// so that it names neither the real server nor a port that leads nowhere.
const noReply = "425 Can't open data connection."

// noPort makes the 227 or 229 line data[off:off+n], with its numbers at
// [start:end) of the line, one that opens no data connection: the whole
// line becomes noReply where it is the reply's only line and none of it
// was delivered, otherwise the numbers become zero (no address, no port).
// The stream's sequence numbers follow the length change (the core).
func noPort(data []byte, off, n int, whole bool, start, end int, zero string, fixed int, r *ipvs.Result) {
	switch {
	case whole && off >= fixed:
		r.Replace(off, n, []byte(noReply))
	case off+start >= fixed:
		r.Replace(off+start, end-start, []byte(zero))
	}
}

// passive227 handles the numbers found at line[start:end] of a 227 reply
// line starting at off in data; free text (which may be resized to keep the
// line's length) runs from line[from] to them. False: no VIP port was to
// be had for the channel.
func (c *conn) passive227(data []byte, off, from, start, end int, ap netip.AddrPort, fixed int, r *ipvs.Result) bool {
	switch {
	case c.pasv > 0:
		c.pasv--
	case !c.adopted:
		r.Refuse(ipvs.RefuseUnsolicited)
		return true
	}
	server := c.s.Server.Addr()
	if ap.Addr() == server.Unmap() {
		ap = netip.AddrPortFrom(server, ap.Port()) // the form the core knows
	} else if !c.loose {
		r.Refuse(ipvs.RefuseBounce)
		return true
	}
	if ap.Port() < minDataPort && !c.lowPorts {
		r.Refuse(ipvs.RefuseLowPort)
		return true
	}
	// A 227 can only name an IPv4 VIP, and only bytes not yet delivered can
	// be rewritten: a channel the client cannot learn of is not opened.
	if !c.s.VIP.Addr().Unmap().Is4() || off+start < fixed || r.Opener == nil {
		return true
	}
	vip, ok := r.OpenPassive(ap)
	if !ok {
		r.Refuse(ipvs.RefuseNoPort)
		return false
	}
	if !vip.Addr().Unmap().Is4() {
		return true
	}
	var buf [len("255,255,255,255,255,255")]byte
	text := AppendHostPort(buf[:0], netip.AddrPortFrom(vip.Addr().Unmap(), vip.Port()))
	line := data[off:]
	anchor := start
	if i := bytes.LastIndexByte(line[from:start], '('); i >= 0 {
		anchor = from + i
	}
	rewrite(r, data, fixed, off+from, off+anchor, off+start, off+end, text)
	return true
}

// passive229 handles the port found at line[start:end] of a 229 reply line
// starting at off in data, whose "(" is at line[paren]. False: no VIP port
// was to be had for the channel.
func (c *conn) passive229(data []byte, off, paren, start, end int, port uint16, fixed int, r *ipvs.Result) bool {
	switch {
	case c.epsv > 0:
		c.epsv--
	case !c.adopted:
		r.Refuse(ipvs.RefuseUnsolicited)
		return true
	}
	if port < minDataPort && !c.lowPorts {
		r.Refuse(ipvs.RefuseLowPort)
		return true
	}
	if off+start < fixed || r.Opener == nil {
		return true
	}
	vip, ok := r.OpenPassive(netip.AddrPortFrom(c.s.Server.Addr(), port))
	if !ok {
		r.Refuse(ipvs.RefuseNoPort)
		return false
	}
	if vip.Port() == port {
		return true
	}
	var buf [len("65535")]byte
	text := strconv.AppendUint(buf[:0], uint64(vip.Port()), 10)
	rewrite(r, data, fixed, off+4, off+paren, off+start, off+end, text)
	return true
}

// rewrite replaces data[start:end] with text, keeping the line's length when
// it can by resizing the free text data[free:anchor] (anchor is the "(" before
// the numbers, or start): spaces are inserted at anchor when text is shorter,
// the free text's last bytes are deleted when it is longer. Nothing before
// fixed is touched.
func rewrite(r *ipvs.Result, data []byte, fixed, free, anchor, start, end int, text []byte) {
	if bytes.Equal(data[start:end], text) {
		return
	}
	k := len(text) - (end - start)
	switch {
	case k < 0 && anchor >= fixed:
		var buf [64]byte
		pad := buf[:-k]
		for i := range pad {
			pad[i] = ' '
		}
		if anchor == start {
			r.Replace(start, end-start, append(pad, text...))
			return
		}
		r.Replace(anchor, 0, pad)
	case k > 0 && anchor-k >= max(free, fixed):
		if anchor == start {
			r.Replace(start-k, k+end-start, text)
			return
		}
		// Keep the space before "(" when the words before it can give way:
		// "Entering Passive  (" reads better than "Entering Passive M(".
		cut := anchor
		if data[anchor-1] == ' ' && anchor-1-k >= max(free, fixed) {
			cut = anchor - 1
		}
		r.Replace(cut-k, k, nil)
	}
	// Same length, or the free text cannot absorb the difference: only
	// then does the line's length change.
	r.Replace(start, end-start, text)
}

// replyCode returns the reply code a server line starts with, or -1, and
// the byte after it: ' ', '-', '\n' when the line ends there, or 0 for
// anything else (or nothing yet, in an incomplete line).
func replyCode(line []byte) (code int, sep byte) {
	if len(line) < 3 || !allDigits(line[:3]) {
		return -1, 0
	}
	code = int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
	switch {
	case len(line) == 3:
		return code, '\n'
	case line[3] == ' ', line[3] == '-':
		return code, line[3]
	}
	return code, 0
}

// isCodePrefix reports whether the digits b start with may begin the code.
func isCodePrefix(b []byte, code uint16) bool {
	digits := [3]byte{byte('0' + code/100%10), byte('0' + code/10%10), byte('0' + code%10)}
	for i := 0; i < len(b) && i < 3; i++ {
		if b[i] != digits[i] {
			return false
		}
	}
	return true
}

// isCommand reports whether line is the command name (upper case), alone or
// followed by arguments.
func isCommand(line []byte, name string) bool {
	return hasPrefix(line, name) && (len(line) == len(name) || line[len(name)] == ' ')
}

// prefixFold reports whether b and p agree, ignoring ASCII case, on their
// common length: b may still become (or already is) a line starting with p.
func prefixFold(b []byte, p string) bool {
	n := min(len(b), len(p))
	return hasPrefix(b[:n], p[:n])
}

func allDigits(b []byte) bool {
	for _, c := range b {
		if !isDigit(c) {
			return false
		}
	}
	return true
}
