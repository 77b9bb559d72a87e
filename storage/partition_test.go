package storage

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

func TestUpdateGroupCommit(t *testing.T) {
	const writers, perWriter = 64, 200
	path := filepath.Join(t.TempDir(), "p.db")
	var commits, committed atomic.Int64
	p, err := Open(path, 1, Options{OnCommit: func(s CommitStats) {
		if s.Err == nil {
			commits.Add(1)
			committed.Add(int64(s.Batch))
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				key := U64Key(uint64(g)<<32 | uint64(i))
				if err := p.Update(context.Background(), put(key, fmt.Sprint(g, i))); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	total := int64(writers * perWriter)
	t.Logf("%d updates in %d commits (%.1f per commit)", total, commits.Load(), float64(total)/float64(commits.Load()))
	if committed.Load() != total {
		t.Errorf("OnCommit saw %d updates committed, want %d", committed.Load(), total)
	}
	if commits.Load() >= total/2 {
		t.Errorf("%d commits for %d concurrent updates: group commit is not batching", commits.Load(), total)
	}

	p, err = Open(path, 1, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	err = p.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(testBucket)
		if n := b.Stats().KeyN; n != int(total) {
			t.Errorf("%d keys after reopen, want %d", n, total)
		}
		for g := range writers {
			for i := range perWriter {
				if got := string(b.Get(U64Key(uint64(g)<<32 | uint64(i)))); got != fmt.Sprint(g, i) {
					t.Fatalf("key %d/%d = %q", g, i, got)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestUpdateFailingFnLeavesBatch(t *testing.T) {
	var stats []CommitStats
	var mu sync.Mutex
	p := openTest(t, Options{OnCommit: func(s CommitStats) {
		mu.Lock()
		stats = append(stats, s)
		mu.Unlock()
	}})
	release, blocked := blockCommitter(t, p)

	errBoom := errors.New("boom")
	const n = 6
	results := make([]chan error, n)
	for i := range n {
		results[i] = make(chan error, 1)
		fn := put([]byte{byte('a' + i)}, "ok")
		if i == 2 || i == 4 {
			// Writes, then fails: its write must not survive.
			fn = func(tx *bbolt.Tx) error {
				if err := put([]byte{byte('a' + i)}, "bad")(tx); err != nil {
					return err
				}
				return errBoom
			}
		}
		go func() { results[i] <- p.Update(context.Background(), fn) }()
		waitFor(t, "update queued", func() bool { return queued(p) == i+1 })
	}
	release()
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
	for i := range n {
		err := <-results[i]
		key := []byte{byte('a' + i)}
		if i == 2 || i == 4 {
			if err != errBoom {
				t.Errorf("failing update %d: got %v, want the fn's own error", i, err)
			}
			if v := get(t, p, key); v != nil {
				t.Errorf("failing update %d left %q", i, v)
			}
			continue
		}
		if err != nil {
			t.Errorf("update %d: %v", i, err)
		}
		if v := get(t, p, key); string(v) != "ok" {
			t.Errorf("update %d: key = %q", i, v)
		}
	}
	// OnCommit runs after the callers are answered.
	waitFor(t, "OnCommit of the last batch", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(stats) == 2
	})
	mu.Lock()
	defer mu.Unlock()
	last := stats[len(stats)-1]
	if last.Batch != n-2 || last.Failed != 2 || last.Err != nil {
		t.Errorf("last commit %+v, want batch %d with 2 failed", last, n-2)
	}
}

func TestUpdatePanicRecovered(t *testing.T) {
	p := openTest(t, Options{})
	release, blocked := blockCommitter(t, p)
	okRes := make(chan error, 1)
	panicRes := make(chan error, 1)
	go func() {
		panicRes <- p.Update(context.Background(), func(tx *bbolt.Tx) error {
			_ = put([]byte("panicked"), "x")(tx)
			panic("kaboom")
		})
	}()
	waitFor(t, "panicking update queued", func() bool { return queued(p) == 1 })
	go func() { okRes <- p.Update(context.Background(), put([]byte("ok"), "x")) }()
	waitFor(t, "second update queued", func() bool { return queued(p) == 2 })
	release()
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}

	var pe *PanicError
	if err := <-panicRes; !errors.As(err, &pe) || pe.Value != "kaboom" || len(pe.Stack) == 0 || pe.Partition != 1 {
		t.Fatalf("panicking update returned %v, want a *PanicError with value and stack", err)
	}
	if err := <-okRes; err != nil {
		t.Fatalf("update batched with a panic: %v", err)
	}
	if get(t, p, []byte("panicked")) != nil {
		t.Error("the panicking update's write survived")
	}
	if get(t, p, []byte("ok")) == nil {
		t.Error("the update batched with the panic was lost")
	}

	// A function that commits the shared transaction itself is refused by
	// bbolt with a panic, which is confined the same way.
	err := p.Update(context.Background(), func(tx *bbolt.Tx) error { return tx.Commit() })
	if !errors.As(err, &pe) {
		t.Fatalf("update committing its tx returned %v, want a *PanicError", err)
	}
	if err := p.Update(context.Background(), put([]byte("after"), "x")); err != nil {
		t.Fatalf("partition unusable after panics: %v", err)
	}
	if get(t, p, []byte("after")) == nil {
		t.Error("write after panics lost")
	}
}

func TestUpdateCancelledWhileQueued(t *testing.T) {
	p := openTest(t, Options{})

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	err := p.Update(ctx, func(*bbolt.Tx) error { ran = true; return nil })
	if !errors.Is(err, context.Canceled) || ran {
		t.Fatalf("update with a done ctx: err %v, ran %v", err, ran)
	}

	release, blocked := blockCommitter(t, p)
	ctx, cancel = context.WithCancel(context.Background())
	res := make(chan error, 1)
	var ranQueued atomic.Bool
	go func() {
		res <- p.Update(ctx, func(tx *bbolt.Tx) error {
			ranQueued.Store(true)
			return put([]byte("cancelled"), "x")(tx)
		})
	}()
	waitFor(t, "update queued", func() bool { return queued(p) == 1 })
	cancel()
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled queued update returned %v", err)
	}
	release()
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
	// The committer has skipped the cancelled request by the time the next
	// update commits.
	if err := p.Update(context.Background(), put([]byte("next"), "x")); err != nil {
		t.Fatal(err)
	}
	if ranQueued.Load() || get(t, p, []byte("cancelled")) != nil {
		t.Error("cancelled update ran or was written")
	}
}

func TestCloseDrainsQueue(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.db")
	p, err := Open(path, 1, Options{})
	if err != nil {
		t.Fatal(err)
	}
	release, blocked := blockCommitter(t, p)
	const n = 10
	results := make(chan error, n)
	for i := range n {
		go func() { results <- p.Update(context.Background(), put(U64Key(uint64(i)), "x")) }()
	}
	waitFor(t, "updates queued", func() bool { return queued(p) == n })

	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	waitFor(t, "close to begin", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.closed
	})
	if err := p.Update(context.Background(), put([]byte("late"), "x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("update during close: %v, want ErrClosed", err)
	}
	release()
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
	for range n {
		if err := <-results; err != nil {
			t.Errorf("pending update: %v", err)
		}
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := p.Update(context.Background(), put([]byte("late"), "x")); !errors.Is(err, ErrClosed) {
		t.Errorf("update after close: %v, want ErrClosed", err)
	}
	if err := p.View(func(*bbolt.Tx) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("view after close: %v, want ErrClosed", err)
	}
	if _, err := p.Snapshot(&discard{}); !errors.Is(err, ErrClosed) {
		t.Errorf("snapshot after close: %v, want ErrClosed", err)
	}

	p, err = Open(path, 1, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for i := range n {
		if get(t, p, U64Key(uint64(i))) == nil {
			t.Errorf("pending update %d lost by Close", i)
		}
	}
	if get(t, p, []byte("late")) != nil {
		t.Error("update refused with ErrClosed was written")
	}
}

type discard struct{}

func (discard) Write(b []byte) (int, error) { return len(b), nil }

func TestUpdateMaxBatch(t *testing.T) {
	var mu sync.Mutex
	var batches []int
	p := openTest(t, Options{MaxBatch: 3, OnCommit: func(s CommitStats) {
		mu.Lock()
		batches = append(batches, s.Batch)
		mu.Unlock()
	}})
	release, blocked := blockCommitter(t, p)
	var wg sync.WaitGroup
	for i := range 7 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.Update(context.Background(), put(U64Key(uint64(i)), "x")); err != nil {
				t.Error(err)
			}
		}()
	}
	waitFor(t, "updates queued", func() bool { return queued(p) == 7 })
	release()
	<-blocked
	wg.Wait()
	// OnCommit runs after the callers are answered.
	waitFor(t, "OnCommit of the last batch", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(batches) == 4
	})
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(batches) != "[1 3 3 1]" {
		t.Errorf("batches %v, want [1 3 3 1] (blocker, then at most MaxBatch)", batches)
	}
}

func TestEpochFencing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.db")
	p, err := Open(path, 1, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if p.Epoch() != 0 {
		t.Fatalf("new partition at epoch %d", p.Epoch())
	}
	if err := p.UpdateAt(ctx, 0, put([]byte("e0"), "x")); err != nil {
		t.Fatal(err)
	}
	if err := p.SetEpoch(5); err != nil {
		t.Fatal(err)
	}
	if err := p.SetEpoch(5); err != nil {
		t.Errorf("setting the same epoch again: %v", err)
	}
	if err := p.SetEpoch(3); !errors.Is(err, ErrStaleEpoch) {
		t.Errorf("lowering the epoch: %v, want ErrStaleEpoch", err)
	}
	if err := p.UpdateAt(ctx, 4, put([]byte("e4"), "x")); !errors.Is(err, ErrStaleEpoch) {
		t.Errorf("stale UpdateAt: %v, want ErrStaleEpoch", err)
	}
	if err := p.UpdateAt(ctx, 5, put([]byte("e5"), "x")); err != nil {
		t.Errorf("current-epoch UpdateAt: %v", err)
	}
	if err := p.UpdateAt(ctx, 6, put([]byte("e6"), "x")); err != nil {
		t.Errorf("newer-epoch UpdateAt: %v", err)
	}

	// The authoritative check is in the transaction: an UpdateAt queued
	// behind a SetEpoch that raises past it is refused, though the epoch
	// was still current when it was queued.
	release, blocked := blockCommitter(t, p)
	setRes := make(chan error, 1)
	go func() { setRes <- p.SetEpoch(7) }()
	waitFor(t, "SetEpoch queued", func() bool { return queued(p) == 1 })
	updRes := make(chan error, 1)
	go func() { updRes <- p.UpdateAt(ctx, 6, put([]byte("late6"), "x")) }()
	waitFor(t, "UpdateAt queued", func() bool { return queued(p) == 2 })
	release()
	<-blocked
	if err := <-setRes; err != nil {
		t.Fatal(err)
	}
	if err := <-updRes; !errors.Is(err, ErrStaleEpoch) {
		t.Errorf("UpdateAt overtaken by SetEpoch: %v, want ErrStaleEpoch", err)
	}
	if get(t, p, []byte("e4")) != nil || get(t, p, []byte("late6")) != nil {
		t.Error("a refused UpdateAt was written")
	}
	if get(t, p, []byte("e5")) == nil || get(t, p, []byte("e6")) == nil {
		t.Error("an accepted UpdateAt was lost")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	p, err = Open(path, 1, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Epoch() != 7 {
		t.Errorf("epoch after reopen %d, want 7", p.Epoch())
	}
	if err := p.UpdateAt(ctx, 6, put([]byte("x"), "x")); !errors.Is(err, ErrStaleEpoch) {
		t.Errorf("stale UpdateAt after reopen: %v", err)
	}
}

func TestOpenLockedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.db")
	p, err := Open(path, 1, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	start := time.Now()
	_, err = Open(path, 1, Options{LockTimeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("second open took %s", d)
	}
}

func TestOpenPartitionMismatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.db")
	p, err := Open(path, 3, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, 4, Options{}); !errors.Is(err, ErrPartitionMismatch) {
		t.Fatalf("opening partition 3's file as 4: %v, want ErrPartitionMismatch", err)
	}
	p, err = Open(path, 3, Options{})
	if err != nil {
		t.Fatalf("reopening as 3: %v", err)
	}
	_ = p.Close()
}

func TestUpdateNilFn(t *testing.T) {
	p := openTest(t, Options{})
	if err := p.Update(context.Background(), nil); err == nil {
		t.Fatal("nil fn accepted")
	}
}

func TestSyncByDefault(t *testing.T) {
	if p := openTest(t, Options{}); p.db.NoSync {
		t.Error("a partition opened with zero Options does not fsync its commits")
	}
	if p := openTest(t, Options{NoSync: true}); !p.db.NoSync {
		t.Error("Options.NoSync not passed to bbolt")
	}
}
