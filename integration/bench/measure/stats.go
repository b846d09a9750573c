package measure

import "slices"

// Median is the median of v (0 if empty): over rounds it is less moved than
// the mean by one round that other work on the machine slowed down.
func Median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Spread is (max-min)/median in percent (0 if the median is 0): how far the
// rounds disagree, to judge whether a difference between systems is noise.
func Spread(v []float64) float64 {
	m := Median(v)
	if m == 0 {
		return 0
	}
	return (slices.Max(v) - slices.Min(v)) / m * 100
}

// Ratios is, for each round 1..rounds in which both have a value and base's
// is not 0, num's value over base's. Systems compared in the same round ran
// under the same load of the machine, so the ratios are steadier than the
// ratio of the medians.
func Ratios(rounds int, num, base func(round int) (float64, bool)) []float64 {
	var v []float64
	for r := 1; r <= rounds; r++ {
		if x, ok := Ratio(r, num, base); ok {
			v = append(v, x)
		}
	}
	return v
}

// Ratio is num's value over base's in round r, ok false where either has
// none or base's is 0.
func Ratio(r int, num, base func(round int) (float64, bool)) (float64, bool) {
	y, oky := base(r)
	x, okx := num(r)
	if !okx || !oky || y == 0 {
		return 0, false
	}
	return x / y, true
}
