package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Which way a metric improves.
const (
	higherBetter = "higher"
	lowerBetter  = "lower"
)

// metric is one measured figure of one scenario on one target.
type metric struct {
	Scenario string  `json:"scenario"`
	Name     string  `json:"name"`
	Unit     string  `json:"unit"`
	Better   string  `json:"better,omitempty"` // higherBetter, lowerBetter or "" (informational)
	Value    float64 `json:"value"`
}

// check is a pass/fail correctness verdict.
type check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// scenarioRun records how long a scenario took on a target, and its error.
type scenarioRun struct {
	Scenario string  `json:"scenario"`
	Seconds  float64 `json:"seconds"`
	Error    string  `json:"error,omitempty"`
}

// targetResult is everything measured on one server.
type targetResult struct {
	Name        string        `json:"name"`
	Description string        `json:"description"`
	Seconds     float64       `json:"seconds"`
	Metrics     []metric      `json:"metrics"`
	Checks      []check       `json:"checks"`
	Runs        []scenarioRun `json:"runs"`
	Error       string        `json:"error,omitempty"` // the target could not be set up at all
	// Reference marks a server run only for comparison (Dendrite): its
	// failed checks and errors are reported but do not fail the run.
	Reference bool `json:"reference,omitempty"`
}

func (t *targetResult) add(m metric) { t.Metrics = append(t.Metrics, m) }

// failed tells whether anything went wrong on this target.
func (t *targetResult) failed() bool {
	if t.Error != "" {
		return true
	}
	for _, c := range t.Checks {
		if !c.OK {
			return true
		}
	}
	for _, r := range t.Runs {
		if r.Error != "" {
			return true
		}
	}
	return false
}

// report is the whole run, as printed and as written with -json.
type report struct {
	Started  time.Time `json:"started"`
	Host     string    `json:"host"`
	Settings settings  `json:"settings"`
	// LoadAvg and LoadAvgEnd are the machine's load averages when the run
	// started and ended: a busy machine makes every figure worse.
	LoadAvg    string          `json:"loadavg,omitempty"`
	LoadAvgEnd string          `json:"loadavg_end,omitempty"`
	Targets    []*targetResult `json:"targets"`
}

// failed tells whether a server under test (not a reference) failed.
func (r *report) failed() bool {
	for _, t := range r.Targets {
		if !t.Reference && t.failed() {
			return true
		}
	}
	return false
}

// row is one line of the table: a metric across all targets.
type row struct {
	scenario, name, unit, better string
	values                       []float64 // NaN where a target has no value
}

// rows lines up the targets' metrics by (scenario, name): scenarios in the
// order they were first measured, and within one the rows in the order
// they were first measured (a row only a later target has goes to its
// scenario, not to the end).
func (r *report) rows() []row {
	var out []row
	index := map[string]int{}
	for ti, t := range r.Targets {
		for _, m := range t.Metrics {
			key := m.Scenario + "\x00" + m.Name
			i, ok := index[key]
			if !ok {
				i = len(out)
				index[key] = i
				vals := make([]float64, len(r.Targets))
				for k := range vals {
					vals[k] = math.NaN()
				}
				out = append(out, row{scenario: m.Scenario, name: m.Name, unit: m.Unit, better: m.Better, values: vals})
			}
			out[i].values[ti] = m.Value
		}
	}
	order := map[string]int{}
	for _, row := range out {
		if _, ok := order[row.scenario]; !ok {
			order[row.scenario] = len(order)
		}
	}
	slices.SortStableFunc(out, func(a, b row) int { return order[a.scenario] - order[b.scenario] })
	return out
}

// formatValue prints a figure with as many digits as it deserves.
func formatValue(v float64) string {
	switch a := math.Abs(v); {
	case math.IsNaN(v):
		return "-"
	case a >= 100 || v == math.Trunc(v):
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	default: // two significant digits: 0.31, 0.0042
		return strconv.FormatFloat(v, 'g', 2, 64)
	}
}

// ratio is a/b as printed in the comparison column.
func ratio(a, b float64) string {
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

// writeText prints the report as a plain-text table. With exactly two
// targets a last column gives the first's figure over the second's.
func (r *report) writeText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "shoalbench  %s  %s\n", r.Started.Format(time.RFC3339), r.Host)
	fmt.Fprintf(&b, "settings: %s\n", r.Settings.summary())
	if r.LoadAvg != "" {
		fmt.Fprintf(&b, "load average: %s at start, %s at the end", r.LoadAvg, r.LoadAvgEnd)
		if busy(r.LoadAvg) { // the end figure includes the run's own load

			b.WriteString(" (WARNING: the machine was busy with other work; figures are not comparable)")
		}
		b.WriteString("\n")
	}
	for _, t := range r.Targets {
		ref := ""
		if t.Reference {
			ref = " [reference]"
		}
		fmt.Fprintf(&b, "target %s%s: %s\n", t.Name, ref, t.Description)
	}
	b.WriteString("\n")

	header := []string{"scenario", "metric"}
	for _, t := range r.Targets {
		header = append(header, t.Name)
	}
	two := len(r.Targets) == 2
	if two {
		header = append(header, r.Targets[0].Name+"/"+r.Targets[1].Name)
	}
	header = append(header, "better")
	table := [][]string{header}
	last := ""
	for _, row := range r.rows() {
		scen := row.scenario
		if scen == last {
			scen = ""
		}
		last = row.scenario
		name := row.name
		if row.unit != "" {
			name += " (" + row.unit + ")"
		}
		cells := []string{scen, name}
		for _, v := range row.values {
			cells = append(cells, formatValue(v))
		}
		if two {
			cells = append(cells, ratio(row.values[0], row.values[1]))
		}
		cells = append(cells, row.better)
		table = append(table, cells)
	}
	if len(table) > 1 {
		writeTable(&b, table, 2)
	} else {
		b.WriteString("(nothing was measured)\n")
	}

	var checks, errs []string
	for _, t := range r.Targets {
		for _, c := range t.Checks {
			verdict, note := "ok  ", ""
			if !c.OK {
				verdict = "FAIL"
				if t.Reference {
					note = " [reference server: does not fail the run]"
				}
			}
			checks = append(checks, fmt.Sprintf("  %s %s: %s: %s%s", verdict, t.Name, c.Name, c.Detail, note))
		}
		if t.Error != "" {
			errs = append(errs, fmt.Sprintf("  %s: %s", t.Name, t.Error))
		}
		for _, run := range t.Runs {
			if run.Error != "" {
				errs = append(errs, fmt.Sprintf("  %s, %s: %s", t.Name, run.Scenario, run.Error))
			}
		}
	}
	if len(checks) > 0 {
		b.WriteString("\nchecks:\n" + strings.Join(checks, "\n") + "\n")
	}
	if len(errs) > 0 {
		b.WriteString("\nerrors:\n" + strings.Join(errs, "\n") + "\n")
	}
	b.WriteString("\nwall time:\n")
	for _, t := range r.Targets {
		if len(t.Runs) == 0 {
			fmt.Fprintf(&b, "  %s: not run\n", t.Name)
			continue
		}
		var parts []string
		for _, run := range t.Runs {
			parts = append(parts, fmt.Sprintf("%s %.1fs", run.Scenario, run.Seconds))
		}
		fmt.Fprintf(&b, "  %s %.1fs (%s)\n", t.Name, t.Seconds, strings.Join(parts, ", "))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeTable prints rows in aligned columns, separated by two spaces: the
// first textCols columns left-aligned, the figures after them
// right-aligned, the last column left-aligned.
func writeTable(b *strings.Builder, table [][]string, textCols int) {
	var widths []int
	for _, cells := range table {
		for i, c := range cells {
			if i == len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	for _, cells := range table {
		var line strings.Builder
		for i, c := range cells {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c))
			if i > 0 {
				line.WriteString("  ")
			}
			if i < textCols || i == len(cells)-1 {
				line.WriteString(c + pad)
			} else {
				line.WriteString(pad + c)
			}
		}
		b.WriteString(strings.TrimRight(line.String(), " ") + "\n")
	}
}

// writeJSON writes the report to path.
func (r *report) writeJSON(path string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode JSON report: %w", err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write JSON report: %w", err)
	}
	return nil
}

// busy tells whether a 1-minute load average exceeds the CPU count.
func busy(loadavg string) bool {
	f := strings.Fields(loadavg)
	if len(f) == 0 {
		return false
	}
	l1, err := strconv.ParseFloat(f[0], 64)
	return err == nil && l1 > float64(runtime.NumCPU())
}
