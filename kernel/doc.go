// Package kernel finds out, at start-up, which netfilter features the
// running kernel offers, picks the datapath nfhelperd runs on them, and
// speaks the netlink the kernel-assisted datapath needs beyond the
// libraries: userspace conntrack helpers (nfnetlink_cthelper) and the
// conntrack attributes carried in queue messages and verdicts (NFQA_CT).
//
// Each feature has its own file and sentinel error; probes wrap it with %w
// and the kernel's answer, so errors.Is tells what is missing.
package kernel
