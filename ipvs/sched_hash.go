package ipvs

import (
	"math/bits"
	"net/netip"
)

// foldAddr is the kernel's addr_fold for the hashing schedulers: an IPv4
// address as a host-order number, an IPv6 address as the XOR of its four
// 32-bit words. IPv4-mapped IPv6 addresses hash as IPv4.
func foldAddr(a netip.Addr) uint32 {
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	}
	b := a.As16()
	var f uint32
	for i := 0; i < 16; i += 4 {
		f ^= uint32(b[i])<<24 | uint32(b[i+1])<<16 | uint32(b[i+2])<<8 | uint32(b[i+3])
	}
	return f
}

const (
	shBits = 8 // CONFIG_IP_VS_SH_TAB_BITS
	shSize = 1 << shBits

	goldenRatio32 = 0x61C88647 // the kernel's GOLDEN_RATIO_32 for hash_32
)

// sourceHash is ip_vs_sh without its flags: a 256-bucket table maps the
// client address's hash to a server. Buckets are dealt to the servers in
// list order, each taking as many consecutive buckets as its weight (a
// quiesced server still takes one), round after round until the table is
// full; the table is rebuilt whenever the list or a weight changes, as the
// kernel reassigns on add/edit/del of a destination. A client whose bucket
// holds a quiesced server gets nil: the kernel's default without the
// sh-fallback flag. A Down server takes no buckets, as one removed from
// the service (what keepalived does): its clients move, the others stay
// where the new deal puts them. The port is not hashed (no sh-port flag).
type sourceHash struct {
	set     serverSet
	buckets [shSize]*RealServer
	up      []*RealServer // the servers not Down, for rebuild
}

func shBucket(client netip.Addr) uint32 {
	// hash_32(port + addr_fold, 8) with port 0.
	return (foldAddr(client) * goldenRatio32) >> (32 - shBits)
}

func (s *sourceHash) Pick(servers []*RealServer, client netip.AddrPort) *RealServer {
	if s.set.changed(servers) {
		s.rebuild(servers)
	}
	rs := s.buckets[shBucket(client.Addr())]
	if rs == nil || !available(rs) {
		return nil
	}
	return rs
}

// rebuild is ip_vs_sh_reassign over the servers not Down.
func (s *sourceHash) rebuild(servers []*RealServer) {
	s.up = s.up[:0]
	for _, rs := range servers {
		if !rs.Down {
			s.up = append(s.up, rs)
		}
	}
	if len(s.up) == 0 {
		s.buckets = [shSize]*RealServer{}
		return
	}
	p, n := 0, 0
	for i := range s.buckets {
		rs := s.up[p]
		s.buckets[i] = rs
		if n++; n >= rs.Weight {
			p, n = (p+1)%len(s.up), 0
		}
	}
}

// Maglev hashing, ip_vs_mh.
const (
	mhSize     = 251 // primes[CONFIG_IP_VS_MH_TAB_INDEX-8], the default table
	mhTabBits  = 6   // CONFIG_IP_VS_MH_TAB_INDEX / 2
	mhHashKey1 = 2654435761
	mhHashKey2 = 2654446892
)

// maglevHash is ip_vs_mh without its flags. Each server gets a preference
// permutation of the 251 table slots from two hashes of its address and
// port (offset, skip); servers take turns claiming their next free
// preferred slot, a server taking weight/gcd turns in a row (shifted right
// so the largest fits 6 bits), until the table is full. A client address
// hashes to a slot.
//
// As the kernel, the table is built from each server's last non-zero
// weight: quiescing a server (weight 0) keeps its slots, and its clients
// get nil (no mh-fallback flag) rather than being moved to other servers,
// while the other clients keep their servers. A server added with weight 0
// takes no slots; nor does a Down one, as one removed from the service:
// its clients move to other servers (it keeps its last weight for when it
// comes back). The port is not hashed (no mh-port flag). The kernel
// refuses more than 251 destinations; here the servers past the 251st that
// find no free slot simply get no clients.
type maglevHash struct {
	set    serverSet
	last   map[*RealServer]int // last non-zero weight of each server
	lookup [mhSize]*RealServer
	setup  []mhSetup
}

type mhSetup struct {
	perm, skip uint32
	turns      int
}

func (m *maglevHash) Pick(servers []*RealServer, client netip.AddrPort) *RealServer {
	if m.set.changed(servers) {
		m.rebuild(servers)
	}
	rs := m.lookup[hsiphash32(foldAddr(client.Addr()), mhHashKey1)%mhSize]
	if rs == nil || !available(rs) {
		return nil
	}
	return rs
}

// rebuild is ip_vs_mh_dest_changed: gcd, shift, permutate, populate.
func (m *maglevHash) rebuild(servers []*RealServer) {
	last := make(map[*RealServer]int, len(servers))
	for _, rs := range servers {
		w := max(rs.Weight, 0)
		if w == 0 {
			w = m.last[rs] // quiesced: keep its weight from before, if any
		}
		last[rs] = w
	}
	m.last = last

	g, maxW := 0, 0
	for _, rs := range servers {
		if w := last[rs]; w > 0 && !rs.Down {
			g = gcd(g, w)
			maxW = max(maxW, w)
		}
	}
	m.lookup = [mhSize]*RealServer{}
	if g < 1 {
		return // no weights: an empty table, every Pick is nil
	}
	shift := max(bits.Len(uint(maxW/g))-mhTabBits, 0)

	m.setup = m.setup[:0]
	for _, rs := range servers {
		v := foldAddr(rs.Addr.Addr()) + uint32(rs.Addr.Port())
		w := last[rs]
		if rs.Down {
			w = 0
		}
		turns := (w / g) >> shift
		if turns == 0 && w != 0 {
			turns = 1
		}
		m.setup = append(m.setup, mhSetup{
			perm:  hsiphash32(v, mhHashKey1) % mhSize,
			skip:  hsiphash32(v, mhHashKey2)%(mhSize-1) + 1,
			turns: turns,
		})
	}

	var taken [(mhSize + 63) / 64]uint64
	n := 0
	for {
		for i := 0; i < len(servers); {
			ds := &m.setup[i]
			if ds.turns < 1 {
				i++
				continue
			}
			// The server's next preferred free slot; one server may take
			// several turns in a row.
			for t := 0; t < ds.turns; t++ {
				c := ds.perm
				for taken[c/64]&(1<<(c%64)) != 0 {
					ds.perm += ds.skip
					if ds.perm >= mhSize {
						ds.perm -= mhSize
					}
					c = ds.perm
				}
				taken[c/64] |= 1 << (c % 64)
				m.lookup[c] = servers[i]
				if n++; n == mhSize {
					return
				}
			}
			i++
		}
	}
}

// hsiphash32 is the kernel's hsiphash of one u32 with the key {k, k} on
// 64-bit machines, where HalfSipHash-1-3 is SipHash-1-3 truncated to 32
// bits.
func hsiphash32(m uint32, k uint64) uint32 {
	v0 := 0x736f6d6570736575 ^ k
	v1 := 0x646f72616e646f6d ^ k
	v2 := 0x6c7967656e657261 ^ k
	v3 := 0x7465646279746573 ^ k
	b := uint64(4)<<56 | uint64(m)
	v3 ^= b
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0 ^= b
	v2 ^= 0xff
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	v0, v1, v2, v3 = sipRound(v0, v1, v2, v3)
	return uint32(v0 ^ v1 ^ v2 ^ v3)
}

func sipRound(v0, v1, v2, v3 uint64) (uint64, uint64, uint64, uint64) {
	v0 += v1
	v1 = bits.RotateLeft64(v1, 13)
	v1 ^= v0
	v0 = bits.RotateLeft64(v0, 32)
	v2 += v3
	v3 = bits.RotateLeft64(v3, 16)
	v3 ^= v2
	v0 += v3
	v3 = bits.RotateLeft64(v3, 21)
	v3 ^= v0
	v2 += v1
	v1 = bits.RotateLeft64(v1, 17)
	v1 ^= v2
	v2 = bits.RotateLeft64(v2, 32)
	return v0, v1, v2, v3
}
