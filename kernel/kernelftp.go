package kernel

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// KernelFTPHelper is the name of the kernel's own FTP conntrack helper.
const KernelFTPHelper = "ftp"

// sysModule is where the kernel lists its modules.
const sysModule = "/sys/module"

// ProbeKernelFTP asks whether the kernel's FTP helper can be attached
// from nftables and would translate what it reads: a ct helper object
// "ftp" in a table the same batch deletes again (which makes the kernel
// load nf_conntrack_ftp), and the NAT part. nf_nat_ftp is loaded by no
// nftables rule: where nf_conntrack_ftp is a module, nf_nat_ftp must show
// as loaded too (modprobe nf_nat_ftp); where it is built in (no initstate
// in sysfs), its NAT part is taken to be built in with it. nil, or an
// error wrapping ErrNoKernelFTP or ErrProbeSkipped.
func ProbeKernelFTP(conn *nftables.Conn) error {
	if err := probeTableFree(conn); err != nil {
		return err
	}
	t := conn.AddTable(&nftables.Table{Name: ProbeTable, Family: nftables.TableFamilyINet})
	conn.AddObj(&nftables.NamedObj{Table: t, Name: KernelFTPHelper, Type: nftables.ObjTypeCtHelper,
		Obj: &expr.CtHelper{Name: KernelFTPHelper, L4Proto: unix.IPPROTO_TCP}})
	conn.DelTable(t)
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("%w (ct helper %q: %v)", ErrNoKernelFTP, KernelFTPHelper, err)
	}
	return natFTPLoaded(sysModule)
}

// natFTPLoaded tells whether nf_nat_ftp is there, once nf_conntrack_ftp is.
func natFTPLoaded(sys string) error {
	return natHelperLoaded(sys, "nf_conntrack_ftp", "nf_nat_ftp", ErrNoKernelFTP)
}

// natHelperLoaded tells whether the NAT module nat of the conntrack helper
// module ct is there: where ct is a module (an initstate in sysfs), nat
// must show too, else an error wrapping missing. Where ct is built in, nat
// is taken to be built in with it.
func natHelperLoaded(sys, ct, nat string, missing error) error {
	if _, err := os.Stat(filepath.Join(sys, ct, "initstate")); err != nil {
		return nil // built in, or sysfs unreadable: the object was accepted
	}
	if _, err := os.Stat(filepath.Join(sys, nat)); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: module %s not loaded (modprobe %s)", missing, nat, nat)
	}
	return nil
}

// probeTableFree is nil unless a table with the probes' name exists (not
// ours to replace).
func probeTableFree(conn *nftables.Conn) error {
	tables, err := conn.ListTables()
	if err != nil {
		return fmt.Errorf("list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == ProbeTable && t.Family == nftables.TableFamilyINet {
			return fmt.Errorf("%w: a table inet %s exists", ErrProbeSkipped, ProbeTable)
		}
	}
	return nil
}
