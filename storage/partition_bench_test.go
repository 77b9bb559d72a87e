package storage

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"go.etcd.io/bbolt"
)

// The benchmarks commit with real fsync: ns/op is the cost of one durable
// Update, commits/op how many fsync'd transactions each Update paid for.

var benchValue = bytes.Repeat([]byte{'v'}, 100)

func benchPut(key uint64) func(*bbolt.Tx) error {
	return func(tx *bbolt.Tx) error {
		b, err := Bucket(tx, true, testBucket)
		if err != nil {
			return err
		}
		return b.Put(U64Key(key), benchValue)
	}
}

// benchPartitions opens n partitions in b.TempDir() and counts their commits.
func benchPartitions(b *testing.B, n int) ([]*Partition, *atomic.Int64) {
	b.Helper()
	commits := new(atomic.Int64)
	opts := Options{OnCommit: func(CommitStats) { commits.Add(1) }}
	dir := b.TempDir()
	parts := make([]*Partition, n)
	for i := range parts {
		p, err := Open(filepath.Join(dir, fmt.Sprintf("p-%04d.db", i)), uint32(i), opts)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = p.Close() })
		parts[i] = p
	}
	return parts, commits
}

// BenchmarkUpdateSerial is one writer: every Update is its own commit.
func BenchmarkUpdateSerial(b *testing.B) {
	parts, commits := benchPartitions(b, 1)
	p := parts[0]
	ctx := context.Background()
	var i uint64
	b.ResetTimer()
	for b.Loop() {
		if err := p.Update(ctx, benchPut(i)); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(commits.Load())/float64(b.N), "commits/op")
}

// BenchmarkUpdateParallel is 32 writers (16 per CPU on 2 CPUs) on one
// partition: concurrent Updates share commits.
func BenchmarkUpdateParallel(b *testing.B) {
	parts, commits := benchPartitions(b, 1)
	p := parts[0]
	ctx := context.Background()
	var next atomic.Uint64
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := p.Update(ctx, benchPut(next.Add(1))); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(commits.Load())/float64(b.N), "commits/op")
}

// BenchmarkUpdatePartitions is 64 writers spread over P partitions, each
// Update going to the next partition in turn, as actors of many partitions
// would: more partitions mean more, smaller commits, each paying its own
// fsync.
func BenchmarkUpdatePartitions(b *testing.B) {
	for _, n := range []int{1, 4, 16, 64} {
		b.Run(fmt.Sprintf("P=%d", n), func(b *testing.B) {
			parts, commits := benchPartitions(b, n)
			ctx := context.Background()
			var next, writer atomic.Uint64
			b.SetParallelism(32) // 64 writers on 2 CPUs
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				w := writer.Add(1)
				for j := w; pb.Next(); j++ {
					if err := parts[j%uint64(n)].Update(ctx, benchPut(next.Add(1))); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(commits.Load())/float64(b.N), "commits/op")
		})
	}
}
