package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// Carried are the elements a daemon that did not stop cleanly (a crash,
// kill -9) left in its table and that the next one keeps: data channels
// with the time they have left, learned servers, stream offsets,
// kernel-scheduled services' persistence templates, and the answers that
// TFTP requests await (replies4/6).
type Carried struct {
	elems map[string][]nftables.SetElement // by set name
	// repliesOnly: the kernel datapath's (ReadStaleReplies), which takes
	// its connections back from their helper data and carries only the
	// requests awaiting their answer.
	repliesOnly bool
}

// carriedSets are the sets whose elements the daemon adds at run time.
func (f *family) carriedSets() []*nftables.Set {
	return []*nftables.Set{f.watched, f.passive, f.active, f.passiveSNAT, f.activeDNAT, f.offsets, f.acks, f.bypassed, f.bypassedActive, f.replies, f.replyDNAT, f.replyWait}
}

// bypassedSets are the carried sets the kernel fills from the packet path,
// also while a restarting daemon restores (persistence maps too): replies
// too, which the verdicts a handing-over daemon gives last write after
// ReadStale.
func (f *family) bypassedSets() []*nftables.Set {
	return []*nftables.Set{f.bypassed, f.bypassedActive, f.replies, f.replyDNAT, f.replyWait}
}

// repliesSets are the maps of requests awaiting their answer.
func (f *family) repliesSets() []*nftables.Set {
	return []*nftables.Set{f.replies, f.replyDNAT, f.replyWait}
}

// isRepliesMap tells the replies maps (requests awaiting their answer) by
// name: carried, but no helped connection's.
func isRepliesMap(name string) bool {
	switch name {
	case "replies4", "replies6", "reply_dnat4", "reply_dnat6", "reply_wait4", "reply_wait6":
		return true
	}
	return false
}

// ReadStale reads the run-time elements of table inet name; nil if there
// is no such table.
func ReadStale(c *nftables.Conn, name string) (*Carried, error) {
	return readStale(c, name, (*family).carriedSets, true)
}

// ReadStaleReplies reads, of table inet name, only the requests awaiting
// their answer (replies4/6): what the kernel datapath carries, since it
// takes its connections back from their helper data. nil if there is no
// such table.
func ReadStaleReplies(c *nftables.Conn, name string) (*Carried, error) {
	cr, err := readStale(c, name, (*family).repliesSets, false)
	if cr != nil {
		cr.repliesOnly = true
	}
	return cr, err
}

// refreshBypassed reads cr's maps that the packet path fills again from
// the stale table, just before it is replaced: the kernel went on writing
// them since ReadStale. On error the earlier copy stays.
func (cr *Carried) refreshBypassed(c *nftables.Conn, name string) {
	if cr == nil {
		return
	}
	sets := (*family).bypassedSets
	if cr.repliesOnly {
		sets = (*family).repliesSets
	}
	fresh, err := readStale(c, name, sets, !cr.repliesOnly)
	if err != nil || fresh == nil {
		return
	}
	for _, f := range []*family{newFamily(nil, false), newFamily(nil, true)} {
		for _, s := range sets(f) {
			cr.elems[s.Name] = fresh.elems[s.Name]
		}
	}
	if cr.repliesOnly {
		return
	}
	for name := range cr.elems {
		if isPersistMap(name) {
			delete(cr.elems, name)
		}
	}
	for name, els := range fresh.elems {
		if isPersistMap(name) {
			cr.elems[name] = els
		}
	}
}

// readStale reads the elements of the sets which names, and of every
// persistence map if persist.
func readStale(c *nftables.Conn, name string, which func(*family) []*nftables.Set, persist bool) (*Carried, error) {
	t, err := c.ListTableOfFamily(name, nftables.TableFamilyINet)
	if errors.Is(err, unix.ENOENT) || t == nil {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read table inet %s: %w", name, err)
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("read sets of inet %s: %w", name, err)
	}
	want := map[string]bool{}
	for _, f := range []*family{newFamily(t, false), newFamily(t, true)} {
		for _, s := range which(f) {
			want[s.Name] = true
		}
	}
	cr := &Carried{elems: map[string][]nftables.SetElement{}}
	for _, s := range sets {
		if !want[s.Name] && !(persist && isPersistMap(s.Name)) {
			continue
		}
		els, err := c.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("read set %s: %w", s.Name, err)
		}
		for _, e := range els {
			// (The kernel leaves out a timeout that is the set's.)
			if e.Timeout != 0 || e.Expires > 0 {
				if e.Expires <= 0 {
					continue
				}
				e.Timeout, e.Expires = e.Expires, 0
			}
			cr.elems[s.Name] = append(cr.elems[s.Name], nftables.SetElement{Key: e.Key, Val: e.Val, Timeout: e.Timeout})
		}
	}
	return cr, nil
}

// Len is how many elements are carried.
func (cr *Carried) Len() int {
	if cr == nil {
		return 0
	}
	n := 0
	for _, els := range cr.elems {
		n += len(els)
	}
	return n
}

// helped says whether cr holds elements of helped connections (anything
// but persistence templates and requests awaiting their answer).
func (cr *Carried) helped() bool {
	if cr == nil {
		return false
	}
	for name, els := range cr.elems {
		if len(els) > 0 && !isPersistMap(name) && !isRepliesMap(name) {
			return true
		}
	}
	return false
}

// replies says whether cr holds requests awaiting their answer: their
// translation (srcnat) must stay until the next Update, whatever spec says.
func (cr *Carried) replies() bool {
	if cr == nil {
		return false
	}
	return len(cr.elems["replies4"]) > 0 || len(cr.elems["replies6"]) > 0
}

// Offsets are the carried stream offsets by connection (client, VIP).
func (cr *Carried) Offsets() map[[2]netip.AddrPort][2]int32 {
	m := map[[2]netip.AddrPort][2]int32{}
	if cr == nil {
		return m
	}
	for _, name := range []string{"offsets4", "offsets6"} {
		for _, e := range cr.elems[name] {
			client, vip, ok := parseConnKey(e.Key)
			if !ok || len(e.Val) != 8 {
				continue
			}
			m[[2]netip.AddrPort{client, vip}] = [2]int32{
				int32(binary.NativeEndian.Uint32(e.Val)), int32(binary.NativeEndian.Uint32(e.Val[4:])),
			}
		}
	}
	return m
}

// Acks are the carried pure-ACK elements, by connection (client, real
// server).
func (cr *Carried) Acks() map[[2]netip.AddrPort]bool {
	m := map[[2]netip.AddrPort]bool{}
	if cr == nil {
		return m
	}
	for _, name := range []string{"acks4", "acks6"} {
		for _, e := range cr.elems[name] {
			if client, server, ok := parseConnKey(e.Key); ok {
				m[[2]netip.AddrPort{client, server}] = true
			}
		}
	}
	return m
}

// KeepConns drops the carried offsets and acks elements of connections
// other than those in live (client . VIP, or client . real server for
// acks): the connections the new daemon took back. Those of connections
// that ended while no daemon ran, or that it does not take back, would
// only stay until their timeout, nobody to delete them.
func (cr *Carried) KeepConns(live map[[2]netip.AddrPort]bool) {
	if cr == nil {
		return
	}
	for _, name := range []string{"offsets4", "offsets6", "acks4", "acks6"} {
		els := cr.elems[name][:0]
		for _, e := range cr.elems[name] {
			if client, other, ok := parseConnKey(e.Key); ok && live[[2]netip.AddrPort{client, other}] {
				els = append(els, e)
			}
		}
		cr.elems[name] = els
	}
}

// addCarried adds the carried elements of f's sets to the install batch.
func (rs *Ruleset) addCarried(c *nftables.Conn, cr *Carried, f *family) error {
	if cr == nil {
		return nil
	}
	for _, s := range f.carriedSets() {
		if els := cr.elems[s.Name]; len(els) > 0 {
			if err := c.SetAddElements(s, els); err != nil {
				return fmt.Errorf("carry elements of %s: %w", s.Name, err)
			}
		}
	}
	return nil
}

// offsetsTimeout bounds how long a connection's offsets are kept: a
// safety net for connections whose end the daemon did not see.
const offsetsTimeout = 48 * time.Hour

// StoreOffsets records a connection's stream offsets (client to server,
// server to client) where a restarted daemon finds them. replace: an
// element for the connection exists already.
func (rs *Ruleset) StoreOffsets(c *nftables.Conn, client, vip netip.AddrPort, off [2]int32, replace bool) error {
	f := rs.fams[0]
	if rs.fams[1].of(vip.Addr()) {
		f = rs.fams[1]
	}
	key := connKey(client, vip)
	if replace {
		if err := c.SetDeleteElements(f.offsets, []nftables.SetElement{{Key: key}}); err != nil {
			return err
		}
	}
	val := binary.NativeEndian.AppendUint32(binary.NativeEndian.AppendUint32(nil, uint32(off[0])), uint32(off[1]))
	return c.SetAddElements(f.offsets, []nftables.SetElement{{Key: key, Val: val, Timeout: offsetsTimeout}})
}

// connKey is a client . client port . VIP (or real server) . port key.
func connKey(client, vip netip.AddrPort) []byte {
	return appendPort(appendAddr(appendPort(appendAddr(nil, client.Addr()), client.Port()), vip.Addr()), vip.Port())
}

func parseConnKey(k []byte) (client, vip netip.AddrPort, ok bool) {
	var n int
	switch len(k) {
	case 16:
		n = 4
	case 40:
		n = 16
	default:
		return client, vip, false
	}
	addr := func(b []byte) netip.Addr {
		a, _ := netip.AddrFromSlice(b)
		return a
	}
	client = netip.AddrPortFrom(addr(k[:n]), binary.BigEndian.Uint16(k[n:]))
	vip = netip.AddrPortFrom(addr(k[n+4:2*n+4]), binary.BigEndian.Uint16(k[2*n+4:]))
	return client, vip, true
}
