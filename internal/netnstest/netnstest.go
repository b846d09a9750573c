// Package netnstest gives tests a network namespace of their own, so that
// what they do to firewall and conntrack state never reaches the host's.
package netnstest

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// New creates network namespace prefix<pid> with loopback up and deletes it
// when the test ends; the test is skipped unless it runs as root. It
// returns the namespace's name (its path is Path(name)).
func New(t testing.TB, prefix string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	name := fmt.Sprintf("%s%d", prefix, os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns delete %s: %v %s", name, err, out)
		}
	})
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s link set lo up: %v %s", name, err, out)
	}
	return name
}

// Path is the file of namespace name, for setns and netlink sockets.
func Path(name string) string { return "/run/netns/" + name }
