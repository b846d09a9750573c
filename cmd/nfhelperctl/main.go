// Command nfhelperctl shows what a running nfhelperd does: its status,
// services and real servers with their counters and health, the connection
// table, kernel feature checks and its nftables table; and changes a real
// server's weight and standing at run time. It talks to the daemon's
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
	"os/signal"
	"syscall"
	"time"

	"github.com/nfhelper/nfhelper/ctl"
)

const usage = `usage: nfhelperctl [--socket PATH] [--json] [--timeout D] COMMAND [ARGS] [--json]

Commands:
  status     daemon pid, uptime, datapath, queues, config, counts and counters
  services   virtual services and real servers with counters (as ipvsadm -Ln),
             state, health, last failure and overrides, and add-on helpers
             with their learned servers; who schedules each service (the
             kernel: rr, wrr, sh, mh; the daemon: lc, wlc, sed, nq), the
             kernel-scheduled ones' counts read from conntrack
  conns      connection table (as ipvsadm -Lnc) with open data channels,
             kernel-scheduled services' connections read from conntrack
  check      kernel features, datapath and ruleset mistakes
  rules      the daemon's nftables table (inet nfhelper)
  server SERVICE ADDRESS:PORT OPERATION
             change a real server at once, until undone or until a reload
             changes its entry in the file (kept across restarts):
               weight N        weight N (0..65535) instead of the file's
               drain [--wait]  weight 0: no new connections; --wait waits
                               until it has none left, showing the count
               undrain         back to its weight
               down            out, whatever its health checks say
               up              back to its health checks

Options:
  --socket PATH   control socket (default $NFHELPER_SOCKET, else ` + ctl.DefaultSocket + `)
  --json          print machine-readable JSON
  --timeout D     give up after D (default 10s; with --wait, each request)

Exit status: 0 ok, 1 error (or a failed check, an unknown service or
server), 2 usage.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type options struct {
	socket  string
	json    bool
	timeout time.Duration
	wait    bool // server ... drain --wait
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

// parseArgs reads the options, before and after the command, the command
// and its arguments (options may come between them). Its error is
// flag.ErrHelp when usage was asked for, else a usage mistake.
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
	mk, ok := commands[name]
	if !ok {
		return o, nil, fmt.Errorf("unknown command %q", name)
	}
	sub := flag.NewFlagSet("nfhelperctl "+name, flag.ContinueOnError)
	sub.SetOutput(io.Discard)
	o.register(sub)
	if name == "server" {
		sub.BoolVar(&o.wait, "wait", false, "wait for the drained server's connections to end")
	}
	var pos []string
	for rest = rest[1:]; ; rest = sub.Args()[1:] {
		if err := sub.Parse(rest); errors.Is(err, flag.ErrHelp) {
			return o, nil, err
		} else if err != nil {
			return o, nil, fmt.Errorf("%s: %v", name, err)
		}
		if sub.NArg() == 0 {
			break
		}
		pos = append(pos, sub.Arg(0))
	}
	if o.socket == "" {
		return o, nil, errors.New("--socket: empty path")
	}
	cmd, err := mk(&o, pos)
	if err != nil {
		return o, nil, fmt.Errorf("%s: %v", name, err)
	}
	return o, cmd, nil
}

// A command asks the daemon for one reply: v to print as JSON, text to
// print it as text. err is errFailedCheck when the reply says a check
// failed: it is printed all the same. A command that takes long tells
// how it goes on progress.
type command func(ctx context.Context, c *ctl.Client, progress io.Writer) (v any, text func(io.Writer), err error)

// commands make each command from its arguments; their error is a usage
// mistake.
var commands = map[string]func(o *options, args []string) (command, error){
	"status":   noArgs(reply((*ctl.Client).Status, ctl.WriteStatus)),
	"services": noArgs(reply((*ctl.Client).Services, ctl.WriteServices)),
	"conns":    noArgs(reply((*ctl.Client).Conns, ctl.WriteConns)),
	"check":    noArgs(checkCommand),
	"rules":    noArgs(reply((*ctl.Client).Rules, ctl.WriteRules)),
	"server":   serverCommand,
}

// noArgs makes a command that takes no arguments.
func noArgs(cmd command) func(*options, []string) (command, error) {
	return func(_ *options, args []string) (command, error) {
		if len(args) > 0 {
			return nil, fmt.Errorf("unexpected arguments %q", args)
		}
		return cmd, nil
	}
}

// reply is the command that gets a reply with get and prints it with write.
func reply[T any](get func(*ctl.Client, context.Context) (T, error), write func(io.Writer, T)) command {
	return func(ctx context.Context, c *ctl.Client, _ io.Writer) (any, func(io.Writer), error) {
		v, err := get(c, ctx)
		return v, func(w io.Writer) { write(w, v) }, err
	}
}

// checkCommand is the one command whose reply can fail: when a check
// failed, nfhelperctl prints the report and exits 1.
func checkCommand(ctx context.Context, c *ctl.Client, _ io.Writer) (any, func(io.Writer), error) {
	v, err := c.Check(ctx)
	if err == nil && v.Failed() {
		err = errFailedCheck
	}
	return v, func(w io.Writer) { ctl.WriteCheck(w, v) }, err
}

// execute runs cmd against the daemon and prints its reply; it returns the
// exit status. --timeout bounds the whole command, or each request of a
// --wait, which itself waits as long as it takes (or until interrupted).
func (o options) execute(cmd command, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.timeout > 0 && !o.wait {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	progress := stdout
	if o.json {
		progress = stderr
	}
	v, text, err := cmd(ctx, ctl.NewClient(o.socket, o.timeout), progress)
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
