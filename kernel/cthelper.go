package kernel

import (
	"errors"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nfnetlink_cthelper message types and attributes (linux/netfilter/
// nfnetlink_cthelper.h).
const (
	cthMsgNew = 0
	cthMsgGet = 1
	cthMsgDel = 2

	cthName        = 1 // NUL-terminated, at most 15 characters
	cthTuple       = 2 // nested: l3 protocol (be16), l4 protocol (u8)
	cthQueueNum    = 3 // be32
	cthPolicy      = 4 // nested: count (be32), then one nest per class
	cthPrivDataLen = 5 // be32, at most PrivDataMax
	cthStatus      = 6 // be32: 0 disabled, 1 enabled

	cthTupleL3 = 1
	cthTupleL4 = 2

	cthPolicySetNum = 1
	cthPolicySet    = 2 // first class; class i is cthPolicySet+i

	cthPolicyName    = 1
	cthPolicyMax     = 2
	cthPolicyTimeout = 3

	helperStatusEnabled = 1
)

// Limits the kernel enforces on userspace helpers.
const (
	HelperNameMax = 15 // NF_CT_HELPER_NAME_LEN - 1
	// PrivDataMax is the size of a connection's helper data area (struct
	// nf_conn_help's data): the most a userspace helper may keep per
	// connection in the kernel.
	PrivDataMax = 32
	// ExpectClassesMax is NF_CT_MAX_EXPECT_CLASSES.
	ExpectClassesMax = 4
)

// Helper is a userspace conntrack helper: connections that carry it have
// their packets queued to Queue at the kernel's helper hook, after NAT.
type Helper struct {
	Name    string
	Family  uint8 // unix.AF_INET or unix.AF_INET6: one registration each
	Proto   uint8 // unix.IPPROTO_TCP, ...
	Queue   uint32
	PrivLen uint32 // bytes of per-connection state the kernel keeps for it
	Enabled bool   // disabled helpers let packets pass unqueued
	// Policies are the expectation classes; at least one.
	Policies []ExpectPolicy
}

// ExpectPolicy limits one expectation class.
type ExpectPolicy struct {
	Name        string
	MaxExpected uint32 // expectations per master connection
	Timeout     uint32 // seconds an expectation waits for its connection
}

func (h Helper) validate() error {
	switch {
	case h.Name == "" || len(h.Name) > HelperNameMax:
		return fmt.Errorf("helper name %q: 1 to %d bytes", h.Name, HelperNameMax)
	case h.Family != unix.AF_INET && h.Family != unix.AF_INET6:
		return fmt.Errorf("helper %s: family %d is neither IPv4 nor IPv6", h.Name, h.Family)
	case h.PrivLen > PrivDataMax:
		return fmt.Errorf("helper %s: %d bytes of private data, at most %d", h.Name, h.PrivLen, PrivDataMax)
	case len(h.Policies) == 0 || len(h.Policies) > ExpectClassesMax:
		return fmt.Errorf("helper %s: %d expectation classes, 1 to %d", h.Name, len(h.Policies), ExpectClassesMax)
	}
	for _, p := range h.Policies {
		if p.Name == "" || len(p.Name) > HelperNameMax {
			return fmt.Errorf("helper %s: policy name %q: 1 to %d bytes", h.Name, p.Name, HelperNameMax)
		}
	}
	return nil
}

// encodeTuple adds the helper's tuple (family and transport protocol).
func encodeTuple(ae *netlink.AttributeEncoder, family, proto uint8) {
	ae.Nested(cthTuple, func(n *netlink.AttributeEncoder) error {
		n.Uint16(cthTupleL3, uint16(family))
		n.Uint8(cthTupleL4, proto)
		return nil
	})
}

// encodeNew is the attributes of a message registering h. Without
// privLen (update is true) the kernel updates a registered helper's
// queue, policy and status instead: its data length cannot change.
func (h Helper) encode(update bool) ([]byte, error) {
	if err := h.validate(); err != nil {
		return nil, err
	}
	ae := encoder()
	ae.String(cthName, h.Name)
	encodeTuple(ae, h.Family, h.Proto)
	ae.Uint32(cthQueueNum, h.Queue)
	ae.Nested(cthPolicy, func(n *netlink.AttributeEncoder) error {
		n.Uint32(cthPolicySetNum, uint32(len(h.Policies)))
		for i, p := range h.Policies {
			n.Nested(uint16(cthPolicySet+i), func(pn *netlink.AttributeEncoder) error {
				pn.String(cthPolicyName, p.Name)
				pn.Uint32(cthPolicyMax, p.MaxExpected)
				pn.Uint32(cthPolicyTimeout, p.Timeout)
				return nil
			})
		}
		return nil
	})
	if !update {
		ae.Uint32(cthPrivDataLen, h.PrivLen)
	}
	status := uint32(0)
	if h.Enabled {
		status = helperStatusEnabled
	}
	ae.Uint32(cthStatus, status)
	return ae.Encode()
}

// parseHelper decodes one helper as the kernel dumps it.
func parseHelper(b []byte) (Helper, error) {
	var h Helper
	ad, err := decoder(b)
	if err != nil {
		return h, err
	}
	for ad.Next() {
		switch ad.Type() {
		case cthName:
			h.Name = ad.String()
		case cthQueueNum:
			h.Queue = ad.Uint32()
		case cthPrivDataLen:
			h.PrivLen = ad.Uint32()
		case cthStatus:
			h.Enabled = ad.Uint32() == helperStatusEnabled
		case cthTuple:
			ad.Nested(func(n *netlink.AttributeDecoder) error {
				for n.Next() {
					switch n.Type() {
					case cthTupleL3:
						v := n.Uint16()
						if v > 0xff {
							return fmt.Errorf("tuple family %d", v)
						}
						h.Family = uint8(v)
					case cthTupleL4:
						h.Proto = n.Uint8()
					}
				}
				return nil
			})
		case cthPolicy:
			ad.Nested(func(n *netlink.AttributeDecoder) error {
				for n.Next() {
					t := int(n.Type())
					if t < cthPolicySet || t >= cthPolicySet+ExpectClassesMax {
						continue
					}
					var p ExpectPolicy
					n.Nested(func(pn *netlink.AttributeDecoder) error {
						for pn.Next() {
							switch pn.Type() {
							case cthPolicyName:
								p.Name = pn.String()
							case cthPolicyMax:
								p.MaxExpected = pn.Uint32()
							case cthPolicyTimeout:
								p.Timeout = pn.Uint32()
							}
						}
						return nil
					})
					h.Policies = append(h.Policies, p)
				}
				return nil
			})
		}
	}
	if err := ad.Err(); err != nil {
		return Helper{}, fmt.Errorf("cthelper attributes: %w", err)
	}
	return h, nil
}

// Cthelper talks to nfnetlink_cthelper.
type Cthelper struct {
	c *netlink.Conn
}

// DialCthelper opens a netlink socket for helper registrations.
func DialCthelper() (*Cthelper, error) {
	c, err := dialNetfilter()
	if err != nil {
		return nil, err
	}
	return &Cthelper{c: c}, nil
}

// Close closes the socket; registered helpers stay.
func (ch *Cthelper) Close() error { return ch.c.Close() }

// cthelperErr turns the kernel's answer for a missing subsystem into
// ErrNoCthelper: nfnetlink answers EINVAL (EOPNOTSUPP on older kernels)
// for a subsystem it does not have.
func cthelperErr(what string, err error) error {
	if missingSubsys(err) {
		return fmt.Errorf("%s: %w (%v)", what, ErrNoCthelper, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// List returns the userspace helpers registered in this network
// namespace's kernel (all of them: the kernel keeps one list).
func (ch *Cthelper) List() ([]Helper, error) {
	msgs, err := ch.c.Execute(nfnlRequest(subsysCthelper, cthMsgGet, netlink.Dump, unix.AF_UNSPEC, 0, nil))
	if err != nil {
		return nil, cthelperErr("list conntrack helpers", err)
	}
	var out []Helper
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		h, err := parseHelper(m.Data[4:])
		if err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	return out, nil
}

// Register adds h, or adopts the registration of the same name, family
// and protocol that is there already, and returns that one as it was
// (nil: none was). Registrations are kernel-wide, not per network
// namespace: one already there was left by an earlier run (a crash, a
// hand-over, a stop) or belongs to a daemon running in another namespace.
// Either way it is updated in place when its private data length
// matches (adopting): the connections that carry it keep it, and with it
// their helper data, which is what lets a restarted daemon go on helping
// them. The update takes h's queue, but never lowers the expectation
// policy (Adopt). One of another length is replaced, if nothing holds it.
func (ch *Cthelper) Register(h Helper) (*Helper, error) {
	attrs, err := h.encode(false)
	if err != nil {
		return nil, err
	}
	what := fmt.Sprintf("register conntrack helper %s (family %d)", h.Name, h.Family)
	// Twice at most: a daemon in another namespace may register it
	// between the list and the creation (EEXIST); then it is adopted.
	for range 2 {
		list, err := ch.List()
		if err != nil {
			return nil, err
		}
		for _, old := range list {
			if old.Name != h.Name || old.Family != h.Family || old.Proto != h.Proto {
				continue
			}
			if old.PrivLen == h.PrivLen {
				upd, _ := h.Adopt(old).encode(true)
				if _, err := ch.c.Execute(nfnlRequest(subsysCthelper, cthMsgNew, netlink.Acknowledge, unix.AF_UNSPEC, 0, upd)); err != nil {
					return nil, fmt.Errorf("%s: update: %w", what, err)
				}
				return &old, nil
			}
			if err := ch.Unregister(h.Name, h.Family, h.Proto); err != nil {
				return nil, fmt.Errorf("%s: a helper of that name with %d bytes of private data is registered: %w", what, old.PrivLen, err)
			}
		}
		_, err = ch.c.Execute(nfnlRequest(subsysCthelper, cthMsgNew, netlink.Acknowledge|netlink.Create|netlink.Excl, unix.AF_UNSPEC, 0, attrs))
		if !errors.Is(err, unix.EEXIST) {
			if err != nil {
				return nil, fmt.Errorf("%s: %w", what, err)
			}
			return nil, nil
		}
	}
	return nil, fmt.Errorf("%s: %w", what, unix.EEXIST)
}

// Adopt is h as it updates the registration old of the same name, family,
// protocol and data length: h's queue and status, and for each expectation
// class the larger limit and timeout of the two. Another namespace's
// daemon may rely on old's, and the registration is theirs too; each
// daemon enforces its services' own limits.
func (h Helper) Adopt(old Helper) Helper {
	if len(old.Policies) != len(h.Policies) {
		return h // the kernel refuses the update (EBUSY)
	}
	policies := make([]ExpectPolicy, len(h.Policies))
	for i, p := range h.Policies {
		if o := old.Policies[i]; o.Name == p.Name {
			p.MaxExpected = max(p.MaxExpected, o.MaxExpected)
			p.Timeout = max(p.Timeout, o.Timeout)
		}
		policies[i] = p
	}
	h.Policies = policies
	return h
}

// Unregister removes the helper; ENOENT when there is none, EBUSY while
// something (a ct helper object) holds it.
func (ch *Cthelper) Unregister(name string, family, proto uint8) error {
	ae := encoder()
	ae.String(cthName, name)
	encodeTuple(ae, family, proto)
	attrs, err := ae.Encode()
	if err != nil {
		return err
	}
	if _, err := ch.c.Execute(nfnlRequest(subsysCthelper, cthMsgDel, netlink.Acknowledge, unix.AF_UNSPEC, 0, attrs)); err != nil {
		return cthelperErr(fmt.Sprintf("unregister conntrack helper %s (family %d)", name, family), err)
	}
	return nil
}

// ProbeCthelper reports whether userspace conntrack helpers are
// available: nil, or an error wrapping ErrNoCthelper. Asking loads the
// module where the kernel can.
func ProbeCthelper() error {
	ch, err := DialCthelper()
	if err != nil {
		return err
	}
	defer ch.Close()
	_, err = ch.List()
	return err
}

// DetachHelper takes the helper off the connection whose original
// direction is orig, as unregistering the helper would (its expectations
// go too): from then on the kernel applies the connection's seqadj records
// itself instead of queueing its packets for the helper. A daemon that
// stops while the registration stays (another namespace's daemon uses it)
// detaches its own connections so that they fail open.
func DetachHelper(c *netlink.Conn, orig Tuple) error {
	ae := encoder()
	if err := encodeTupleAttr(ae, ctaTupleOrig, orig); err != nil {
		return err
	}
	ae.Nested(ctaHelp, func(n *netlink.AttributeEncoder) error {
		n.String(ctaHelpName, "")
		return nil
	})
	attrs, err := ae.Encode()
	if err != nil {
		return err
	}
	if err := updateConntrack(c, orig, attrs); err != nil {
		return fmt.Errorf("detach the helper of %v -> %v: %w", orig.Src, orig.Dst, err)
	}
	return nil
}
