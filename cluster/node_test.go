package cluster

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
)

// counter is a test actor kind: it persists a counter per identity and
// answers AccountUpdate with its value; key "panic" makes it panic.
type counter struct {
	gate   chan struct{}
	env    *actors.Env
	value  uint64
	starts *atomic.Int64
	live   *atomic.Int64
}

func (c *counter) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		c.starts.Add(1)
		if n := c.live.Add(1); n > 1 {
			panic(fmt.Sprintf("two live activations of %s", c.env.Identity))
		}
		_ = c.env.Partition.View(func(tx *bbolt.Tx) error {
			if b := tx.Bucket([]byte(c.env.Identity)); b != nil {
				if v := b.Get([]byte("n")); v != nil {
					c.value = binary.BigEndian.Uint64(v)
				}
			}
			return nil
		})
		ctx.SetReceiveTimeout(c.env.IdleTimeout)
	case *actor.Stopped, *actor.Restarting:
		c.live.Add(-1)
	case *actor.ReceiveTimeout:
		ctx.Send(ctx.Parent(), &pb.Passivate{Identity: c.env.Identity})
	case *pb.AccountUpdate:
		if m.Kind == "panic" {
			panic("asked to")
		}
		if m.Kind == "block" {
			<-c.gate // hold the actor busy so its mailbox fills
			return
		}
		next := c.value + 1
		err := c.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte(c.env.Identity))
			if err != nil {
				return err
			}
			return b.Put([]byte("n"), binary.BigEndian.AppendUint64(nil, next))
		})
		if err != nil {
			ctx.Respond(actors.ToPB(err))
			return
		}
		c.value = next
		ctx.Respond(&pb.AccountUpdateReply{Json: []byte(fmt.Sprint(next))})
	}
}

type testKinds struct {
	starts, live atomic.Int64
	gate         chan struct{} // "block" requests wait on it
}

func startTestNode(t *testing.T, dir string, k *testKinds, idle time.Duration) *Node {
	t.Helper()
	priv := ed25519.NewKeyFromSeed(make([]byte, 32))
	n, err := Start(Config{
		DataDir:     dir,
		Partitions:  4,
		IdleTimeout: idle,
		Server:      &actors.ServerIdentity{ServerName: "test", KeyID: "ed25519:t", PrivateKey: priv},
		Kinds: map[string]Producer{
			pb.KindUser: func(env *actors.Env) actor.Actor {
				return &counter{env: env, starts: &k.starts, live: &k.live, gate: k.gate}
			},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func incr(t *testing.T, n *Node, user string) uint64 {
	t.Helper()
	res, err := n.Request(context.Background(), &pb.AccountUpdate{UserId: user})
	if err != nil {
		t.Fatalf("request %s: %v", user, err)
	}
	var v uint64
	fmt.Sscan(string(res.(*pb.AccountUpdateReply).Json), &v)
	return v
}

func TestActivationPersistsAndSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	k := &testKinds{}
	n := startTestNode(t, dir, k, time.Minute)
	for i := 1; i <= 3; i++ {
		if got := incr(t, n, "@a:test"); got != uint64(i) {
			t.Fatalf("incr %d: got %d", i, got)
		}
	}
	if err := n.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	n = startTestNode(t, dir, k, time.Minute)
	defer n.Stop(context.Background())
	if got := incr(t, n, "@a:test"); got != 4 {
		t.Fatalf("after restart: got %d, want 4", got)
	}
}

// Many concurrent requests while the actor keeps passivating: every
// increment lands exactly once and there are never two live activations
// (the counter actor panics if there are).
func TestSingleActivationUnderPassivation(t *testing.T) {
	k := &testKinds{}
	n := startTestNode(t, t.TempDir(), k, 5*time.Millisecond)
	defer n.Stop(context.Background())
	const rounds, workers, each = 5, 8, 5
	errs := make(chan error, rounds*workers*each)
	for r := 0; r < rounds; r++ {
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < each; i++ {
					if _, err := n.Request(context.Background(), &pb.AccountUpdate{UserId: "@busy:test"}); err != nil {
						errs <- err
					}
				}
			}()
			// Stagger the senders so some requests race a passivation.
			time.Sleep(time.Duration(w) * time.Millisecond)
		}
		wg.Wait()
		time.Sleep(20 * time.Millisecond) // idle: it passivates
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := incr(t, n, "@busy:test"); got != rounds*workers*each+1 {
		t.Fatalf("got %d, want %d", got, rounds*workers*each+1)
	}
	if k.starts.Load() < 2 {
		t.Fatalf("expected the actor to passivate and reactivate, started %d times", k.starts.Load())
	}
}

func TestPanicRepliesWithErrorAndReloads(t *testing.T) {
	k := &testKinds{}
	n := startTestNode(t, t.TempDir(), k, time.Minute)
	defer n.Stop(context.Background())
	incr(t, n, "@p:test")
	_, err := n.Request(context.Background(), &pb.AccountUpdate{UserId: "@p:test", Kind: "panic"})
	me, ok := err.(*actors.MatrixError)
	if !ok || me.ErrCode != "M_UNKNOWN" || me.Status != 500 {
		t.Fatalf("panic: got %v, want M_UNKNOWN 500", err)
	}
	if got := incr(t, n, "@p:test"); got != 2 {
		t.Fatalf("after panic: got %d, want 2 (state reloaded from storage)", got)
	}
}

func TestUnknownKindAndPartitionCountFixed(t *testing.T) {
	dir := t.TempDir()
	k := &testKinds{}
	n := startTestNode(t, dir, k, time.Minute)
	_, err := n.Request(context.Background(), &pb.RoomQuery{RoomId: "!x:test"})
	if me, ok := err.(*actors.MatrixError); !ok || me.Status != 404 {
		t.Fatalf("unknown kind: got %v", err)
	}
	n.Stop(context.Background())
	_, err = Start(Config{DataDir: dir, Partitions: 8, Kinds: map[string]Producer{}})
	if err == nil {
		t.Fatal("opened a data dir with another partition count")
	}
}

func TestRequestHonoursContext(t *testing.T) {
	k := &testKinds{}
	n := startTestNode(t, t.TempDir(), k, time.Minute)
	defer n.Stop(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	time.Sleep(time.Millisecond)
	if _, err := n.Request(ctx, &pb.AccountUpdate{UserId: "@c:test"}); err == nil {
		t.Fatal("expired context: want an error")
	}
}

// The mailbox depth gauge counts what waits behind a busy actor and goes
// back to zero once it has caught up.
func TestQueuedMessages(t *testing.T) {
	k := &testKinds{gate: make(chan struct{})}
	n := startTestNode(t, t.TempDir(), k, time.Minute)
	defer n.Stop(context.Background())
	n.Send(&pb.AccountUpdate{UserId: "@slow:test", Kind: "block"})
	for i := 0; i < 10; i++ {
		n.Send(&pb.AccountUpdate{UserId: "@slow:test"})
	}
	deadline := time.Now().Add(10 * time.Second)
	for n.QueuedMessages() < 10 {
		if time.Now().After(deadline) {
			t.Fatalf("queued %d, want at least 10 behind the blocked message", n.QueuedMessages())
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(k.gate)
	if got := incr(t, n, "@slow:test"); got != 11 {
		t.Fatalf("counter %d after the backlog, want 11", got)
	}
	for n.QueuedMessages() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("queued %d after the backlog drained", n.QueuedMessages())
		}
		time.Sleep(5 * time.Millisecond)
	}
}
