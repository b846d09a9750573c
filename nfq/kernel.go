package nfq

import (
	"os"
	"strconv"
	"strings"
)

// ProcQueueStats is the kernel's table of the queues bound in the reading
// process's network namespace.
const ProcQueueStats = "/proc/net/netfilter/nfnetlink_queue"

// KernelQueue is one queue's line of that table.
type KernelQueue struct {
	Num                  uint16
	Queued               uint64 // waiting for a verdict now
	Dropped, UserDropped uint64 // queue full (without fail-open); reader's socket buffer full
}

// KernelStats reads the table at path; nothing if it cannot be read. Its
// columns: queue, peer port id, queued now, copy mode, copy range, dropped,
// user dropped, id sequence, 1.
func KernelStats(path string) []KernelQueue {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []KernelQueue
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 7 {
			continue
		}
		num, err1 := strconv.ParseUint(f[0], 10, 16)
		queued, err2 := strconv.ParseUint(f[2], 10, 64)
		dropped, err3 := strconv.ParseUint(f[5], 10, 64)
		user, err4 := strconv.ParseUint(f[6], 10, 64)
		if err1 == nil && err2 == nil && err3 == nil && err4 == nil {
			out = append(out, KernelQueue{uint16(num), queued, dropped, user})
		}
	}
	return out
}
