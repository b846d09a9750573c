package main

import "testing"

// TestDefaultStateDir: /var/lib/nfhelper unless the environment names
// another (tests run daemons side by side).
func TestDefaultStateDir(t *testing.T) {
	t.Setenv(envStateDir, "")
	if got := defaultStateDir(); got != "/var/lib/nfhelper" {
		t.Errorf("default %q", got)
	}
	t.Setenv(envStateDir, "/tmp/x")
	if got := defaultStateDir(); got != "/tmp/x" {
		t.Errorf("with %s set: %q", envStateDir, got)
	}
}
