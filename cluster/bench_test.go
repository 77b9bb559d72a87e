package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// Benchmarks of the cluster layer, with the test counter actor: what a
// request costs when its actor is on another node, what one node and three
// nodes of this machine get through, and how long a partition takes to move.
// Run them with `go test -run '^$' -bench . ./cluster` (not under -race:
// several nodes in one process).

func benchCluster(b *testing.B, nodes int, parts uint32) *testCluster {
	b.Helper()
	if raceEnabled {
		b.Skip("several actor transports in one process race on grpc-go's global logger")
	}
	tc := &testCluster{t: b, tr: newTracker(b), parts: parts,
		log: slog.New(slog.DiscardHandler), tune: func(*memberlist.Config) {}}
	for range nodes {
		dir := b.TempDir()
		var join []string
		if len(tc.nodes) > 0 {
			join = []string{tc.gossipAddr(0)}
		}
		n, err := startNode(tc.config(dir, join, nodeOpts{}))
		if err != nil {
			b.Fatal(err)
		}
		tc.nodes = append(tc.nodes, n)
		tc.dirs = append(tc.dirs, dir)
		b.Cleanup(func() { _ = n.Stop(context.Background()) })
	}
	deadline := time.Now().Add(30 * time.Second)
	for tc.unsettled() != "" {
		if time.Now().After(deadline) {
			b.Fatalf("cluster did not settle: %s", tc.unsettled())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return tc
}

// BenchmarkRemoteHop compares a request to an actor on the node asked with
// one whose actor is on another node (TLS, gRPC, protobuf both ways).
func BenchmarkRemoteHop(b *testing.B) {
	tc := benchCluster(b, 2, 16)
	a, other := tc.nodes[0], tc.nodes[1]
	local, remote := userOnB(b, a, a), userOnB(b, a, other)
	for _, c := range []struct{ name, user string }{{"local", local}, {"remote", remote}} {
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			lat := make([]time.Duration, 0, b.N)
			for b.Loop() {
				start := time.Now()
				if _, err := a.Request(ctx, &pb.AccountQuery{UserId: c.user}); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			reportPercentiles(b, lat)
		})
	}
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

func userOnB(b *testing.B, via, owner *Node) string {
	v := via.mem.view.Load()
	for i := range 100000 {
		u := fmt.Sprintf("@bench%d:cluster.test", i)
		if v.owners[storage.PartitionOf(pb.UserIdentity(u), via.cfg.Partitions)] == owner.id {
			return u
		}
	}
	b.Fatal("no user found")
	return ""
}

// BenchmarkThroughput drives reads and durable writes of 1000 actors from
// 64 concurrent callers spread over every node, for one node and for three
// nodes on this one machine: the difference is the price of the hops (and
// of three processes' worth of work on the same cores).
func BenchmarkThroughput(b *testing.B) {
	for _, nodes := range []int{1, 3} {
		// One cluster for both runs and all their rounds: settling and
		// first connections stay out of the measurement.
		tc := benchCluster(b, nodes, 16)
		for _, op := range []string{"read", "write"} {
			b.Run(fmt.Sprintf("%dnodes/%s", nodes, op), func(b *testing.B) {
				ctx := context.Background()
				var next atomic.Int64
				b.SetParallelism(32) // 64 callers on this machine's 2 cores
				b.RunParallel(func(pb_ *testing.PB) {
					for pb_.Next() {
						i := next.Add(1)
						n := tc.nodes[int(i)%len(tc.nodes)]
						user := fmt.Sprintf("@t%d:cluster.test", i%1000)
						var err error
						if op == "read" {
							_, err = n.Request(ctx, &pb.AccountQuery{UserId: user})
						} else {
							_, err = n.Request(ctx, &pb.AccountUpdate{UserId: user})
						}
						if err != nil {
							b.Fatal(err)
						}
					}
				})
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
			})
		}
	}
}

// BenchmarkHandoff moves one partition of a given size from a node that
// leaves to the one that stays: drain, seal, snapshot, stream, checksum,
// install, serve.
func BenchmarkHandoff(b *testing.B) {
	for _, mb := range []int{1, 16, 64, 256} {
		b.Run(fmt.Sprintf("%dMiB", mb), func(b *testing.B) {
			var total time.Duration
			for range b.N {
				tc := benchCluster(b, 1, 1)
				a := tc.nodes[0]
				part, _ := a.Store().Partition(0)
				fill(b, part, mb<<20)
				// The second node gets an ID that placement ranks below
				// the first for partition 0, so that the partition stays
				// put when it joins, and moves when the first leaves.
				dir := b.TempDir()
				for i := 0; ; i++ {
					id := fmt.Sprintf("bench-%d", i)
					if ownerOf(0, []string{a.id, id}) == a.id {
						if err := os.WriteFile(filepath.Join(dir, nodeIDFile), []byte(id+"\n"), 0o600); err != nil {
							b.Fatal(err)
						}
						break
					}
				}
				n, err := startNode(tc.config(dir, []string{tc.gossipAddr(0)}, nodeOpts{}))
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = n.Stop(context.Background()) })
				for !n.mem.view.Load().alive[a.id] || !a.mem.view.Load().alive[n.id] {
					time.Sleep(10 * time.Millisecond)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
				if err := a.Leave(ctx); err != nil {
					b.Fatal(err)
				}
				cancel()
				// From the moment requests for the partition started to
				// wait on the old owner to the new owner's "serving"; the
				// gossip around a leave is not counted.
				total += time.Duration(a.states[0].lastHandoff.Load())
			}
			b.ReportMetric(total.Seconds()/float64(b.N), "s/handoff")
			b.ReportMetric(float64(mb)/(total.Seconds()/float64(b.N)), "MiB/s")
		})
	}
}

// fill writes about size bytes into p, in 1 MiB transactions of 64 KiB
// values.
func fill(b *testing.B, p *storage.Partition, size int) {
	b.Helper()
	val := make([]byte, 64<<10)
	for i := range val {
		val[i] = byte(i * 7)
	}
	for written := 0; written < size; {
		err := p.Update(context.Background(), func(tx *bbolt.Tx) error {
			bk, err := tx.CreateBucketIfNotExists([]byte("user/@filler:cluster.test"))
			if err != nil {
				return err
			}
			for range 16 {
				if err := bk.Put(storage.U64Key(uint64(written)), val); err != nil {
					return err
				}
				written += len(val)
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}
