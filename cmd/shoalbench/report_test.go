package main

import (
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func durs(ms ...int) []time.Duration {
	out := make([]time.Duration, len(ms))
	for i, m := range ms {
		out[i] = time.Duration(m) * time.Millisecond
	}
	return out
}

func TestPercentile(t *testing.T) {
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = 100 - i // 100..1, unsorted on purpose
	}
	cases := []struct {
		xs   []time.Duration
		p    float64
		want time.Duration
	}{
		{nil, 50, 0},
		{durs(7), 99, 7 * time.Millisecond},
		{durs(3, 1, 2), 50, 2 * time.Millisecond},
		{durs(1, 2, 3, 4), 50, 2 * time.Millisecond}, // nearest rank, not interpolated
		{durs(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 99, 10 * time.Millisecond},
		{durs(hundred...), 99, 99 * time.Millisecond},
		{durs(hundred...), 50, 50 * time.Millisecond},
		{durs(hundred...), 100, 100 * time.Millisecond},
		{durs(5, 1), 0.1, 1 * time.Millisecond},
	}
	for _, c := range cases {
		if got := percentile(c.xs, c.p); got != c.want {
			t.Errorf("percentile(%v, %g) = %v, want %v", c.xs, c.p, got, c.want)
		}
	}
	xs := durs(3, 1, 2)
	percentile(xs, 50)
	if xs[0] != 3*time.Millisecond {
		t.Error("percentile sorted its input in place")
	}
}

func TestMedian(t *testing.T) {
	if got := median(durs(5, 1, 3)); got != 3*time.Millisecond {
		t.Errorf("odd median = %v", got)
	}
	if got := median(durs(4, 1, 3, 2)); got != 2500*time.Microsecond {
		t.Errorf("even median = %v", got)
	}
	if got := median(nil); got != 0 {
		t.Errorf("empty median = %v", got)
	}
	if got := maxOf(durs(2, 9, 4)); got != 9*time.Millisecond {
		t.Errorf("maxOf = %v", got)
	}
	if got := perSecond(50, 2*time.Second); got != 25 {
		t.Errorf("perSecond = %v", got)
	}
}

func TestFormatValueAndRatio(t *testing.T) {
	for v, want := range map[float64]string{
		1234.56: "1235", 100: "100", 42.25: "42.2", 3: "3", 2.345: "2.35", 0.5: "0.5", 0.00312: "0.0031", 0.314: "0.31", math.NaN(): "-",
	} {
		if got := formatValue(v); got != want {
			t.Errorf("formatValue(%v) = %q, want %q", v, got, want)
		}
	}
	if got := ratio(30, 20); got != "1.50x" {
		t.Errorf("ratio = %q", got)
	}
	if got := ratio(1, 0); got != "-" {
		t.Errorf("ratio by zero = %q", got)
	}
	if got := ratio(math.NaN(), 2); got != "-" {
		t.Errorf("ratio of a missing value = %q", got)
	}
}

func sampleReport() *report {
	a := &targetResult{Name: "shoal", Description: "bin/shoal"}
	a.add(metric{"2 send", "throughput", "msgs/s", higherBetter, 300})
	a.add(metric{"2 send", "p50 latency", "ms", lowerBetter, 5})
	a.add(metric{"5 join, room of 1000", "median", "ms", lowerBetter, 12})
	a.Checks = []check{{Name: "6 history", OK: true, Detail: "0 lost"}}
	a.Runs = []scenarioRun{{Scenario: "send", Seconds: 11}}
	b := &targetResult{Name: "dendrite", Description: "dendrite"}
	b.add(metric{"2 send", "throughput", "msgs/s", higherBetter, 100})
	b.add(metric{"2 send", "p50 latency", "ms", lowerBetter, 20})
	b.add(metric{"2 send", "p99 latency", "ms", lowerBetter, 40})
	b.Runs = []scenarioRun{{Scenario: "send", Seconds: 12}, {Scenario: "join", Seconds: 180, Error: "over the time bound"}}
	return &report{Started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Host: "test", Settings: defaultSettings(),
		Targets: []*targetResult{a, b}}
}

func TestRowsLineUpTargets(t *testing.T) {
	rows := sampleReport().rows()
	var names []string
	for _, r := range rows {
		names = append(names, r.scenario+"/"+r.name)
	}
	want := []string{"2 send/throughput", "2 send/p50 latency", "2 send/p99 latency", "5 join, room of 1000/median"}
	if !slices.Equal(names, want) {
		t.Fatalf("rows %q, want %q", names, want)
	}
	if rows[0].values[0] != 300 || rows[0].values[1] != 100 {
		t.Errorf("throughput row = %v", rows[0].values)
	}
	if !math.IsNaN(rows[2].values[0]) || rows[2].values[1] != 40 {
		t.Errorf("a metric only the second target has: %v", rows[2].values)
	}
	if rows[3].values[0] != 12 || !math.IsNaN(rows[3].values[1]) {
		t.Errorf("a metric only the first target has: %v", rows[3].values)
	}
}

func TestWriteText(t *testing.T) {
	rep := sampleReport()
	var b strings.Builder
	if err := rep.writeText(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"shoal/dendrite", "3.00x", "0.25x", "higher", "lower",
		"ok   shoal: 6 history: 0 lost", "dendrite, join: over the time bound", "dendrite 0.0s (send 12.0s, join 180.0s)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	// The figure columns line up: every table line is as long as the header
	// up to the last (left-aligned) column.
	var table []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "scenario") || strings.HasPrefix(l, "2 send") || strings.HasPrefix(l, "   ") {
			table = append(table, l)
		}
	}
	if len(table) < 3 {
		t.Fatalf("table not found:\n%s", out)
	}
	col := strings.Index(table[0], "shoal/dendrite") + len("shoal/dendrite")
	for _, l := range table[1:3] {
		if !strings.HasSuffix(strings.TrimRight(l[:col], " "), "x") {
			t.Errorf("ratio column not aligned: %q", l)
		}
	}
	if !rep.failed() {
		t.Error("a report with a scenario error should fail")
	}
	rep.Targets[1].Runs = rep.Targets[1].Runs[:1]
	if rep.failed() {
		t.Error("a clean report should not fail")
	}
	rep.Targets[1].Checks = []check{{Name: "6 history", OK: false, Detail: "3 lost"}}
	rep.Targets[1].Reference = true
	if rep.failed() {
		t.Error("a failed check of the reference server should not fail the run")
	}
	var b2 strings.Builder
	if err := rep.writeText(&b2); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b2.String(), "FAIL dendrite: 6 history: 3 lost [reference server: does not fail the run]") {
		t.Errorf("reference failure not reported:\n%s", b2.String())
	}
	rep.Targets[0].Checks[0].OK = false
	if !rep.failed() {
		t.Error("a report with a failed check should fail")
	}
}

func TestWriteJSON(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.json")
	if err := sampleReport().writeJSON(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"send_duration": "10s"`, `"better": "higher"`, `"name": "dendrite"`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("JSON lacks %s:\n%s", want, data)
		}
	}
}
