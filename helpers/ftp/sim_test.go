package ftp

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"

	"github.com/nfhelper/nfhelper/ipvs"
)

// recorder is a fake ipvs.ChannelOpener. It logs, in order, the channels the
// helper asks for and the refusals it records (which it collects from the
// Result before each request, so that the two keep their order).
type recorder struct {
	r    *ipvs.Result
	seen int // refusals of r already logged
	log  []string
	// quiet counts instead of logging, so that tests can check allocations.
	quiet  bool
	opens  int
	vip    netip.Addr // the address OpenPassive answers
	port   uint16     // the port it answers; 0: the server's
	refuse bool       // refuse every channel
	nat    netip.Addr // where valid, OpenActive answers this address (the user's SNAT)
}

func (o *recorder) flush() {
	for _, why := range o.r.Refusals[o.seen:] {
		if !o.quiet {
			o.log = append(o.log, "refuse "+why.String())
		}
	}
	o.seen = len(o.r.Refusals)
}

func (o *recorder) OpenPassive(server netip.AddrPort) (netip.AddrPort, bool) {
	o.flush()
	o.opens++
	if !o.quiet {
		o.log = append(o.log, "passive "+server.String())
	}
	port := o.port
	if port == 0 {
		port = server.Port()
	}
	return netip.AddrPortFrom(o.vip, port), !o.refuse
}

func (o *recorder) OpenActive(client netip.AddrPort) (netip.AddrPort, bool) {
	o.flush()
	o.opens++
	if !o.quiet {
		o.log = append(o.log, "active "+client.String())
	}
	if o.nat.IsValid() {
		return netip.AddrPortFrom(o.nat, client.Port()+1), !o.refuse
	}
	return client, !o.refuse
}

// sim is a stream simulator implementing the core's side of the
// ipvs.ConnHelper contract for one connection: it presents carried bytes
// again, tells which were delivered (fixed), applies edits, withholds held
// bytes and stops calling the helper after Stop. It checks the helper's
// results against the contract.
type sim struct {
	tb      testing.TB
	h       ipvs.ConnHelper
	rec     recorder
	r       ipvs.Result
	dir     [2]simDir
	stopped bool
	calls   int
}

type simDir struct {
	carry []byte // what the last call carried
	hold  int    // how many of those bytes were held
	out   []byte // the stream delivered to the peer
}

func newSim(tb testing.TB, s *ipvs.Session, p *ipvs.Policy) *sim {
	m := &sim{tb: tb, h: Helper{}.Bind(s, p)}
	m.rec.r = &m.r
	m.rec.vip = s.VIP.Addr().Unmap()
	m.r.Opener = &m.rec
	return m
}

// feed passes the next segment of dir's stream.
func (m *sim) feed(dir ipvs.Direction, seg []byte, fin bool) {
	tb := m.tb
	tb.Helper()
	d := &m.dir[dir]
	if m.stopped {
		d.out = append(d.out, seg...)
		return
	}
	data := append(append([]byte(nil), d.carry...), seg...)
	fixed := len(d.carry) - d.hold
	orig := bytes.Clone(data)
	m.r.Reset()
	m.rec.seen = 0
	m.calls++
	m.h.Inspect(dir, data, fixed, fin, &m.r)
	m.rec.flush()
	r := &m.r
	where := func() string { return fmt.Sprintf("%v Inspect(%q, fixed %d, fin %v)", dir, orig, fixed, fin) }
	if !bytes.Equal(data, orig) {
		tb.Fatalf("%s modified its input", where())
	}
	if r.Carry < 0 || r.Carry > ipvs.MaxCarry || r.Carry > len(data) || r.Hold < 0 || r.Hold > r.Carry {
		tb.Fatalf("%s: Carry %d, Hold %d", where(), r.Carry, r.Hold)
	}
	if (fin || r.Stop) && r.Carry != 0 {
		tb.Fatalf("%s: Carry %d with fin or Stop", where(), r.Carry)
	}
	if len(data)-r.Hold < fixed {
		tb.Fatalf("%s: holds %d bytes, some already delivered", where(), r.Hold)
	}
	end := fixed
	for _, e := range r.Edits {
		if e.Off < end || e.Len < 0 || e.Off+e.Len > len(data)-r.Carry || e.Len == 0 && len(e.New) == 0 {
			tb.Fatalf("%s: bad edit {%d, %d, %q} (previous ends at %d, %d bytes, Carry %d): %+v",
				where(), e.Off, e.Len, e.New, end, len(data), r.Carry, r.Edits)
		}
		end = e.Off + e.Len
	}
	for _, e := range r.Edits {
		// Without SNAT to hide, a command is only edited to refuse it: its
		// PORT or EPRT verb becomes one no server knows.
		refused := e.Len == len(neutralVerb) && string(e.New) == neutralVerb &&
			(hasPrefix(data[e.Off:], "PORT ") || hasPrefix(data[e.Off:], "EPRT "))
		if dir == ipvs.FromClient && !m.rec.nat.IsValid() && !refused {
			tb.Fatalf("%s: edits a command with no SNAT to hide: %+v", where(), r.Edits)
		}
	}
	edited := apply(data, r)
	d.out = append(d.out, edited[fixed:len(edited)-r.Hold]...)
	d.carry = append(d.carry[:0], data[len(data)-r.Carry:]...)
	d.hold = r.Hold
	if r.Stop {
		m.stopped = true
		for i := range m.dir {
			m.release(&m.dir[i])
		}
	}
}

// release delivers what d holds, as the core does once it stops inspecting.
func (m *sim) release(d *simDir) {
	d.out = append(d.out, d.carry[len(d.carry)-d.hold:]...)
	d.carry, d.hold = d.carry[:0], 0
}

// apply returns data with the edits of r made, as the core would.
func apply(data []byte, r *ipvs.Result) []byte {
	var out []byte
	last := 0
	for _, e := range r.Edits {
		out = append(out, data[last:e.Off]...)
		out = append(out, e.New...)
		last = e.Off + e.Len
	}
	return append(out, data[last:]...)
}

// turn is what one peer sends before waiting for the other.
type turn struct {
	dir  ipvs.Direction
	text string
	fin  bool // the peer finishes after it
}

// run feeds the turns, cutting them into segments at the given offsets of
// their concatenation (and at their own boundaries), and returns what was
// delivered each way (held bytes included) and the channel log.
func run(tb testing.TB, s *ipvs.Session, p *ipvs.Policy, port uint16, turns []turn, cuts []int) (client, server string, log []string, m *sim) {
	tb.Helper()
	m = newSim(tb, s, p)
	m.rec.port = port
	pos, c := 0, 0
	for _, t := range turns {
		text := t.text
		for len(text) > 0 || t.fin {
			for c < len(cuts) && cuts[c] <= pos {
				c++
			}
			n := len(text)
			if c < len(cuts) && cuts[c]-pos < n {
				n = cuts[c] - pos
			}
			m.feed(t.dir, []byte(text[:n]), t.fin && n == len(text))
			pos += n
			text = text[n:]
			if len(text) == 0 {
				break
			}
		}
	}
	for i := range m.dir {
		m.release(&m.dir[i])
	}
	return string(m.dir[ipvs.FromClient].out), string(m.dir[ipvs.FromServer].out), m.rec.log, m
}

// TestActiveBehindSNAT: where the server sees the client through the user's
// SNAT, PORT and EPRT announce what the core returns, however the commands
// are split.
func TestActiveBehindSNAT(t *testing.T) {
	s := &ipvs.Session{
		Client: netip.MustParseAddrPort("203.0.113.2:40000"),
		VIP:    netip.MustParseAddrPort("198.51.100.20:21"),
		Server: netip.MustParseAddrPort("10.0.0.12:21"),
	}
	turns := []turn{
		{dir: ipvs.FromServer, text: "220 hi\r\n"},
		{dir: ipvs.FromClient, text: "PORT 203,0,113,2,195,80\r\n"},
		{dir: ipvs.FromServer, text: "200 ok\r\n"},
		{dir: ipvs.FromClient, text: "eprt !1!203.0.113.2!50001!\r\nNOOP\r\n"},
		{dir: ipvs.FromServer, text: "200 ok\r\n"},
	}
	const want = "PORT 10,0,0,1,195,81\r\neprt !1!10.0.0.1!50002!\r\nNOOP\r\n"
	total := 0
	for _, tr := range turns {
		total += len(tr.text)
	}
	var cutss [][]int
	for i := 1; i < total; i++ {
		cutss = append(cutss, []int{i})
	}
	bytewise := make([]int, total)
	for i := range bytewise {
		bytewise[i] = i + 1
	}
	cutss = append(cutss, nil, bytewise)
	for _, cuts := range cutss {
		m := newSim(t, s, &ipvs.DefaultPolicy)
		m.rec.nat = netip.MustParseAddr("10.0.0.1")
		pos, c := 0, 0
		for _, tr := range turns {
			text := tr.text
			for len(text) > 0 {
				for c < len(cuts) && cuts[c] <= pos {
					c++
				}
				n := len(text)
				if c < len(cuts) && cuts[c]-pos < n {
					n = cuts[c] - pos
				}
				m.feed(tr.dir, []byte(text[:n]), false)
				pos += n
				text = text[n:]
			}
		}
		for i := range m.dir {
			m.release(&m.dir[i])
		}
		if got := string(m.dir[ipvs.FromClient].out); got != want {
			t.Fatalf("cuts %v: client stream %q, want %q", cuts, got, want)
		}
	}
}
