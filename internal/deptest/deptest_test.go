package deptest

import "testing"

func TestForbidden(t *testing.T) {
	for dep, want := range map[string]bool{
		"github.com/mdlayher/netlink":             true,
		"github.com/google/nftables/expr":         true,
		"github.com/ti-mo/conntrack":              true,
		"golang.org/x/sys/unix":                   true,
		module + "/nfq":                           true,
		module + "/kernel":                        true,
		module + "/nft":                           true,
		module + "/metrics":                       true,
		module + "/daemon":                        true,
		module + "/nfq/packet":                    false,
		module + "/nfq/seqnum":                    false,
		module + "/nfqueue":                       false, // a name that merely starts alike
		module + "/ipvs":                          false,
		"golang.org/x/net/bpf":                    false,
		"github.com/google/go-cmp/cmp":            false,
		"log/slog":                                false,
		"github.com/mdlayher/netlink/nlenc":       true,
		"github.com/google/nftables-alike/x":      false,
		"github.com/prometheus/client_golang/foo": false,
	} {
		if got := Forbidden(dep); got != want {
			t.Errorf("Forbidden(%s) = %v, want %v", dep, got, want)
		}
	}
}
