package actors_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/cluster"
)

// startFedTxnNode runs a one-node cluster with the inbound federation
// actors, on dir, with clock now.
func startFedTxnNode(t *testing.T, dir string, now func() time.Time) *cluster.Node {
	t.Helper()
	n, err := cluster.Start(cluster.Config{
		DataDir:    dir,
		Partitions: 2,
		Server: &actors.ServerIdentity{ServerName: testServer, KeyID: "ed25519:test",
			PrivateKey: ed25519.NewKeyFromSeed(make([]byte, 32))},
		Kinds: map[string]cluster.Producer{pb.KindFedTxn: actors.NewFedTxn},
		Now:   now,
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func stopFedTxnNode(t *testing.T, n *cluster.Node) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Stop(ctx); err != nil {
		t.Errorf("stop node: %v", err)
	}
}

func claimTxn(t *testing.T, n *cluster.Node, origin, txn string) *pb.FedTxnClaimReply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := n.Request(ctx, &pb.FedTxnClaim{Origin: origin, TxnId: txn})
	if err != nil {
		t.Fatalf("claim %s: %v", txn, err)
	}
	return res.(*pb.FedTxnClaimReply)
}

func completeTxn(t *testing.T, n *cluster.Node, origin, txn string, claim uint64, resp string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := n.Request(ctx, &pb.FedTxnComplete{Origin: origin, TxnId: txn, Claim: claim, Response: []byte(resp)}); err != nil {
		t.Fatalf("complete %s: %v", txn, err)
	}
}

// A transaction is processed once: the second claim gets the stored
// response, across a restart too; another origin's transaction of the same
// ID is its own.
func TestFedTxnClaimOnce(t *testing.T) {
	dir := t.TempDir()
	n := startFedTxnNode(t, dir, nil)
	c := claimTxn(t, n, "p.test", "t1")
	if c.Done || c.Claim == 0 {
		t.Fatalf("first claim: %+v", c)
	}
	completeTxn(t, n, "p.test", "t1", c.Claim, `{"pdus":{"$a":{}}}`)
	again := claimTxn(t, n, "p.test", "t1")
	if !again.Done || string(again.Response) != `{"pdus":{"$a":{}}}` {
		t.Fatalf("repeated claim: %+v", again)
	}
	if other := claimTxn(t, n, "q.test", "t1"); other.Done {
		t.Fatalf("another origin's txn taken as done: %+v", other)
	}
	stopFedTxnNode(t, n)
	n = startFedTxnNode(t, dir, nil)
	defer stopFedTxnNode(t, n)
	if after := claimTxn(t, n, "p.test", "t1"); !after.Done || string(after.Response) != `{"pdus":{"$a":{}}}` {
		t.Fatalf("claim after restart: %+v", after)
	}
}

// Copies arriving while the transaction is processed wait and get its
// response; a holder that gives up passes the claim to one waiter.
func TestFedTxnConcurrentCopiesWait(t *testing.T) {
	n := startFedTxnNode(t, t.TempDir(), nil)
	defer stopFedTxnNode(t, n)
	first := claimTxn(t, n, "p.test", "t1")
	results := make(chan *pb.FedTxnClaimReply, 3)
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			res, err := n.Request(ctx, &pb.FedTxnClaim{Origin: "p.test", TxnId: "t1"})
			if err != nil {
				t.Errorf("waiting claim: %v", err)
				return
			}
			results <- res.(*pb.FedTxnClaimReply)
		}()
	}
	time.Sleep(200 * time.Millisecond)
	select {
	case r := <-results:
		t.Fatalf("a copy was answered while the first was processed: %+v", r)
	default:
	}
	// The holder gives up: exactly one copy becomes the new holder.
	completeTxn(t, n, "p.test", "t1", first.Claim, "")
	var second *pb.FedTxnClaimReply
	select {
	case second = <-results:
	case <-time.After(5 * time.Second):
		t.Fatal("no waiter got the claim")
	}
	if second.Done || second.Claim == 0 || second.Claim == first.Claim {
		t.Fatalf("handed-over claim: %+v", second)
	}
	select {
	case r := <-results:
		t.Fatalf("two waiters answered after a give-up: %+v", r)
	case <-time.After(200 * time.Millisecond):
	}
	// The first holder's late completion counts for nothing.
	completeTxn(t, n, "p.test", "t1", first.Claim, `{"pdus":{"$stale":{}}}`)
	completeTxn(t, n, "p.test", "t1", second.Claim, `{"pdus":{}}`)
	wg.Wait()
	close(results)
	count := 0
	for r := range results {
		count++
		if !r.Done || string(r.Response) != `{"pdus":{}}` {
			t.Fatalf("waiter's answer: %+v", r)
		}
	}
	if count != 2 {
		t.Fatalf("%d waiters answered with the response, want 2", count)
	}
}

// Responses are kept for a day and at most 1000 per origin; claims are
// bounded per origin.
func TestFedTxnBounds(t *testing.T) {
	var mu sync.Mutex
	clock := time.Now()
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	n := startFedTxnNode(t, t.TempDir(), now)
	defer stopFedTxnNode(t, n)
	for i := range 1001 {
		id := fmt.Sprintf("t%d", i)
		c := claimTxn(t, n, "p.test", id)
		completeTxn(t, n, "p.test", id, c.Claim, `{"pdus":{}}`)
	}
	if c := claimTxn(t, n, "p.test", "t0"); c.Done {
		t.Fatal("the 1001st transaction did not push out the oldest")
	} else {
		completeTxn(t, n, "p.test", "t0", c.Claim, "")
	}
	if c := claimTxn(t, n, "p.test", "t1"); !c.Done {
		t.Fatal("a recent transaction was forgotten")
	}
	mu.Lock()
	clock = clock.Add(25 * time.Hour)
	mu.Unlock()
	if c := claimTxn(t, n, "p.test", "t1000"); c.Done {
		t.Fatal("a day-old transaction still answered from storage")
	}

	// Eight transactions in processing at once; the ninth is refused.
	for i := range 7 {
		claimTxn(t, n, "q.test", fmt.Sprintf("c%d", i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := n.Request(ctx, &pb.FedTxnClaim{Origin: "q.test", TxnId: "c7"})
	if err != nil {
		t.Fatalf("eighth claim: %v", err)
	}
	_, err = n.Request(ctx, &pb.FedTxnClaim{Origin: "q.test", TxnId: "c8"})
	var me *actors.MatrixError
	if !errors.As(err, &me) || me.Status != http.StatusTooManyRequests {
		t.Fatalf("ninth claim: %v", err)
	}
	// Claims silent for minutes lapse.
	mu.Lock()
	clock = clock.Add(4 * time.Minute)
	mu.Unlock()
	if c := claimTxn(t, n, "q.test", "c8"); c.Done || c.Claim == 0 {
		t.Fatalf("claim after the others lapsed: %+v", c)
	}
	_, err = n.Request(ctx, &pb.FedTxnClaim{Origin: "q.test", TxnId: ""})
	if !errors.As(err, &me) || me.ErrCode != "M_INVALID_PARAM" {
		t.Fatalf("empty transaction ID: %v", err)
	}
}
