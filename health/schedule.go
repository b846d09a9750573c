package health

import (
	"container/heap"
	"math/rand/v2"
	"time"
)

// schedule is the targets waiting for their next check, soonest first.
// A target being checked is not in it.
type schedule []*target

func (s schedule) Len() int           { return len(s) }
func (s schedule) Less(i, j int) bool { return s[i].due.Before(s[j].due) }
func (s schedule) Swap(i, j int) {
	s[i], s[j] = s[j], s[i]
	s[i].index, s[j].index = i, j
}
func (s *schedule) Push(x any) {
	t := x.(*target)
	t.index = len(*s)
	*s = append(*s, t)
}
func (s *schedule) Pop() any {
	old := *s
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*s = old[:len(old)-1]
	t.index = -1
	return t
}

func (s *schedule) add(t *target, due time.Time) {
	t.due = due
	heap.Push(s, t)
}

func (s *schedule) remove(t *target) {
	if t.index >= 0 {
		heap.Remove(s, t.index)
	}
}

// first is a first check's delay: anywhere in the first interval, so that
// targets set at once are not checked at once.
func first(interval time.Duration) time.Duration {
	return rand.N(interval)
}

// next is the delay between checks: interval ±10%, so that targets drift
// apart rather than stay in step.
func next(interval time.Duration) time.Duration {
	return interval - interval/10 + rand.N(interval/5+1)
}
