package gateway_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// presenceOf returns the content of the last m.presence event from sender
// in a sync response, or nil.
func presenceOf(resp *mautrix.RespSync, sender id.UserID) map[string]any {
	var out map[string]any
	for _, e := range resp.Presence.Events {
		if e.Sender == sender {
			out = e.Content.Raw
		}
	}
	return out
}

// syncUntilPresence long-polls as c from since until sender's presence
// shows state (and status message), failing after 15 s.
func syncUntilPresence(t *testing.T, c *mautrix.Client, since string, sender id.UserID, state, status string) (string, map[string]any) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := c.SyncRequest(ctx, 5000, since, "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		since = resp.NextBatch
		if p := presenceOf(resp, sender); p != nil && p["presence"] == state && (status == "" || p["status_msg"] == status) {
			return since, p
		}
	}
	t.Fatalf("%s never saw %s %s %q", c.UserID, sender, state, status)
	return "", nil
}

// TestPresenceOverHTTP: bob, who shares a room with alice, sees her presence
// and status message change in /sync (a long-poll is woken by it) and may
// read it; carol, who shares no room, sees nothing and is refused.
func TestPresenceOverHTTP(t *testing.T) {
	node := shoaltest.Start(t)
	ctx := context.Background()
	alice, bob, carol := node.Register("alice"), node.Register("bob"), node.Register("carol")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Invite: []id.UserID{bob.UserID}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, created.RoomID); err != nil {
		t.Fatal(err)
	}
	if _, err := carol.CreateRoom(ctx, &mautrix.ReqCreateRoom{}); err != nil {
		t.Fatal(err)
	}
	bobSync, err := bob.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	carolSync, err := carol.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}

	if err := alice.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: "hello"}); err != nil {
		t.Fatal(err)
	}
	since, p := syncUntilPresence(t, bob, bobSync.NextBatch, alice.UserID, "online", "hello")
	if _, ok := p["last_active_ago"].(float64); !ok {
		t.Fatalf("no last_active_ago in %v", p)
	}
	if _, ok := p["currently_active"].(bool); !ok {
		t.Fatalf("no currently_active for an online user in %v", p)
	}

	// A long-poll is woken by alice's change, well before its timeout.
	type result struct {
		resp *mautrix.RespSync
		err  error
	}
	woken := make(chan result, 1)
	go func() {
		resp, err := bob.SyncRequest(ctx, 30_000, since, "", false, "")
		woken <- result{resp, err}
	}()
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	if err := alice.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceUnavailable, StatusMsg: "lunch"}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-woken:
		if r.err != nil {
			t.Fatal(r.err)
		}
		if p := presenceOf(r.resp, alice.UserID); p == nil || p["presence"] != "unavailable" || p["status_msg"] != "lunch" {
			// Woken for something else first: the change must still come.
			syncUntilPresence(t, bob, r.resp.NextBatch, alice.UserID, "unavailable", "lunch")
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("long-poll not woken by a presence change after %v", time.Since(start))
	}

	// carol shares no room with alice: nothing in her sync, and 403.
	resp, err := carol.SyncRequest(ctx, 1000, carolSync.NextBatch, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if p := presenceOf(resp, alice.UserID); p != nil {
		t.Fatalf("carol saw alice's presence: %v", p)
	}
	if _, err := carol.GetPresence(ctx, alice.UserID); err == nil || !strings.Contains(err.Error(), "M_FORBIDDEN") {
		t.Fatalf("carol reading alice's presence: err = %v, want M_FORBIDDEN", err)
	}
	got, err := bob.GetPresence(ctx, alice.UserID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Presence != event.PresenceUnavailable || got.StatusMsg != "lunch" {
		t.Fatalf("bob reads alice's presence %+v", got)
	}

	// A fresh initial sync carries alice's current presence; carol's does not.
	initial, err := bob.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if p := presenceOf(initial, alice.UserID); p == nil || p["presence"] != "unavailable" || p["status_msg"] != "lunch" {
		t.Fatalf("initial sync presence of alice = %v", p)
	}
	initial, err = carol.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if p := presenceOf(initial, alice.UserID); p != nil {
		t.Fatalf("carol's initial sync has alice's presence: %v", p)
	}
}
