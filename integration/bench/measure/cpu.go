package measure

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ClockTicks is USER_HZ, the unit of the times in /proc/stat and
// /proc/PID/stat. It is 100 on every Linux architecture the benchmarks run
// on; a constant spares a sysconf call for it.
const ClockTicks = 100

// Times are the machine's CPU times so far (all CPUs, seconds). Namespaces
// share the host's CPUs: they count the load generator, the servers,
// the router's softirq NAT work and anything else running on the machine.
type Times struct {
	Busy    float64 // everything but idle and iowait
	Softirq float64 // of which softirq: where the router's netfilter work runs
}

// HostTimes reads the first line of /proc/stat (zero Times if it cannot).
func HostTimes() Times {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return Times{}
	}
	return ParseStat(string(data))
}

// ParseStat is the Times of the first line of a /proc/stat text: "cpu"
// then user nice system idle iowait irq softirq steal [guest guest_nice].
// Guest time is already in user and nice, so it is not added again. Zero
// Times if the line is not the cpu line.
func ParseStat(text string) Times {
	line, _, _ := strings.Cut(text, "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return Times{}
	}
	// Sum in ticks and divide once, so that a busy time is exact to the tick.
	var busy, softirq uint64
	for i, v := range f[1:min(len(f), 9)] {
		n, _ := strconv.ParseUint(v, 10, 64)
		switch i {
		case 3, 4: // idle, iowait
			continue
		case 6:
			softirq = n
		}
		busy += n
	}
	return Times{Busy: float64(busy) / ClockTicks, Softirq: float64(softirq) / ClockTicks}
}

// ProcCPU is utime+stime of a process (all its threads), in seconds: what
// the process itself cost, without the children it forked.
func ProcCPU(pid int) (float64, error) { return procTimes(pid, false) }

// ProcCPUChildren is ProcCPU with the times of its waited-for children
// (cutime+cstime): for servers that fork a child per request, such as
// tftpd-hpa, whose work would otherwise go unseen once the child exits.
func ProcCPUChildren(pid int) (float64, error) { return procTimes(pid, true) }

func procTimes(pid int, children bool) (float64, error) {
	path := fmt.Sprintf("/proc/%d/stat", pid)
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	t, err := ParseProcStat(data, children)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// ParseProcStat is the CPU time in seconds of a /proc/PID/stat text:
// utime+stime, and with children cutime+cstime too.
func ParseProcStat(data []byte, children bool) (float64, error) {
	// The command name (field 2) may hold spaces and parentheses: fields
	// count from the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected format")
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state): utime, stime, cutime, cstime are fields
	// 14..17, f[11..14].
	n := 2
	if children {
		n = 4
	}
	if len(f) < 11+n {
		return 0, fmt.Errorf("too few fields")
	}
	var sum uint64
	for _, v := range f[11 : 11+n] {
		t, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, err
		}
		sum += t
	}
	return float64(sum) / ClockTicks, nil
}
