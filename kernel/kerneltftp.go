package kernel

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// KernelTFTPHelper is the name of the kernel's own TFTP conntrack helper.
const KernelTFTPHelper = "tftp"

// ProbeKernelTFTP asks whether the kernel's TFTP helper can be attached
// from nftables and would translate the answers it expects: a ct helper
// object "tftp" (UDP) in a table the same batch deletes again (which makes
// the kernel load nf_conntrack_tftp where it is a module: its alias
// nfct-helper-tftp), and the NAT part, nf_nat_tftp, which no nftables rule
// loads: where nf_conntrack_tftp is a module, nf_nat_tftp must show as
// loaded too (modprobe nf_nat_tftp). nil, or an error wrapping
// ErrNoKernelTFTP or ErrProbeSkipped.
func ProbeKernelTFTP(conn *nftables.Conn) error {
	if err := probeTableFree(conn); err != nil {
		return err
	}
	t := conn.AddTable(&nftables.Table{Name: ProbeTable, Family: nftables.TableFamilyINet})
	conn.AddObj(&nftables.NamedObj{Table: t, Name: KernelTFTPHelper, Type: nftables.ObjTypeCtHelper,
		Obj: &expr.CtHelper{Name: KernelTFTPHelper, L4Proto: unix.IPPROTO_UDP}})
	conn.DelTable(t)
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("%w (ct helper %q: %v)", ErrNoKernelTFTP, KernelTFTPHelper, err)
	}
	return natHelperLoaded(sysModule, "nf_conntrack_tftp", "nf_nat_tftp", ErrNoKernelTFTP)
}
