package health

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// RunCommand runs command with /bin/sh -c, env added to the daemon's
// environment, and returns nil if it exits 0. It runs in a process group of
// its own: when timeout (if > 0) passes or ctx ends, the whole group (the
// shell and whatever it started) is killed with SIGKILL and the shell
// reaped, so nothing is left running and no zombie of ours remains. What
// the shell left running in its group when it exited is killed too: a
// check that runs every few seconds must not pile up background children.
// Its output is discarded: no pipe is left for a stray child to hold open.
func RunCommand(ctx context.Context, command string, env []string, timeout time.Duration) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// The group's id is the shell's pid, still ours until Wait reaps it.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	err := cmd.Run()
	if cmd.Process != nil {
		// The group keeps the shell's pid reserved while any member lives:
		// this cannot reach another process. ESRCH: nothing was left.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("%w: %w", ErrKilled, context.Cause(ctx))
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return fmt.Errorf("%w: %w", ErrExit, err)
	}
	return err
}
