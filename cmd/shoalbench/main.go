package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// duration is a time.Duration that reads as a flag and writes as "10s" in JSON.
type duration time.Duration

func (d duration) String() string { return time.Duration(d).String() }

func (d *duration) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if v <= 0 {
		return errors.New("must be positive")
	}
	*d = duration(v)
	return nil
}

func (d duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// intList is a comma-separated list of positive integers, kept sorted
// and without repeats.
type intList []int

func (l intList) String() string {
	s := make([]string, len(l))
	for i, v := range l {
		s[i] = strconv.Itoa(v)
	}
	return strings.Join(s, ",")
}

func (l *intList) Set(s string) error {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 1 {
			return fmt.Errorf("%q is not a positive integer", f)
		}
		out = append(out, v)
	}
	slices.Sort(out)
	*l = slices.Compact(out)
	return nil
}

// settings are the sizes and durations of the scenarios.
type settings struct {
	Scenarios    []string `json:"scenarios"`
	Users        int      `json:"users"`
	Concurrency  int      `json:"concurrency"`
	Senders      int      `json:"senders"`
	SendDuration duration `json:"send_duration"`
	Members      int      `json:"members"`
	Messages     int      `json:"messages"`
	Rate         float64  `json:"rate"`
	Rooms        intList  `json:"rooms"`
	Repeats      int      `json:"repeats"`
	JoinSizes    intList  `json:"join_sizes"`
	Joins        int      `json:"joins"`
	Timeout      duration `json:"timeout"`
}

func (s settings) summary() string {
	return fmt.Sprintf("register %d users on %d clients; send %d senders x %v; fan-out %d members, %d msgs at %g/s; "+
		"initial sync in %v rooms (median of %d); joins into %v members (%d timed each); bound %v per scenario",
		s.Users, s.Concurrency, s.Senders, s.SendDuration, s.Members, s.Messages, s.Rate,
		s.Rooms, s.Repeats, s.JoinSizes, s.Joins, s.Timeout)
}

func defaultSettings() settings {
	return settings{
		Scenarios:    slices.Clone(scenarioOrder),
		Users:        200,
		Concurrency:  10,
		Senders:      10,
		SendDuration: duration(10 * time.Second),
		Members:      100,
		Messages:     50,
		Rate:         5,
		Rooms:        intList{1, 10, 100},
		Repeats:      5,
		JoinSizes:    intList{1, 10, 100},
		Joins:        10,
		Timeout:      duration(3 * time.Minute),
	}
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg := defaultSettings()
	fs := flag.NewFlagSet("shoalbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `shoalbench drives Matrix homeservers over HTTP like real clients and prints what it measured.

  shoalbench -shoal bin/shoal                         a fresh shoal node
  shoalbench -shoal bin/shoal -dendrite dendrite      and Dendrite v0.13.8 for comparison
  shoalbench -url http://127.0.0.1:8008               a server that is already running

Flags:
`)
		fs.PrintDefaults()
	}
	shoalBin := fs.String("shoal", "", "start a fresh shoal node from this binary and benchmark it")
	dendriteBin := fs.String("dendrite", "", "set up a fresh Dendrite (v0.13.8; generate-config and generate-keys beside it or on PATH) from this binary and benchmark it")
	baseURL := fs.String("url", "", "benchmark an already running server at this client API base URL (loopback only)")
	serverName := fs.String("server-name", "", "server name of the -url server (default: the URL's host)")
	sharedSecret := fs.String("shared-secret", "", "register -url users with the shared-secret admin API instead of m.login.dummy")
	jsonPath := fs.String("json", "", "also write the results as JSON to this file")
	keep := fs.Bool("keep", false, "keep the data dirs and logs of the servers the tool started")
	scenarios := fs.String("scenarios", strings.Join(scenarioOrder, ","), "scenarios to run, comma-separated")
	fs.IntVar(&cfg.Users, "users", cfg.Users, "1: users to register")
	fs.IntVar(&cfg.Concurrency, "concurrency", cfg.Concurrency, "1: concurrent clients registering; also how many clients set up rooms (joins, room creation)")
	fs.IntVar(&cfg.Senders, "senders", cfg.Senders, "2: concurrent senders into one room")
	fs.Var(&cfg.SendDuration, "send-duration", "2: how long the senders send")
	fs.IntVar(&cfg.Members, "members", cfg.Members, "3: members long-polling /sync in the fan-out room")
	fs.IntVar(&cfg.Messages, "messages", cfg.Messages, "3: messages sent into the fan-out room")
	fs.Float64Var(&cfg.Rate, "rate", cfg.Rate, "3: messages per second sent into the fan-out room")
	fs.Var(&cfg.Rooms, "rooms", "4: room counts at which the initial sync is timed")
	fs.IntVar(&cfg.Repeats, "repeats", cfg.Repeats, "4: initial syncs timed per room count (the median is reported)")
	fs.Var(&cfg.JoinSizes, "join-sizes", "5: room sizes the timed joins go into")
	big := fs.Bool("big", false, "5: also time joins into a room of 1000 members (slow to set up; the default -timeout becomes 15m)")
	fs.IntVar(&cfg.Joins, "joins", cfg.Joins, "5: timed joins per room size")
	fs.Var(&cfg.Timeout, "timeout", "time bound of each scenario on each server")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "shoalbench: "+format+"\n", a...)
		return 2
	}
	if fs.NArg() > 0 {
		return usage("unexpected arguments %q", fs.Args())
	}
	if *shoalBin == "" && *dendriteBin == "" && *baseURL == "" {
		return usage("nothing to benchmark: give -shoal, -url and/or -dendrite (-h for help)")
	}
	cfg.Scenarios = nil
	for s := range strings.SplitSeq(*scenarios, ",") {
		s = strings.TrimSpace(s)
		if !slices.Contains(scenarioOrder, s) {
			return usage("unknown scenario %q (have %s)", s, strings.Join(scenarioOrder, ", "))
		}
		cfg.Scenarios = append(cfg.Scenarios, s)
	}
	if *big && !slices.Contains(cfg.JoinSizes, 1000) {
		cfg.JoinSizes = append(cfg.JoinSizes, 1000)
	}
	timeoutSet := false
	fs.Visit(func(f *flag.Flag) { timeoutSet = timeoutSet || f.Name == "timeout" })
	if *big && !timeoutSet {
		// Registering 1010 users and filling a room of 1000 takes
		// minutes on a slow server.
		cfg.Timeout = duration(15 * time.Minute)
	}
	if cfg.Users < 1 || cfg.Concurrency < 1 || cfg.Senders < 1 || cfg.Members < 1 || cfg.Messages < 1 ||
		cfg.Rate <= 0 || cfg.Repeats < 1 || cfg.Joins < 1 {
		return usage("-users, -concurrency, -senders, -members, -messages, -rate, -repeats and -joins must be positive")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logf := func(format string, a ...any) {
		fmt.Fprintf(stderr, "%s shoalbench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, a...))
	}
	hc := newHTTPClient()
	rep := &report{
		Started:  time.Now(),
		Host:     fmt.Sprintf("%s/%s, %d CPUs, %s", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version()),
		Settings: cfg,
		LoadAvg:  loadAvg(),
	}
	if l := rep.LoadAvg; l != "" {
		logf("load average at start: %s", l)
	}

	// One server at a time, each started just before its run and stopped
	// right after, so that they never compete for the CPUs.
	type spec struct {
		name      string
		reference bool
		start     func() (*target, error)
	}
	var specs []spec
	if *shoalBin != "" {
		specs = append(specs, spec{"shoal", false, func() (*target, error) { return startShoal(ctx, *shoalBin, *keep, hc) }})
	}
	if *baseURL != "" {
		remote, err := remoteTarget(*baseURL, *serverName, *sharedSecret, hc)
		if err != nil {
			return usage("%v", err)
		}
		specs = append(specs, spec{"url", false, func() (*target, error) { return remote, nil }})
	}
	if *dendriteBin != "" {
		specs = append(specs, spec{"dendrite", true, func() (*target, error) { return startDendrite(ctx, *dendriteBin, *keep, hc) }})
	}
	for _, s := range specs {
		if ctx.Err() != nil {
			break
		}
		logf("%s: starting", s.name)
		t, err := s.start()
		if err != nil {
			logf("%s: %v", s.name, err)
			rep.Targets = append(rep.Targets, &targetResult{Name: s.name, Error: err.Error(), Reference: s.reference})
			continue
		}
		logf("%s: %s", s.name, t.description)
		res := newBench(t, cfg, logf).runAll(ctx)
		if err := t.close(); err != nil {
			logf("%s: stop: %v", s.name, err)
		}
		hc.CloseIdleConnections()
		rep.Targets = append(rep.Targets, res)
	}

	rep.LoadAvgEnd = loadAvg()
	if err := rep.writeText(stdout); err != nil {
		fmt.Fprintln(stderr, "shoalbench:", err)
		return 1
	}
	if *jsonPath != "" {
		if err := rep.writeJSON(*jsonPath); err != nil {
			fmt.Fprintln(stderr, "shoalbench:", err)
			return 1
		}
	}
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "shoalbench: interrupted")
		return 1
	}
	if rep.failed() {
		fmt.Fprintln(stderr, "shoalbench: FAILED: see the checks and errors above")
		return 1
	}
	return 0
}

// loadAvg is the 1, 5 and 15 minute load averages (Linux), or "": figures
// taken on a machine busy with other work are not worth comparing.
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
