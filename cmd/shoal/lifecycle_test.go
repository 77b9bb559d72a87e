package main

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

func bg() context.Context { return context.Background() }

// must fails the test on err: must(cli.Whoami(ctx))(t).
func must[T any](v T, err error) func(t *testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// errcode asserts err is a Matrix error with the given code and status.
func errcode(t *testing.T, err error, code string, status int) {
	t.Helper()
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.RespError == nil {
		t.Fatalf("want %s (%d), got %v", code, status, err)
	}
	if he.RespError.ErrCode != code || he.Response.StatusCode != status {
		t.Fatalf("want %s (%d), got %s (%d): %s", code, status, he.RespError.ErrCode, he.Response.StatusCode, he.RespError.Err)
	}
}

func timelineBodies(resp *mautrix.RespSync, roomID id.RoomID) []string {
	var out []string
	room, ok := resp.Rooms.Join[roomID]
	if !ok {
		return nil
	}
	for _, ev := range room.Timeline.Events {
		if ev.Type == event.EventMessage {
			_ = ev.Content.ParseRaw(ev.Type)
			out = append(out, ev.Content.AsMessage().Body)
		}
	}
	return out
}

// syncUntil long-polls until pred holds for the accumulated responses.
func syncUntil(t *testing.T, cli *mautrix.Client, since string, pred func(*mautrix.RespSync) bool) (string, *mautrix.RespSync) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp := must(cli.SyncRequest(bg(), 5000, since, "", false, event.PresenceOnline))(t)
		since = resp.NextBatch
		if pred(resp) {
			return since, resp
		}
	}
	t.Fatal("condition not reached by sync within 20s")
	return "", nil
}

// Two users through the whole lifecycle of a room.
func TestTwoUsersLifecycle(t *testing.T) {
	node := shoaltest.Start(t)
	alice := node.Register("alice")
	bob := node.Register("bob")

	who := must(alice.Whoami(bg()))(t)
	if who.UserID != node.UserID("alice") || who.DeviceID == "" {
		t.Fatalf("whoami: %+v", who)
	}
	mustOK(t, alice.SetDisplayName(bg(), "Alice A."))

	bobSince := must(bob.SyncRequest(bg(), 0, "", "", false, event.PresenceOnline))(t).NextBatch

	room := must(alice.CreateRoom(bg(), &mautrix.ReqCreateRoom{
		Name: "Lifecycle", Topic: "a room to live in", Preset: "private_chat",
		Invite: []id.UserID{bob.UserID}, RoomAliasName: "lifecycle",
	}))(t).RoomID

	// Bob sees the invite, joins.
	bobSince, _ = syncUntil(t, bob, bobSince, func(r *mautrix.RespSync) bool { _, ok := r.Rooms.Invite[room]; return ok })
	must(bob.JoinRoomByID(bg(), room))(t)

	// Alice talks; Bob reads it through sync.
	var sent []id.EventID
	for _, text := range []string{"one", "two", "three"} {
		sent = append(sent, must(alice.SendText(bg(), room, text))(t).EventID)
	}
	var got []string
	bobSince, _ = syncUntil(t, bob, bobSince, func(r *mautrix.RespSync) bool {
		got = append(got, timelineBodies(r, room)...)
		return len(got) >= 3
	})
	if !slices.Equal(got, []string{"one", "two", "three"}) {
		t.Fatalf("bob's timeline: %v", got)
	}

	// State reads: name, topic, alice's display name in her member event.
	var name event.RoomNameEventContent
	mustOK(t, bob.StateEvent(bg(), room, event.StateRoomName, "", &name))
	if name.Name != "Lifecycle" {
		t.Fatalf("name: %q", name.Name)
	}
	var member event.MemberEventContent
	mustOK(t, bob.StateEvent(bg(), room, event.StateMember, alice.UserID.String(), &member))
	if member.Displayname != "Alice A." || member.Membership != event.MembershipJoin {
		t.Fatalf("alice's member event: %+v", member)
	}
	joined := must(alice.JoinedMembers(bg(), room))(t)
	if len(joined.Joined) != 2 {
		t.Fatalf("joined members: %v", joined.Joined)
	}
	rooms := must(bob.JoinedRooms(bg()))(t)
	if !slices.Contains(rooms.JoinedRooms, room) {
		t.Fatalf("bob's joined rooms: %v", rooms.JoinedRooms)
	}

	// The alias resolves.
	alias := must(bob.ResolveAlias(bg(), id.NewRoomAlias("lifecycle", node.ServerName())))(t)
	if alias.RoomID != room {
		t.Fatalf("alias resolves to %s", alias.RoomID)
	}

	// History both ways.
	back := must(bob.Messages(bg(), room, "", "", mautrix.DirectionBackward, nil, 2))(t)
	if len(back.Chunk) != 2 || back.Chunk[0].ID != sent[2] || back.Chunk[1].ID != sent[1] {
		t.Fatalf("backwards page: %v", eventIDs(back.Chunk))
	}
	more := must(bob.Messages(bg(), room, back.End, "", mautrix.DirectionBackward, nil, 100))(t)
	if len(more.Chunk) == 0 || more.Chunk[0].ID != sent[0] {
		t.Fatalf("second backwards page should start at the first message: %v", eventIDs(more.Chunk))
	}
	fwd := must(bob.Messages(bg(), room, more.End, "", mautrix.DirectionForward, nil, 100))(t)
	if fwd.Chunk[len(fwd.Chunk)-1].ID != sent[2] {
		t.Fatalf("forward pagination does not end at the last message: %v", eventIDs(fwd.Chunk))
	}
	ctxResp := must(bob.Context(bg(), room, sent[1], nil, 2))(t)
	if ctxResp.Event.ID != sent[1] || len(ctxResp.EventsBefore) == 0 || len(ctxResp.EventsAfter) == 0 {
		t.Fatalf("context around the second message: %+v", ctxResp)
	}

	// Typing and receipts reach the other side through sync.
	must(bob.UserTyping(bg(), room, true, 10*time.Second))(t)
	bobSinceA := must(alice.SyncRequest(bg(), 0, "", "", false, event.PresenceOnline))(t).NextBatch
	mustOK(t, bob.SendReceipt(bg(), room, sent[2], event.ReceiptTypeRead, nil))
	syncUntil(t, alice, bobSinceA, func(r *mautrix.RespSync) bool {
		jr, ok := r.Rooms.Join[room]
		if !ok {
			return false
		}
		for _, ev := range jr.Ephemeral.Events {
			if ev.Type == event.EphemeralEventReceipt {
				return true
			}
		}
		return false
	})

	// Redaction empties the content.
	must(alice.RedactEvent(bg(), room, sent[0], mautrix.ReqRedact{Reason: "oops"}))(t)
	red := must(bob.GetEvent(bg(), room, sent[0]))(t)
	if len(red.Content.Raw) != 0 {
		t.Fatalf("redacted event still has content: %v", red.Content.Raw)
	}

	// Bob may not kick; Alice kicks, bans, unbans.
	_, err := bob.KickUser(bg(), room, &mautrix.ReqKickUser{UserID: alice.UserID})
	errcode(t, err, "M_FORBIDDEN", http.StatusForbidden)
	must(alice.KickUser(bg(), room, &mautrix.ReqKickUser{UserID: bob.UserID, Reason: "bye"}))(t)
	_, err = bob.SendText(bg(), room, "still here?")
	errcode(t, err, "M_FORBIDDEN", http.StatusForbidden)
	must(alice.BanUser(bg(), room, &mautrix.ReqBanUser{UserID: bob.UserID}))(t)
	_, err = bob.JoinRoomByID(bg(), room)
	errcode(t, err, "M_FORBIDDEN", http.StatusForbidden)
	must(alice.UnbanUser(bg(), room, &mautrix.ReqUnbanUser{UserID: bob.UserID}))(t)

	// Bob's sync shows he left.
	syncUntil(t, bob, bobSince, func(r *mautrix.RespSync) bool { _, ok := r.Rooms.Leave[room]; return ok })

	// Alice leaves and forgets.
	must(alice.LeaveRoom(bg(), room))(t)
	must(alice.ForgetRoom(bg(), room))(t)
	rooms = must(alice.JoinedRooms(bg()))(t)
	if slices.Contains(rooms.JoinedRooms, room) {
		t.Fatal("alice still in the room after leaving")
	}

	// Logout ends the token.
	must(bob.Logout(bg()))(t)
	_, err = bob.Whoami(bg())
	errcode(t, err, "M_UNKNOWN_TOKEN", http.StatusUnauthorized)
}

func eventIDs(evs []*event.Event) []id.EventID {
	out := make([]id.EventID, len(evs))
	for i, e := range evs {
		out[i] = e.ID
	}
	return out
}

// A long-poll returns as soon as another user sends, long before its timeout.
func TestLongPollWokenBySend(t *testing.T) {
	node := shoaltest.Start(t)
	alice := node.Register("alice")
	bob := node.Register("bob")
	room := must(alice.CreateRoom(bg(), &mautrix.ReqCreateRoom{Preset: "public_chat"}))(t).RoomID
	must(bob.JoinRoomByID(bg(), room))(t)
	since, _ := syncUntil(t, bob, "", func(r *mautrix.RespSync) bool { _, ok := r.Rooms.Join[room]; return ok })

	type result struct {
		resp *mautrix.RespSync
		err  error
	}
	done := make(chan result, 1)
	go func() {
		r, err := bob.SyncRequest(bg(), 60000, since, "", false, event.PresenceOnline)
		done <- result{r, err}
	}()
	time.Sleep(200 * time.Millisecond) // let the long-poll park
	must(alice.SendText(bg(), room, "wake up"))(t)
	select {
	case r := <-done:
		mustOK(t, r.err)
		if got := timelineBodies(r.resp, room); !slices.Contains(got, "wake up") {
			t.Fatalf("woken sync carried %v", got)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the long-poll was not woken by the send")
	}
}

// Restarting the node loses nothing: accounts, tokens, rooms, history and
// sync tokens all survive.
func TestRestartLosesNothing(t *testing.T) {
	node := shoaltest.Start(t)
	alice := node.Register("alice")
	room := must(alice.CreateRoom(bg(), &mautrix.ReqCreateRoom{Name: "Durable"}))(t).RoomID
	var sent []id.EventID
	for i := 0; i < 5; i++ {
		sent = append(sent, must(alice.SendText(bg(), room, "before restart"))(t).EventID)
	}
	since := must(alice.SyncRequest(bg(), 0, "", "", false, event.PresenceOnline))(t).NextBatch

	node.Restart()

	must(alice.Whoami(bg()))(t) // the access token still works
	after := must(alice.SendText(bg(), room, "after restart"))(t).EventID
	_, resp := syncUntil(t, alice, since, func(r *mautrix.RespSync) bool { return len(timelineBodies(r, room)) > 0 })
	if got := timelineBodies(resp, room); !slices.Equal(got, []string{"after restart"}) {
		t.Fatalf("incremental sync after restart: %v", got)
	}
	msgs := must(alice.Messages(bg(), room, "", "", mautrix.DirectionBackward, nil, 100))(t)
	ids := eventIDs(msgs.Chunk)
	for _, e := range append(sent, after) {
		if !slices.Contains(ids, e) {
			t.Fatalf("event %s lost across restart", e)
		}
	}
	var name event.RoomNameEventContent
	mustOK(t, alice.StateEvent(bg(), room, event.StateRoomName, "", &name))
	if name.Name != "Durable" {
		t.Fatalf("room name after restart: %q", name.Name)
	}
}

// One user creating many identical rooms at once gets a distinct room each
// (a version 12 room ID is the hash of its create event).
func TestConcurrentIdenticalCreateRoom(t *testing.T) {
	node := shoaltest.Start(t)
	alice := node.Register("alice")
	const n = 20
	ids := make(chan id.RoomID, n)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			resp, err := alice.CreateRoom(bg(), &mautrix.ReqCreateRoom{})
			if err != nil {
				errs <- err
				return
			}
			ids <- resp.RoomID
		}()
	}
	seen := map[id.RoomID]bool{}
	for i := 0; i < n; i++ {
		select {
		case err := <-errs:
			t.Fatal(err)
		case rid := <-ids:
			if seen[rid] {
				t.Fatalf("room %s handed out twice", rid)
			}
			seen[rid] = true
		}
	}
}
