package gateway_test

import (
	"context"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// The room side of /sync over HTTP: invites, joins, new messages waking a
// long-poll, typing, and leaving.
func TestRoomSyncOverHTTP(t *testing.T) {
	node := shoaltest.Start(t)
	ctx := context.Background()
	alice, bob := node.Register("alice"), node.Register("bob")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Name: "Sync me", Invite: []id.UserID{bob.UserID}})
	if err != nil {
		t.Fatal(err)
	}
	room := created.RoomID

	s1, err := bob.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	inv, ok := s1.Rooms.Invite[room]
	if !ok {
		t.Fatalf("invite not in initial sync: %+v", s1.Rooms)
	}
	var sawCreate, sawName bool
	for _, e := range inv.State.Events {
		sawCreate = sawCreate || e.Type == event.StateCreate
		sawName = sawName || e.Type == event.StateRoomName
	}
	if !sawCreate || !sawName {
		t.Fatalf("invite_state lacks create or name: %d events", len(inv.State.Events))
	}

	if _, err := bob.JoinRoomByID(ctx, room); err != nil {
		t.Fatal(err)
	}
	s2, err := bob.SyncRequest(ctx, 0, s1.NextBatch, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	joined, ok := s2.Rooms.Join[room]
	if !ok {
		t.Fatalf("joined room not in sync: %+v", s2.Rooms)
	}
	if len(joined.Timeline.Events) == 0 || joined.Timeline.Events[len(joined.Timeline.Events)-1].GetStateKey() != bob.UserID.String() {
		t.Fatalf("join not at the end of the timeline")
	}

	// A long-poll wakes when alice sends.
	done := make(chan *mautrix.RespSync, 1)
	go func() {
		s, err := bob.SyncRequest(ctx, 10000, s2.NextBatch, "", false, "")
		if err != nil {
			t.Error(err)
		}
		done <- s
	}()
	time.Sleep(100 * time.Millisecond)
	sent, err := alice.SendMessageEvent(ctx, room, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "wake up"})
	if err != nil {
		t.Fatal(err)
	}
	var s3 *mautrix.RespSync
	select {
	case s3 = <-done:
	case <-time.After(8 * time.Second):
		t.Fatal("long-poll did not wake")
	}
	if s3 == nil {
		t.FailNow()
	}
	tl := s3.Rooms.Join[room].Timeline
	if len(tl.Events) != 1 || tl.Events[0].ID != sent.EventID || tl.Limited {
		t.Fatalf("incremental timeline %+v", tl)
	}
	if tl.PrevBatch == "" {
		t.Fatal("no prev_batch")
	}
	// prev_batch paginates back into what came before.
	older, err := bob.Messages(ctx, room, tl.PrevBatch, "", mautrix.DirectionBackward, nil, 1)
	if err != nil || len(older.Chunk) != 1 || older.Chunk[0].GetStateKey() != bob.UserID.String() {
		t.Fatalf("messages from prev_batch: %v", err)
	}

	// Typing shows up as ephemeral.
	if _, err := alice.UserTyping(ctx, room, true, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	s4, err := bob.SyncRequest(ctx, 5000, s3.NextBatch, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	var typing []id.UserID
	for _, e := range s4.Rooms.Join[room].Ephemeral.Events {
		if e.Type == event.EphemeralEventTyping {
			_ = e.Content.ParseRaw(e.Type)
			typing = e.Content.AsTyping().UserIDs
		}
	}
	if len(typing) != 1 || typing[0] != alice.UserID {
		t.Fatalf("typing %v", typing)
	}

	// Leaving moves the room to rooms.leave with the leave event last.
	if _, err := bob.LeaveRoom(ctx, room); err != nil {
		t.Fatal(err)
	}
	s5, err := bob.SyncRequest(ctx, 5000, s4.NextBatch, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	left, ok := s5.Rooms.Leave[room]
	if !ok || len(left.Timeline.Events) == 0 {
		t.Fatalf("left room not in sync: %+v", s5.Rooms)
	}
	if last := left.Timeline.Events[len(left.Timeline.Events)-1]; last.GetStateKey() != bob.UserID.String() || last.Type != event.StateMember {
		t.Fatalf("last event of the left room %s %s", last.Type, last.GetStateKey())
	}
}
