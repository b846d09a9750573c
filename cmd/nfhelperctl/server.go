package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"time"

	"github.com/nfhelper/nfhelper/ctl"
)

// waitPoll is how often drain --wait looks at the server's connections.
var waitPoll = time.Second

// serverCommand is `server SERVICE ADDRESS:PORT OPERATION`.
func serverCommand(o *options, args []string) (command, error) {
	if len(args) < 3 {
		return nil, errors.New("want SERVICE ADDRESS:PORT and one of weight N, drain [--wait], undrain, down, up")
	}
	req := ctl.ServerRequest{Service: args[0], Op: args[2]}
	ap, err := netip.ParseAddrPort(args[1])
	if err != nil || ap.Port() == 0 {
		return nil, fmt.Errorf("%q is not an address:port (IPv6 in brackets)", args[1])
	}
	req.Address = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	extra := args[3:]
	switch req.Op {
	case ctl.OpWeight:
		if len(extra) == 0 {
			return nil, fmt.Errorf("weight: want a number 0..%d", ctl.MaxWeight)
		}
		w, err := strconv.Atoi(extra[0])
		if err != nil || w < 0 || w > ctl.MaxWeight {
			return nil, fmt.Errorf("weight: %q is not a number 0..%d", extra[0], ctl.MaxWeight)
		}
		req.Weight, extra = w, extra[1:]
	case ctl.OpDrain, ctl.OpUndrain, ctl.OpDown, ctl.OpUp:
	default:
		return nil, fmt.Errorf("unknown operation %q (have weight N, drain, undrain, down, up)", req.Op)
	}
	if len(extra) > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", extra)
	}
	if o.wait && req.Op != ctl.OpDrain {
		return nil, errors.New("--wait goes with drain only")
	}
	wait := o.wait
	return func(ctx context.Context, c *ctl.Client, progress io.Writer) (any, func(io.Writer), error) {
		rs, err := c.SetServer(ctx, req)
		if err != nil {
			return nil, nil, err
		}
		if !wait {
			return rs, func(w io.Writer) { ctl.WriteServer(w, req.Service, rs) }, nil
		}
		ctl.WriteServer(progress, req.Service, rs)
		if err := waitDrained(ctx, c, req, progress); err != nil {
			return nil, nil, err
		}
		return rs, func(w io.Writer) { fmt.Fprintf(w, "%s %s: no connections left\n", req.Service, req.Address) }, nil
	}, nil
}

// waitDrained polls the server's connections until none is left but
// those that ended (they only wait out their timeout in the table),
// printing their count each time it changes.
func waitDrained(ctx context.Context, c *ctl.Client, req ctl.ServerRequest, progress io.Writer) error {
	last := -1
	for {
		cs, err := c.ServerConns(ctx, req.Service, req.Address)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("stopped waiting for %s %s's connections to end", req.Service, req.Address)
			}
			return err
		}
		n := 0
		for i := range cs.Conns {
			if x := &cs.Conns[i]; x.Service == req.Service && x.Server == req.Address && !x.Ended() {
				n++
			}
		}
		if n == 0 {
			return nil
		}
		if n != last {
			fmt.Fprintf(progress, "%s %s: %s left\n", req.Service, req.Address, ctl.Count(n, "connection"))
			last = n
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopped waiting for %s %s's connections to end: %d left", req.Service, req.Address, n)
		case <-time.After(waitPoll):
		}
	}
}
