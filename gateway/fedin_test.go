package gateway

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/shoal-chat/shoal/eventgraph"
)

// Hooks for the external tests (federation_events_test.go), which run real
// nodes through shoaltest and so cannot live in this package.

// VerifyPDUForTest is verifyPDU.
func (s *Server) VerifyPDUForTest(ctx context.Context, rv *eventgraph.RoomVersion, raw []byte) (*eventgraph.Event, error) {
	return s.verifyPDU(ctx, rv, raw)
}

// IngestPDUsForTest is ingestPDUs, as PUT /send calls it.
func (s *Server) IngestPDUsForTest(ctx context.Context, origin string, pdus []json.RawMessage) map[string]string {
	return s.ingestPDUs(ctx, origin, pdus)
}

func TestFetchBudget(t *testing.T) {
	b := &fetchBudget{events: 10, bytes: 100}
	if !b.take(4, 40) || !b.take(6, 60) {
		t.Fatal("takes within the budget refused")
	}
	if !b.spent() {
		t.Fatal("budget not spent at zero")
	}
	b = &fetchBudget{events: 10, bytes: 100}
	if b.take(11, 1) {
		t.Fatal("over the event budget accepted")
	}
	// One refusal ends the transaction's fetching.
	if !b.spent() || b.take(1, 1) {
		t.Fatal("fetching goes on after a refusal")
	}
}

func TestGapRoots(t *testing.T) {
	rv := eventgraph.MustRoomVersion("11")
	_, priv, _ := ed25519.GenerateKey(nil)
	mk := func(depth int64, prevs ...string) *eventgraph.Event {
		ev, err := eventgraph.BuildEvent(eventgraph.ProtoEvent{RoomID: "!r:x.test", Sender: "@u:x.test", Type: "m.room.message",
			Content: json.RawMessage(fmt.Sprintf(`{"body":"%d"}`, depth)), PrevEvents: prevs, AuthEvents: []string{},
			Depth: depth, OriginServerTS: depth}, rv, "x.test", "ed25519:k", priv)
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	id := func(s string) string {
		h := sha256.Sum256([]byte(s))
		return "$" + base64.RawURLEncoding.EncodeToString(h[:])
	}
	unknownID, rejectedID, outlierID := id("unknown"), id("rejected"), id("outlier")
	known := mk(1)
	mid := mk(2, known.EventID())
	top := mk(3, mid.EventID())
	orphan := mk(5, unknownID)
	rejected := mk(6, rejectedID)
	k := map[string]int32{known.EventID(): 1, rejectedID: 3, outlierID: 2}
	outlierChild := mk(7, outlierID)
	roots := gapRoots([]candidate{{ev: top}, {ev: mid}, {ev: orphan}, {ev: rejected}, {ev: outlierChild}}, k)
	if len(roots) != 2 || roots[0].ev != orphan || roots[1].ev != outlierChild {
		t.Fatalf("roots: %d", len(roots))
	}
	// Without mid among the candidates, top has a hole too.
	if roots := gapRoots([]candidate{{ev: top}}, k); len(roots) != 1 {
		t.Fatalf("top alone: %d roots", len(roots))
	}
}

func TestBackfillCooldown(t *testing.T) {
	s1, s2 := &Server{}, &Server{}
	now := time.Now()
	k := backfillKey{s: s1, room: "!r:x.test"}
	if backfillResting(k, now) {
		t.Fatal("a room never backfilled rests")
	}
	backfillRest(k, now)
	if !backfillResting(k, now.Add(time.Second)) {
		t.Fatal("a room whose backfill brought nothing is asked again at once")
	}
	if backfillResting(backfillKey{s: s2, room: "!r:x.test"}, now) {
		t.Fatal("another node's room rests too")
	}
	if backfillResting(k, now.Add(backfillCooldown+time.Second)) {
		t.Fatal("the rest never ends")
	}
	// The table stays bounded.
	for i := range maxBackfillIdle + 10 {
		backfillRest(backfillKey{s: s1, room: fmt.Sprint(i)}, now)
	}
	backfillIdle.Lock()
	n := len(backfillIdle.m)
	clear(backfillIdle.m)
	backfillIdle.Unlock()
	if n > maxBackfillIdle {
		t.Fatalf("%d resting rooms kept", n)
	}
}
