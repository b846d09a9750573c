package kernel

import (
	"errors"
	"net/netip"

	"golang.org/x/sys/unix"
)

func addrPort(b []byte, port uint16) netip.AddrPort {
	a, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(a, port)
}

func isErrno(err error, e unix.Errno) bool { return errors.Is(err, e) }

// missingSubsys reports whether err is nfnetlink's answer for a subsystem
// the kernel does not have: EINVAL on recent kernels, EOPNOTSUPP before.
// Only meaningful for requests the subsystem itself cannot call invalid.
func missingSubsys(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)
}
