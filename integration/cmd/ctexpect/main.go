// Command ctexpect prints the conntrack expectations of the network
// namespace it runs in, one JSON object a line, NAT included (which the
// conntrack tool does not show): the kernel datapath's data channels.
package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"

	"github.com/ti-mo/conntrack"
)

type expect struct {
	Src       string `json:"src"` // address (any port)
	Dst       string `json:"dst"` // address:port
	MasterSrc string `json:"master_src"`
	MasterDst string `json:"master_dst"`
	Helper    string `json:"helper"`
	Function  string `json:"function"`
	NATDir    int    `json:"nat_dir"`
	NATSrc    string `json:"nat_src"` // where the data connection really goes (its port)
	Timeout   uint32 `json:"timeout"`
}

func main() {
	c, err := conntrack.Dial(nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ctexpect:", err)
		os.Exit(1)
	}
	defer c.Close()
	exps, err := c.DumpExpect()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ctexpect:", err)
		os.Exit(1)
	}
	ap := func(t conntrack.Tuple, src bool) string {
		if src {
			return netip.AddrPortFrom(t.IP.SourceAddress.Unmap(), t.Proto.SourcePort).String()
		}
		return netip.AddrPortFrom(t.IP.DestinationAddress.Unmap(), t.Proto.DestinationPort).String()
	}
	enc := json.NewEncoder(os.Stdout)
	for _, x := range exps {
		e := expect{
			Src: x.Tuple.IP.SourceAddress.Unmap().String(), Dst: ap(x.Tuple, false),
			MasterSrc: ap(x.TupleMaster, true), MasterDst: ap(x.TupleMaster, false),
			Helper: x.HelpName, Function: x.Function, Timeout: x.Timeout,
		}
		if x.NAT.Tuple.IP.SourceAddress.IsValid() {
			e.NATSrc = ap(x.NAT.Tuple, true)
			if x.NAT.Direction {
				e.NATDir = 1
			}
		}
		enc.Encode(e)
	}
}
