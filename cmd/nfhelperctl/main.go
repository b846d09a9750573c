// Command nfhelperctl shows what a running nfhelperd does: its status,
// services and real servers with their counters, the connection table,
// kernel feature checks and its nftables table. It talks to the daemon's
// control socket (root only).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/nfhelper/nfhelper/ctl"
)

const usage = `usage: nfhelperctl [--socket PATH] [--json] [--timeout D] COMMAND [--json]

Commands:
  status     daemon pid, uptime, datapath, queues, config, counts and counters
  services   virtual services and real servers with counters (as ipvsadm -Ln),
             and add-on helpers with their learned servers
  conns      connection table (as ipvsadm -Lnc) with open data channels
  check      kernel features, datapath and ruleset mistakes
  rules      the daemon's nftables table (inet nfhelper)

Options:
  --socket PATH   control socket (default $NFHELPER_SOCKET, else ` + ctl.DefaultSocket + `)
  --json          print machine-readable JSON
  --timeout D     give up after D (default 10s)

Exit status: 0 ok, 1 error (or a failed check), 2 usage.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type options struct {
	socket  string
	json    bool
	timeout time.Duration
}

func (o *options) register(fs *flag.FlagSet) {
	fs.StringVar(&o.socket, "socket", o.socket, "control socket")
	fs.BoolVar(&o.json, "json", o.json, "print JSON")
	fs.DurationVar(&o.timeout, "timeout", o.timeout, "request timeout")
}

// run is nfhelperctl with its arguments; it returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	o := options{socket: ctl.SocketPath(), timeout: 10 * time.Second}
	global := flag.NewFlagSet("nfhelperctl", flag.ContinueOnError)
	global.SetOutput(io.Discard)
	o.register(global)
	bad := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "nfhelperctl: "+format+"\n", a...)
		fmt.Fprint(stderr, usage)
		return 2
	}
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return 0
		}
		return bad("%v", err)
	}
	rest := global.Args()
	if len(rest) == 0 {
		return bad("no command")
	}
	cmd := rest[0]
	if cmd == "help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	var show func(context.Context, *ctl.Client) (any, func(io.Writer), error)
	switch cmd {
	case "status":
		show = func(ctx context.Context, c *ctl.Client) (any, func(io.Writer), error) {
			v, err := c.Status(ctx)
			return v, func(w io.Writer) { ctl.WriteStatus(w, v) }, err
		}
	case "services":
		show = func(ctx context.Context, c *ctl.Client) (any, func(io.Writer), error) {
			v, err := c.Services(ctx)
			return v, func(w io.Writer) { ctl.WriteServices(w, v) }, err
		}
	case "conns":
		show = func(ctx context.Context, c *ctl.Client) (any, func(io.Writer), error) {
			v, err := c.Conns(ctx)
			return v, func(w io.Writer) { ctl.WriteConns(w, v) }, err
		}
	case "check":
		show = func(ctx context.Context, c *ctl.Client) (any, func(io.Writer), error) {
			v, err := c.Check(ctx)
			if err == nil && v.Failed() {
				err = errFailedCheck
			}
			return v, func(w io.Writer) { ctl.WriteCheck(w, v) }, err
		}
	case "rules":
		show = func(ctx context.Context, c *ctl.Client) (any, func(io.Writer), error) {
			v, err := c.Rules(ctx)
			return v, func(w io.Writer) { ctl.WriteRules(w, v) }, err
		}
	default:
		return bad("unknown command %q", cmd)
	}
	sub := flag.NewFlagSet("nfhelperctl "+cmd, flag.ContinueOnError)
	sub.SetOutput(io.Discard)
	o.register(sub)
	if err := sub.Parse(rest[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return 0
		}
		return bad("%s: %v", cmd, err)
	}
	if sub.NArg() > 0 {
		return bad("%s: unexpected arguments %q", cmd, sub.Args())
	}
	if o.socket == "" {
		return bad("--socket: empty path")
	}

	ctx := context.Background()
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	v, text, err := show(ctx, ctl.NewClient(o.socket, 0))
	if err != nil && !errors.Is(err, errFailedCheck) {
		fmt.Fprintf(stderr, "nfhelperctl: %v\n", err)
		return 1
	}
	if o.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			fmt.Fprintf(stderr, "nfhelperctl: %v\n", err)
			return 1
		}
	} else {
		text(stdout)
	}
	if err != nil {
		return 1
	}
	return 0
}

var errFailedCheck = errors.New("a check failed")
