package main

// A minimal TFTP client (RFC 1350, with the blksize option of RFC 2348):
// read requests only, lockstep, one fresh UDP port per transfer. It runs on
// a thread switched into the client namespace (topo.Do), so the sockets it
// opens are the client's.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// TFTP opcodes.
const (
	opRRQ   = 1
	opDATA  = 3
	opACK   = 4
	opERROR = 5
	opOACK  = 6
)

// Retransmission: the client resends its last packet after rto without an
// answer, at most maxRetries times in a row.
const (
	rto        = time.Second
	maxRetries = 5
)

// xfer is one read request's outcome.
type xfer struct {
	bytes       int64
	blksize     int           // the block size used (512 without an OACK)
	elapsed     time.Duration // from the request sent to the last DATA received
	retransmits int           // packets the client sent again after a timeout
	dups        int           // DATA blocks received twice
	strays      int           // packets from another address or port than the transfer's
}

// rrq builds a read request; blksize 0 asks for no option.
func rrq(name string, blksize int) []byte {
	p := []byte{0, opRRQ}
	p = append(append(p, name...), 0)
	p = append(append(p, "octet"...), 0)
	if blksize > 0 {
		p = append(append(p, "blksize"...), 0)
		p = append(append(p, strconv.Itoa(blksize)...), 0)
	}
	return p
}

func ack(block uint16) []byte { return []byte{0, opACK, byte(block >> 8), byte(block)} }

// errPacket ends a transfer from the client's side.
func errPacket(code uint16, msg string) []byte {
	return append([]byte{0, opERROR, byte(code >> 8), byte(code)}, append([]byte(msg), 0)...)
}

// get reads name from server (the VIP, port 69) over a new UDP socket
// created in the calling thread's namespace (call it inside topo.Do) and
// checks what arrives against want, byte for byte. buf is scratch space of
// at least 65540 bytes.
func get(ctx context.Context, server netip.AddrPort, name string, blksize int, want, buf []byte) (xfer, error) {
	var x xfer
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		return x, fmt.Errorf("socket: %w", err)
	}
	defer pc.Close()
	last, lastTo := rrq(name, blksize), server
	t0 := time.Now()
	if _, err := pc.WriteToUDPAddrPort(last, lastTo); err != nil {
		return x, fmt.Errorf("send RRQ: %w", err)
	}
	var (
		tid     netip.AddrPort // the server's transfer ID, from its first answer
		expect  = uint16(1)
		retries int
	)
	x.blksize = 512
	for {
		dl := time.Now().Add(rto)
		if d, ok := ctx.Deadline(); ok && d.Before(dl) {
			dl = d
		}
		_ = pc.SetReadDeadline(dl)
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return x, ctx.Err()
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if retries++; retries > maxRetries {
					if !tid.IsValid() {
						return x, fmt.Errorf("timeout: no answer to the RRQ (%d retransmissions)", maxRetries)
					}
					return x, fmt.Errorf("timeout: no DATA %d (%d retransmissions)", expect, maxRetries)
				}
				x.retransmits++
				if _, err := pc.WriteToUDPAddrPort(last, lastTo); err != nil {
					return x, fmt.Errorf("resend: %w", err)
				}
				continue
			}
			return x, fmt.Errorf("receive: %w", err)
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if from.Addr() != server.Addr() || n < 4 {
			x.strays++
			continue
		}
		if !tid.IsValid() {
			tid = from
		} else if from != tid {
			x.strays++
			_, _ = pc.WriteToUDPAddrPort(errPacket(5, "Unknown transfer ID"), from)
			continue
		}
		switch op := binary.BigEndian.Uint16(buf); op {
		case opOACK:
			if x.bytes > 0 || expect != 1 {
				x.strays++
				continue
			}
			bs, err := oackBlksize(buf[2:n])
			if err != nil {
				_, _ = pc.WriteToUDPAddrPort(errPacket(8, "bad OACK"), tid)
				return x, err
			}
			if bs > 0 {
				x.blksize = bs
			}
			retries = 0
			last, lastTo = ack(0), tid
			if _, err := pc.WriteToUDPAddrPort(last, lastTo); err != nil {
				return x, fmt.Errorf("send ACK 0: %w", err)
			}
		case opDATA:
			block := binary.BigEndian.Uint16(buf[2:])
			data := buf[4:n]
			switch block {
			case expect:
			case expect - 1:
				// Our ACK was lost or late: the server sent the block
				// again. ACK it again.
				x.dups++
				_, _ = pc.WriteToUDPAddrPort(last, lastTo)
				continue
			default:
				x.strays++
				continue
			}
			if len(data) > x.blksize {
				return x, fmt.Errorf("DATA %d of %d bytes, block size %d", block, len(data), x.blksize)
			}
			if x.bytes+int64(len(data)) > int64(len(want)) ||
				!bytes.Equal(data, want[x.bytes:x.bytes+int64(len(data))]) {
				_, _ = pc.WriteToUDPAddrPort(errPacket(0, "unexpected content"), tid)
				return x, fmt.Errorf("DATA %d at offset %d: content differs from the file", block, x.bytes)
			}
			x.bytes += int64(len(data))
			retries = 0
			last, lastTo = ack(block), tid
			if _, err := pc.WriteToUDPAddrPort(last, lastTo); err != nil {
				return x, fmt.Errorf("send ACK %d: %w", block, err)
			}
			if len(data) < x.blksize {
				x.elapsed = time.Since(t0)
				if x.bytes != int64(len(want)) {
					return x, fmt.Errorf("short file: %d bytes, want %d", x.bytes, len(want))
				}
				return x, nil
			}
			expect++ // wraps to 0 after 65535, as the servers do
		case opERROR:
			msg := buf[4:n]
			if i := bytes.IndexByte(msg, 0); i >= 0 {
				msg = msg[:i]
			}
			return x, fmt.Errorf("ERROR %d from the server: %s", binary.BigEndian.Uint16(buf[2:]), msg)
		default:
			x.strays++
		}
	}
}

// oackBlksize reads the blksize option of an OACK's options (0 if absent).
func oackBlksize(opts []byte) (int, error) {
	f := strings.Split(strings.TrimSuffix(string(opts), "\x00"), "\x00")
	for i := 0; i+1 < len(f); i += 2 {
		if strings.EqualFold(f[i], "blksize") {
			n, err := strconv.Atoi(f[i+1])
			if err != nil || n < 8 || n > 65464 {
				return 0, fmt.Errorf("OACK blksize %q", f[i+1])
			}
			return n, nil
		}
	}
	return 0, nil
}

// loadResult is a run of many small transfers.
type loadResult struct {
	Transfers   int64            `json:"transfers"`
	Failures    int64            `json:"failures"`
	Elapsed     float64          `json:"elapsed_s"`
	Rate        float64          `json:"transfers_per_s"`
	P50         float64          `json:"p50_ms"`
	P99         float64          `json:"p99_ms"`
	Retransmits int64            `json:"retransmits"`
	Dups        int64            `json:"dup_blocks"`
	Strays      int64            `json:"stray_packets"`
	Errors      map[string]int64 `json:"errors,omitempty"`
}

// load runs workers concurrent clients in namespace ns, each reading name
// (content want) through server in a loop until d has passed; transfers
// under way then are finished and counted. Each worker runs on its own
// thread in the namespace.
func load(ctx context.Context, ns string, server netip.AddrPort, name string, blksize int, want []byte, workers int, d time.Duration) (loadResult, error) {
	var (
		mu   sync.Mutex
		res  = loadResult{Errors: map[string]int64{}}
		lats []time.Duration
		wg   sync.WaitGroup
		errs []error
	)
	t0 := time.Now()
	end := t0.Add(d)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := topo.Do(ns, func() error {
				buf := make([]byte, 65540)
				var my []time.Duration
				var ok, failed, retr, dups, strays int64
				myErrs := map[string]int64{}
				for time.Now().Before(end) && ctx.Err() == nil {
					xctx, cancel := context.WithTimeout(ctx, rto*(maxRetries+2))
					x, err := get(xctx, server, name, blksize, want, buf)
					cancel()
					retr += int64(x.retransmits)
					dups += int64(x.dups)
					strays += int64(x.strays)
					if err != nil {
						if ctx.Err() != nil {
							break
						}
						failed++
						myErrs[errClass(err)]++
						continue
					}
					ok++
					my = append(my, x.elapsed)
				}
				mu.Lock()
				res.Transfers += ok
				res.Failures += failed
				res.Retransmits += retr
				res.Dups += dups
				res.Strays += strays
				for k, v := range myErrs {
					res.Errors[k] += v
				}
				lats = append(lats, my...)
				mu.Unlock()
				return nil
			})
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	el := time.Since(t0)
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if err := errors.Join(errs...); err != nil {
		return res, err
	}
	res.Elapsed = el.Seconds()
	res.Rate = float64(res.Transfers) / el.Seconds()
	slices.Sort(lats)
	res.P50, res.P99 = quantMS(lats, .5), quantMS(lats, .99)
	if len(res.Errors) == 0 {
		res.Errors = nil
	}
	if res.Transfers == 0 {
		return res, fmt.Errorf("no transfer completed (errors %v)", res.Errors)
	}
	return res, nil
}

var digits = regexp.MustCompile(`[0-9]+`)

// errClass is an error's kind for counting: its numbers as N.
func errClass(err error) string { return digits.ReplaceAllString(err.Error(), "N") }

func quantMS(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return float64(sorted[int(q*float64(len(sorted)-1))].Microseconds()) / 1000
}
