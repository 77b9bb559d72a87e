package gateway_test

import (
	"context"
	"net/http"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// unreadIn syncs bob from since and returns the room's counts (nil when
// the room is not in the response) and the next token.
func unreadIn(t *testing.T, c *mautrix.Client, since string, room id.RoomID) (*mautrix.UnreadNotificationCounts, string) {
	t.Helper()
	s, err := c.SyncRequest(context.Background(), 0, since, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	j, ok := s.Rooms.Join[room]
	if !ok {
		return nil, s.NextBatch
	}
	return j.UnreadNotifications, s.NextBatch
}

func sendText(t *testing.T, c *mautrix.Client, room id.RoomID, body string, mention ...id.UserID) id.EventID {
	t.Helper()
	content := &event.MessageEventContent{MsgType: event.MsgText, Body: body, Mentions: &event.Mentions{UserIDs: mention}}
	resp, err := c.SendMessageEvent(context.Background(), room, event.EventMessage, content)
	if err != nil {
		t.Fatal(err)
	}
	return resp.EventID
}

// Unread counts in /sync follow the user's push rules: messages count,
// a mention highlights, a read receipt or the user's own message resets.
func TestSyncUnreadNotifications(t *testing.T) {
	node := shoaltest.Start(t)
	ctx := context.Background()
	alice, bob := node.Register("alice"), node.Register("bob")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Invite: []id.UserID{bob.UserID}})
	if err != nil {
		t.Fatal(err)
	}
	room := created.RoomID
	if _, err := bob.JoinRoomByID(ctx, room); err != nil {
		t.Fatal(err)
	}
	counts, next := unreadIn(t, bob, "", room)
	if counts == nil || counts.NotificationCount != 0 || counts.HighlightCount != 0 {
		t.Fatalf("initial counts = %+v, want 0/0", counts)
	}

	sendText(t, alice, room, "hello")
	last := sendText(t, alice, room, "look at this", bob.UserID)
	counts, next = unreadIn(t, bob, next, room)
	if counts == nil || counts.NotificationCount != 2 || counts.HighlightCount != 1 {
		t.Fatalf("counts after two messages = %+v, want 2 notifications, 1 highlight", counts)
	}

	if err := bob.MarkRead(ctx, room, last); err != nil {
		t.Fatal(err)
	}
	counts, next = unreadIn(t, bob, next, room)
	if counts == nil || counts.NotificationCount != 0 || counts.HighlightCount != 0 {
		t.Fatalf("counts after the receipt = %+v, want 0/0", counts)
	}

	sendText(t, alice, room, "more")
	counts, next = unreadIn(t, bob, next, room)
	if counts == nil || counts.NotificationCount != 1 || counts.HighlightCount != 0 {
		t.Fatalf("counts after one more = %+v, want 1/0", counts)
	}
	// A private receipt resets too.
	mine := sendText(t, alice, room, "and more")
	if err := bob.SendReceipt(ctx, room, mine, event.ReceiptTypeReadPrivate, nil); err != nil {
		t.Fatal(err)
	}
	counts, next = unreadIn(t, bob, next, room)
	if counts == nil || counts.NotificationCount != 0 {
		t.Fatalf("counts after a private receipt = %+v, want 0", counts)
	}
	// Bob's own message marks what came before as read.
	sendText(t, alice, room, "again")
	sendText(t, bob, room, "reply")
	counts, next = unreadIn(t, bob, next, room)
	if counts == nil || counts.NotificationCount != 0 {
		t.Fatalf("counts after bob's own message = %+v, want 0", counts)
	}
	// The counts follow bob's rules: with the master rule on, nothing counts.
	url := bob.BuildClientURL("v3", "pushrules", "global", "override", ".m.rule.master", "enabled")
	if _, err := bob.MakeRequest(ctx, http.MethodPut, url, map[string]bool{"enabled": true}, nil); err != nil {
		t.Fatal(err)
	}
	sendText(t, alice, room, "muted", bob.UserID)
	counts, _ = unreadIn(t, bob, next, room)
	if counts == nil || counts.NotificationCount != 0 || counts.HighlightCount != 0 {
		t.Fatalf("counts with the master rule on = %+v, want 0/0", counts)
	}
}
