package actors_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-chat/shoal/actors/pb"
)

// BenchmarkRoomSearch measures one room's /search part on a corpus of
// SHOAL_SEARCH_CORPUS messages (default 5000) drawn from a 2000-word
// vocabulary with a Zipf distribution, for a common word, a rare word and
// a two-word query. Indexing the corpus is logged; the reported
// median-µs is the median latency of the searches.
func BenchmarkRoomSearch(b *testing.B) {
	n := 5000
	if v, err := strconv.Atoi(os.Getenv("SHOAL_SEARCH_CORPUS")); err == nil && v > 0 {
		n = v
	}
	tn := startNode(b)
	alice := user("alice")
	room := tn.createRoom("11", alice)
	words := make([]string, 2000)
	for i := range words {
		words[i] = fmt.Sprintf("w%dx", i)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	zipf := rand.NewZipf(rng, 1.1, 1, uint64(len(words)-1))
	var wg sync.WaitGroup
	bodies := make(chan string, 64)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for body := range bodies {
				if _, err := tn.request(&pb.SendEvent{RoomId: room, Sender: alice, Type: "m.room.message",
					Content: raw(map[string]string{"msgtype": "m.text", "body": body})}); err != nil {
					panic(err)
				}
			}
		}()
	}
	for range n {
		var sb strings.Builder
		for j := range 12 {
			if j > 0 {
				sb.WriteByte(' ')
			}
			sb.WriteString(words[zipf.Uint64()])
		}
		bodies <- sb.String()
	}
	close(bodies)
	wg.Wait()
	// Searches index the backlog a slice at a time; one over the end of
	// the corpus comes back fast.
	start := time.Now()
	searches := 0
	for {
		t0 := time.Now()
		if _, err := tn.request(&pb.RoomSearch{RoomId: room, UserId: alice, Term: "w0x", Limit: 10}); err != nil {
			b.Fatal(err)
		}
		searches++
		if time.Since(t0) < 100*time.Millisecond {
			break
		}
	}
	b.Logf("corpus %d messages: indexed in %v over %d searches", n, time.Since(start), searches)
	for _, q := range []struct{ name, term string }{{"common", "w0x"}, {"rare", "w1500x"}, {"two-words", "w3x w7x"}} {
		b.Run(q.name, func(b *testing.B) {
			var lat []time.Duration
			for b.Loop() {
				t0 := time.Now()
				if _, err := tn.request(&pb.RoomSearch{RoomId: room, UserId: alice, Term: q.term, Limit: 10}); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "median-µs")
		})
	}
}
