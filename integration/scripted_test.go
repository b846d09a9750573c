//go:build integration

package integration

import (
	"bufio"
	"context"
	"io"
	"testing"
	"time"
)

// startScripted starts `python3 args...` in the client namespace: a client
// the test drives line by line, commands on its stdin, one result a line on
// its stdout. Its stderr goes to trace. It is ended (stdin closed, then
// killed) when the test ends, or after timeout.
func startScripted(t *testing.T, timeout time.Duration, trace io.Writer, args ...string) (stdin io.WriteCloser, lines *bufio.Scanner) {
	t.Helper()
	tp := harness.tp
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	cmd := tp.CommandContext(ctx, tp.Client, "python3", args...)
	cmd.Stderr = trace
	stdin, err := cmd.StdinPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cancel()
		_ = cmd.Wait()
	})
	return stdin, bufio.NewScanner(stdout)
}
