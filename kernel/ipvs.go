package kernel

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// ProcIPVS exists while the kernel's IPVS is loaded.
const ProcIPVS = "/proc/net/ip_vs"

// ProbeIPVS reports whether the kernel's IPVS is loaded, without loading
// it: nfhelperd does not use it, but a balancer that runs both should know.
func ProbeIPVS(proc string) error {
	_, err := os.Stat(proc)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w (%s missing)", ErrNoIPVS, proc)
	}
	return err
}
