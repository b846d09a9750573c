package daemon

import (
	"maps"
	"os"
	"testing"
)

// TestInheritedQueues: the handed-over sockets are read from the
// environment, which forgets them (nothing the daemon starts inherits the
// variable); malformed entries and the standard descriptors are ignored.
func TestInheritedQueues(t *testing.T) {
	t.Setenv(envQueueFDs, "100=5,101=6,x=7,102=,103=1,104=9")
	got := inheritedQueues()
	if want := map[uint16]int{100: 5, 101: 6, 104: 9}; !maps.Equal(got, want) {
		t.Errorf("inherited %v, want %v", got, want)
	}
	if _, ok := os.LookupEnv(envQueueFDs); ok {
		t.Errorf("%s still set", envQueueFDs)
	}
	if got := inheritedQueues(); got != nil {
		t.Errorf("inherited %v a second time", got)
	}
}
