package actors_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/cluster"
)

// sentTxn is one call of the fake sender.
type sentTxn struct {
	dest  string
	txnID string
	at    time.Time
	body  struct {
		Origin string            `json:"origin"`
		TS     int64             `json:"origin_server_ts"`
		PDUs   []json.RawMessage `json:"pdus"`
		EDUs   []struct {
			Type    string          `json:"edu_type"`
			Content json.RawMessage `json:"content"`
		} `json:"edus"`
	}
	err error
}

// fakeSender stands in for the network at the edge: it records every
// transaction, answers with answer (nil: success) and can hold calls at a
// gate until the test opens it.
type fakeSender struct {
	mu       sync.Mutex
	txns     []*sentTxn
	answer   func(n int, t *sentTxn) error // n counts calls from 1
	gate     chan struct{}
	inFlight atomic.Int32
	maxIn    atomic.Int32
}

func newFakeSender() *fakeSender { return &fakeSender{} }

func (f *fakeSender) SendTransaction(ctx context.Context, dest, txnID string, body []byte) ([]byte, error) {
	n := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for {
		m := f.maxIn.Load()
		if n <= m || f.maxIn.CompareAndSwap(m, n) {
			break
		}
	}
	t := &sentTxn{dest: dest, txnID: txnID, at: time.Now()}
	if err := json.Unmarshal(body, &t.body); err != nil {
		return nil, &actors.TxnError{Status: 400, Err: err}
	}
	f.mu.Lock()
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f.mu.Lock()
	if f.answer != nil {
		t.err = f.answer(len(f.txns)+1, t)
	}
	f.txns = append(f.txns, t)
	err := t.err
	f.mu.Unlock()
	return []byte(`{"pdus":{}}`), err
}

func (f *fakeSender) sent() []*sentTxn {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*sentTxn(nil), f.txns...)
}

// delivered returns the PDUs (their "n" field) of the successful
// transactions, in order.
func (f *fakeSender) delivered(t *testing.T) []int {
	t.Helper()
	var out []int
	for _, tx := range f.sent() {
		if tx.err != nil {
			continue
		}
		for _, p := range tx.body.PDUs {
			var v struct{ N int }
			if err := json.Unmarshal(p, &v); err != nil {
				t.Fatal(err)
			}
			out = append(out, v.N)
		}
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func startQueueNode(t *testing.T, dir string, cfg actors.FedQueueConfig, idle time.Duration) *cluster.Node {
	t.Helper()
	n, err := cluster.Start(cluster.Config{
		DataDir: dir, Partitions: 4, IdleTimeout: idle,
		Server: &actors.ServerIdentity{ServerName: testServer, KeyID: "ed25519:test", PrivateKey: ed25519.NewKeyFromSeed(make([]byte, 32))},
		Kinds:  map[string]cluster.Producer{pb.KindFedQueue: actors.NewFedQueueKind(cfg)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopNode(n) })
	return n
}

func stopNode(n *cluster.Node) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = n.Stop(ctx)
}

func pdu(n int) []byte { return fmt.Appendf(nil, `{"n":%d,"body":"<&>"}`, n) }

func enqueue(t *testing.T, n *cluster.Node, m *pb.FedEnqueue) {
	t.Helper()
	if _, err := n.Request(context.Background(), m); err != nil {
		t.Fatalf("enqueue: %v", err)
	}
}

// PDUs arrive in the order queued, one transaction at a time, at most 50
// PDUs and 100 EDUs each, byte for byte.
func TestFedQueueOrderAndBatching(t *testing.T) {
	f := newFakeSender()
	f.gate = make(chan struct{})
	n := startQueueNode(t, t.TempDir(), actors.FedQueueConfig{Sender: f}, 0)
	const pdus, edus = 130, 230
	for i := range pdus {
		enqueue(t, n, &pb.FedEnqueue{Destination: "b.test", RoomId: "!r:x", Pdus: [][]byte{pdu(i)}})
	}
	for i := range edus {
		enqueue(t, n, &pb.FedEnqueue{Destination: "b.test", Edus: []*pb.FedEDU{{EduType: "m.x", Content: fmt.Appendf(nil, `{"i":%d}`, i)}}})
	}
	close(f.gate)
	waitFor(t, "every EDU", func() bool {
		c := 0
		for _, tx := range f.sent() {
			c += len(tx.body.EDUs)
		}
		return c == edus
	})
	got := f.delivered(t)
	if len(got) != pdus {
		t.Fatalf("delivered %d PDUs, want %d", len(got), pdus)
	}
	for i, v := range got {
		if v != i {
			t.Fatalf("PDU %d is %d: out of order", i, v)
		}
	}
	ids := map[string]bool{}
	nextEDU := 0
	for _, tx := range f.sent() {
		if len(tx.body.PDUs) > 50 || len(tx.body.EDUs) > 100 {
			t.Fatalf("transaction of %d PDUs and %d EDUs", len(tx.body.PDUs), len(tx.body.EDUs))
		}
		if tx.body.Origin != testServer || tx.dest != "b.test" || tx.body.TS == 0 {
			t.Fatalf("transaction origin %q dest %q ts %d", tx.body.Origin, tx.dest, tx.body.TS)
		}
		if ids[tx.txnID] {
			t.Fatalf("txn ID %s used twice", tx.txnID)
		}
		ids[tx.txnID] = true
		for _, e := range tx.body.EDUs {
			if want := fmt.Sprintf(`{"i":%d}`, nextEDU); e.Type != "m.x" || string(e.Content) != want {
				t.Fatalf("EDU %s %s, want %s", e.Type, e.Content, want)
			}
			nextEDU++
		}
		for _, p := range tx.body.PDUs {
			if !json.Valid(p) || string(p) != string(pdu(int(mustN(t, p)))) {
				t.Fatalf("PDU changed on the way: %s", p)
			}
		}
	}
	// 130 PDUs need at least 3 transactions after the first.
	if len(f.sent()) < 4 {
		t.Fatalf("%d transactions", len(f.sent()))
	}
	if m := f.maxIn.Load(); m != 1 {
		t.Fatalf("%d transactions in flight at once", m)
	}
}

func mustN(t *testing.T, p []byte) int64 {
	var v struct{ N int64 }
	if err := json.Unmarshal(p, &v); err != nil {
		t.Fatal(err)
	}
	return v.N
}

// A failing transaction goes again with the same ID and items, after waits
// that double; once accepted, the next one follows.
func TestFedQueueRetryBackoff(t *testing.T) {
	f := newFakeSender()
	f.answer = func(n int, _ *sentTxn) error {
		if n <= 4 {
			return &actors.TxnError{Status: 503, Retry: true, Err: errors.New("busy")}
		}
		return nil
	}
	base := 40 * time.Millisecond
	n := startQueueNode(t, t.TempDir(), actors.FedQueueConfig{Sender: f, BackoffBase: base, BackoffMax: time.Second}, 0)
	enqueue(t, n, &pb.FedEnqueue{Destination: "b.test", RoomId: "!r:x", Pdus: [][]byte{pdu(0)}})
	waitFor(t, "the accepted attempt", func() bool { return len(f.sent()) >= 5 })
	enqueue(t, n, &pb.FedEnqueue{Destination: "b.test", RoomId: "!r:x", Pdus: [][]byte{pdu(1)}})
	waitFor(t, "the next transaction", func() bool { return len(f.sent()) >= 6 })
	s := f.sent()
	for i := 1; i < 5; i++ {
		if s[i].txnID != s[0].txnID || len(s[i].body.PDUs) != 1 || string(s[i].body.PDUs[0]) != string(pdu(0)) {
			t.Fatalf("attempt %d: txn %s %s, first was %s", i, s[i].txnID, s[i].body.PDUs, s[0].txnID)
		}
		// The wait after failure i is base·2^(i-1) plus jitter of at most a quarter.
		gap, want := s[i].at.Sub(s[i-1].at), base<<(i-1)
		if gap < want-2*time.Millisecond || gap > want*5/4+time.Second {
			t.Fatalf("wait before attempt %d: %v, want %v (+25%%)", i+1, gap, want)
		}
	}
	if s[5].txnID == s[0].txnID || string(s[5].body.PDUs[0]) != string(pdu(1)) {
		t.Fatalf("next transaction %s %s", s[5].txnID, s[5].body.PDUs)
	}
	// Backoff is reset: the next transaction went at once.
	if d := s[5].at.Sub(s[4].at); d > time.Second {
		t.Fatalf("next transaction waited %v", d)
	}
	if got := f.delivered(t); len(got) != 2 || got[0] != 0 || got[1] != 1 {
		t.Fatalf("delivered %v", got)
	}
}

func TestFedBackoffCapped(t *testing.T) {
	for failures := 1; failures < 40; failures++ {
		d := actors.FedBackoff(2*time.Second, time.Hour, failures)
		want := min(2*time.Second<<min(failures-1, 20), time.Hour)
		if d < want || d > want*5/4 {
			t.Fatalf("backoff after %d failures: %v, want %v..%v", failures, d, want, want*5/4)
		}
	}
}

// A transaction refused with a 4xx is dropped, not retried: the queue goes
// on with the next.
func TestFedQueueDropsRefusedTransaction(t *testing.T) {
	f := newFakeSender()
	f.gate = make(chan struct{})
	f.answer = func(n int, _ *sentTxn) error {
		if n == 1 {
			return &actors.TxnError{Status: 400, Err: errors.New("M_BAD_JSON")}
		}
		return nil
	}
	n := startQueueNode(t, t.TempDir(), actors.FedQueueConfig{Sender: f, BackoffBase: time.Hour}, 0)
	enqueue(t, n, &pb.FedEnqueue{Destination: "b.test", RoomId: "!r:x", Pdus: [][]byte{pdu(0)}})
	enqueue(t, n, &pb.FedEnqueue{Destination: "b.test", RoomId: "!r:x", Pdus: [][]byte{pdu(1)}})
	close(f.gate)
	waitFor(t, "the second transaction", func() bool { return len(f.sent()) >= 2 })
	time.Sleep(100 * time.Millisecond)
	s := f.sent()
	if len(s) != 2 || string(s[1].body.PDUs[0]) != string(pdu(1)) {
		t.Fatalf("sent %d transactions, second %s", len(s), s[len(s)-1].body.PDUs)
	}
}

// A queue whose transaction failed continues after the node restarts: the
// same transaction goes again, then the rest.
func TestFedQueueResumesAfterRestart(t *testing.T) {
	dir := t.TempDir()
	failing := newFakeSender()
	failing.answer = func(int, *sentTxn) error { return errors.New("connection refused") }
	n := startQueueNode(t, dir, actors.FedQueueConfig{Sender: failing, BackoffBase: time.Hour}, 0)
	enqueue(t, n, &pb.FedEnqueue{Destination: "b.test", RoomId: "!r:x", Pdus: [][]byte{pdu(0)}})
	waitFor(t, "the failed attempt", func() bool { return len(failing.sent()) == 1 })
	enqueue(t, n, &pb.FedEnqueue{Destination: "b.test", RoomId: "!r:x", Pdus: [][]byte{pdu(1)}})
	enqueue(t, n, &pb.FedEnqueue{Destination: "c.test", RoomId: "!r:x", Pdus: [][]byte{pdu(7)}})
	waitFor(t, "c.test's failed attempt", func() bool { return len(failing.sent()) == 2 })
	firstTxn := failing.sent()[0].txnID
	stopNode(n)

	// After the restart the queues are woken, and wait for the backoff
	// they persisted (an hour) before they send again.
	ok := newFakeSender()
	n2 := startQueueNode(t, dir, actors.FedQueueConfig{Sender: ok}, 0)
	time.Sleep(50 * time.Millisecond)
	if len(ok.sent()) != 0 {
		t.Fatal("a queue sent before it was woken")
	}
	woken, err := actors.WakeFedQueues(n2.Store(), n2)
	if err != nil || woken != 2 {
		t.Fatalf("woke %d queues: %v", woken, err)
	}
	time.Sleep(200 * time.Millisecond)
	if len(ok.sent()) != 0 {
		t.Fatal("the persisted backoff was not honoured")
	}
	stopNode(n2)

	// A node whose clock is past the retry time sends at once.
	later := func() time.Time { return time.Now().Add(2 * time.Hour) }
	n3, err := cluster.Start(cluster.Config{
		DataDir: dir, Partitions: 4, Now: later,
		Server: &actors.ServerIdentity{ServerName: testServer, KeyID: "ed25519:test", PrivateKey: ed25519.NewKeyFromSeed(make([]byte, 32))},
		Kinds:  map[string]cluster.Producer{pb.KindFedQueue: actors.NewFedQueueKind(actors.FedQueueConfig{Sender: ok})},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopNode(n3) })
	if woken, err := actors.WakeFedQueues(n3.Store(), n3); err != nil || woken != 2 {
		t.Fatalf("woke %d queues: %v", woken, err)
	}
	waitFor(t, "both destinations", func() bool { return len(ok.delivered(t)) == 3 })
	var toB []*sentTxn
	for _, tx := range ok.sent() {
		if tx.dest == "b.test" {
			toB = append(toB, tx)
		}
	}
	if len(toB) != 2 || toB[0].txnID != firstTxn || len(toB[0].body.PDUs) != 1 || mustN(t, toB[0].body.PDUs[0]) != 0 ||
		mustN(t, toB[1].body.PDUs[0]) != 1 {
		t.Fatalf("after restart b.test got %d transactions (first %s, want %s)", len(toB), toB[0].txnID, firstTxn)
	}
	waitFor(t, "nothing left to wake", func() bool {
		w, _ := actors.WakeFedQueues(n3.Store(), n3)
		return w == 0
	})
}

// EDUs with a coalescing key replace older queued ones; the one already in
// flight is not changed.
func TestFedQueueCoalescesEDUs(t *testing.T) {
	f := newFakeSender()
	f.gate = make(chan struct{})
	n := startQueueNode(t, t.TempDir(), actors.FedQueueConfig{Sender: f}, 0)
	typing := func(v bool) *pb.FedEDU {
		return &pb.FedEDU{EduType: "m.typing", Key: "!r:x @u:x", Content: fmt.Appendf(nil, `{"typing":%t}`, v)}
	}
	enqueue(t, n, &pb.FedEnqueue{Destination: "b.test", Edus: []*pb.FedEDU{typing(true)}})
	waitFor(t, "the first transaction in flight", func() bool { return f.inFlight.Load() == 1 })
	enqueue(t, n, &pb.FedEnqueue{Destination: "b.test", Edus: []*pb.FedEDU{typing(false)}})
	enqueue(t, n, &pb.FedEnqueue{Destination: "b.test", Edus: []*pb.FedEDU{{EduType: "m.receipt", Key: "k", Content: []byte(`{"a":1}`)}}})
	enqueue(t, n, &pb.FedEnqueue{Destination: "b.test", Edus: []*pb.FedEDU{typing(true)}})
	enqueue(t, n, &pb.FedEnqueue{Destination: "b.test", Edus: []*pb.FedEDU{{EduType: "m.receipt", Key: "k", Content: []byte(`{"a":2}`)}}})
	close(f.gate)
	waitFor(t, "two transactions", func() bool { return len(f.sent()) == 2 })
	time.Sleep(50 * time.Millisecond)
	s := f.sent()
	if len(s) != 2 || len(s[0].body.EDUs) != 1 || string(s[0].body.EDUs[0].Content) != `{"typing":true}` {
		t.Fatalf("first transaction: %+v", s[0].body.EDUs)
	}
	var got []string
	for _, e := range s[1].body.EDUs {
		got = append(got, e.Type+string(e.Content))
	}
	if want := []string{`m.typing{"typing":true}`, `m.receipt{"a":2}`}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("second transaction %v, want %v", got, want)
	}
}

// Over its bound the queue drops the oldest PDUs but keeps the newest of
// each room, for /get_missing_events to fill the gap from.
func TestFedQueueCatchUpBound(t *testing.T) {
	f := newFakeSender()
	f.gate = make(chan struct{})
	n := startQueueNode(t, t.TempDir(), actors.FedQueueConfig{Sender: f, MaxPDUs: 20, KeepPerRoom: 2}, 0)
	enqueue(t, n, &pb.FedEnqueue{Destination: "b.test", RoomId: "!quiet:x", Pdus: [][]byte{pdu(1000)}})
	waitFor(t, "the first transaction in flight", func() bool { return f.inFlight.Load() == 1 })
	enqueue(t, n, &pb.FedEnqueue{Destination: "b.test", RoomId: "!quiet:x", Pdus: [][]byte{pdu(1001)}})
	for i := range 60 {
		enqueue(t, n, &pb.FedEnqueue{Destination: "b.test", RoomId: "!busy:x", Pdus: [][]byte{pdu(i)}})
	}
	close(f.gate)
	waitFor(t, "the newest PDU", func() bool {
		got := f.delivered(t)
		return len(got) > 0 && got[len(got)-1] == 59
	})
	got := f.delivered(t)
	if len(got) > 20 || got[0] != 1000 || got[1] != 1001 {
		t.Fatalf("delivered %v: want at most 20, starting with the one in flight and !quiet's newest", got)
	}
	for i, v := range got[2:] {
		if i > 0 && v <= got[i+1] {
			t.Fatalf("out of order: %v", got)
		}
		if v < 60-20 {
			t.Fatalf("an old PDU (%d) survived the trim: %v", v, got)
		}
	}
}

// A queue with something to retry stays active through backoffs longer
// than the idle timeout (its retry timer dies with it: were it passivated,
// nothing would be retried here); an empty queue passivates; a queue for
// our own server sends nothing.
func TestFedQueueSelfAndPassivation(t *testing.T) {
	f := newFakeSender()
	f.answer = func(n int, _ *sentTxn) error {
		if n <= 2 {
			return errors.New("down")
		}
		return nil
	}
	idle, backoff := 100*time.Millisecond, 400*time.Millisecond
	n := startQueueNode(t, t.TempDir(), actors.FedQueueConfig{Sender: f, BackoffBase: backoff, BackoffMax: backoff}, idle)
	enqueue(t, n, &pb.FedEnqueue{Destination: "b.test", RoomId: "!r:x", Pdus: [][]byte{pdu(1)}})
	waitFor(t, "the first attempt", func() bool { return len(f.sent()) >= 1 })
	for len(f.delivered(t)) == 0 {
		if a := n.ActiveActors(); a != 1 {
			t.Fatalf("%d active actors while b.test's queue waits to retry, want 1", a)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if s := f.sent(); len(s) != 3 || s[2].at.Sub(s[0].at) < 2*backoff-5*time.Millisecond {
		t.Fatalf("%d attempts", len(s))
	}
	waitFor(t, "passivation", func() bool { return n.ActiveActors() == 0 })

	enqueue(t, n, &pb.FedEnqueue{Destination: testServer, RoomId: "!r:x", Pdus: [][]byte{pdu(0)}})
	waitFor(t, "the own server's queue to passivate", func() bool { return n.ActiveActors() == 0 })
	if s := f.sent(); len(s) != 3 {
		t.Fatalf("%d transactions, want 3 (nothing to %s)", len(s), testServer)
	}
}

// A wake with retry_now ends the backoff of a failing destination.
func TestFedQueueRetryNow(t *testing.T) {
	f := newFakeSender()
	f.answer = func(n int, _ *sentTxn) error {
		if n == 1 {
			return errors.New("down")
		}
		return nil
	}
	n := startQueueNode(t, t.TempDir(), actors.FedQueueConfig{Sender: f, BackoffBase: time.Hour}, 0)
	enqueue(t, n, &pb.FedEnqueue{Destination: "b.test", RoomId: "!r:x", Pdus: [][]byte{pdu(0)}})
	waitFor(t, "the failed attempt", func() bool { return len(f.sent()) == 1 })
	n.Send(&pb.FedQueueWake{Destination: "b.test"})
	time.Sleep(100 * time.Millisecond)
	if len(f.sent()) != 1 {
		t.Fatal("a plain wake cut the backoff short")
	}
	n.Send(&pb.FedQueueWake{Destination: "b.test", RetryNow: true})
	waitFor(t, "the delivery", func() bool { return len(f.delivered(t)) == 1 })
	if s := f.sent(); s[1].txnID != s[0].txnID {
		t.Fatalf("retried as %s, first %s", s[1].txnID, s[0].txnID)
	}
}
