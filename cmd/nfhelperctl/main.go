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
	o, cmd, err := parseArgs(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, usage)
		return 0
	case err != nil:
		fmt.Fprintf(stderr, "nfhelperctl: %v\n", err)
		fmt.Fprint(stderr, usage)
		return 2
	}
	return o.execute(cmd, stdout, stderr)
}

// parseArgs reads the options, before and after the command, and the
// command. Its error is flag.ErrHelp when usage was asked for, else a
// usage mistake.
func parseArgs(args []string) (options, command, error) {
	o := options{socket: ctl.SocketPath(), timeout: 10 * time.Second}
	global := flag.NewFlagSet("nfhelperctl", flag.ContinueOnError)
	global.SetOutput(io.Discard)
	o.register(global)
	if err := global.Parse(args); err != nil {
		return o, nil, err
	}
	rest := global.Args()
	if len(rest) == 0 {
		return o, nil, errors.New("no command")
	}
	name := rest[0]
	if name == "help" {
		return o, nil, flag.ErrHelp
	}
	cmd, ok := commands[name]
	if !ok {
		return o, nil, fmt.Errorf("unknown command %q", name)
	}
	sub := flag.NewFlagSet("nfhelperctl "+name, flag.ContinueOnError)
	sub.SetOutput(io.Discard)
	o.register(sub)
	if err := sub.Parse(rest[1:]); errors.Is(err, flag.ErrHelp) {
		return o, nil, err
	} else if err != nil {
		return o, nil, fmt.Errorf("%s: %v", name, err)
	}
	if sub.NArg() > 0 {
		return o, nil, fmt.Errorf("%s: unexpected arguments %q", name, sub.Args())
	}
	if o.socket == "" {
		return o, nil, errors.New("--socket: empty path")
	}
	return o, cmd, nil
}

// A command asks the daemon for one reply: v to print as JSON, text to
// print it as text. err is errFailedCheck when the reply says a check
// failed: it is printed all the same.
type command func(context.Context, *ctl.Client) (v any, text func(io.Writer), err error)

var commands = map[string]command{
	"status":   reply((*ctl.Client).Status, ctl.WriteStatus),
	"services": reply((*ctl.Client).Services, ctl.WriteServices),
	"conns":    reply((*ctl.Client).Conns, ctl.WriteConns),
	"check":    checkCommand,
	"rules":    reply((*ctl.Client).Rules, ctl.WriteRules),
}

// reply is the command that gets a reply with get and prints it with write.
func reply[T any](get func(*ctl.Client, context.Context) (T, error), write func(io.Writer, T)) command {
	return func(ctx context.Context, c *ctl.Client) (any, func(io.Writer), error) {
		v, err := get(c, ctx)
		return v, func(w io.Writer) { write(w, v) }, err
	}
}

// checkCommand is the one command whose reply can fail: when a check
// failed, nfhelperctl prints the report and exits 1.
func checkCommand(ctx context.Context, c *ctl.Client) (any, func(io.Writer), error) {
	v, err := c.Check(ctx)
	if err == nil && v.Failed() {
		err = errFailedCheck
	}
	return v, func(w io.Writer) { ctl.WriteCheck(w, v) }, err
}

// execute runs cmd against the daemon and prints its reply; it returns the
// exit status.
func (o options) execute(cmd command, stdout, stderr io.Writer) int {
	ctx := context.Background()
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	v, text, err := cmd(ctx, ctl.NewClient(o.socket, 0))
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
