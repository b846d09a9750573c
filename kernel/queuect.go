package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nfnetlink_queue configuration (linux/netfilter/nfnetlink_queue.h).
const (
	nfqMsgConfig = 2

	nfqaCfgCmd   = 1 // struct nfqnl_msg_config_cmd: command, pad, pf (be16)
	nfqaCfgMask  = 4 // be32
	nfqaCfgFlags = 5 // be32

	nfqCmdBind   = 1
	nfqCmdUnbind = 2

	// NfqaCfgFlagConntrack asks for NFQA_CT in queued packets' messages.
	NfqaCfgFlagConntrack = 0x2
)

// ProbeQueueNumbers are the queue numbers ProbeQueueConntrack tries, in
// order, until one is free: numbers no configuration is likely to use.
var ProbeQueueNumbers = []uint16{65531, 65519, 65503}

// queueConfig is an NFQNL_MSG_CONFIG message: a command and, with a
// non-zero mask, flags.
func queueConfig(num uint16, cmd uint8, flags, mask uint32) netlink.Message {
	ae := encoder()
	c := []byte{cmd, 0, 0, 0}
	binary.BigEndian.PutUint16(c[2:], unix.AF_UNSPEC)
	ae.Bytes(nfqaCfgCmd, c)
	if mask != 0 {
		ae.Uint32(nfqaCfgFlags, flags)
		ae.Uint32(nfqaCfgMask, mask)
	}
	attrs, _ := ae.Encode()
	return nfnlRequest(subsysQueue, nfqMsgConfig, netlink.Acknowledge, unix.AF_UNSPEC, num, attrs)
}

// ProbeQueueConntrack binds a free queue number with the conntrack flag and
// unbinds it again: nil when queue messages and verdicts can carry NFQA_CT,
// else an error wrapping ErrNoQueueConntrack (or why it could not tell).
func ProbeQueueConntrack() error {
	c, err := dialNetfilter()
	if err != nil {
		return err
	}
	defer c.Close()
	var last error
	for _, num := range ProbeQueueNumbers {
		for try := 0; try < 3; try++ {
			_, err = c.Execute(queueConfig(num, nfqCmdBind, NfqaCfgFlagConntrack, NfqaCfgFlagConntrack))
			// EAGAIN: the kernel just loaded ctnetlink for the flag; ask again.
			if !errors.Is(err, unix.EAGAIN) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		switch {
		case err == nil:
			if _, err := c.Execute(queueConfig(num, nfqCmdUnbind, 0, 0)); err != nil {
				return fmt.Errorf("unbind probe queue %d: %w", num, err)
			}
			return nil
		case errors.Is(err, unix.EOPNOTSUPP):
			return fmt.Errorf("%w (%v)", ErrNoQueueConntrack, err)
		case errors.Is(err, unix.EPERM) || errors.Is(err, unix.EBUSY):
			// Someone else's queue: try the next number.
			last = err
			continue
		default:
			return fmt.Errorf("bind probe queue %d: %w", num, err)
		}
	}
	return fmt.Errorf("%w: no free probe queue (%v)", ErrProbeSkipped, last)
}
