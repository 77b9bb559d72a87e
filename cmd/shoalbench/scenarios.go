package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// bench runs the scenarios against one target.
type bench struct {
	cfg  settings
	res  *targetResult
	pool *userPool
	logf func(format string, args ...any)
}

func newBench(t *target, cfg settings, logf func(string, ...any)) *bench {
	b := &bench{cfg: cfg, res: &targetResult{Name: t.name, Description: t.description, Reference: t.reference}}
	b.logf = func(format string, args ...any) { logf(t.name+": "+format, args...) }
	b.pool = newUserPool(t.hs)
	return b
}

// The scenarios, by the names -scenarios takes, in the order they run.
var scenarioOrder = []string{"register", "send", "fanout", "initialsync", "join"}

func (b *bench) scenario(name string) func(context.Context) error {
	switch name {
	case "register":
		return b.register
	case "send":
		return b.send
	case "fanout":
		return b.fanout
	case "initialsync":
		return b.initialSync
	case "join":
		return b.joins
	}
	return nil
}

// runAll runs the chosen scenarios in order, each within cfg.Timeout.
// A failed scenario is recorded and the next one runs.
func (b *bench) runAll(ctx context.Context) *targetResult {
	start := time.Now()
	for _, name := range scenarioOrder {
		if !slices.Contains(b.cfg.Scenarios, name) || ctx.Err() != nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, time.Duration(b.cfg.Timeout))
		t0 := time.Now()
		err := b.scenario(name)(sctx)
		cancel()
		run := scenarioRun{Scenario: name, Seconds: time.Since(t0).Seconds()}
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				err = fmt.Errorf("over the %v time bound (-timeout): %w", time.Duration(b.cfg.Timeout), err)
			}
			run.Error = err.Error()
			b.logf("%s failed after %.1fs: %v", name, run.Seconds, err)
		} else {
			b.logf("%s done in %.1fs", name, run.Seconds)
		}
		b.res.Runs = append(b.res.Runs, run)
	}
	b.res.Seconds = time.Since(start).Seconds()
	return b.res
}

// parallel runs fn(i) for i in [0, n) on at most conc goroutines and
// returns the first error, after which no new calls start.
func parallel(ctx context.Context, n, conc int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(conc, n) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(ctx, i); err != nil {
					cancel(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}
	return nil
}

// userPool hands out registered users; scenarios share them, and register
// more (untimed) when they need more than the pool has.
type userPool struct {
	hs       *homeserver
	prefix   string // makes localparts unique across runs against one server
	password string
	seq      atomic.Int64
	mu       sync.Mutex
	users    []*user
}

func newUserPool(hs *homeserver) *userPool {
	r := make([]byte, 4)
	_, _ = rand.Read(r)
	pw := make([]byte, 12)
	_, _ = rand.Read(pw)
	return &userPool{hs: hs, prefix: "sb" + hex.EncodeToString(r), password: hex.EncodeToString(pw)}
}

// registerNew registers n new users on conc clients and returns them with
// the time each registration took (both steps of the UIA flow).
func (p *userPool) registerNew(ctx context.Context, n, conc int) ([]*user, []time.Duration, error) {
	users := make([]*user, n)
	lat := make([]time.Duration, n)
	err := parallel(ctx, n, conc, func(ctx context.Context, i int) error {
		local := fmt.Sprintf("%s-%d", p.prefix, p.seq.Add(1))
		t0 := time.Now()
		u, err := p.hs.register(ctx, local, p.password)
		if err != nil {
			return err
		}
		lat[i], users[i] = time.Since(t0), u
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	p.mu.Lock()
	p.users = append(p.users, users...)
	p.mu.Unlock()
	return users, lat, nil
}

func (p *userPool) size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.users)
}

// first returns the pool's first n users, registering more if needed.
func (p *userPool) first(ctx context.Context, n, conc int) ([]*user, error) {
	p.mu.Lock()
	have := len(p.users)
	p.mu.Unlock()
	if have < n {
		if _, _, err := p.registerNew(ctx, n-have, conc); err != nil {
			return nil, fmt.Errorf("register users for the scenario: %w", err)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.users[:n]), nil
}

// roomWith creates a public room owned by users[0] and joins the others
// to it on conc clients.
func roomWith(ctx context.Context, users []*user, conc int, name string) (string, error) {
	room, err := users[0].createRoom(ctx, "public_chat", name)
	if err != nil {
		return "", err
	}
	err = parallel(ctx, len(users)-1, conc, func(ctx context.Context, i int) error {
		return users[i+1].join(ctx, room)
	})
	if err != nil {
		return "", err
	}
	return room, nil
}

// 1. Registration rate.
func (b *bench) register(ctx context.Context) error {
	const scen = "1 registration"
	t0 := time.Now()
	users, lat, err := b.pool.registerNew(ctx, b.cfg.Users, b.cfg.Concurrency)
	if err != nil {
		return err
	}
	elapsed := time.Since(t0)
	b.res.add(metric{scen, "rate", "users/s", higherBetter, perSecond(len(users), elapsed)})
	b.res.add(metric{scen, "p50 latency", "ms", lowerBetter, ms(percentile(lat, 50))})
	b.res.add(metric{scen, "p99 latency", "ms", lowerBetter, ms(percentile(lat, 99))})
	b.logf("registered %d users on %d clients in %.1fs", len(users), b.cfg.Concurrency, elapsed.Seconds())
	return nil
}

// 2. Send throughput and latency, then 6. the history check.
func (b *bench) send(ctx context.Context) error {
	scen := fmt.Sprintf("2 send, %d senders", b.cfg.Senders)
	users, err := b.pool.first(ctx, b.cfg.Senders, b.cfg.Concurrency)
	if err != nil {
		return err
	}
	room, err := roomWith(ctx, users, b.cfg.Concurrency, "shoalbench send")
	if err != nil {
		return fmt.Errorf("set up the room: %w", err)
	}

	var (
		mu      sync.Mutex
		acked   []string
		lat     []time.Duration
		failed  int
		retried int
		lastErr error
	)
	deadline := time.Now().Add(time.Duration(b.cfg.SendDuration))
	start := time.Now()
	var wg sync.WaitGroup
	for w, u := range users {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil && time.Now().Before(deadline); i++ {
				txn := fmt.Sprintf("%s-s%d-%d", b.pool.prefix, w, i)
				content := map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("load message %d from sender %d", i, w)}
				t0 := time.Now()
				id, tries, err := sendRetrying(ctx, u, room, txn, content)
				d := time.Since(t0)
				mu.Lock()
				retried += tries - 1
				if err != nil {
					if ctx.Err() == nil {
						failed++
						lastErr = err
					}
				} else {
					acked = append(acked, id)
					lat = append(lat, d)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	b.res.add(metric{scen, "throughput", "msgs/s", higherBetter, perSecond(len(acked), elapsed)})
	b.res.add(metric{scen, "p50 latency", "ms", lowerBetter, ms(percentile(lat, 50))})
	b.res.add(metric{scen, "p99 latency", "ms", lowerBetter, ms(percentile(lat, 99))})
	b.res.add(metric{scen, "acknowledged", "msgs", "", float64(len(acked))})
	b.logf("sent %d messages in %.1fs (%d failed, %d retries)", len(acked), elapsed.Seconds(), failed, retried)
	detail := fmt.Sprintf("%d acknowledged, %d failed after retries, %d retries", len(acked), failed, retried)
	if lastErr != nil {
		detail += "; last error: " + lastErr.Error()
	}
	b.res.Checks = append(b.res.Checks, check{Name: "2 every send acknowledged", OK: failed == 0, Detail: detail})

	c, err := settledHistoryCheck(ctx, users[0], room, acked)
	if err != nil {
		return fmt.Errorf("history check: %w", err)
	}
	b.res.Checks = append(b.res.Checks, c)
	return nil
}

// historySettle is how long the tool waits for what a server acknowledged
// to show up where clients read it: a server may acknowledge a send or a
// createRoom before the part of it that serves /messages and /sync knows
// (Dendrite's roomserver and sync API are joined by a queue). Events still
// missing from /messages after that count as lost.
const historySettle = 15 * time.Second

// settledHistoryCheck repeats historyCheck while events are missing, up to
// historySettle, and says how long they took to show up.
func settledHistoryCheck(ctx context.Context, u *user, room string, acked []string) (check, error) {
	start := time.Now()
	for {
		c, lost, err := historyCheck(ctx, u, room, acked)
		waited := time.Since(start)
		if err != nil {
			return c, err
		}
		if lost == 0 {
			if waited >= 500*time.Millisecond {
				c.Detail += fmt.Sprintf(" (every acknowledged event was listed %.1fs after the last send)", waited.Seconds())
			}
			return c, nil
		}
		if waited >= historySettle {
			c.Detail += fmt.Sprintf(" (still missing %.0fs after the last send)", waited.Seconds())
			return c, nil
		}
		if err := sleepCtx(ctx, 500*time.Millisecond); err != nil {
			return check{}, err
		}
	}
}

// sendRetrying sends once and repeats the request with the same
// transaction ID (as real clients do) after a transport error or a 5xx, up
// to 3 tries. It returns how many tries it made.
func sendRetrying(ctx context.Context, u *user, room, txn string, content map[string]any) (string, int, error) {
	const tries = 3
	var err error
	for try := 1; ; try++ {
		var id string
		id, err = u.sendMessage(ctx, room, txn, content)
		if err == nil || try == tries || !retryable(err) {
			return id, try, err
		}
		select {
		case <-ctx.Done():
			return "", try, ctx.Err()
		case <-time.After(time.Duration(try) * 50 * time.Millisecond):
		}
	}
}

// historyCheck pages /messages backwards from the newest event and checks
// that each acknowledged event ID is there exactly once.
func historyCheck(ctx context.Context, u *user, room string, acked []string) (check, int, error) {
	const pageSize = 500
	seen := map[string]int{}
	types := map[string]string{}
	from, total := "", 0
	maxPages := len(acked)/pageSize + 1000
	for page := 0; ; page++ {
		if page == maxPages {
			return check{}, 0, fmt.Errorf("/messages still paging after %d pages", page)
		}
		ans, err := u.messages(ctx, room, from, "b", pageSize)
		if err != nil {
			return check{}, 0, err
		}
		for _, ev := range ans.Chunk {
			types[ev.EventID] = ev.Type
			seen[ev.EventID]++
			total++
		}
		if len(ans.Chunk) == 0 || ans.End == "" || ans.End == from {
			break
		}
		from = ans.End
	}
	lost, dup, ackedTwice := 0, 0, 0
	ackCount := map[string]int{}
	for _, id := range acked {
		ackCount[id]++
		switch n := seen[id]; {
		case n == 0:
			lost++
		case n > 1:
			dup++
		}
	}
	for _, n := range ackCount {
		if n > 1 {
			ackedTwice++
		}
	}
	// Other events (not sent by the load) listed twice do not fail the
	// check, but are noted: a server may repeat one at a page boundary.
	otherDup, otherTypes := 0, []string{}
	for id, n := range seen {
		if n > 1 && ackCount[id] == 0 {
			otherDup++
			otherTypes = append(otherTypes, types[id])
		}
	}
	ok := lost == 0 && dup == 0 && ackedTwice == 0
	detail := fmt.Sprintf("%d acknowledged event IDs, %d events in /messages: %d lost, %d duplicated",
		len(acked), total, lost, dup)
	if ackedTwice > 0 {
		detail += fmt.Sprintf(", %d event IDs acknowledged for two different transactions", ackedTwice)
	}
	if otherDup > 0 {
		slices.Sort(otherTypes)
		detail += fmt.Sprintf(" (note: %d other events listed more than once: %s)", otherDup, strings.Join(slices.Compact(otherTypes), ", "))
	}
	return check{Name: "6 acknowledged sends in /messages exactly once", OK: ok, Detail: detail}, lost, nil
}

// fanoutFilter keeps a member's sync to the one room's timeline.
func fanoutFilter(room string) string {
	f := map[string]any{
		"presence":     map[string]any{"types": []string{}},
		"account_data": map[string]any{"types": []string{}},
		"room": map[string]any{
			"rooms":        []string{room},
			"timeline":     map[string]any{"limit": 100},
			"ephemeral":    map[string]any{"types": []string{}},
			"account_data": map[string]any{"types": []string{}},
		},
	}
	b, _ := json.Marshal(f)
	return string(b)
}

// 3. Sync fan-out latency.
func (b *bench) fanout(ctx context.Context) error {
	M, K := b.cfg.Members, b.cfg.Messages
	scen := fmt.Sprintf("3 sync fan-out, %d members", M)
	setupStart := time.Now()
	users, err := b.pool.first(ctx, M+1, b.cfg.Concurrency)
	if err != nil {
		return err
	}
	sender, members := users[0], users[1:]
	room, err := roomWith(ctx, users, b.cfg.Concurrency, "shoalbench fan-out")
	if err != nil {
		return fmt.Errorf("set up the room: %w", err)
	}
	filter := fanoutFilter(room)
	since := make([]string, M)
	err = parallel(ctx, M, b.cfg.Concurrency, func(ctx context.Context, i int) error {
		ans, _, err := members[i].sync(ctx, "", 0, filter)
		if err != nil {
			return err
		}
		since[i] = ans.NextBatch
		return nil
	})
	if err != nil {
		return fmt.Errorf("initial syncs of the members: %w", err)
	}

	// Each member long-polls until stopped and notes when it first sees
	// each of the sender's messages.
	seen := make([][]time.Time, M)
	var delivered, syncErrs, limited atomic.Int64
	var started sync.WaitGroup
	started.Add(M)
	pollCtx, stopPolls := context.WithCancel(ctx)
	defer stopPolls()
	var polls sync.WaitGroup
	for i, m := range members {
		seen[i] = make([]time.Time, K)
		polls.Go(func() {
			started.Done()
			for pollCtx.Err() == nil {
				ans, _, err := m.sync(pollCtx, since[i], 30*time.Second, filter)
				now := time.Now()
				if err != nil {
					if pollCtx.Err() != nil {
						return
					}
					syncErrs.Add(1)
					select {
					case <-pollCtx.Done():
					case <-time.After(200 * time.Millisecond):
					}
					continue
				}
				since[i] = ans.NextBatch
				jr, ok := ans.Rooms.Join[room]
				if !ok {
					continue
				}
				if jr.Timeline.Limited {
					limited.Add(1)
				}
				for _, ev := range jr.Timeline.Events {
					if ev.Sender != sender.ID || ev.Type != "m.room.message" {
						continue
					}
					var c struct {
						Seq *int `json:"shoalbench_seq"`
					}
					if json.Unmarshal(ev.Content, &c) != nil || c.Seq == nil || *c.Seq < 0 || *c.Seq >= K {
						continue
					}
					if seen[i][*c.Seq].IsZero() {
						seen[i][*c.Seq] = now
						delivered.Add(1)
					}
				}
			}
		})
	}
	started.Wait()
	// Let every member's first long-poll reach the server and settle.
	if err := sleepCtx(ctx, 2*time.Second); err != nil {
		return err
	}
	setup := time.Since(setupStart)

	// The sender sends on a fixed schedule, whatever the answers take.
	sentAt := make([]time.Time, K)
	sentOK := make([]bool, K)
	sendLat := make([]time.Duration, K)
	var sends sync.WaitGroup
	var sendErr error
	var sendMu sync.Mutex
	interval := time.Duration(float64(time.Second) / b.cfg.Rate)
	t0 := time.Now()
	for k := range K {
		if err := sleepCtx(ctx, time.Until(t0.Add(time.Duration(k)*interval))); err != nil {
			break
		}
		sentAt[k] = time.Now()
		sends.Go(func() {
			content := map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("fan-out %d", k), "shoalbench_seq": k}
			_, _, err := sendRetrying(ctx, sender, room, fmt.Sprintf("%s-f%d", b.pool.prefix, k), content)
			sendMu.Lock()
			defer sendMu.Unlock()
			if err != nil {
				sendErr = err
				return
			}
			sentOK[k], sendLat[k] = true, time.Since(sentAt[k])
		})
	}
	sends.Wait()
	okSends := 0
	for _, ok := range sentOK {
		if ok {
			okSends++
		}
	}
	// Wait for the stragglers, at most 15 s after the last send.
	want := int64(okSends * M)
	waitUntil := time.Now().Add(15 * time.Second)
	for delivered.Load() < want && time.Now().Before(waitUntil) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	stopPolls()
	polls.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if okSends == 0 {
		return fmt.Errorf("no message could be sent: %w", sendErr)
	}

	var lat, sendOKLat []time.Duration
	for k, ok := range sentOK {
		if ok {
			sendOKLat = append(sendOKLat, sendLat[k])
		}
	}
	for i := range members {
		for k := range K {
			if sentOK[k] && !seen[i][k].IsZero() {
				lat = append(lat, seen[i][k].Sub(sentAt[k]))
			}
		}
	}
	b.res.add(metric{scen, "p50 latency", "ms", lowerBetter, ms(percentile(lat, 50))})
	b.res.add(metric{scen, "p99 latency", "ms", lowerBetter, ms(percentile(lat, 99))})
	b.res.add(metric{scen, "max latency", "ms", lowerBetter, ms(maxOf(lat))})
	b.res.add(metric{scen, "delivered", "%", higherBetter, 100 * float64(len(lat)) / float64(okSends*M)})
	// The sender's own answers: how much of the latency is the write path.
	b.res.add(metric{scen, "send p50 latency", "ms", "", ms(percentile(sendOKLat, 50))})
	b.res.add(metric{scen, "setup", "s", "", setup.Seconds()})
	b.logf("fan-out: %d of %d (member, message) pairs delivered; %d sends failed, %d sync errors, %d limited timelines",
		len(lat), okSends*M, K-okSends, syncErrs.Load(), limited.Load())
	if okSends < K {
		return fmt.Errorf("%d of %d fan-out messages could not be sent: %w", K-okSends, K, sendErr)
	}
	return nil
}

// 4. Initial sync time as the rooms of one user grow.
func (b *bench) initialSync(ctx context.Context) error {
	const scen = "4 initial sync"
	counts := slices.Sorted(slices.Values(b.cfg.Rooms))
	users, _, err := b.pool.registerNew(ctx, 1, 1) // a user in no room yet
	if err != nil {
		return fmt.Errorf("register the user: %w", err)
	}
	u := users[0]
	made := 0
	var setup time.Duration
	for _, n := range counts {
		t0 := time.Now()
		base := made
		err := parallel(ctx, n-made, b.cfg.Concurrency, func(ctx context.Context, i int) error {
			room, err := u.createRoom(ctx, "private_chat", fmt.Sprintf("shoalbench room %d", base+i))
			if err != nil {
				return err
			}
			_, err = u.sendMessage(ctx, room, fmt.Sprintf("%s-r%d", b.pool.prefix, base+i),
				map[string]any{"msgtype": "m.text", "body": "hello"})
			return err
		})
		if err != nil {
			return fmt.Errorf("create rooms %d to %d: %w", made+1, n, err)
		}
		made = max(made, n)
		// A server may answer createRoom before its sync side knows the
		// room (Dendrite); wait (untimed) until the sync lists them all.
		if err := waitForRooms(ctx, u, made); err != nil {
			return err
		}
		setup += time.Since(t0)

		var times []time.Duration
		size := 0
		for range b.cfg.Repeats {
			t0 := time.Now()
			ans, n2, err := u.sync(ctx, "", 0, "")
			if err != nil {
				return err
			}
			times = append(times, time.Since(t0))
			size = n2
			if got := len(ans.Rooms.Join); got != made {
				return fmt.Errorf("initial sync lists %d joined rooms, want %d", got, made)
			}
		}
		label := "rooms"
		if n == 1 {
			label = "room"
		}
		b.res.add(metric{scen, fmt.Sprintf("%d %s, median of %d", n, label, b.cfg.Repeats), "ms", lowerBetter, ms(median(times))})
		b.res.add(metric{scen, fmt.Sprintf("%d %s, answer size", n, label), "KiB", "", float64(size) / 1024})
	}
	b.res.add(metric{scen, "setup", "s", "", setup.Seconds()})
	return nil
}

// waitForRooms polls initial syncs until they list n joined rooms, for at
// most historySettle.
func waitForRooms(ctx context.Context, u *user, n int) error {
	start := time.Now()
	for {
		ans, _, err := u.sync(ctx, "", 0, "")
		if err != nil {
			return err
		}
		got := len(ans.Rooms.Join)
		if got == n {
			return nil
		}
		if time.Since(start) >= historySettle {
			return fmt.Errorf("initial sync lists %d joined rooms %.0fs after creating %d", got, historySettle.Seconds(), n)
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
}

// 5. Join latency into rooms of growing size.
func (b *bench) joins(ctx context.Context) error {
	sizes := slices.Sorted(slices.Values(b.cfg.JoinSizes))
	need := sizes[len(sizes)-1] + b.cfg.Joins
	had := b.pool.size()
	t0 := time.Now()
	users, err := b.pool.first(ctx, need, b.cfg.Concurrency)
	if err != nil {
		return err
	}
	if more := need - had; more > 0 {
		b.res.add(metric{"5 join", fmt.Sprintf("setup: register %d more users", more), "s", "", time.Since(t0).Seconds()})
	}
	for _, size := range sizes {
		scen := fmt.Sprintf("5 join, room of %d", size)
		t0 := time.Now()
		room, err := roomWith(ctx, users[:size], b.cfg.Concurrency, fmt.Sprintf("shoalbench join %d", size))
		if err != nil {
			return fmt.Errorf("set up the room of %d: %w", size, err)
		}
		setup := time.Since(t0)
		var lat []time.Duration
		for _, u := range users[size : size+b.cfg.Joins] {
			t0 := time.Now()
			if err := u.join(ctx, room); err != nil {
				return err
			}
			lat = append(lat, time.Since(t0))
		}
		b.res.add(metric{scen, "median", "ms", lowerBetter, ms(median(lat))})
		b.res.add(metric{scen, "p99", "ms", lowerBetter, ms(percentile(lat, 99))})
		b.res.add(metric{scen, "setup", "s", "", setup.Seconds()})
		b.logf("room of %d: set up in %.1fs, %d timed joins", size, setup.Seconds(), len(lat))
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
