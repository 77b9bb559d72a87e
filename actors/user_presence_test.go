package actors_test

import (
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-chat/shoal/actors/pb"
)

func presenceState(t *testing.T, n *acctNode, user string) map[string]any {
	t.Helper()
	var p map[string]any
	if err := json.Unmarshal(n.query(user, "presence", "", "").Json, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPresenceAutomaticTransitions: online becomes unavailable after five
// idle minutes (keeping the status message), a sync brings an automatic
// unavailable back online, and no sync for 30 s means offline.
func TestPresenceAutomaticTransitions(t *testing.T) {
	var offset atomic.Int64
	base := time.Now()
	n := &acctNode{t: t, dir: t.TempDir(), now: func() time.Time { return base.Add(time.Duration(offset.Load())) }}
	n.start()
	t.Cleanup(n.stop)
	advance := func(d time.Duration) { offset.Add(int64(d)) }
	tick := func(user string) {
		// The timer's message; any tick only prompts the actor to look.
		n.node.Send(&pb.PresenceTick{UserId: user, Kind: "timer"})
	}
	alice := n.register("alice", "pw")
	n.update(alice, "presence", "", "", `{"presence":"online","status_msg":"busy"}`)
	first := n.plan(alice, "", 0)
	tok := n.done(alice, first.Next, nil, nil)

	advance(6 * time.Minute)
	n.plan(alice, tok, 0) // a sync is open: not offline, but idle
	tick(alice)
	waitPresence(t, n, alice, "unavailable")
	if p := presenceState(t, n, alice); p["status_msg"] != "busy" {
		t.Fatalf("status message lost: %v", p)
	}
	next := n.plan(alice, tok, 0)
	if !strings.Contains(string(next.Presence), `"presence":"unavailable"`) {
		t.Fatalf("automatic change not in sync: %s", next.Presence)
	}

	// A sync's implicit online ends an automatic unavailable.
	n.update(alice, "presence", "", "", `{"presence":"online","from_sync":true}`)
	if p := presenceState(t, n, alice); p["presence"] != "online" {
		t.Fatalf("sync did not bring alice back online: %v", p)
	}

	advance(31 * time.Second)
	tick(alice)
	waitPresence(t, n, alice, "offline")
}

func waitPresence(t *testing.T, n *acctNode, user, state string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if presenceState(t, n, user)["presence"] == state {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s never became %s: %v", user, state, presenceState(t, n, user))
}

// TestPresenceNoticeInSync: a peer's presence notice shows in the next
// incremental sync, wakes a parked one, and is not repeated after.
func TestPresenceNoticeInSync(t *testing.T) {
	n := startAcctNode(t)
	bob := n.register("bob", "pw")
	alice := "@alice:" + acctServer
	first := n.plan(bob, "", 0)
	tok := n.done(bob, first.Next, nil, nil)

	got := make(chan *pb.SyncPlanReply, 1)
	go func() {
		res, err := n.req(&pb.SyncPlan{UserId: bob, DeviceId: "D", Since: tok, TimeoutMs: 15_000})
		if err != nil {
			t.Error(err)
			got <- nil
			return
		}
		got <- res.(*pb.SyncPlanReply)
	}()
	time.Sleep(200 * time.Millisecond)
	n.node.Send(&pb.PresenceNotice{UserId: bob, Sender: alice, Presence: "online", StatusMsg: "hi",
		HasStatusMsg: true, LastActiveTs: time.Now().UnixMilli(), CurrentlyActive: true})
	var plan *pb.SyncPlanReply
	select {
	case plan = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("parked sync not woken by a presence notice")
	}
	if plan == nil {
		return
	}
	var evs []struct {
		Type    string         `json:"type"`
		Sender  string         `json:"sender"`
		Content map[string]any `json:"content"`
	}
	if err := json.Unmarshal(plan.Presence, &evs); err != nil {
		t.Fatalf("presence %s: %v", plan.Presence, err)
	}
	if len(evs) != 1 || evs[0].Type != "m.presence" || evs[0].Sender != alice || evs[0].Content["presence"] != "online" ||
		evs[0].Content["status_msg"] != "hi" || evs[0].Content["currently_active"] != true {
		t.Fatalf("presence events = %s", plan.Presence)
	}
	tok = n.done(bob, plan.Next, nil, nil)
	if again := n.plan(bob, tok, 0); strings.Contains(string(again.Presence), alice) {
		t.Fatalf("presence repeated: %s", again.Presence)
	}
}
