package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// FollowMark is the conntrack mark bit of new connections whose conntrack
// events the daemon must hear: those it scheduled, helped control
// connections and add-on SYNs. Connections the kernel scheduled for plain
// services lack it (and ChannelMark): the daemon's event socket drops them.
const FollowMark = 0x04000000

// SlotKey is what a kernel-scheduled service's slot number comes from.
type SlotKey uint8

const (
	ByCounter    SlotKey = iota // numgen inc: rr, wrr
	BySource                    // jhash of the client's address: sh, mh
	BySourcePort                // jhash of the client's address and port
)

// KernelSched is a service that nftables schedules: a new connection's slot
// number (0..Size-1) is looked up in the service's slot map.
type KernelSched struct {
	By      SlotKey
	Size    uint32    // the modulus
	Slots   []SlotRun // sorted, non-overlapping; slots in no run name no server
	Persist *Persist  // nil: none
}

// SlotRun names the server of slots First..Last (inclusive).
type SlotRun struct {
	First, Last uint32
	Server      netip.AddrPort
}

// Persist keeps a client (its address masked to the prefix; 0: the whole
// address) on its server while it comes back within Timeout.
type Persist struct {
	Timeout          time.Duration
	Prefix4, Prefix6 int
}

// hashSeed seeds every slot hash. Fixed, so that routers agree and a
// restart moves no client; non-zero, since the library omits a zero seed
// and the kernel then picks a random one.
const hashSeed = 0x6e666831

// persistSize bounds a persistence map: the kernel caps a dynamic set
// without a size at 65535 elements, and a full one fails the rule.
const persistSize = 1 << 20

// Registers of the service chains: the template key (a masked client
// address) from NFT_REG32_00, the slot number at regSlot, the server
// (address . port, up to 5 words) from regServer, which the slot overlaps
// (a lookup reads its key first).
const (
	regSlot   = unix.NFT_REG32_04
	regServer = unix.NFT_REG32_04
)

// kernelSvc is an installed kernel-scheduled service.
type kernelSvc struct {
	f       *family
	chain   *nftables.Chain
	slots   *nftables.Set
	persist *nftables.Set   // nil: no persistence
	ecmp    *nftables.Chain // nil: none (ecmp.go)
	shape   chainShape
	units   map[SlotRun]bool        // the slot map's contents (slotUnits)
	keep    map[netip.AddrPort]bool // servers whose templates stay
	redo    bool                    // the chain is new or flushed: add its rules
}

// chainShape is what a service chain's rules are made from: when it is
// unchanged, Update keeps them (and their numgen counters).
type chainShape struct {
	helped  bool
	by      SlotKey
	size    uint32 // 0: no scheduling rule
	sorry   bool   // the slots name the sorry server: no templates
	persist Persist
	hasPers bool
	ecmp    bool // an ecmp chain follows the slots (ecmp.go)
}

// kernelID names a service's chain and maps, the same across reloads and
// restarts: persistence maps are found again by name.
func kernelID(vip netip.AddrPort, udp bool) string {
	proto := "tcp"
	if udp {
		proto = "udp"
	}
	return fmt.Sprintf("%s_%x_%d", proto, vip.Addr().Unmap().AsSlice(), vip.Port())
}

// kernelRuns are the runs svc's slot map holds and its modulus: its own,
// or one slot naming the sorry server when no server is available.
func kernelRuns(svc *Service) (runs []SlotRun, size uint32, sorry bool) {
	k := svc.Kernel
	if len(k.Slots) == 0 && svc.Sorry != nil {
		return []SlotRun{{0, 0, svc.Sorry.Addr}}, 1, true
	}
	if len(k.Slots) == 0 {
		return nil, 0, false
	}
	return k.Slots, k.Size, false
}

func shapeOf(spec *Spec, svc *Service) chainShape {
	_, size, sorry := kernelRuns(svc)
	sh := chainShape{helped: svc.Helped, by: svc.Kernel.By, size: size, sorry: sorry, ecmp: ecmpFor(spec, svc)}
	if p := svc.Kernel.Persist; p != nil {
		sh.persist, sh.hasPers = *p, true
	}
	return sh
}

// keepServers are the servers whose templates stay: those in the service
// and not down (a quiesced one keeps them, as IPVS does by default).
func keepServers(svc *Service) map[netip.AddrPort]bool {
	keep := map[netip.AddrPort]bool{}
	for _, s := range svc.Servers {
		if !s.Down {
			keep[s.Addr] = true
		}
	}
	return keep
}

func (f *family) addrType() nftables.SetDatatype {
	if f.v6 {
		return nftables.TypeIP6Addr
	}
	return nftables.TypeIPAddr
}

func (f *family) addrPortType() nftables.SetDatatype {
	return nftables.MustConcatSetType(f.addrType(), nftables.TypeInetService)
}

// slotsSet is the slot map: an interval map for counters (runs of
// consecutive numbers, big-endian keys), a hash map for hashes (one
// element per slot, host-order keys as jhash writes them).
func (f *family) slotsSet(t *nftables.Table, id string, by SlotKey) *nftables.Set {
	s := &nftables.Set{Table: t, Name: "slots_" + id, IsMap: true, KeyType: nftables.TypeMark, DataType: f.addrPortType(),
		KeyByteOrder: binaryutil.NativeEndian}
	if by == ByCounter {
		s.Interval, s.KeyType, s.KeyByteOrder = true, nftables.TypeInteger, binaryutil.BigEndian
	}
	return s
}

// persistSet holds the templates: masked client address : server. The
// rules give each element its timeout, so a changed timeout needs no new map.
func (f *family) persistSet(t *nftables.Table, id string, timeout time.Duration) *nftables.Set {
	return &nftables.Set{Table: t, Name: persistPrefix + id, IsMap: true, HasTimeout: true, Dynamic: true, Timeout: timeout,
		Size: persistSize, KeyType: f.addrType(), DataType: f.addrPortType()}
}

// declareKernel adds to the batch the chains and maps of the spec's
// kernel-scheduled services that are new, and flushes the chains whose
// shape changed (their rules name maps that may go). It returns the
// services as they will be; rs.kern is left as installed.
func (rs *Ruleset) declareKernel(c *nftables.Conn, spec *Spec) (map[string]*kernelSvc, error) {
	next := map[string]*kernelSvc{}
	for i := range spec.Services {
		svc := &spec.Services[i]
		if svc.Kernel == nil {
			continue
		}
		id := kernelID(svc.VIP, svc.UDP)
		ks := &kernelSvc{f: rs.fams[0], units: map[SlotRun]bool{}, redo: true}
		if rs.fams[1].of(svc.VIP.Addr()) {
			ks.f = rs.fams[1]
		}
		if old := rs.kern[id]; old != nil {
			cp := *old
			ks = &cp
		} else {
			ks.chain = c.AddChain(&nftables.Chain{Name: chainName(id), Table: rs.table})
		}
		flushed := false
		if sh := shapeOf(spec, svc); ks.redo || sh != ks.shape {
			if !ks.redo {
				c.FlushChain(ks.chain)
				flushed = true
			}
			ks.shape, ks.redo = sh, true
		}
		rs.declareECMP(c, ks, id, flushed)
		if err := rs.setKernelMaps(c, ks, svc); err != nil {
			return nil, err
		}
		next[id] = ks
	}
	return next, nil
}

// fillKernel adds to the batch the rules of the services declareKernel
// marked, the changes of every slot map, the deletion of dead templates
// and, on Install, the templates carried from a stale table.
func (rs *Ruleset) fillKernel(c *nftables.Conn, spec *Spec, next map[string]*kernelSvc, dead map[string][]nftables.SetElement, carried *Carried) error {
	a := ruleAdder{c: c, t: rs.table}
	for i := range spec.Services {
		svc := &spec.Services[i]
		if svc.Kernel == nil {
			continue
		}
		id := kernelID(svc.VIP, svc.UDP)
		ks := next[id]
		if ks.redo {
			rs.kernelRules(a, ks)
			ks.redo = false
		}
		runs, _, _ := kernelRuns(svc)
		if err := updateSlots(c, ks, runs); err != nil {
			return fmt.Errorf("update set %s: %w", ks.slots.Name, err)
		}
		ks.keep = keepServers(svc)
		if err := templateChanges(c, ks, dead[id], carriedTemplates(carried, ks)); err != nil {
			return err
		}
	}
	return nil
}

func templateChanges(c *nftables.Conn, ks *kernelSvc, del, add []nftables.SetElement) error {
	if len(del) > 0 {
		if err := c.SetDeleteElements(ks.persist, del); err != nil {
			return fmt.Errorf("delete templates from %s: %w", ks.persist.Name, err)
		}
	}
	if len(add) > 0 {
		if err := c.SetAddElements(ks.persist, add); err != nil {
			return fmt.Errorf("carry templates of %s: %w", ks.persist.Name, err)
		}
	}
	return nil
}

func chainName(id string) string { return "svc_" + id }

// setKernelMaps adds the maps svc needs that ks lacks, and replaces a slot
// map of the other kind (the scheduler changed between counter and hash).
func (rs *Ruleset) setKernelMaps(c *nftables.Conn, ks *kernelSvc, svc *Service) error {
	id := kernelID(svc.VIP, svc.UDP)
	if ks.slots != nil && ks.slots.Interval != (svc.Kernel.By == ByCounter) {
		c.DelSet(ks.slots)
		ks.slots, ks.units = nil, map[SlotRun]bool{}
	}
	if ks.slots == nil {
		ks.slots = ks.f.slotsSet(rs.table, id, svc.Kernel.By)
		if err := c.AddSet(ks.slots, nil); err != nil {
			return fmt.Errorf("add set %s: %w", ks.slots.Name, err)
		}
	}
	p := svc.Kernel.Persist
	switch {
	case p != nil && ks.persist == nil:
		ks.persist = ks.f.persistSet(rs.table, id, p.Timeout)
		ks.keep = nil
		if err := c.AddSet(ks.persist, nil); err != nil {
			return fmt.Errorf("add set %s: %w", ks.persist.Name, err)
		}
	case p == nil && ks.persist != nil:
		c.DelSet(ks.persist)
		ks.persist = nil
	}
	return nil
}

// delKernelSvc removes a service's chain and maps; its dispatch element
// is gone from the batch already.
func delKernelSvc(c *nftables.Conn, ks *kernelSvc) {
	c.FlushChain(ks.chain)
	c.DelChain(ks.chain)
	c.DelSet(ks.slots)
	if ks.persist != nil {
		c.DelSet(ks.persist)
	}
}

// kernelRules fills a service chain. A helped service first gets its
// marks, MSS and helper; then a template's server, if any, else the
// slot's. The persist chain writes and renews templates.
func (rs *Ruleset) kernelRules(a ruleAdder, ks *kernelSvc) {
	sh, f := ks.shape, ks.f
	if sh.helped {
		rs.helpedRules(a, ks.chain)
	}
	// (The family match only lets nft print addresses as such.)
	fam := nfproto(f.proto)
	if sh.hasPers {
		a.rule(ks.chain, fam, templateKey(f, sh.persist), lookupInto(ks.persist, regServer), natFrom(f, regServer))
	}
	if sh.size > 0 { // else no server, no sorry server: the refuse chains answer
		a.rule(ks.chain, fam, slotNumber(f, sh.by, sh.size), lookupFrom(ks.slots, regSlot, regServer), natFrom(f, regServer))
	}
	if ks.ecmp != nil {
		rs.ecmpRules(a, ks)
	}
}

// persistRules fill the persist chain, after DNAT (new_conn goes there,
// for a connection's first packet alone): the first packet of a
// connection that a persistent service's chain translated writes its
// template, or renews it, from the address it now goes to. There, not in
// the service chain, since nft (1.0.6) cannot list a dynset whose data a
// map lookup loaded (it aborts). None while the sorry server stands in.
func (rs *Ruleset) persistRules(a ruleAdder, spec *Spec, kern map[string]*kernelSvc) {
	for i := range spec.Services {
		svc := &spec.Services[i]
		if svc.Kernel == nil || svc.Kernel.Persist == nil {
			continue
		}
		ks := kern[kernelID(svc.VIP, svc.UDP)]
		if ks.shape.sorry {
			// Its templates (of quiesced servers) expire unrenewed.
			continue
		}
		f, p := ks.f, *svc.Kernel.Persist
		a.rule(rs.tpl, nfproto(f.proto), l4protoIs(svc.UDP), ctStatusHas(ipsDstNAT), ctOrigIs(svc.VIP), templateKey(f, p),
			concatAt(regServer, addrField(f.v6, false), portField(false)),
			[]expr.Any{&expr.Dynset{SrcRegKey: unix.NFT_REG32_00, SrcRegData: regServer, SetName: ks.persist.Name, SetID: ks.persist.ID,
				Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: p.Timeout}})
	}
}

// helpedRules: the daemon follows a helped control connection; on the
// compat datapath its SYN's MSS leaves room for the helper's rewrites; a
// helper is attached only where someone runs it (the daemon's, while it
// is alive; else the kernel's own, if any).
func (rs *Ruleset) helpedRules(a ruleAdder, ch *nftables.Chain) {
	q := &rs.queue
	a.rule(ch, setCtMark(FollowMark))
	if q.CtHelper == "" && rs.mss != nil {
		a.rule(ch, lowerMSS(rs.mss))
	}
	if q.CtHelper != "" {
		a.rule(ch, aliveIs(rs.alive, true), ctHelperSet(q.CtHelper), setCtMark(ChannelMark))
	}
	if q.KernelFTP {
		a.rule(ch, aliveIs(rs.alive, false), ctHelperSet(KernelFTPHelper), setCtMark(ChannelMark))
	}
}

// templateKey loads the client's address masked to the persistence prefix
// from NFT_REG32_00.
func templateKey(f *family, p Persist) []expr.Any {
	prefix := p.Prefix4
	if f.v6 {
		prefix = p.Prefix6
	}
	bits := int(f.addrLen) * 8
	out := concat(addrField(f.v6, true))
	if prefix <= 0 || prefix >= bits {
		return out
	}
	m := make([]byte, f.addrLen)
	for i := 0; i < prefix; i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return append(out, &expr.Bitwise{SourceRegister: unix.NFT_REG32_00, DestRegister: unix.NFT_REG32_00, Len: f.addrLen,
		Mask: m, Xor: make([]byte, f.addrLen)})
}

// slotNumber loads the connection's slot number into regSlot: the next
// count (big-endian, for the interval map) or a hash of the client.
func slotNumber(f *family, by SlotKey, size uint32) []expr.Any {
	if by == ByCounter {
		return []expr.Any{
			&expr.Numgen{Register: regSlot, Modulus: size, Type: unix.NFT_NG_INCREMENTAL},
			&expr.Byteorder{SourceRegister: regSlot, DestRegister: regSlot, Op: expr.ByteorderHton, Len: 4, Size: 4},
		}
	}
	n := f.addrLen
	out := []expr.Any{addrField(f.v6, true).load(regSlot)}
	if by == BySourcePort {
		// Padded to a word, zeroed by the load.
		out = append(out, portField(true).load(regSlot+words(f.addrLen)))
		n += 4
	}
	return append(out, &expr.Hash{SourceRegister: regSlot, DestRegister: regSlot, Length: n, Modulus: size,
		Seed: hashSeed, Type: expr.HashTypeJenkins})
}

// lookupInto looks the key at NFT_REG32_00 up in map s, its value to dst.
func lookupInto(s *nftables.Set, dst uint32) []expr.Any {
	return lookupFrom(s, unix.NFT_REG32_00, dst)
}

func lookupFrom(s *nftables.Set, src, dst uint32) []expr.Any {
	return []expr.Any{&expr.Lookup{SourceRegister: src, DestRegister: dst, IsDestRegSet: true, SetName: s.Name, SetID: s.ID}}
}

// natFrom DNATs to the address . port loaded from reg.
func natFrom(f *family, reg uint32) []expr.Any {
	return []expr.Any{&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f.proto), RegAddrMin: reg,
		RegProtoMin: reg + words(f.addrLen), Specified: true}}
}

// dispatchKey is a meta l4proto . address . port key of a dispatch map.
func dispatchKey(vip netip.AddrPort, udp bool) []byte {
	proto := byte(unix.IPPROTO_TCP)
	if udp {
		proto = unix.IPPROTO_UDP
	}
	return appendPort(appendAddr([]byte{proto, 0, 0, 0}, vip.Addr()), vip.Port())
}

// ipsDstNAT is IPS_DST_NAT: the connection's destination is translated.
const ipsDstNAT = 0x20

func ctStatusHas(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: native32(bits), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: native32(0)},
	}
}

func l4protoIs(udp bool) []expr.Any {
	if udp {
		return l4protoUDP()
	}
	return l4protoTCP()
}

// ctOrigIs matches a connection first addressed to ap.
func ctOrigIs(ap netip.AddrPort) []expr.Any {
	v6 := ap.Addr().Unmap().Is6()
	return []expr.Any{
		ctOrigDst(v6).load(reg1),
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: appendAddr(nil, ap.Addr())},
		ctOrigDstPort().load(reg1),
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binary.BigEndian.AppendUint16(nil, ap.Port())},
	}
}

func l4protoLoad(reg uint32) expr.Any { return &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg} }

// dispatchRule jumps to the chain of the kernel-scheduled service a new
// connection is addressed to.
func dispatchRule(f *family) []expr.Any {
	return append(concat(field{len: 1, load: l4protoLoad}, addrField(f.v6, false), portField(false)),
		&expr.Lookup{SourceRegister: unix.NFT_REG32_00, DestRegister: unix.NFT_REG_VERDICT, IsDestRegSet: true,
			SetName: f.dispatch.Name, SetID: f.dispatch.ID})
}
