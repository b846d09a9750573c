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
		rs, err = waitDrained(ctx, c, req, rs, progress)
		if err != nil {
			return nil, nil, err
		}
		return rs, func(w io.Writer) { fmt.Fprintf(w, "%s %s: no connections left\n", req.Service, req.Address) }, nil
	}, nil
}

// waitDrained polls the services view until the server has no
// connections, printing their count each time it changes.
func waitDrained(ctx context.Context, c *ctl.Client, req ctl.ServerRequest, rs *ctl.RealServer, progress io.Writer) (*ctl.RealServer, error) {
	last := int64(-1)
	for {
		n := rs.Connections()
		if n == 0 {
			return rs, nil
		}
		if n != last {
			fmt.Fprintf(progress, "%s %s: %d connections left (%d active, %d inactive)\n", req.Service, req.Address, n, rs.Active, rs.Inactive)
			last = n
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("stopped waiting: %s %s still has %d connections", req.Service, req.Address, n)
		case <-time.After(waitPoll):
		}
		svcs, err := c.Services(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("stopped waiting: %s %s still has %d connections", req.Service, req.Address, n)
			}
			return nil, err
		}
		if rs = find(svcs, req); rs == nil {
			return nil, fmt.Errorf("%s is no longer a real server of service %q (reloaded?)", req.Address, req.Service)
		}
	}
}

// find is the server req names in svcs, or nil.
func find(svcs *ctl.Services, req ctl.ServerRequest) *ctl.RealServer {
	for _, svc := range svcs.Services {
		if svc.Name != req.Service {
			continue
		}
		for i := range svc.Servers {
			if rs := &svc.Servers[i]; rs.Address == req.Address && !rs.Sorry {
				return rs
			}
		}
	}
	return nil
}
