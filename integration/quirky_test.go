//go:build integration

package integration

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// quirkyVariants are the quirkyftpd reply styles that a correct helper must
// handle (USER name = variant; see integration/cmd/quirkyftpd).
var quirkyVariants = []struct {
	user, mode string
	v6         bool
}{
	{"anonymous", "pasv", false},
	{"split227", "pasv", false},
	{"split227nagle", "pasv", false},
	{"split227crlf", "pasv", false},
	{"byte227", "pasv", false},
	{"multi227", "pasv", false},
	{"multi227first", "pasv", false},
	{"dot227", "pasv", false},
	{"listen227", "pasv", false},
	{"bare227", "pasv", false},
	{"split229", "epsv", false},
	{"split229", "epsv", true},
	{"byte229", "epsv", false},
	{"byte229", "epsv", true},
	{"anonymous", "port", false},
	{"anonymous", "eprt", false},
	{"anonymous", "eprt", true},
}

// TestVIPQuirky: through the VIP, the Go client fetches small.bin and then
// big.bin on one control connection from quirkyftpd in each reply style.
// Every 227 it received (reassembled) must name the VIP, and the hashes
// must match; the second transfer also depends on the sequence correction
// after the first rewrite.
func TestVIPQuirky(t *testing.T) {
	needDaemon(t)
	needKind(t, "quirkyftpd")
	tp := harness.tp
	for _, v := range quirkyVariants {
		host, fam := topo.VIP4, "v4"
		if v.v6 {
			host, fam = topo.VIP6, "v6"
		}
		t.Run(fmt.Sprintf("%s/%s-%s", v.user, v.mode, fam), func(t *testing.T) {
			addr := net.JoinHostPort(host, fmt.Sprint(topo.QuirkyPort))
			// On the kernel datapath conntrack's seqadj corrects what a
			// length-changing rewrite (bare227) shifts: it must judge no
			// packet invalid.
			invalid := -1
			if kernelDatapath() {
				invalid = conntrackInvalid(t, tp.Router)
			}
			r := runFtpget(t, tp.Client, addr, v.mode, "small.bin,big.bin", 2, "-user", v.user)
			if invalid >= 0 {
				if got := conntrackInvalid(t, tp.Router); got != invalid {
					t.Errorf("conntrack counted %d invalid packets", got-invalid)
				}
			}
			for _, res := range r.results {
				if res.SHA256 != tp.Files[res.File] {
					t.Errorf("%s sha256 %s (%d bytes), want %s", res.File, res.SHA256, res.Bytes, tp.Files[res.File])
				}
				switch v.mode {
				case "pasv":
					want := strings.ReplaceAll(topo.VIP4, ".", ",") + ","
					if !strings.HasPrefix(res.PassiveReply, "227 ") || !strings.Contains(res.PassiveReply, want) {
						t.Errorf("%s: 227 reply %q does not carry the VIP", res.File, res.PassiveReply)
					}
				case "epsv":
					if !strings.HasPrefix(res.PassiveReply, "229 ") {
						t.Errorf("%s: reply %q, want 229", res.File, res.PassiveReply)
					}
				default:
					if ap, err := netip.ParseAddrPort(res.DataPeer); err != nil || ap.Addr().String() != host {
						t.Errorf("%s: active data connection from %s, want %s", res.File, res.DataPeer, host)
					}
				}
			}
			if t.Failed() {
				t.Logf("trace:\n%s", tailString(r.trace, 4000))
			} else {
				t.Logf("replies: %q, %q", r.results[0].PassiveReply, r.results[1].PassiveReply)
			}
		})
	}
}
