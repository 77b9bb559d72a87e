package storage

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

var testBucket = []byte("t")

// openTest opens a fresh partition in t.TempDir() and closes it at cleanup.
func openTest(t testing.TB, opts Options) *Partition {
	t.Helper()
	p, err := Open(filepath.Join(t.TempDir(), "p.db"), 1, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func put(key []byte, value string) func(*bbolt.Tx) error {
	return func(tx *bbolt.Tx) error {
		b, err := Bucket(tx, true, testBucket)
		if err != nil {
			return err
		}
		return b.Put(key, []byte(value))
	}
}

func get(t testing.TB, p *Partition, key []byte) []byte {
	t.Helper()
	var v []byte
	if err := p.View(func(tx *bbolt.Tx) error {
		b, err := Bucket(tx, false, testBucket)
		if b != nil {
			v = bytes.Clone(b.Get(key))
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return v
}

// queued returns how many updates wait in p's queue.
func queued(p *Partition) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.queue)
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// blockCommitter runs an Update whose function waits until release is
// called, so that later Updates queue up behind it. The blocker writes key
// "blocker"; its Update's result is sent on the returned channel.
func blockCommitter(t testing.TB, p *Partition) (release func(), result <-chan error) {
	t.Helper()
	entered := make(chan struct{})
	gate := make(chan struct{})
	res := make(chan error, 1)
	go func() {
		res <- p.Update(context.Background(), func(tx *bbolt.Tx) error {
			close(entered)
			<-gate
			return put([]byte("blocker"), "x")(tx)
		})
	}()
	<-entered
	var once atomic.Bool
	release = func() {
		if once.CompareAndSwap(false, true) {
			close(gate)
		}
	}
	t.Cleanup(release)
	return release, res
}

// dump renders every bucket and key of tx's file, metadata included, as
// sorted lines, for comparing two files.
func dump(tx *bbolt.Tx) []string {
	var lines []string
	var walk func(prefix string, b *bbolt.Bucket)
	walk = func(prefix string, b *bbolt.Bucket) {
		_ = b.ForEach(func(k, v []byte) error {
			if v == nil {
				walk(fmt.Sprintf("%s/%q", prefix, k), b.Bucket(k))
				return nil
			}
			lines = append(lines, fmt.Sprintf("%s/%q=%q", prefix, k, v))
			return nil
		})
	}
	_ = tx.ForEach(func(name []byte, b *bbolt.Bucket) error {
		lines = append(lines, fmt.Sprintf("bucket %q", name))
		walk(fmt.Sprintf("%q", name), b)
		return nil
	})
	sort.Strings(lines)
	return lines
}
