package metrics

import (
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// A small checker of the text exposition format 0.0.4, strict where the
// handler should be: every sample follows its family's TYPE line, families
// are contiguous and declared once, names and label names are valid, label
// values use only the \\ \" \n escapes, no series repeats, and every
// histogram's buckets rise to a +Inf bucket equal to its _count.

var (
	metricName = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	labelName  = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
)

type label struct{ name, value string }

type sample struct {
	name   string
	labels []label
	value  float64
}

// key names a series: name{a="x",b="y"} with labels sorted, values escaped.
func key(name string, labels []label) string {
	ls := append([]label(nil), labels...)
	sort.Slice(ls, func(i, j int) bool { return ls[i].name < ls[j].name })
	var b strings.Builder
	b.WriteString(name)
	if len(ls) > 0 {
		b.WriteByte('{')
		for i, l := range ls {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "%s=%q", l.name, l.value)
		}
		b.WriteByte('}')
	}
	return b.String()
}

// lbl builds a key from name and label pairs, for lookups in tests.
func lbl(name string, pairs ...string) string {
	var ls []label
	for i := 0; i+1 < len(pairs); i += 2 {
		ls = append(ls, label{pairs[i], pairs[i+1]})
	}
	return key(name, ls)
}

type family struct {
	typ     string
	samples []sample
}

// parseExposition checks text and returns its samples by series key and
// its families by name.
func parseExposition(text string) (map[string]float64, map[string]*family, error) {
	if text != "" && !strings.HasSuffix(text, "\n") {
		return nil, nil, fmt.Errorf("output does not end in a line feed")
	}
	series := map[string]float64{}
	families := map[string]*family{}
	helped := map[string]bool{}
	var cur string // the family whose samples may follow
	for n, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		fail := func(format string, a ...any) error {
			return fmt.Errorf("line %d %q: %s", n+1, line, fmt.Sprintf(format, a...))
		}
		switch {
		case line == "":
			return nil, nil, fail("empty line")
		case strings.HasPrefix(line, "# HELP "):
			name, help, ok := strings.Cut(line[len("# HELP "):], " ")
			if !ok || !metricName.MatchString(name) {
				return nil, nil, fail("bad HELP")
			}
			if helped[name] {
				return nil, nil, fail("second HELP")
			}
			helped[name] = true
			if err := checkEscapes(help, false); err != nil {
				return nil, nil, fail("%v", err)
			}
		case strings.HasPrefix(line, "# TYPE "):
			f := strings.Fields(line[len("# TYPE "):])
			if len(f) != 2 || !metricName.MatchString(f[0]) {
				return nil, nil, fail("bad TYPE")
			}
			switch f[1] {
			case "counter", "gauge", "histogram", "summary", "untyped":
			default:
				return nil, nil, fail("unknown type")
			}
			if families[f[0]] != nil {
				return nil, nil, fail("family declared twice")
			}
			if f[1] == "counter" && !strings.HasSuffix(f[0], "_total") {
				return nil, nil, fail("counter without _total")
			}
			families[f[0]] = &family{typ: f[1]}
			cur = f[0]
		case strings.HasPrefix(line, "#"):
			return nil, nil, fail("stray comment")
		default:
			s, err := parseSample(line)
			if err != nil {
				return nil, nil, fail("%v", err)
			}
			if cur == "" {
				return nil, nil, fail("sample before any TYPE")
			}
			fam := families[cur]
			ok := s.name == cur
			if fam.typ == "histogram" {
				ok = s.name == cur+"_bucket" || s.name == cur+"_sum" || s.name == cur+"_count"
			}
			if !ok {
				return nil, nil, fail("sample of no preceding TYPE (current family %s)", cur)
			}
			if fam.typ == "counter" && (s.value < 0 || math.IsNaN(s.value)) {
				return nil, nil, fail("negative counter")
			}
			k := key(s.name, s.labels)
			if _, dup := series[k]; dup {
				return nil, nil, fail("duplicate series")
			}
			series[k] = s.value
			fam.samples = append(fam.samples, s)
		}
	}
	for name, f := range families {
		if f.typ == "histogram" {
			if err := checkHistogram(name, f.samples); err != nil {
				return nil, nil, err
			}
		}
	}
	return series, families, nil
}

// checkEscapes accepts only the escapes the format allows: \\ and \n, and
// \" in label values, where a bare " is an error.
func checkEscapes(s string, quoted bool) error {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			if i+1 == len(s) {
				return fmt.Errorf("trailing backslash")
			}
			i++
			if c := s[i]; c != '\\' && c != 'n' && !(quoted && c == '"') {
				return fmt.Errorf("bad escape \\%c", c)
			}
		case '"':
			if quoted {
				return fmt.Errorf("bare quote")
			}
		}
	}
	return nil
}

func unescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			i++
			if s[i] == 'n' {
				b.WriteByte('\n')
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func parseSample(line string) (sample, error) {
	var s sample
	i := strings.IndexAny(line, "{ ")
	if i < 0 {
		return s, fmt.Errorf("no value")
	}
	s.name = line[:i]
	if !metricName.MatchString(s.name) {
		return s, fmt.Errorf("bad metric name %q", s.name)
	}
	rest := line[i:]
	seen := map[string]bool{}
	if rest[0] == '{' {
		rest = rest[1:]
		for {
			if strings.HasPrefix(rest, "}") {
				rest = rest[1:]
				break
			}
			eq := strings.Index(rest, `="`)
			if eq < 0 {
				return s, fmt.Errorf("bad label")
			}
			name := rest[:eq]
			if !labelName.MatchString(name) || strings.HasPrefix(name, "__") {
				return s, fmt.Errorf("bad label name %q", name)
			}
			if seen[name] {
				return s, fmt.Errorf("label %s twice", name)
			}
			seen[name] = true
			rest = rest[eq+2:]
			end := -1
			for j := 0; j < len(rest); j++ {
				if rest[j] == '\\' {
					j++
					continue
				}
				if rest[j] == '"' {
					end = j
					break
				}
			}
			if end < 0 {
				return s, fmt.Errorf("unterminated label value")
			}
			raw := rest[:end]
			if err := checkEscapes(raw, true); err != nil {
				return s, fmt.Errorf("label %s: %v", name, err)
			}
			s.labels = append(s.labels, label{name, unescape(raw)})
			rest = rest[end+1:]
			switch {
			case strings.HasPrefix(rest, ","):
				rest = rest[1:]
			case strings.HasPrefix(rest, "}"):
			default:
				return s, fmt.Errorf("label value not followed by , or }")
			}
		}
	}
	if !strings.HasPrefix(rest, " ") {
		return s, fmt.Errorf("no space before value")
	}
	f := strings.Fields(rest)
	if len(f) < 1 || len(f) > 2 || rest[1] == ' ' {
		return s, fmt.Errorf("bad value")
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return s, fmt.Errorf("value: %v", err)
	}
	s.value = v
	if len(f) == 2 {
		if _, err := strconv.ParseInt(f[1], 10, 64); err != nil {
			return s, fmt.Errorf("timestamp: %v", err)
		}
	}
	return s, nil
}

// checkHistogram checks each of a histogram's label sets: le on buckets
// only, bounds rising, counts not falling, a last +Inf bucket equal to
// _count, and a _sum.
func checkHistogram(name string, samples []sample) error {
	type group struct {
		les          []float64
		counts       []float64
		sum, count   float64
		hasSum, hasN bool
	}
	groups := map[string]*group{}
	var order []string
	for _, s := range samples {
		var le string
		var rest []label
		hasLE := false
		for _, l := range s.labels {
			if l.name == "le" {
				le, hasLE = l.value, true
			} else {
				rest = append(rest, l)
			}
		}
		k := key("", rest)
		g := groups[k]
		if g == nil {
			g = &group{}
			groups[k] = g
			order = append(order, k)
		}
		switch s.name {
		case name + "_bucket":
			if !hasLE {
				return fmt.Errorf("%s: bucket without le", name)
			}
			v, err := strconv.ParseFloat(le, 64)
			if err != nil {
				return fmt.Errorf("%s: le %q: %v", name, le, err)
			}
			g.les, g.counts = append(g.les, v), append(g.counts, s.value)
		case name + "_sum":
			if hasLE {
				return fmt.Errorf("%s: le on _sum", name)
			}
			g.sum, g.hasSum = s.value, true
		case name + "_count":
			if hasLE {
				return fmt.Errorf("%s: le on _count", name)
			}
			g.count, g.hasN = s.value, true
		}
	}
	for _, k := range order {
		g := groups[k]
		if len(g.les) == 0 || !g.hasSum || !g.hasN {
			return fmt.Errorf("%s%s: needs buckets, _sum and _count", name, k)
		}
		for i := 1; i < len(g.les); i++ {
			if !(g.les[i] > g.les[i-1]) {
				return fmt.Errorf("%s%s: le not rising at %v", name, k, g.les[i])
			}
			if g.counts[i] < g.counts[i-1] {
				return fmt.Errorf("%s%s: buckets not cumulative at le=%v", name, k, g.les[i])
			}
		}
		last := len(g.les) - 1
		if !math.IsInf(g.les[last], 1) {
			return fmt.Errorf("%s%s: last bucket is not +Inf", name, k)
		}
		if g.counts[last] != g.count {
			return fmt.Errorf("%s%s: +Inf bucket %v != _count %v", name, k, g.counts[last], g.count)
		}
	}
	return nil
}
