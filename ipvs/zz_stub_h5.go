package ipvs

// Stub of h1's ktable.go (contract signature), deleted at merge.
func KernelScheduled(scheduler string) bool {
	switch scheduler {
	case "rr", "wrr", "sh", "mh":
		return true
	}
	return false
}
