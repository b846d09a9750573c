package ipvs

import "net/netip"

// The least-connection family weighs each server's connections, as counted
// by the engine in Active (ESTABLISHED) and Inactive (every other state).
// Ties go to the server first in list order: the kernel only replaces its
// candidate on a strictly better one.

// connOverhead is ip_vs_dest_conn_overhead: an active connection costs 256
// inactive ones.
func connOverhead(rs *RealServer) int64 {
	return rs.Active.Load()<<8 + rs.Inactive.Load()
}

// leastConn is ip_vs_lc: the least overhead wins, weights other than zero
// do not matter.
type leastConn struct{}

func (leastConn) Pick(servers []*RealServer, _ netip.AddrPort) *RealServer {
	var least *RealServer
	var loh int64
	for _, rs := range servers {
		if !available(rs) {
			continue
		}
		if doh := connOverhead(rs); least == nil || doh < loh {
			least, loh = rs, doh
		}
	}
	return least
}

// leastRatio returns the available server with the least overhead/weight,
// comparing by cross-multiplication as the kernel does (no division): the
// candidate is replaced when loh*w(rs) > doh*w(least).
func leastRatio(servers []*RealServer, overhead func(*RealServer) int64) *RealServer {
	var least *RealServer
	var loh int64
	for _, rs := range servers {
		if !available(rs) {
			continue
		}
		doh := overhead(rs)
		if least == nil || loh*int64(rs.Weight) > doh*int64(least.Weight) {
			least, loh = rs, doh
		}
	}
	return least
}

// weightedLeastConn is ip_vs_wlc: least connection overhead per weight.
type weightedLeastConn struct{}

func (weightedLeastConn) Pick(servers []*RealServer, _ netip.AddrPort) *RealServer {
	return leastRatio(servers, connOverhead)
}

// expectedDelay is the sed/nq overhead: the active connections including
// the one being scheduled; inactive ones are not counted.
func expectedDelay(rs *RealServer) int64 { return rs.Active.Load() + 1 }

// shortestExpectedDelay is ip_vs_sed: least (active+1)/weight.
type shortestExpectedDelay struct{}

func (shortestExpectedDelay) Pick(servers []*RealServer, _ netip.AddrPort) *RealServer {
	return leastRatio(servers, expectedDelay)
}

// neverQueue is ip_vs_nq: the first server without active connections
// (inactive ones do not count), else as sed.
type neverQueue struct{}

func (neverQueue) Pick(servers []*RealServer, _ netip.AddrPort) *RealServer {
	var least *RealServer
	var loh int64
	for _, rs := range servers {
		if !available(rs) {
			continue
		}
		active := rs.Active.Load()
		if active == 0 {
			return rs // idle: no need to look further
		}
		if doh := active + 1; least == nil || loh*int64(rs.Weight) > doh*int64(least.Weight) {
			least, loh = rs, doh
		}
	}
	return least
}
