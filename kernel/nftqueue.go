package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"
)

// ProbeTable is the throw-away table the queue probes add and delete in
// one batch: family inet for the native queue expression, ip for the
// xtables target.
const ProbeTable = "nfhelper_probe"

// ProbeNativeQueue asks the kernel to accept a rule with the nft queue
// expression in a table the same batch deletes again: the batch fails as a
// whole when the expression is unknown, and otherwise leaves nothing
// behind. nil, or an error wrapping ErrNoNativeQueue or ErrProbeSkipped.
func ProbeNativeQueue(conn *nftables.Conn) error {
	if err := probeTableFree(conn); err != nil {
		return err
	}
	t := conn.AddTable(&nftables.Table{Name: ProbeTable, Family: nftables.TableFamilyINet})
	c := conn.AddChain(&nftables.Chain{Name: "probe", Table: t})
	conn.AddRule(&nftables.Rule{Table: t, Chain: c, Exprs: []expr.Any{
		&expr.Queue{Num: 65535, Total: 1, Flag: expr.QueueFlagBypass},
	}})
	conn.DelTable(t)
	if err := conn.Flush(); err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("%w (%v)", ErrNoNativeQueue, err)
		}
		// google/nftables does not always keep the errno: a failed batch
		// with nothing else in it means the expression.
		return fmt.Errorf("%w (%v)", ErrNoNativeQueue, err)
	}
	return nil
}

// ProbeXtQueue asks the kernel to accept a rule with the xtables NFQUEUE
// target (through nft_compat) in a throw-away table of family ip, deleted
// again by the same batch. In the ip family the kernel looks the target up
// as ipt_NFQUEUE, an alias of xt_NFQUEUE, and loads that module when it is
// missing; in an inet table it would ask for "(null)t_NFQUEUE" and fail. So
// after a nil return the daemon's inet table can use the target, whatever
// was loaded before. nil, or an error wrapping ErrNoXtQueue or
// ErrProbeSkipped.
func ProbeXtQueue(conn *nftables.Conn) error {
	tables, err := conn.ListTables()
	if err != nil {
		return fmt.Errorf("list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == ProbeTable && t.Family == nftables.TableFamilyIPv4 {
			return fmt.Errorf("%w: a table ip %s exists", ErrProbeSkipped, ProbeTable)
		}
	}
	t := conn.AddTable(&nftables.Table{Name: ProbeTable, Family: nftables.TableFamilyIPv4})
	c := conn.AddChain(&nftables.Chain{Name: "probe", Table: t})
	conn.AddRule(&nftables.Rule{Table: t, Chain: c, Exprs: []expr.Any{XtQueue(65535, 1)}})
	conn.DelTable(t)
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("%w (%v)", ErrNoXtQueue, err)
	}
	return nil
}

// XtQueue is the xtables NFQUEUE target, revision 3, queueing to queues
// num..num+total-1 (balanced by an address hash) with the bypass flag: with
// no reader bound, packets are accepted instead of dropped. Its info is 6
// bytes in host byte order: queue number, queues total, flags.
func XtQueue(num, total uint16) *expr.Target {
	const bypass = 1
	info := make(xt.Unknown, 6)
	binary.NativeEndian.PutUint16(info[0:], num)
	binary.NativeEndian.PutUint16(info[2:], total)
	binary.NativeEndian.PutUint16(info[4:], bypass)
	return &expr.Target{Name: "NFQUEUE", Rev: 3, Info: &info}
}
