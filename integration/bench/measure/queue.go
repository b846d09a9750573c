package measure

import (
	"context"
	"strconv"
	"strings"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// QueueFile lists a namespace's NFQUEUEs, one line a bound queue:
// queue_number peer_portid queue_total copy_mode copy_range queue_dropped
// user_dropped id_sequence 1.
const QueueFile = "/proc/net/netfilter/nfnetlink_queue"

// Queue is one NFQUEUE's counters. They count from the queue's binding, so
// a benchmark takes differences around what it measures.
type Queue struct {
	Number      string // queue_number, as the file writes it
	Dropped     int64  // queue_dropped: the queue was full
	UserDropped int64  // user_dropped: netlink could not send to the daemon
	IDSequence  int64  // id_sequence: the packets queued so far
}

// ReadQueues reads the NFQUEUEs of namespace ns of tp. It reads the file
// inside the namespace, as /proc/net is per network namespace. Without a
// bound queue (no daemon) the list is empty.
func ReadQueues(ctx context.Context, tp *topo.Topo, ns string) ([]Queue, error) {
	out, err := tp.Run(ctx, ns, "cat", QueueFile)
	if err != nil {
		return nil, err
	}
	return ParseQueues(string(out)), nil
}

// ParseQueues is the queues of a nfnetlink_queue text; a line of fewer
// than eight fields is passed over, a field that is not a number counts 0.
func ParseQueues(text string) []Queue {
	var qs []Queue
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		q := Queue{Number: f[0]}
		q.Dropped, _ = strconv.ParseInt(f[5], 10, 64)
		q.UserDropped, _ = strconv.ParseInt(f[6], 10, 64)
		q.IDSequence, _ = strconv.ParseInt(f[7], 10, 64)
		qs = append(qs, q)
	}
	return qs
}

// Queued is the packets handed to the daemon so far over all queues (their
// id_sequence summed).
func Queued(qs []Queue) int64 {
	var n int64
	for _, q := range qs {
		n += q.IDSequence
	}
	return n
}

// RouterQueued is Queued of the router of tp: 0 if it cannot be read or
// no daemon runs.
func RouterQueued(ctx context.Context, tp *topo.Topo) int64 {
	qs, err := ReadQueues(ctx, tp, tp.Router)
	if err != nil {
		return 0
	}
	return Queued(qs)
}
