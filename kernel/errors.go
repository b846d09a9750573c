package kernel

import "errors"

// Sentinel errors of the probes: what the kernel lacks.
var (
	// ErrNoNativeQueue: the nft queue expression (nft_queue) is missing.
	ErrNoNativeQueue = errors.New("native nft queue expression unavailable")
	// ErrNoXtQueue: the xtables NFQUEUE target could not be used: module
	// xt_NFQUEUE (or nft_compat) missing or not loadable.
	ErrNoXtQueue = errors.New("xtables NFQUEUE target unavailable (module xt_NFQUEUE through nft_compat)")
	// ErrNoQueue: neither queue statement can be used.
	ErrNoQueue = errors.New("no way to queue packets: neither the nft queue expression (module nft_queue) nor the xtables NFQUEUE target (module xt_NFQUEUE)")
	// ErrNoQueueConntrack: queue messages and verdicts cannot carry
	// conntrack attributes (CONFIG_NETFILTER_NETLINK_GLUE_CT).
	ErrNoQueueConntrack = errors.New("NFQA_CT (conntrack in queue messages) unavailable")
	// ErrNoCthelper: userspace conntrack helpers (nfnetlink_cthelper) are
	// missing.
	ErrNoCthelper = errors.New("userspace conntrack helpers (nfnetlink_cthelper) unavailable")
	// ErrNoCtnetlink: conntrack over netlink (nf_conntrack_netlink) is
	// missing.
	ErrNoCtnetlink = errors.New("ctnetlink unavailable")
	// ErrNoIPVS: the kernel's IPVS is not loaded (informational only).
	ErrNoIPVS = errors.New("IPVS not loaded")
	// ErrProbeSkipped: a probe could not run without touching something
	// that is not ours.
	ErrProbeSkipped = errors.New("probe skipped")
	// ErrDatapathUnavailable: the datapath asked for cannot run here.
	ErrDatapathUnavailable = errors.New("datapath unavailable on this kernel")
)

// ErrNoKernelFTP: the kernel's own FTP helper (nf_conntrack_ftp) or its
// NAT part (nf_nat_ftp) is missing; fail-open then covers control
// connections only.
var ErrNoKernelFTP = errors.New("the kernel's FTP helper (nf_conntrack_ftp + nf_nat_ftp) unavailable")

// ErrNoKernelTFTP: the kernel's own TFTP helper (nf_conntrack_tftp) or its
// NAT part (nf_nat_tftp) is missing; while the daemon is down, new TFTP
// requests then reach a server but its answers are not translated.
var ErrNoKernelTFTP = errors.New("the kernel's TFTP helper (nf_conntrack_tftp + nf_nat_tftp) unavailable")
