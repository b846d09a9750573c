package config

// Scheduler options: mh's table size and sh's port hashing, as ipvsadm's
// scheduler flags. Both are scheduled in the kernel (ipvs.BuildKernelTable).

// MH table sizes: IPVS's default, and the bounds a table of a few to some
// hundred servers needs (Maglev wants the size well above the server count;
// nftables holds it as one map).
const (
	DefaultMHTableSize = 65537
	MinMHTableSize     = 251
	MaxMHTableSize     = 131071
)

// MHSize is the mh table's size with its default applied.
func (s *Service) MHSize() uint32 {
	if s.MHTableSize == nil {
		return DefaultMHTableSize
	}
	return uint32(*s.MHTableSize)
}

// validateSchedOptions checks mh_table_size and sh_port: each only with its
// scheduler (as a health check's type-specific keys), the size a prime in
// range (Maglev's permutations need a prime modulus).
func (s *Service) validateSchedOptions(r *report, sp string) {
	if n := s.MHTableSize; n != nil {
		mp := child(sp, "mh_table_size")
		switch {
		case s.Scheduler != "mh":
			r.at(mp, "mh_table_size is for scheduler mh, not %s", s.Scheduler)
		case *n < MinMHTableSize || *n > MaxMHTableSize:
			r.at(mp, "%d out of %d..%d", *n, MinMHTableSize, MaxMHTableSize)
		case !prime(*n):
			r.at(mp, "%d is not a prime (nearest: %d, %d)", *n, prevPrime(*n), nextPrime(*n))
		}
	}
	if s.SHPort && s.Scheduler != "sh" {
		r.at(child(sp, "sh_port"), "sh_port is for scheduler sh, not %s", s.Scheduler)
	}
}

func prime(n int) bool {
	if n < 2 {
		return false
	}
	for d := 2; d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

func prevPrime(n int) int {
	for n--; !prime(n); n-- {
	}
	return n
}

func nextPrime(n int) int {
	for n++; !prime(n); n++ {
	}
	return n
}
