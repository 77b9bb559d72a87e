package gateway_test

import (
	"crypto/ed25519"
	"fmt"
	"testing"
	"time"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/gateway"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// BenchmarkFedFanOut50 measures one PDU going out to 50 servers: each op
// queues it for 50 destinations (50 HTTPS peers on loopback, each checking
// the X-Matrix signature) and waits until all 50 have accepted it.
func BenchmarkFedFanOut50(b *testing.B) {
	const peers = 50
	fed := shoaltest.NewFederation(b)
	a := fed.Start(b, "a.test")
	ident, err := gateway.LoadOrCreateSigningKey(a.DataDir(), "a.test")
	if err != nil {
		b.Fatal(err)
	}
	pub := ident.PrivateKey.Public().(ed25519.PublicKey)
	ps := make([]*fqPeer, peers)
	for i := range ps {
		ps[i] = startFQPeer(b, fed, fmt.Sprintf("p%d.test", i), "a.test", pub, 0)
	}
	send := func(n int) {
		pdu := fmt.Appendf(nil, `{"event_id":"$%d","n":%d,"content":{"body":"hello"}}`, n, n)
		// As a room actor does after a commit: fire and forget.
		for i := range ps {
			a.Cluster.Send(&pb.FedEnqueue{Destination: ps[i].name, RoomId: "!r:a.test", Pdus: [][]byte{pdu}})
		}
	}
	wait := func(target int) {
		deadline := time.After(30 * time.Second)
		for _, p := range ps {
			for p.received() < target {
				select {
				case <-p.notify:
				case <-deadline:
					b.Fatalf("%s received %d PDUs, want %d", p.name, p.received(), target)
				}
			}
		}
	}
	// Warm up: discovery and TLS connections to every peer.
	send(-1)
	wait(1)
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		send(i)
		wait(i + 2)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(peers*b.N)/elapsed.Seconds(), "received/s")
	for _, p := range ps {
		p.mu.Lock()
		if len(p.problems) > 0 {
			b.Fatalf("%s saw bad requests: %v", p.name, p.problems)
		}
		p.mu.Unlock()
	}
}
