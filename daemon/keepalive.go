package daemon

import (
	"context"
	"log/slog"
	"time"

	"github.com/nfhelper/nfhelper/nft"
)

// keepAliveEvery is how often the table's liveness element is renewed,
// well within its timeout (nft.AliveTimeout): while it is there, new
// connections of helped kernel-scheduled services are the daemon's
// (kernel datapath: they get its userspace helper; compat: the kernel's
// FTP helper stays off them); once it expires they are the kernel's alone.
const keepAliveEvery = nft.AliveTimeout / 4

// keepAlive renews the liveness element by heartbeats until halted.
// Nothing deletes the element at the end: a stop removes the table, a
// hand-over leaves it to expire unless the successor beats first.
type keepAlive struct {
	stop context.CancelFunc
	done chan struct{}
}

// startKeepAlive calls beat (nft.Heartbeat, which sends from the
// daemon's network namespace) every interval until ctx ends or halt.
func startKeepAlive(ctx context.Context, beat func() error, every time.Duration, log *slog.Logger) *keepAlive {
	ctx, stop := context.WithCancel(ctx)
	k := &keepAlive{stop: stop, done: make(chan struct{})}
	go k.run(ctx, beat, every, log)
	return k
}

func (k *keepAlive) run(ctx context.Context, beat func() error, every time.Duration, log *slog.Logger) {
	defer close(k.done)
	tick := time.NewTicker(every)
	defer tick.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		err := beat()
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
