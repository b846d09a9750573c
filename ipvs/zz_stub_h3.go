package ipvs

// Stub of h1's ipvs/ktable.go contract, for h3 to compile against (delete at merge).

func KernelScheduled(scheduler string) bool {
	return scheduler == "rr" || scheduler == "wrr" || scheduler == "sh" || scheduler == "mh"
}

type KernelKey uint8

const (
	KeyCounter KernelKey = iota
	KeySource
	KeySourcePort
)

type KernelTable struct {
	By   KernelKey
	Size uint32
	Runs []SlotRun
}

type SlotRun struct {
	First, Last uint32
	Server      int
}

type KernelTableOptions struct {
	MHSize uint32
	SHPort bool
}

// BuildKernelTable stub: one slot per available server (the contract's rr).
func BuildKernelTable(scheduler string, servers []*RealServer, o KernelTableOptions) KernelTable {
	var t KernelTable
	switch {
	case scheduler == "sh" && o.SHPort:
		t.By = KeySourcePort
	case scheduler == "sh" || scheduler == "mh":
		t.By = KeySource
	}
	for i, rs := range servers {
		if rs.Weight > 0 && !rs.Down {
			t.Runs = append(t.Runs, SlotRun{First: t.Size, Last: t.Size, Server: i})
			t.Size++
		}
	}
	return t
}
