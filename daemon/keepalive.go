package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/nftables"

	"github.com/nfhelper/nfhelper/nft"
)

// keepAliveEvery is how often the table's liveness element is renewed,
// well within its timeout (nft.AliveTimeout): while it is there, new
// connections of helped kernel-scheduled services are the daemon's
// (kernel datapath: they get its userspace helper; compat: the kernel's
// FTP helper stays off them); once it expires they are the kernel's alone.
const keepAliveEvery = nft.AliveTimeout / 4

// keepAlive renews the liveness element until halted. Nothing deletes the
// element at the end: a stop removes the table, a hand-over leaves it to
// expire unless the successor's Install adds it again first.
type keepAlive struct {
	stop context.CancelFunc
	done chan struct{}
}

// renewer has the liveness element: an *nft.Ruleset.
type renewer interface {
	KeepAlive(c *nftables.Conn) error
}

var _ renewer = (*nft.Ruleset)(nil)

// startKeepAlive starts renewing rs's liveness element every interval
// until ctx ends or halt. Its socket is its own, opened here (in the
// caller's network namespace): a reload's long batch on the daemon's must
// neither delay it nor interleave with it.
func startKeepAlive(ctx context.Context, rs renewer, every time.Duration, log *slog.Logger) (*keepAlive, error) {
	conn, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	ctx, stop := context.WithCancel(ctx)
	k := &keepAlive{stop: stop, done: make(chan struct{})}
	go k.run(ctx, conn, rs, every, log)
	return k, nil
}

func (k *keepAlive) run(ctx context.Context, conn *nftables.Conn, rs renewer, every time.Duration, log *slog.Logger) {
	defer close(k.done)
	defer conn.CloseLasting()
	tick := time.NewTicker(every)
	defer tick.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		err := rs.KeepAlive(conn)
		switch {
		case err != nil && !failing:
			log.Error("liveness element not renewed: new helped connections fall to the kernel when it expires", "err", err)
		case err == nil && failing:
			log.Info("liveness element renewed again")
		}
		failing = err != nil
	}
}

// halt stops the renewal and waits until it has; nil: never started.
func (k *keepAlive) halt() {
	if k == nil {
		return
	}
	k.stop()
	<-k.done
}
