// Package nft owns nfhelper's nftables table: the rules that send FTP control
// packets to NFQUEUE, schedule new connections by packet mark, and steer data
// channels through timed map elements.
package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/kernel"
)

// Spec is everything the table is built from.
type Spec struct {
	Table      string
	QueueNum   uint16 // first NFQUEUE number
	QueueTotal uint16 // queues QueueNum..QueueNum+QueueTotal-1, balanced by address hash
	MarkMask   uint32 // packet mark bits that carry a scheduling decision
	Services   []Service
	AddOns     []AddOn
	// CtHelper, when set, selects the kernel datapath's rules: new
	// connections to helped VIPs and add-on matches get this userspace
	// conntrack helper (registered by the daemon) through a ct helper
	// object at mangle priority, and the kernel queues their packets to
	// the helper's queue; the raw and forward rules that queue server
	// replies and client packets are left out. Data channels are then
	// conntrack expectations: the channel maps stay empty.
	CtHelper string
	// NativeQueue: queue rules use the nft queue expression instead of
	// the xtables NFQUEUE target.
	NativeQueue bool
	// KernelFTP: the kernel has its own FTP helper (kernel.ProbeKernelFTP).
	// New control connections that the daemon did not see (it is down, its
	// queue was bypassed) get it, and the kernel then rewrites their
	// replies and opens their data channels; the daemon leaves them alone.
	KernelFTP bool
	// KernelTFTP: the kernel has its own TFTP helper
	// (kernel.ProbeKernelTFTP). A new request to a service with Replies
	// that the daemon did not see (it is down) gets it: the kernel then
	// expects the server's answer from a new port and translates it as
	// the fallback DNAT's reverse (nf_nat_tftp).
	KernelTFTP bool
	// Live are the VIPs (or matches) and real servers of helped connections
	// still running after a reload removed them: their packets must go on
	// reaching the daemon.
	LiveVIPs, LiveServers []netip.AddrPort
	// Carried are a stale table's run-time elements, kept by Install.
	Carried *Carried
	// MSSRoom: on the compat datapath, a client's SYN to a helped
	// kernel-scheduled service gets its MSS lowered by this much (0:
	// left). Like the queue numbers, Update cannot change it.
	MSSRoom uint16
	// ECMP: routers behind ECMP share the load (see ecmp.go): a helped
	// hash-scheduled service's data connection that no channel took
	// follows the service's hash.
	ECMP bool
}

// AddOn is a helped destination the user's own rules translate; Mark (within
// Spec.MarkMask) names it on its queued SYNs.
type AddOn struct {
	Match netip.AddrPort
	Mark  uint32
	// UDP: a UDP port forward, whose new flows' first datagram is queued
	// (a datagram helper's request); else the SYNs of a TCP one.
	UDP bool
	// Replies: as Service.Replies, for the UDP add-on's requests.
	Replies time.Duration
}

// UnseenMark is the packet mark bit a server's control segment is queued
// with and the daemon's verdict clears.
const UnseenMark = 0x02000000

// passiveReplies and activeReply are the FTP replies whose segments fill
// the bypassed maps: 227 and 229 name a passive port, 200 accepts PORT or
// EPRT (and TYPE, which comes before them in the same session).
var passiveReplies = []string{"227", "229"}

const activeReply = "200"

// bypassedTimeout is how long a bypassed element stays after the reply that
// wrote it: the default data_channel_timeout.
const bypassedTimeout = 300 * time.Second

// ChannelMark is the conntrack mark bit of data connections the daemon
// opened: a forward chain that drops all but established and related
// traffic accepts them with `ct mark & 0x01000000 == 0x01000000 accept`.
const ChannelMark = 0x01000000

// Service is a balanced virtual service and its real servers. Only the
// first packet of a connection is queued (for scheduling), unless the
// service is Helped (a TCP service whose helper reads every packet).
type Service struct {
	VIP     netip.AddrPort
	UDP     bool
	Helped  bool
	Servers []Server
	// Sorry, if set, is the sorry server: the daemon's mark may name it,
	// and the fail-open map sends every connection to it when no server
	// has a weight (all down or quiesced). Its Weight is not used.
	Sorry *Server
	// Replies, if set, makes a UDP service's real servers answer a request
	// from a port of their own (TFTP): a request the daemon's verdict marks
	// with ReplyMark lets the server's first packet back to the client
	// leave as the VIP for this long.
	Replies time.Duration
	// Kernel, if set, has nftables schedule the service in a chain of its
	// own (svc_*), reached from dstnat by the dispatch maps: its new
	// connections are not queued, and that chain is its fail-open too.
	// nil: the daemon schedules it (packet mark, byMark map).
	Kernel *KernelSched
}

// Server is a real server and the mark (within Spec.MarkMask) that sends a new
// connection to it.
type Server struct {
	Addr   netip.AddrPort
	Mark   uint32
	Weight int  // its share of the fallback buckets; 0: none
	Down   bool // failed its health check: its persistence templates go
}

// fallbackBuckets is how many slots the kernel's own scheduling spreads a
// service's servers over, by weight, for connections the daemon did not
// see (it is down: the queue is bypassed).
const fallbackBuckets = 64

// family holds one address family's sets and maps.
type family struct {
	v6      bool
	proto   byte // NFPROTO_IPV4 or NFPROTO_IPV6
	addrLen uint32
	vips    *nftables.Set // VIP . port of daemon-scheduled TCP services (SYN queued)
	vipsUDP *nftables.Set // VIP . port of daemon-scheduled UDP services (new flow queued)
	// l4proto . VIP . port of kernel-scheduled services, for the refuse
	// chains, and the verdict map that jumps to their chains.
	kvips, dispatch *nftables.Set
	helped          *nftables.Set // VIP or add-on match . port: connections whose client packets are queued
	servers         *nftables.Set // real server address . port, configured
	// Addresses alone, of helped VIPs and of their real servers: a helped
	// session's data connections may use any port of either.
	helpedAddrs, serverAddrs *nftables.Set
	watched                  *nftables.Set // real server address . port, learned in add-on mode
	byMark                   *nftables.Set // mark : real server address . port
	// VIP . port . bucket : real server address . port, the kernel's own
	// scheduling while the daemon is down.
	fallback, fallbackUDP *nftables.Set
	passive               *nftables.Set // client . VIP . port : real server . port
	active                *nftables.Set // real server . client . client port : VIP
	// Behind the user's SNAT (add-on mode):
	passiveSNAT *nftables.Set // client . real server . port : the client's translated address
	activeDNAT  *nftables.Set // real server . translated address . port : client . port
	// client . port . VIP . port : the stream offsets of a connection whose
	// rewrites changed lengths, kept for a restarted daemon.
	offsets *nftables.Set
	// client . port . real server . port (the client as the server sees
	// it): control connections whose pure ACKs are queued (ChannelAcks).
	acks *nftables.Set
	// client . VIP (or the add-on's address) : real server, learned by the
	// kernel from a server's control segment that bypassed the daemon.
	bypassed *nftables.Set
	// real server . client : VIP, its reverse, for the server's active
	// data connections.
	bypassedActive *nftables.Set
	// server . client . client port : VIP, the answers that requests
	// await (ReplyMark).
	replies *nftables.Set
	// Behind the user's SNAT (a UDP add-on): server . the client as the
	// server sees it . port : client . port, where the answer goes.
	replyDNAT *nftables.Set
	// The client as the server sees it . port, while a request of it
	// awaits its answer: a new flow to it from elsewhere is foreign.
	replyWait *nftables.Set
	// VIP . port of daemon-scheduled UDP services with Replies: a request
	// the daemon did not see gets the kernel's TFTP helper.
	repliesVIPs *nftables.Set
	// TCP data offset and flags . IP length (IPv6: payload length) of
	// every segment without payload and with ACK but no SYN, FIN or RST
	// (constant).
	pureAck *nftables.Set
	ecmp    *nftables.Set // VIP : goto its ecmp chain (ecmp.go)
	// real server . its active data port : VIP (ecmp.go)
	ecmpActive *nftables.Set
}

// Ruleset is an installed table.
type Ruleset struct {
	table  *nftables.Table
	fams   [2]*family
	fwdNew *nftables.Chain // Update refills it: refusals and add-on SYNs
	hooks  hookSet         // the optional base chains installed
	tpl    *nftables.Chain // writes persistence templates
	queue  Spec            // the queue numbers and kind the rules send to
	alive  *nftables.Set
	mss    *nftables.Set // nil: no MSS lowering
	mu     sync.Mutex
	kern   map[string]*kernelSvc // by kernelID; guarded by mu
}

func newFamily(t *nftables.Table, v6 bool) *family {
	f := &family{proto: unix.NFPROTO_IPV4, addrLen: 4}
	addr, suffix := nftables.TypeIPAddr, "4"
	if v6 {
		f.v6, f.proto, f.addrLen = true, unix.NFPROTO_IPV6, 16
		addr, suffix = nftables.TypeIP6Addr, "6"
	}
	addrPort := nftables.MustConcatSetType(addr, nftables.TypeInetService)
	f.vips = &nftables.Set{Table: t, Name: "vips" + suffix, KeyType: addrPort, Concatenation: true}
	f.vipsUDP = &nftables.Set{Table: t, Name: "vips_udp" + suffix, KeyType: addrPort, Concatenation: true}
	protoAddrPort := nftables.MustConcatSetType(nftables.TypeInetProto, addr, nftables.TypeInetService)
	f.kvips = &nftables.Set{Table: t, Name: "kvips" + suffix, KeyType: protoAddrPort, Concatenation: true}
	f.dispatch = &nftables.Set{Table: t, Name: "dispatch" + suffix, IsMap: true, KeyType: protoAddrPort, DataType: nftables.TypeVerdict, Concatenation: true}
	f.helped = &nftables.Set{Table: t, Name: "helped" + suffix, KeyType: addrPort, Concatenation: true}
	f.servers = &nftables.Set{Table: t, Name: "servers" + suffix, KeyType: addrPort, Concatenation: true}
	f.helpedAddrs = &nftables.Set{Table: t, Name: "helped_addrs" + suffix, KeyType: addr}
	f.serverAddrs = &nftables.Set{Table: t, Name: "server_addrs" + suffix, KeyType: addr}
	f.watched = &nftables.Set{Table: t, Name: "watched" + suffix, KeyType: addrPort, Concatenation: true}
	f.byMark = &nftables.Set{Table: t, Name: "sched" + suffix, IsMap: true, KeyType: nftables.TypeMark,
		DataType: addrPort, KeyByteOrder: binaryutil.NativeEndian}
	bucket := nftables.MustConcatSetType(addr, nftables.TypeInetService, nftables.TypeMark) // mark: a host-order number nft can print
	f.fallback = &nftables.Set{Table: t, Name: "fallback" + suffix, IsMap: true, Concatenation: true, KeyType: bucket, DataType: addrPort}
	f.fallbackUDP = &nftables.Set{Table: t, Name: "fallback_udp" + suffix, IsMap: true, Concatenation: true, KeyType: bucket, DataType: addrPort}
	f.passive = &nftables.Set{Table: t, Name: "passive" + suffix, IsMap: true, HasTimeout: true, Concatenation: true,
		KeyType: nftables.MustConcatSetType(addr, addr, nftables.TypeInetService), DataType: addrPort}
	f.active = &nftables.Set{Table: t, Name: "active" + suffix, IsMap: true, HasTimeout: true, Concatenation: true,
		KeyType: nftables.MustConcatSetType(addr, addr, nftables.TypeInetService), DataType: addr}
	f.passiveSNAT = &nftables.Set{Table: t, Name: "passive_snat" + suffix, IsMap: true, HasTimeout: true, Concatenation: true,
		KeyType: nftables.MustConcatSetType(addr, addr, nftables.TypeInetService), DataType: addr}
	f.activeDNAT = &nftables.Set{Table: t, Name: "active_dnat" + suffix, IsMap: true, HasTimeout: true, Concatenation: true,
		KeyType: nftables.MustConcatSetType(addr, addr, nftables.TypeInetService), DataType: addrPort}
	f.offsets = &nftables.Set{Table: t, Name: "offsets" + suffix, IsMap: true, HasTimeout: true, Concatenation: true,
		KeyType:  nftables.MustConcatSetType(addr, nftables.TypeInetService, addr, nftables.TypeInetService),
		DataType: nftables.MustConcatSetType(nftables.TypeMark, nftables.TypeMark)}
	f.acks = &nftables.Set{Table: t, Name: "acks" + suffix, HasTimeout: true, Concatenation: true,
		KeyType: nftables.MustConcatSetType(addr, nftables.TypeInetService, addr, nftables.TypeInetService)}
	// Written from the packet path (dynamic).
	f.bypassed = &nftables.Set{Table: t, Name: "bypassed" + suffix, IsMap: true, HasTimeout: true, Dynamic: true, Concatenation: true,
		KeyType: nftables.MustConcatSetType(addr, addr), DataType: addr}
	f.bypassedActive = &nftables.Set{Table: t, Name: "bypassed_active" + suffix, IsMap: true, HasTimeout: true, Dynamic: true, Concatenation: true,
		KeyType: nftables.MustConcatSetType(addr, addr), DataType: addr}
	f.replies, f.replyDNAT, f.replyWait = f.repliesSet(t), f.replyDNATSet(t), f.replyWaitSet(t)
	f.repliesVIPs = &nftables.Set{Table: t, Name: "replies_vips" + suffix, KeyType: addrPort, Concatenation: true}
	// Two 16-bit numbers; nft shows them as ports.
	f.pureAck = &nftables.Set{Table: t, Name: "pure_ack" + suffix, Constant: true, Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeInetService, nftables.TypeInetService),
		Comment: "tcp doff.flags & 0xf017 . " + map[bool]string{false: "ip length", true: "ip6 payload length"}[v6]}
	f.ecmp, f.ecmpActive = f.ecmpSet(t), f.ecmpActiveSet(t)
	return f
}

// pureAckElements are the keys of f.pureAck: for each TCP data offset, the
// IP length of a segment that carries nothing else, with ACK set and SYN,
// FIN and RST clear. A longer IPv4 header or an IPv6 extension header
// makes the length differ too (such segments are queued).
func (f *family) pureAckElements() []nftables.SetElement {
	var els []nftables.SetElement
	for doff := uint16(5); doff <= 15; doff++ {
		ipLen := 4 * doff // IPv6 payload length
		if !f.v6 {
			ipLen += 20
		}
		key := binary.BigEndian.AppendUint16(nil, doff<<12|pureAckFlags)
		key = append(binary.BigEndian.AppendUint16(append(key, 0, 0), ipLen), 0, 0)
		els = append(els, nftables.SetElement{Key: key})
	}
	return els
}

// name is base with the family's suffix (4 or 6).
func (f *family) name(base string) string {
	if f.v6 {
		return base + "6"
	}
	return base + "4"
}

func (f *family) of(a netip.Addr) bool { return a.Unmap().Is6() == f.v6 }

// Install replaces any table of the same name (a stale copy left by a crash)
// with a fresh one, in one atomic batch that keeps spec.Carried.
func Install(c *nftables.Conn, spec *Spec) (*Ruleset, error) {
	spec.Carried.refreshBypassed(c, spec.Table)
	t := &nftables.Table{Name: spec.Table, Family: nftables.TableFamilyINet}
	// Adding an existing table is a no-op, so add+delete removes any old copy
	// on every kernel (the destroy command is newer than Debian 12's kernel).
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	rs := &Ruleset{table: t, fams: [2]*family{newFamily(t, false), newFamily(t, true)}, kern: map[string]*kernelSvc{},
		queue: Spec{QueueNum: spec.QueueNum, QueueTotal: spec.QueueTotal, MarkMask: spec.MarkMask, NativeQueue: spec.NativeQueue, CtHelper: spec.CtHelper, KernelFTP: spec.KernelFTP, KernelTFTP: spec.KernelTFTP, MSSRoom: spec.MSSRoom}}
	if err := rs.addGlobalSets(c); err != nil {
		return nil, err
	}
	// Service chains before the dispatch maps' elements that name them.
	next, err := rs.declareKernel(c, spec)
	if err != nil {
		return nil, err
	}
	for _, f := range rs.fams {
		if err := rs.addSets(c, spec, f); err != nil {
			return nil, err
		}
		if err := rs.addCarried(c, spec.Carried, f); err != nil {
			return nil, err
		}
	}
	if spec.CtHelper != "" {
		c.AddObj(ctHelperObj(t, spec.CtHelper, unix.IPPROTO_TCP))
	}
	if spec.KernelFTP {
		c.AddObj(ctHelperObj(t, KernelFTPHelper, unix.IPPROTO_TCP))
	}
	if spec.KernelTFTP {
		c.AddObj(ctHelperObj(t, KernelTFTPHelper, unix.IPPROTO_UDP))
	}
	rs.addChains(c, spec)
	if err := rs.fillKernel(c, spec, next, nil, spec.Carried); err != nil {
		return nil, err
	}
	rs.persistRules(ruleAdder{c: c, t: rs.table}, spec, next)
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("install table inet %s: %w", spec.Table, err)
	}
	rs.kern = next
	return rs, nil
}

// addGlobalSets adds the sets of neither family: alive, with its element
// (the daemon installing runs), and on the compat datapath the mss map.
func (rs *Ruleset) addGlobalSets(c *nftables.Conn) error {
	rs.alive = aliveSet(rs.table)
	if err := c.AddSet(rs.alive, []nftables.SetElement{{Key: aliveKey}}); err != nil {
		return fmt.Errorf("add set %s: %w", rs.alive.Name, err)
	}
	if rs.queue.CtHelper != "" || rs.queue.MSSRoom == 0 {
		return nil
	}
	rs.mss = mssSet(rs.table)
	if err := c.AddSet(rs.mss, mssElements(rs.queue.MSSRoom)); err != nil {
		return fmt.Errorf("add set %s: %w", rs.mss.Name, err)
	}
	return nil
}

// Remove deletes the table if it exists.
func Remove(c *nftables.Conn, name string) error {
	t := &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("remove table inet %s: %w", name, err)
	}
	return nil
}

func (rs *Ruleset) addSets(c *nftables.Conn, spec *Spec, f *family) error {
	static := rs.staticElements(spec, f)
	for _, set := range []*nftables.Set{f.vips, f.vipsUDP, f.kvips, f.dispatch, f.helped, f.servers, f.helpedAddrs, f.serverAddrs, f.watched, f.byMark, f.fallback, f.fallbackUDP, f.passive, f.active, f.passiveSNAT, f.activeDNAT, f.offsets, f.acks, f.bypassed, f.bypassedActive, f.replies, f.replyDNAT, f.replyWait, f.repliesVIPs, f.ecmp, f.ecmpActive} {
		if err := c.AddSet(set, static[set]); err != nil {
			return fmt.Errorf("add set %s: %w", set.Name, err)
		}
	}
	if spec.CtHelper == "" {
		if err := c.AddSet(f.pureAck, f.pureAckElements()); err != nil {
			return fmt.Errorf("add set %s: %w", f.pureAck.Name, err)
		}
	}
	return nil
}

// staticElements are the elements of the sets the configuration fills.
func (rs *Ruleset) staticElements(spec *Spec, f *family) map[*nftables.Set][]nftables.SetElement {
	els := map[*nftables.Set][]nftables.SetElement{f.vips: nil, f.vipsUDP: nil, f.kvips: nil, f.dispatch: nil, f.helped: nil, f.servers: nil, f.helpedAddrs: nil, f.serverAddrs: nil, f.byMark: nil, f.fallback: nil, f.fallbackUDP: nil, f.repliesVIPs: nil,
		f.ecmp: ecmpElements(spec, f), f.ecmpActive: ecmpActiveElements(spec, f)}
	seen := map[*nftables.Set]map[netip.AddrPort]bool{f.helped: {}, f.servers: {}, f.helpedAddrs: {}, f.serverAddrs: {}}
	add := func(set *nftables.Set, ap netip.AddrPort) {
		if f.of(ap.Addr()) && !seen[set][ap] {
			seen[set][ap] = true
			els[set] = append(els[set], nftables.SetElement{Key: addrPortKey(ap)})
		}
	}
	addAddr := func(set *nftables.Set, a netip.Addr) {
		if ap := netip.AddrPortFrom(a, 0); f.of(a) && !seen[set][ap] {
			seen[set][ap] = true
			els[set] = append(els[set], nftables.SetElement{Key: appendAddr(nil, a)})
		}
	}
	for _, a := range spec.AddOns {
		if !a.UDP {
			add(f.helped, a.Match)
		}
	}
	for _, svc := range spec.Services {
		if !f.of(svc.VIP.Addr()) {
			continue
		}
		all := svc.Servers
		if svc.Sorry != nil {
			all = append(all[:len(all):len(all)], *svc.Sorry)
		}
		if svc.Helped {
			// Their control connections' packets are queued, whoever
			// scheduled them.
			add(f.helped, svc.VIP)
			addAddr(f.helpedAddrs, svc.VIP.Addr())
			for _, s := range all {
				add(f.servers, s.Addr)
				addAddr(f.serverAddrs, s.Addr.Addr())
			}
		}
		if svc.Kernel != nil {
			// Scheduled in its chain: nothing queued, no mark, no
			// fallback.
			key := dispatchKey(svc.VIP, svc.UDP)
			els[f.kvips] = append(els[f.kvips], nftables.SetElement{Key: key})
			els[f.dispatch] = append(els[f.dispatch], nftables.SetElement{Key: key,
				VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: chainName(kernelID(svc.VIP, svc.UDP))}})
			continue
		}
		vip := nftables.SetElement{Key: addrPortKey(svc.VIP)}
		if svc.UDP {
			els[f.vipsUDP] = append(els[f.vipsUDP], vip)
			if svc.Replies > 0 {
				els[f.repliesVIPs] = append(els[f.repliesVIPs], vip)
			}
		} else {
			els[f.vips] = append(els[f.vips], vip)
		}
		for _, s := range all {
			els[f.byMark] = append(els[f.byMark], nftables.SetElement{Key: binary.NativeEndian.AppendUint32(nil, s.Mark), Val: addrPortKey(s.Addr)})
		}
		fb := f.fallback
		if svc.UDP {
			fb = f.fallbackUDP
		}
		for b, s := range svc.fallbackSlots() {
			els[fb] = append(els[fb], nftables.SetElement{Key: binary.NativeEndian.AppendUint32(addrPortKey(svc.VIP), uint32(b)), Val: addrPortKey(s.Addr)})
		}
	}
	for _, ap := range spec.LiveVIPs {
		add(f.helped, ap)
	}
	for _, ap := range spec.LiveServers {
		add(f.servers, ap)
		addAddr(f.serverAddrs, ap.Addr())
	}
	return els
}

// Update applies a changed configuration in one batch: the sets and maps
// it fills are refilled and forward_new's rules replaced; data
// channels and learned servers stay. Kernel-scheduled services' slot maps
// change by difference, their chains only where their shape did, and
// templates naming servers that went (down or removed) are deleted. Queue
// numbers, datapath and MSSRoom cannot change.
func (rs *Ruleset) Update(c *nftables.Conn, spec *Spec) error {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	var err error
	// A template deleted below that expires before the batch arrives
	// fails it (ENOENT): read them again and retry.
	for range 3 {
		var dead map[string][]nftables.SetElement
		if dead, err = rs.deadTemplates(c, spec); err != nil {
			return err
		}
		var next map[string]*kernelSvc
		if next, err = rs.queueUpdate(c, spec, dead); err != nil {
			return err
		}
		if err = c.Flush(); err == nil {
			rs.kern = next
			return rs.sweepTemplates(c, dead)
		}
		if !errors.Is(err, unix.ENOENT) || len(dead) == 0 {
			break
		}
	}
	return fmt.Errorf("update table inet %s: %w", rs.table.Name, err)
}

// queueUpdate adds Update's batch to c and returns the kernel-scheduled
// services as they will be.
func (rs *Ruleset) queueUpdate(c *nftables.Conn, spec *Spec, dead map[string][]nftables.SetElement) (map[string]*kernelSvc, error) {
	// First: its rules name persistence maps that may go.
	c.FlushChain(rs.tpl)
	next, err := rs.declareKernel(c, spec)
	if err != nil {
		return nil, err
	}
	for _, f := range rs.fams {
		for set, els := range rs.staticElements(spec, f) {
			c.FlushSet(set)
			if len(els) > 0 {
				if err := c.SetAddElements(set, els); err != nil {
					return nil, fmt.Errorf("refill set %s: %w", set.Name, err)
				}
			}
		}
	}
	if err := rs.fillKernel(c, spec, next, dead, nil); err != nil {
		return nil, err
	}
	// After the dispatch maps no longer name them.
	rs.dropECMP(c, next)
	for id, ks := range rs.kern {
		if next[id] == nil {
			delKernelSvc(c, ks)
		}
	}
	rs.persistRules(ruleAdder{c: c, t: rs.table}, spec, next)
	c.FlushChain(rs.fwdNew)
	rs.forwardRules(c, spec)
	rs.setHooks(ruleAdder{c: c, t: rs.table}, spec, rs.hooksFor(spec, false, false))
	return next, nil
}

// ruleAdder adds chains and rules to the table in one batch. Within a
// chain, the order rules are added is the order the kernel tries them.
type ruleAdder struct {
	c *nftables.Conn
	t *nftables.Table
}

func (a ruleAdder) chain(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio nftables.ChainPriority) *nftables.Chain {
	return a.c.AddChain(&nftables.Chain{Name: name, Table: a.t, Type: typ, Hooknum: hook, Priority: nftables.ChainPriorityRef(prio)})
}

// regular adds a chain without a hook, reached by jump or goto.
func (a ruleAdder) regular(name string) *nftables.Chain {
	return a.c.AddChain(&nftables.Chain{Name: name, Table: a.t})
}

func (a ruleAdder) rule(ch *nftables.Chain, parts ...[]expr.Any) {
	var exprs []expr.Any
	for _, p := range parts {
		exprs = append(exprs, p...)
	}
	a.c.AddRule(&nftables.Rule{Table: a.t, Chain: ch, Exprs: exprs})
}

// famMatch is one family's matches that most rules start with.
type famMatch struct {
	f              *family
	fam, tcp       []expr.Any
	dst, src, flow []expr.Any // daddr . dport, saddr . sport, saddr . daddr . dport
}

func newFamMatch(f *family) famMatch {
	return famMatch{
		f:    f,
		fam:  nfproto(f.proto),
		tcp:  l4protoTCP(),
		dst:  concat(addrField(f.v6, false), portField(false)),
		src:  concat(addrField(f.v6, true), portField(true)),
		flow: concat(addrField(f.v6, true), addrField(f.v6, false), portField(false)),
	}
}

// addChains adds the table's chains and their rules: every regular chain,
// and the base chains the configuration needs (hooks.go). Every packet the
// router passes walks the base chains there are, most of them traffic
// nfhelper does not help: each starts with the cheapest test that tells a
// packet some rule may concern (TCP flags, ct state and direction, mark
// bits) and jumps from there to a regular chain holding those rules, one
// family's at a time where they need one.
func (rs *Ruleset) addChains(c *nftables.Conn, spec *Spec) {
	a := ruleAdder{c: c, t: rs.table}
	dnat := a.chain("dstnat", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, *nftables.ChainPriorityNATDest)
	rs.tpl = a.regular("persist")
	q := []expr.Any{queueExpr(spec)}
	for _, f := range rs.fams {
		rawChains(a, newFamMatch(f), spec, q)
	}
	mangleChains(a, rs.fams, spec, q)
	cleanChains(a, rs.fams, spec, rs.tpl, q)
	for _, f := range rs.fams {
		dnatRules(a, dnat, newFamMatch(f), spec)
	}
	refuseChains(a, rs.fams)
	heartbeatChain(a, rs.alive)
	rs.forwardChains(a, spec)
	rs.forwardRules(c, spec)
	if spec.CtHelper == "" {
		labelsChain(a)
	}
	if spec.KernelFTP && spec.CtHelper == "" || spec.KernelTFTP {
		a.regular("unseen_syn")
		unseenRules(a, rs.fams, spec)
	}
	rs.setHooks(a, spec, rs.hooksFor(spec, spec.Carried.helped(), spec.Carried.replies()))
}

// labelsChain is a chain no rule jumps to, whose one rule uses connection
// labels: while a rule of a network namespace uses them (net->ct.labels_used,
// counted at rule creation), the kernel gives every new connection the
// labels extension, which it cannot add later. The compat datapath keeps a
// helped connection's stream offsets in its labels (kernel.SetOffsetLabels),
// where conntrackd carries them; a backup router's table must have the
// extension given to the entries conntrackd creates there too.
func labelsChain(a ruleAdder) {
	a.rule(a.regular("labels"), []expr.Any{
		&expr.Immediate{Register: reg1, Data: make([]byte, kernel.LabelsLen)},
		&expr.Ct{Key: expr.CtKeyLABELS, SourceRegister: true, Register: reg1},
	})
}

// unseenRules: after the forward chain (forward_unseen, a base chain of
// its own: a SYN that bypassed the daemon's queue in "forward" skips the
// rest of that chain), the SYN of a new add-on connection still has the
// add-on's mark bits only if it bypassed the daemon (its verdict clears
// them); the kernel's FTP helper takes it. Its sequence adjustment comes
// with the user's SNAT, if any, or (kernels with nft_ct's fix of late
// 2025, Debian's 6.1.0-57 among them) with the assignment itself.
//
// Likewise a UDP add-on's request (only those are queued there with mark
// bits): the kernel's TFTP helper takes it, and nf_nat_tftp has its answer
// follow the request's NAT, the user's.
func unseenRules(a ruleAdder, fams [2]*family, spec *Spec) {
	syns := &nftables.Chain{Name: "unseen_syn"}
	if spec.KernelFTP && spec.CtHelper == "" {
		for _, f := range fams {
			a.rule(syns, nfproto(f.proto), l4protoTCP(), concat(ctOrigDst(f.v6), ctOrigDstPort()), lookup(f.helped),
				ctHelperSet(KernelFTPHelper), setCtMark(ChannelMark))
		}
	}
	if spec.KernelTFTP {
		a.rule(syns, l4protoUDP(), ctHelperSet(KernelTFTPHelper), setCtMark(ChannelMark))
	}
}

// rawChains: raw_prerouting (before conntrack) sends a TCP segment to its
// family's chain, where a SYN to a VIP is queued for scheduling and, on
// the compat datapath, a server's segment for rewriting, so that
// conntrack only ever sees it in the client's sequence space.
func rawChains(a ruleAdder, m famMatch, spec *Spec, q []expr.Any) {
	const syn, ack, fin, rst = 0x02, 0x10, 0x01, 0x04
	f := m.f
	ch := a.regular(f.name("raw"))
	a.rule(ch, tcpFlagsEq(syn|ack|fin|rst, syn), m.dst, lookup(f.vips), q)
	if spec.CtHelper != "" {
		return
	}
	seg := a.regular(f.name("server_seg"))
	// A server's segment without payload that only acknowledges needs
	// no correction while its connection has none (not in acks): it
	// goes by the daemon.
	a.rule(seg, pureAck(f), concat(addrField(f.v6, false), portField(false), addrField(f.v6, true), portField(true)), lookupNot(f.acks), accept())
	// Queued with UnseenMark, which the daemon's verdict clears: a
	// segment that still has it bypassed a dead daemon.
	a.rule(seg, setMark(UnseenMark, UnseenMark), q)
	a.rule(ch, m.src, lookup(f.servers), jump(seg))
	a.rule(ch, m.src, lookup(f.watched), jump(seg))
}

// mangleChains: mangle_prerouting (after conntrack, which tells a UDP
// flow's first packet from the rest) sends a connection's first packet to
// mangle_new, where a new UDP flow is queued for scheduling and, on the
// kernel datapath, a helped connection gets the userspace helper.
func mangleChains(a ruleAdder, fams [2]*family, spec *Spec, q []expr.Any) {
	ch := a.regular("mangle_new")
	for _, f := range fams {
		mangleRules(a, ch, newFamMatch(f), spec, q)
	}
}

func mangleRules(a ruleAdder, mangle *nftables.Chain, m famMatch, spec *Spec, q []expr.Any) {
	f := m.f
	a.rule(mangle, m.fam, l4protoUDP(), m.dst, lookup(f.vipsUDP), q)
	if spec.CtHelper == "" {
		return
	}
	// The kernel datapath: the helper queues every packet of
	// these connections, after NAT.
	// Only to those the daemon scheduled (its verdict set the
	// mark bits): a connection with a userspace helper whose
	// queue has no reader passes its packets unconfirmed by
	// conntrack (a new connection never completes), so one that
	// bypassed the daemon goes without, like the compat
	// datapath's (and gets the kernel's helper in dstnat).
	// The control connection carries ChannelMark: its data
	// connections, expected, take their master's mark.
	a.rule(mangle, m.fam, m.tcp, markBitsSet(spec.MarkMask), m.dst, lookup(f.helped), ctHelperSet(spec.CtHelper), setCtMark(ChannelMark))
}

// cleanChains: prerouting (after DNAT) sends a packet with mark bits to
// "marked", where a server's reply that bypassed the daemon notes where
// its session's data connections go (compat datapath) and the bits are
// cleared (they are ours only until NAT has used them); on the kernel
// datapath a reply segment that may be an FTP reply goes to "replies" for
// the same; the first packet of a connection or an invalid one to
// "new_conn", where invalid packets on VIP paths are dropped (they would
// skip NAT and leak real addresses), data connections marked and
// persistence templates written. The rules that follow none of the jumps
// do not read the mark, so it may be cleared first.
func cleanChains(a ruleAdder, fams [2]*family, spec *Spec, persist *nftables.Chain, q []expr.Any) {
	bits := spec.MarkMask | UnseenMark
	marked := a.regular("marked")
	if spec.CtHelper == "" {
		for _, f := range fams {
			unseenReplyRules(a, marked, newFamMatch(f))
		}
	} else {
		replies := a.regular("replies")
		for _, f := range fams {
			helperReplyRules(a, replies, newFamMatch(f))
		}
	}
	a.rule(marked, []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: native32(^bits), Xor: native32(0)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
	})
	fresh := a.regular("new_conn")
	invalid := a.regular("invalid")
	a.rule(fresh, ctStateIs(invalidBit), goTo(invalid))
	for _, f := range fams {
		m := newFamMatch(f)
		invalidRules(a, invalid, m)
		newConnRules(a, fresh, m, q)
	}
	a.rule(fresh, goTo(persist))
}

// helperReplyRules (kernel datapath): its queue runs last (conntrack
// confirmation), after every chain: no rule can tell a segment that
// bypassed it. Every server's 227, 229 and 200 on a helped control
// connection writes where this client's data connections go, used only by
// one that no expectation took (its reply passed while the daemon was
// down). By destination: `ct helper` reads the master's helper, matching
// data connections only.
func helperReplyRules(a ruleAdder, replies *nftables.Chain, m famMatch) {
	f := m.f
	ctrl := concat(ctOrigDst(f.v6), ctOrigDstPort())
	for _, code := range passiveReplies {
		a.rule(replies, m.fam, m.tcp, ctrl, lookup(f.helped), replyIs(code),
			concat(ctOrigSrc(f.v6), ctOrigDst(f.v6), addrField(f.v6, true)), bypassedUpdate(f, f.bypassed))
	}
	a.rule(replies, m.fam, m.tcp, ctrl, lookup(f.helped), replyIs(activeReply),
		concat(addrField(f.v6, true), ctOrigSrc(f.v6), ctOrigDst(f.v6)), bypassedUpdate(f, f.bypassedActive))
}

// unseenReplyRules (compat datapath): a server's reply that still has
// UnseenMark bypassed the daemon.
func unseenReplyRules(a ruleAdder, marked *nftables.Chain, m famMatch) {
	f := m.f
	// Its 227 or 229 went to the client unrewritten and opened no
	// channel: remember where this client's data connections to this
	// VIP must go (the port it names is the server's own). The reply
	// itself only: a client's sessions with other servers of the VIP
	// share the key, and the reply just before a data connection names
	// that connection's server.
	for _, code := range passiveReplies {
		a.rule(marked, m.fam, m.tcp, markBitsSet(UnseenMark), ctDirectionReply(), replyIs(code),
			concat(ctOrigSrc(f.v6), ctOrigDst(f.v6), addrField(f.v6, true)), bypassedUpdate(f, f.bypassed))
	}
	// Its PORT or EPRT opened no channel either: the server's
	// connection to the client must come from the VIP.
	a.rule(marked, m.fam, m.tcp, markBitsSet(UnseenMark), ctDirectionReply(), replyIs(activeReply),
		concat(addrField(f.v6, true), ctOrigSrc(f.v6), ctOrigDst(f.v6)), bypassedUpdate(f, f.bypassedActive))
}

// invalidRules: invalid packets on VIP paths would skip NAT and leak real
// addresses. Every port of a helped VIP and of its servers is on such a
// path (data connections), and where the router owns the VIP (keepalived
// put it there) an invalid packet to it would reach the local stack and be
// answered by a reset: after a failover a connection's packets can arrive
// before conntrackd has committed its entry, and must be dropped (the
// sender retransmits) rather than reset.
func invalidRules(a ruleAdder, invalid *nftables.Chain, m famMatch) {
	f := m.f
	a.rule(invalid, m.fam, m.tcp, m.dst, lookup(f.helped), drop())
	a.rule(invalid, m.fam, m.tcp, concat(addrField(f.v6, false)), lookup(f.helpedAddrs), drop())
	a.rule(invalid, m.fam, m.tcp, concat(addrField(f.v6, true)), lookup(f.serverAddrs), drop())
	a.rule(invalid, m.fam, m.tcp, m.src, lookup(f.watched), drop())
}

// newConnRules mark data connections.
func newConnRules(a ruleAdder, fresh *nftables.Chain, m famMatch, q []expr.Any) {
	f := m.f
	// After DNAT an active data connection, announced to the server
	// directly or through the user's SNAT, goes to the client.
	a.rule(fresh, m.fam, m.tcp, m.flow, lookupTo(f.active), setCtMark(ChannelMark))
	// Last: a server's connection to a client that no channel announced
	// (see snatRules) carries ChannelMark.
	serverClient := concat(addrField(f.v6, true), addrField(f.v6, false))
	a.rule(fresh, m.fam, m.tcp, serverClient, lookupTo(f.bypassedActive), setCtMark(ChannelMark))
	a.rule(fresh, m.fam, m.tcp, m.src, lookupTo(f.ecmpActive), setCtMark(ChannelMark))
	replyConnRules(a, fresh, m, q)
}

// dnatRules: the daemon's scheduling decision, the fail-open fallbacks,
// and data connections to the servers their channels name.
func dnatRules(a ruleAdder, dnat *nftables.Chain, m famMatch, spec *Spec) {
	f := m.f
	// The daemon follows the connections it scheduled.
	a.rule(dnat, m.fam, markBits(spec.MarkMask), lookupTo(f.byMark), setCtMarkIn(FollowMark, unix.NFT_REG32_08), natTo(expr.NATTypeDestNAT, f, true))
	if spec.KernelFTP {
		// A new control connection to a helped VIP that the daemon
		// did not mark bypassed it: the kernel's FTP helper reads
		// it for its whole life. Assigned before its NAT, which
		// then gives it the sequence adjustment the helper's
		// rewrites need (nf_nat_setup_info), on every kernel.
		a.rule(dnat, m.fam, m.tcp, markBitsClear(spec.MarkMask), m.dst, lookup(f.helped), lookup(f.vips), ctHelperSet(KernelFTPHelper), setCtMark(ChannelMark))
	}
	if spec.KernelTFTP {
		// Likewise a new request to a TFTP service (Replies) that the
		// daemon did not mark: the kernel's TFTP helper expects its
		// answer from the server's new port, and nf_nat_tftp, seeing
		// the fallback DNAT below, translates that as the VIP. Its
		// flow, expected, inherits ChannelMark. Before NAT: a helper
		// assigned after it would miss the NAT set-up.
		a.rule(dnat, m.fam, l4protoUDP(), markBitsClear(spec.MarkMask), m.dst, lookup(f.repliesVIPs), ctHelperSet(KernelTFTPHelper), setCtMark(ChannelMark))
	}
	replyDNATRules(a, dnat, m)
	// A kernel-scheduled service's chain. Its fail-open too: when it
	// has no server, nothing below matches its VIP.
	a.rule(dnat, m.fam, dispatchRule(f))
	// A new connection to a VIP without the daemon's mark: the daemon
	// is down and the queue was bypassed. Fail open to a server.
	a.rule(dnat, m.fam, m.tcp, concat(addrField(f.v6, false), portField(false), bucketField()), lookupTo(f.fallback), natTo(expr.NATTypeDestNAT, f, true))
	a.rule(dnat, m.fam, l4protoUDP(), concat(addrField(f.v6, false), portField(false), bucketField()), lookupTo(f.fallbackUDP), natTo(expr.NATTypeDestNAT, f, true))
	// Maps are tested with a lookup that loads the value: kernels
	// before 6.4 or so (Debian 12's 6.1) refuse a map in a plain
	// membership lookup (EINVAL).
	a.rule(dnat, m.fam, m.tcp, m.flow, lookupTo(f.passive), setCtMark(ChannelMark))
	a.rule(dnat, m.fam, m.tcp, m.flow, lookupTo(f.passive), natTo(expr.NATTypeDestNAT, f, true))
	a.rule(dnat, m.fam, m.tcp, m.flow, lookupTo(f.activeDNAT), natTo(expr.NATTypeDestNAT, f, true))
	// Last: a data connection that no channel announced, from a
	// client whose session's reply passed while the daemon was down,
	// goes to that session's server, port unchanged.
	clientVIP := concat(addrField(f.v6, true), addrField(f.v6, false))
	a.rule(dnat, m.fam, m.tcp, dportUnprivileged(), clientVIP, lookupTo(f.bypassed), setCtMark(ChannelMark))
	a.rule(dnat, m.fam, m.tcp, dportUnprivileged(), clientVIP, lookupTo(f.bypassed), natTo(expr.NATTypeDestNAT, f, false))
	// Behind ECMP, one that crossed the router that saw no channel.
	a.rule(dnat, ecmpDispatch(m))
}

// snatRules: srcnat's rules; active data connections come from the VIP
// the client knows.
func snatRules(a ruleAdder, snat *nftables.Chain, m famMatch) {
	f := m.f
	a.rule(snat, m.fam, m.tcp, m.flow, lookupTo(f.active), natTo(expr.NATTypeSourceNAT, f, false))
	a.rule(snat, m.fam, m.tcp, m.flow, lookupTo(f.passiveSNAT), natTo(expr.NATTypeSourceNAT, f, false))
	// Last: a server's connection to a client that no channel
	// announced, after its session's reply passed while the daemon was
	// down, comes from the VIP the client knows.
	serverClient := concat(addrField(f.v6, true), addrField(f.v6, false))
	a.rule(snat, m.fam, m.tcp, serverClient, lookupTo(f.bypassedActive), natTo(expr.NATTypeSourceNAT, f, false))
	// Behind ECMP, one from the server's active data port through the
	// router that saw no channel (ecmp.go).
	a.rule(snat, m.fam, m.tcp, m.src, lookupTo(f.ecmpActive), natTo(expr.NATTypeSourceNAT, f, false))
}

// forwardChains add the forward hook's regular chains and the rules that
// Update keeps: the forward chain sends a connection's first packet to
// forward_new (refusals, add-on SYNs) and, on the compat datapath, a
// client's established packet to forward_orig, which queues those of
// helped connections after conntrack and DNAT (by way of client_seg).
func (rs *Ruleset) forwardChains(a ruleAdder, spec *Spec) {
	rs.fwdNew = a.regular("forward_new")
	if spec.CtHelper != "" {
		return
	}
	orig := a.regular("forward_orig")
	q := []expr.Any{queueExpr(spec)}
	for _, f := range rs.fams {
		seg := a.regular(f.name("client_seg"))
		if spec.KernelFTP {
			// Control connections the kernel's FTP helper reads carry
			// ChannelMark (given with the helper; nft's `ct helper`
			// names a master's helper, so it cannot find them): the
			// daemon must not read them.
			a.rule(seg, ctMarkHas(ChannelMark), accept())
		}
		// The client's pure ACKs go by the daemon while their
		// connection needs no correction (not in acks).
		a.rule(seg, pureAck(f), concat(addrField(f.v6, true), portField(true), addrField(f.v6, false), portField(false)), lookupNot(f.acks), accept())
		a.rule(seg, q)
		a.rule(orig, nfproto(f.proto), l4protoTCP(), concat(ctOrigDst(f.v6), ctOrigDstPort()), lookup(f.helped), goTo(seg))
	}
}

// forwardRules fill forward_new: a new connection nothing balanced is
// refused, and the SYN of each new add-on connection is queued.
func (rs *Ruleset) forwardRules(c *nftables.Conn, spec *Spec) {
	const syn, ack, fin, rst = 0x02, 0x10, 0x01, 0x04
	a := ruleAdder{c: c, t: rs.table}
	a.rule(rs.fwdNew, notLoopback(), jump(&nftables.Chain{Name: refuseChain}))
	if rs.queue.KernelFTP && rs.queue.CtHelper == "" && len(spec.AddOns) > 0 {
		// Data connections, which carry ChannelMark too, are never add-on
		// SYNs; a connection the kernel's FTP helper reads is not the
		// daemon's (see forwardChains).
		a.rule(rs.fwdNew, ctMarkHas(ChannelMark), accept())
	}
	q := queueExpr(&rs.queue)
	for _, f := range rs.fams {
		for _, ad := range spec.AddOns {
			if !f.of(ad.Match.Addr()) {
				continue
			}
			if ad.UDP {
				// Likewise a UDP flow's first datagram: a request.
				a.rule(rs.fwdNew, nfproto(f.proto), l4protoUDP(), ctDirectionOriginal(),
					concat(ctOrigDst(f.v6), ctOrigDstPort()), cmpEq(addrPortKey(ad.Match)),
					setMark(rs.queue.MarkMask, ad.Mark), []expr.Any{q})
				continue
			}
			// The SYN after the user's DNAT shows client and server: the
			// mark tells the daemon which add-on it belongs to.
			a.rule(rs.fwdNew, nfproto(f.proto), l4protoTCP(), ctDirectionOriginal(), tcpFlagsEq(syn|ack|fin|rst, syn),
				concat(ctOrigDst(f.v6), ctOrigDstPort()), cmpEq(addrPortKey(ad.Match)),
				setCtMark(FollowMark), setMark(rs.queue.MarkMask, ad.Mark), []expr.Any{q})
		}
	}
}

// ct state bits: NF_CT_STATE_INVALID_BIT, NF_CT_STATE_BIT(IP_CT_ESTABLISHED)
// and NF_CT_STATE_BIT(IP_CT_NEW).
const (
	invalidBit     = 1
	establishedBit = 2
	newBit         = 8
)

// fallbackSlots are the service's fail-open buckets: its servers', or,
// when none has a weight, all the sorry server's (if any).
func (svc *Service) fallbackSlots() []Server {
	slots := fallbackSlots(svc.Servers)
	if slots == nil && svc.Sorry != nil {
		slots = make([]Server, fallbackBuckets)
		for b := range slots {
			slots[b] = *svc.Sorry
		}
	}
	return slots
}

// fallbackSlots spreads servers over the fallback buckets in proportion to
// their weights, interleaved (weighted round robin); nil when all are
// quiesced.
func fallbackSlots(servers []Server) []Server {
	total := 0
	for _, s := range servers {
		total += s.share()
	}
	if total == 0 {
		return nil
	}
	slots := make([]Server, fallbackBuckets)
	credit := make([]int, len(servers))
	for b := range slots {
		// Smooth weighted round robin: the server with the most credit
		// takes the slot.
		best := -1
		for i, s := range servers {
			credit[i] += s.share()
			if best < 0 || credit[i] > credit[best] {
				best = i
			}
		}
		credit[best] -= total
		slots[b] = servers[best]
	}
	return slots
}

// share is s's weight in the fallback buckets: none when down.
func (s Server) share() int {
	if s.Down {
		return 0
	}
	return max(s.Weight, 0)
}

// cmpEq compares what a preceding concat loaded with key, 16 bytes (the
// most one comparison takes) at a time.
func cmpEq(key []byte) []expr.Any {
	var out []expr.Any
	for off := 0; off < len(key); off += 16 {
		out = append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: unix.NFT_REG32_00 + uint32(off/4), Data: key[off:min(off+16, len(key))]})
	}
	return out
}

// setMark sets the mark bits within mask to bits, keeping the others.
func setMark(mask, bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: native32(^mask), Xor: native32(bits)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
	}
}

// ctMarkHas matches a connection whose conntrack mark has bit.
func ctMarkHas(bit uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: native32(bit), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: native32(0)},
	}
}

// ctMarkLacks matches a connection whose conntrack mark lacks bit.
func ctMarkLacks(bit uint32) []expr.Any {
	m := ctMarkHas(bit)
	m[len(m)-1] = &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: native32(0)}
	return m
}

// setCtMark sets bit in the connection's mark.
func setCtMark(bit uint32) []expr.Any { return setCtMarkIn(bit, reg1) }

// setCtMarkIn sets bit in the connection's mark by way of register reg
// (where a rule's other registers hold what comes after).
func setCtMarkIn(bit, reg uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: reg},
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4, Mask: native32(^bit), Xor: native32(bit)},
		&expr.Ct{Key: expr.CtKeyMARK, SourceRegister: true, Register: reg},
	}
}

func lookup(s *nftables.Set) []expr.Any {
	return []expr.Any{&expr.Lookup{SourceRegister: unix.NFT_REG32_00, SetName: s.Name, SetID: s.ID}}
}

// lookupTo looks the loaded key up in map s and loads its value from
// NFT_REG32_00 on.
func lookupTo(s *nftables.Set) []expr.Any {
	return []expr.Any{&expr.Lookup{SourceRegister: unix.NFT_REG32_00, DestRegister: unix.NFT_REG32_00, IsDestRegSet: true, SetName: s.Name, SetID: s.ID}}
}

// natTo translates to the address (and port) a preceding lookupTo loaded.
func natTo(typ expr.NATType, f *family, withPort bool) []expr.Any {
	n := &expr.NAT{Type: typ, Family: uint32(f.proto), RegAddrMin: unix.NFT_REG32_00}
	if withPort {
		n.RegProtoMin = unix.NFT_REG32_00 + words(f.addrLen)
		n.Specified = true
	}
	return []expr.Any{n}
}

func markBits(mask uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: unix.NFT_REG32_00},
		&expr.Bitwise{SourceRegister: unix.NFT_REG32_00, DestRegister: unix.NFT_REG32_00, Len: 4, Mask: native32(mask), Xor: native32(0)},
	}
}

// markBitsSet matches a packet with some of the mark bits within mask set:
// the daemon's verdict (or, on an add-on SYN, the forward rule) put them.
func markBitsSet(mask uint32) []expr.Any {
	return append(markBits(mask), &expr.Cmp{Op: expr.CmpOpNeq, Register: unix.NFT_REG32_00, Data: native32(0)})
}

func markBitsClear(mask uint32) []expr.Any {
	return append(markBits(mask), &expr.Cmp{Op: expr.CmpOpEq, Register: unix.NFT_REG32_00, Data: native32(0)})
}

// bypassedUpdate replaces in set the element a preceding concat of three
// addresses loaded: the first two the key, the third the value. An update
// alone would keep an existing element's value (it only renews its
// timeout), so the element is deleted first: the last reply wins.
func bypassedUpdate(f *family, set *nftables.Set) []expr.Any {
	const opDelete = 2 // NFT_DYNSET_OP_DELETE
	data := unix.NFT_REG32_00 + 2*words(f.addrLen)
	return []expr.Any{
		// A map's dynset names a data register even to delete.
		&expr.Dynset{SrcRegKey: unix.NFT_REG32_00, SrcRegData: data, SetName: set.Name, SetID: set.ID, Operation: opDelete},
		&expr.Dynset{SrcRegKey: unix.NFT_REG32_00, SrcRegData: data,
			SetName: set.Name, SetID: set.ID, Operation: uint32(unix.NFT_DYNSET_OP_UPDATE), Timeout: bypassedTimeout},
	}
}

func drop() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}} }

func accept() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}} }

// lookupNot matches when the loaded key is not in set s.
func lookupNot(s *nftables.Set) []expr.Any {
	return []expr.Any{&expr.Lookup{SourceRegister: unix.NFT_REG32_00, SetName: s.Name, SetID: s.ID, Invert: true}}
}

// addrPortKey encodes address . port as a concatenated set key.
func addrPortKey(ap netip.AddrPort) []byte {
	return appendPort(appendAddr(nil, ap.Addr()), ap.Port())
}

func appendAddr(b []byte, a netip.Addr) []byte {
	a = a.Unmap()
	return append(b, a.AsSlice()...)
}

// appendPort appends a port padded to a 4-byte register.
func appendPort(b []byte, port uint16) []byte {
	return append(binary.BigEndian.AppendUint16(b, port), 0, 0)
}
