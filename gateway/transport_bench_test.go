package gateway_test

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/shoal-chat/shoal/gateway"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// BenchmarkTransports compares HTTP/1.1, HTTP/2 (both TLS over TCP) and
// HTTP/3 (QUIC) on one node, one client each:
//
//	send/X      PUT /send on a warm connection
//	syncwake/X  a /sync long-poll is parked; from the start of a /send on
//	            the same transport to the long-poll's answer
//	connect/X   a new client: handshake(s) plus GET /versions
//
// Compare the medians of -count 5 across X.
func BenchmarkTransports(b *testing.B) {
	// No fsync: the subject is the transport; storage commits have their
	// own benchmarks (storage/partition_bench_test.go).
	node := shoaltest.Start(b, shoaltest.WithTLS, func(cfg *gateway.NodeConfig) { cfg.Storage.NoSync = true })
	base := "https://" + node.TLSAddrs[0]
	roots := node.TLSRoots()
	setup := newTransports(roots)
	tok := register(b, setup.h2, base, "bench")
	status, created, _ := jsonCall(b, setup.h2, "POST", base+"/_matrix/client/v3/createRoom", tok, map[string]any{})
	if status != 200 {
		b.Fatalf("createRoom: %d %v", status, created)
	}
	setup.close()
	send := base + "/_matrix/client/v3/rooms/" + created["room_id"].(string) + "/send/m.room.message/"
	msg := map[string]any{"msgtype": "m.text", "body": "bench"}
	names := []string{"h1", "h2", "h3"}
	txn := 0

	for _, name := range names {
		b.Run("send/"+name, func(b *testing.B) {
			tr := newTransports(roots)
			defer tr.close()
			rt := tr.byName(name)
			jsonCall(b, rt, "GET", base+"/_matrix/client/versions", "", nil) // warm the connection
			b.ResetTimer()
			for range b.N {
				txn++
				if status, body, _ := jsonCall(b, rt, "PUT", send+strconv.Itoa(txn), tok, msg); status != 200 {
					b.Fatalf("send: %d %v", status, body)
				}
			}
		})
	}

	for _, name := range names {
		b.Run("syncwake/"+name, func(b *testing.B) {
			tr := newTransports(roots)
			defer tr.close()
			rt := tr.byName(name)
			_, first, _ := jsonCall(b, rt, "GET", base+"/_matrix/client/v3/sync?timeout=0", tok, nil)
			since := first["next_batch"].(string)
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				woke := make(chan string, 1)
				go func() {
					status, body, _ := jsonCall(b, rt, "GET", base+"/_matrix/client/v3/sync?timeout=30000&since="+since, tok, nil)
					if status != http.StatusOK {
						b.Errorf("sync: %d %v", status, body)
					}
					next, _ := body["next_batch"].(string)
					woke <- next
				}()
				time.Sleep(5 * time.Millisecond) // let the long-poll park
				txn++
				b.StartTimer()
				if status, body, _ := jsonCall(b, rt, "PUT", send+strconv.Itoa(txn), tok, msg); status != 200 {
					b.Fatalf("send: %d %v", status, body)
				}
				since = <-woke
			}
		})
	}

	for _, name := range names {
		b.Run("connect/"+name, func(b *testing.B) {
			for range b.N {
				tr := newTransports(roots)
				if status, _, _ := jsonCall(b, tr.byName(name), "GET", base+"/_matrix/client/versions", "", nil); status != 200 {
					b.Fatalf("versions: %d", status)
				}
				tr.close()
			}
		})
	}
}
