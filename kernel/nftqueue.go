package kernel

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// ProbeTable is the throw-away table the native queue probe adds and
// deletes in one batch.
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
