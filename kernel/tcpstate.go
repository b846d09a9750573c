package kernel

// CtTCPState is conntrack's TCP state of a connection (enum tcp_conntrack in
// the kernel's nf_conntrack_tcp.h), as ctnetlink and conntrack events carry
// it in CTA_PROTOINFO_TCP_STATE.
type CtTCPState uint8

// The states in the kernel's order: a state before CtTCPEstablished is the
// handshake's, one after it the close's.
const (
	CtTCPNone CtTCPState = iota
	CtTCPSynSent
	CtTCPSynRecv
	CtTCPEstablished
	CtTCPFinWait
	CtTCPCloseWait
	CtTCPLastAck
	CtTCPTimeWait
	CtTCPClose
	CtTCPListen // unused by the kernel, kept for the numbering
	CtTCPSynSent2
)
