package kernel

import (
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ipctnlMsgCtGetStats asks ctnetlink for the global conntrack counters.
const ipctnlMsgCtGetStats = 5

// ProbeCtnetlink asks ctnetlink for its global counters: nil, or an error
// wrapping ErrNoCtnetlink.
func ProbeCtnetlink() error {
	c, err := dialNetfilter()
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Execute(nfnlRequest(subsysCtnetlink, ipctnlMsgCtGetStats, netlink.Acknowledge, unix.AF_UNSPEC, 0, nil))
	if missingSubsys(err) {
		return fmt.Errorf("%w (%v)", ErrNoCtnetlink, err)
	}
	if err != nil {
		return fmt.Errorf("ctnetlink: %w", err)
	}
	return nil
}
