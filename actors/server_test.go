package actors_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/cluster"
	"github.com/shoal-chat/shoal/eventgraph"
)

// fakeFetcher stands in for the network: each server's key response, a
// gate that holds fetches until the test opens it, and call counts.
type fakeFetcher struct {
	mu          sync.Mutex
	keys        map[string]ed25519.PrivateKey
	notary      map[string][]byte // server → the notary's whole answer
	gate        chan struct{}
	direct      atomic.Int32
	notaryCalls atomic.Int32
}

func (f *fakeFetcher) response(name string) ([]byte, error) {
	f.mu.Lock()
	priv, ok := f.keys[name]
	f.mu.Unlock()
	if !ok {
		return nil, errors.New("unreachable")
	}
	body, _ := json.Marshal(map[string]any{
		"server_name":    name,
		"valid_until_ts": time.Now().Add(time.Hour).UnixMilli(),
		"verify_keys":    map[string]any{"ed25519:k": map[string]string{"key": base64.RawStdEncoding.EncodeToString(priv.Public().(ed25519.PublicKey))}},
	})
	return eventgraph.SignJSON(body, name, "ed25519:k", priv)
}

func (f *fakeFetcher) ServerKeys(ctx context.Context, name string) ([]byte, error) {
	f.direct.Add(1)
	if f.gate != nil {
		select {
		case <-f.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return f.response(name)
}

func (f *fakeFetcher) NotaryKeys(_ context.Context, notary, name string) ([]byte, error) {
	f.notaryCalls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if b, ok := f.notary[name]; ok {
		return b, nil
	}
	return nil, errors.New("notary knows nothing")
}

func startServerNode(t *testing.T, cfg actors.ServerActorConfig) *cluster.Node {
	t.Helper()
	n, err := cluster.Start(cluster.Config{
		DataDir: t.TempDir(), Partitions: 4,
		Server: &actors.ServerIdentity{ServerName: testServer, KeyID: "ed25519:test", PrivateKey: ed25519.NewKeyFromSeed(make([]byte, 32))},
		Kinds:  map[string]cluster.Producer{pb.KindServer: actors.NewServerKind(cfg)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = n.Stop(ctx)
	})
	return n
}

func keysQuery(t *testing.T, n *cluster.Node, q *pb.ServerKeysQuery) *pb.ServerKeysReply {
	t.Helper()
	res, err := n.Request(context.Background(), q)
	if err != nil {
		t.Fatalf("query %s: %v", q.ServerName, err)
	}
	return res.(*pb.ServerKeysReply)
}

// Queries that need keys wait for one shared fetch, which runs off the
// mailbox: the actor answers cached-only queries while it is in flight.
func TestServerActorSharedFetchStaysResponsive(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	f := &fakeFetcher{keys: map[string]ed25519.PrivateKey{"b.test": priv}, gate: make(chan struct{})}
	n := startServerNode(t, actors.ServerActorConfig{Fetcher: f})
	var wg sync.WaitGroup
	replies := make([]*pb.ServerKeysReply, 5)
	for i := range replies {
		wg.Go(func() {
			res, err := n.Request(context.Background(), &pb.ServerKeysQuery{ServerName: "b.test", KeyIds: []string{"ed25519:k"}})
			if err != nil {
				t.Errorf("query: %v", err)
				return
			}
			replies[i] = res.(*pb.ServerKeysReply)
		})
	}
	for f.direct.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	// The fetch is blocked on the network; the actor still answers.
	if rep := keysQuery(t, n, &pb.ServerKeysQuery{ServerName: "b.test", CachedOnly: true}); len(rep.Keys) != 0 {
		t.Fatalf("keys before the fetch: %v", rep.Keys)
	}
	close(f.gate)
	wg.Wait()
	for i, rep := range replies {
		if rep == nil || len(rep.Keys) != 1 || rep.Keys[0].KeyId != "ed25519:k" || len(rep.Responses) != 1 {
			t.Fatalf("reply %d: %v", i, rep)
		}
	}
	if c := f.direct.Load(); c != 1 {
		t.Fatalf("%d fetches, want 1", c)
	}
	// Known now: no fetch.
	keysQuery(t, n, &pb.ServerKeysQuery{ServerName: "b.test", KeyIds: []string{"ed25519:k"}})
	if c := f.direct.Load(); c != 1 {
		t.Fatalf("%d fetches after a cached query, want 1", c)
	}
}

// A failed fetch is not repeated within RetryAfter; a notary's answer is
// used only when signed by the key configured for it.
func TestServerActorFailureAndNotary(t *testing.T) {
	_, cpriv, _ := ed25519.GenerateKey(rand.Reader)
	_, npriv, _ := ed25519.GenerateKey(rand.Reader)
	f := &fakeFetcher{keys: map[string]ed25519.PrivateKey{"c.test": cpriv}, notary: map[string][]byte{}}
	entry, err := f.response("c.test")
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	delete(f.keys, "c.test") // c.test itself is down from now on
	unsigned, _ := json.Marshal(map[string]any{"server_keys": []json.RawMessage{entry}})
	f.notary["c.test"] = unsigned
	f.mu.Unlock()
	notary := actors.Notary{ServerName: "n.test", Keys: map[string]ed25519.PublicKey{"ed25519:n": npriv.Public().(ed25519.PublicKey)}}
	n := startServerNode(t, actors.ServerActorConfig{Fetcher: f, Notaries: []actors.Notary{notary}, RetryAfter: time.Hour})

	if rep := keysQuery(t, n, &pb.ServerKeysQuery{ServerName: "c.test"}); len(rep.Keys) != 0 {
		t.Fatalf("keys from an unsigned notary answer: %v", rep.Keys)
	}
	if d, nq := f.direct.Load(), f.notaryCalls.Load(); d != 1 || nq != 1 {
		t.Fatalf("direct %d, notary %d", d, nq)
	}
	keysQuery(t, n, &pb.ServerKeysQuery{ServerName: "c.test"})
	if d := f.direct.Load(); d != 1 {
		t.Fatalf("failed fetch repeated at once (%d)", d)
	}

	// Another server, whose notary answer carries the notary's signature.
	_, dpriv, _ := ed25519.GenerateKey(rand.Reader)
	f.mu.Lock()
	f.keys["d.test"] = dpriv
	f.mu.Unlock()
	dEntry, _ := f.response("d.test")
	f.mu.Lock()
	delete(f.keys, "d.test")
	signed, _ := eventgraph.SignJSON(dEntry, "n.test", "ed25519:n", npriv)
	f.notary["d.test"], _ = json.Marshal(map[string]any{"server_keys": []json.RawMessage{signed}})
	f.mu.Unlock()
	rep := keysQuery(t, n, &pb.ServerKeysQuery{ServerName: "d.test", KeyIds: []string{"ed25519:k"}})
	if len(rep.Keys) != 1 || !ed25519.PublicKey(rep.Keys[0].Key).Equal(dpriv.Public()) {
		t.Fatalf("keys via notary: %v", rep.Keys)
	}
	// A query naming no valid server is refused.
	if _, err := n.Request(context.Background(), &pb.ServerKeysQuery{ServerName: "bad name"}); err == nil {
		t.Fatal("invalid server name accepted")
	}
}
