package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// rawCall makes one client API request and returns the status and the
// decoded JSON body.
func rawCall(t *testing.T, node *shoaltest.Node, token, method, path string, body []byte) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, node.BaseURL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := map[string]any{}
	if len(raw) > 0 && raw[0] == '{' {
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("%s %s: body %q: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode, out
}

// expectErr asserts a Matrix error of errcode with status.
func expectErr(t *testing.T, node *shoaltest.Node, token, method, path string, body []byte, status int, errcode string) {
	t.Helper()
	got, out := rawCall(t, node, token, method, path, body)
	if got != status || out["errcode"] != errcode {
		t.Errorf("%s %s: got %d %v, want %d %s", method, path, got, out, status, errcode)
	}
}

func httpStatus(err error) int {
	var he mautrix.HTTPError
	if errors.As(err, &he) && he.Response != nil {
		return he.Response.StatusCode
	}
	return 0
}

func esc(s string) string { return url.PathEscape(s) }

func TestRoomsOverHTTP(t *testing.T) {
	node := shoaltest.Start(t)
	ctx := context.Background()
	alice, bob := node.Register("alice"), node.Register("bob")

	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset: "public_chat", Name: "The Pub", Topic: "Happy hour", RoomAliasName: "pub", Visibility: "public",
	})
	if err != nil {
		t.Fatal(err)
	}
	room := created.RoomID
	// Default room version 12: the room ID is a hash, with no server part.
	if strings.Contains(room.String(), ":") || len(room) != 44 {
		t.Fatalf("v12 room ID %s", room)
	}
	alias := id.RoomAlias("#pub:" + node.ServerName())
	res, err := bob.ResolveAlias(ctx, alias)
	if err != nil || res.RoomID != room {
		t.Fatalf("resolve alias: %v %v", res, err)
	}
	if _, err := bob.JoinRoom(ctx, alias.String(), nil); err != nil {
		t.Fatalf("join by alias: %v", err)
	}
	var name event.RoomNameEventContent
	if err := bob.StateEvent(ctx, room, event.StateRoomName, "", &name); err != nil || name.Name != "The Pub" {
		t.Fatalf("name %q: %v", name.Name, err)
	}
	var pl event.PowerLevelsEventContent
	if err := bob.StateEvent(ctx, room, event.StatePowerLevels, "", &pl); err != nil {
		t.Fatal(err)
	}
	if _, listed := pl.Users[alice.UserID]; listed || pl.Events["m.room.tombstone"] != 150 {
		t.Fatalf("v12 power levels: users %v, tombstone %d", pl.Users, pl.Events["m.room.tombstone"])
	}
	state, err := bob.State(ctx, room)
	if err != nil {
		t.Fatal(err)
	}
	if state[event.StateCanonicalAlias][""] == nil || state[event.StateJoinRules][""] == nil || state[event.StateTopic][""] == nil {
		t.Fatalf("state lacks alias, join rules or topic: %v", state)
	}

	var sent []id.EventID
	for i := 0; i < 15; i++ {
		r, err := alice.SendMessageEvent(ctx, room, event.EventMessage, map[string]any{"msgtype": "m.text", "body": fmt.Sprint("msg ", i)})
		if err != nil {
			t.Fatal(err)
		}
		sent = append(sent, r.EventID)
	}
	// Same transaction ID: same event.
	first, err := alice.SendMessageEvent(ctx, room, event.EventMessage, map[string]any{"body": "once"}, mautrix.ReqSendEvent{TransactionID: "fixed"})
	if err != nil {
		t.Fatal(err)
	}
	again, err := alice.SendMessageEvent(ctx, room, event.EventMessage, map[string]any{"body": "once"}, mautrix.ReqSendEvent{TransactionID: "fixed"})
	if err != nil || again.EventID != first.EventID {
		t.Fatalf("repeated transaction: %v %v", again, err)
	}
	onlyMessages := &mautrix.FilterPart{Types: []event.Type{event.EventMessage}}
	msgs, err := bob.Messages(ctx, room, "", "", mautrix.DirectionBackward, onlyMessages, 5)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs.Chunk) != 5 || msgs.Chunk[0].ID != first.EventID || msgs.End == "" {
		t.Fatalf("backwards page: %d events, end %q", len(msgs.Chunk), msgs.End)
	}
	more, err := bob.Messages(ctx, room, msgs.End, "", mautrix.DirectionBackward, onlyMessages, 5)
	if err != nil || len(more.Chunk) != 5 || more.Chunk[0].ID != sent[10] {
		t.Fatalf("second page: %v", err)
	}
	fwd, err := bob.Messages(ctx, room, "t0", "", mautrix.DirectionForward, nil, 3)
	if err != nil || len(fwd.Chunk) != 3 || fwd.Chunk[0].Type != event.StateCreate {
		t.Fatalf("forwards from the start: %v", err)
	}
	ev, err := bob.GetEvent(ctx, room, sent[3])
	if err != nil || ev.RoomID != room || ev.Sender != alice.UserID {
		t.Fatalf("get event: %v %v", ev, err)
	}
	cx, err := bob.Context(ctx, room, sent[7], nil, 4)
	if err != nil || cx.Event.ID != sent[7] || len(cx.EventsBefore) != 2 || len(cx.EventsAfter) != 2 ||
		cx.EventsBefore[0].ID != sent[6] || cx.EventsAfter[0].ID != sent[8] || len(cx.State) == 0 {
		t.Fatalf("context: %+v %v", cx, err)
	}

	// Redaction by the sender.
	red, err := alice.RedactEvent(ctx, room, sent[0], mautrix.ReqRedact{Reason: "oops"})
	if err != nil {
		t.Fatal(err)
	}
	redacted, err := bob.GetEvent(ctx, room, sent[0])
	if err != nil || len(redacted.Content.Raw) != 0 || redacted.Unsigned.RedactedBecause == nil || redacted.Unsigned.RedactedBecause.ID != red.EventID {
		t.Fatalf("redacted event: %+v %v", redacted, err)
	}
	// Bob may not redact alice's events.
	if _, err := bob.RedactEvent(ctx, room, sent[1]); httpStatus(err) != http.StatusForbidden {
		t.Fatalf("bob redacting alice's event: %v", err)
	}

	joined, err := alice.JoinedMembers(ctx, room)
	if err != nil || len(joined.Joined) != 2 {
		t.Fatalf("joined members %v %v", joined, err)
	}
	members, err := alice.Members(ctx, room)
	if err != nil || len(members.Chunk) != 2 {
		t.Fatalf("members %v", err)
	}
	rooms, err := bob.JoinedRooms(ctx)
	if err != nil || len(rooms.JoinedRooms) != 1 || rooms.JoinedRooms[0] != room {
		t.Fatalf("bob's joined rooms %v %v", rooms, err)
	}

	// Typing, receipts and read markers.
	if _, err := bob.UserTyping(ctx, room, true, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := bob.SendReceipt(ctx, room, sent[14], event.ReceiptTypeRead, nil); err != nil {
		t.Fatal(err)
	}
	if err := bob.SetReadMarkers(ctx, room, map[string]any{"m.fully_read": sent[14], "m.read.private": sent[14]}); err != nil {
		t.Fatal(err)
	}
	var fully map[string]any
	if err := bob.GetRoomAccountData(ctx, room, "m.fully_read", &fully); err != nil || fully["event_id"] != sent[14].String() {
		t.Fatalf("m.fully_read %v %v", fully, err)
	}

	// The directory lists the room; its aliases are listed for members.
	pub, err := bob.PublicRooms(ctx, &mautrix.ReqPublicRooms{})
	if err != nil || len(pub.Chunk) != 1 || pub.Chunk[0].RoomID != room || pub.Chunk[0].NumJoinedMembers != 2 || pub.Chunk[0].Name != "The Pub" {
		t.Fatalf("public rooms %+v %v", pub, err)
	}
	aliases, err := bob.GetAliases(ctx, room)
	if err != nil || len(aliases.Aliases) != 1 || aliases.Aliases[0] != alias {
		t.Fatalf("aliases %v %v", aliases, err)
	}
	// Bob (power 0) cannot unpublish or delete alice's alias.
	expectErr(t, node, bob.AccessToken, "PUT", "/_matrix/client/v3/directory/list/room/"+esc(room.String()),
		[]byte(`{"visibility":"private"}`), 403, "M_FORBIDDEN")
	if _, err := bob.DeleteAlias(ctx, alias); httpStatus(err) != http.StatusForbidden {
		t.Fatalf("bob deleting alias: %v", err)
	}
	st, vis := rawCall(t, node, "", "GET", "/_matrix/client/v3/directory/list/room/"+esc(room.String()), nil)
	if st != 200 || vis["visibility"] != "public" {
		t.Fatalf("visibility %d %v", st, vis)
	}
	if _, err := alice.DeleteAlias(ctx, alias); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.ResolveAlias(ctx, alias); httpStatus(err) != http.StatusNotFound {
		t.Fatalf("deleted alias resolves: %v", err)
	}

	// Moderation: kick, ban, unban; leave and forget.
	if _, err := alice.KickUser(ctx, room, &mautrix.ReqKickUser{UserID: bob.UserID, Reason: "bye"}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.SendMessageEvent(ctx, room, event.EventMessage, map[string]any{"body": "x"}); httpStatus(err) != http.StatusForbidden {
		t.Fatalf("kicked user sends: %v", err)
	}
	if _, err := alice.BanUser(ctx, room, &mautrix.ReqBanUser{UserID: bob.UserID}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, room); httpStatus(err) != http.StatusForbidden {
		t.Fatalf("banned user joins: %v", err)
	}
	if _, err := alice.UnbanUser(ctx, room, &mautrix.ReqUnbanUser{UserID: bob.UserID}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, room); err != nil {
		t.Fatal(err)
	}
	expectErr(t, node, bob.AccessToken, "POST", "/_matrix/client/v3/rooms/"+esc(room.String())+"/forget", []byte(`{}`), 400, "M_UNKNOWN")
	if _, err := bob.LeaveRoom(ctx, room); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.ForgetRoom(ctx, room); err != nil {
		t.Fatal(err)
	}
	// Bob, having left, still reads history up to his departure.
	hist, err := bob.Messages(ctx, room, "", "", mautrix.DirectionBackward, nil, 1)
	if err != nil || len(hist.Chunk) != 1 || hist.Chunk[0].Type != event.StateMember || hist.Chunk[0].GetStateKey() != bob.UserID.String() {
		t.Fatalf("history after leaving: %+v %v", hist, err)
	}
}

func TestPrivateRoomInviteAndVersions(t *testing.T) {
	node := shoaltest.Start(t)
	ctx := context.Background()
	alice, bob, carol := node.Register("alice"), node.Register("bob"), node.Register("carol")
	for _, v := range []id.RoomVersion{"1", "6", "10", "11"} {
		created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{RoomVersion: v, Invite: []id.UserID{bob.UserID}, IsDirect: true})
		if err != nil {
			t.Fatalf("v%s: %v", v, err)
		}
		room := created.RoomID
		if !strings.HasSuffix(room.String(), ":"+node.ServerName()) {
			t.Fatalf("v%s room ID %s", v, room)
		}
		var create event.CreateEventContent
		if err := alice.StateEvent(ctx, room, event.StateCreate, "", &create); err != nil || create.RoomVersion != v {
			t.Fatalf("v%s create %+v %v", v, create, err)
		}
		if v == "1" && create.Creator != alice.UserID {
			t.Fatalf("v1 creator %q", create.Creator)
		}
		var inv event.MemberEventContent
		if err := alice.StateEvent(ctx, room, event.StateMember, bob.UserID.String(), &inv); err != nil || inv.Membership != event.MembershipInvite || !inv.IsDirect {
			t.Fatalf("v%s invite %+v %v", v, inv, err)
		}
		// Carol, uninvited, cannot join the private chat; bob can.
		if _, err := carol.JoinRoomByID(ctx, room); httpStatus(err) != http.StatusForbidden {
			t.Fatalf("v%s uninvited join: %v", v, err)
		}
		if _, err := bob.JoinRoomByID(ctx, room); err != nil {
			t.Fatalf("v%s invited join: %v", v, err)
		}
		if _, err := alice.InviteUser(ctx, room, &mautrix.ReqInviteUser{UserID: carol.UserID}); err != nil {
			t.Fatal(err)
		}
		if _, err := carol.LeaveRoom(ctx, room); err != nil { // reject
			t.Fatal(err)
		}
		var m event.MemberEventContent
		if err := alice.StateEvent(ctx, room, event.StateMember, carol.UserID.String(), &m); err != nil || m.Membership != event.MembershipLeave {
			t.Fatalf("v%s rejected invite %+v %v", v, m, err)
		}
	}
	// Inviting a local user who does not exist fails.
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.InviteUser(ctx, created.RoomID, &mautrix.ReqInviteUser{UserID: id.UserID("@nobody:" + node.ServerName())}); httpStatus(err) != http.StatusNotFound {
		t.Fatalf("invite of unknown user: %v", err)
	}
}

func TestRoomErrorTable(t *testing.T) {
	node := shoaltest.Start(t)
	ctx := context.Background()
	alice, bob := node.Register("alice"), node.Register("bob")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{RoomAliasName: "taken"})
	if err != nil {
		t.Fatal(err)
	}
	room := esc(created.RoomID.String())
	other, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{})
	if err != nil {
		t.Fatal(err)
	}
	a, b := alice.AccessToken, bob.AccessToken
	const v3 = "/_matrix/client/v3"
	unknown := esc("!unknown:" + node.ServerName())
	cases := []struct {
		token, method, path string
		body                string
		status              int
		errcode             string
	}{
		{"", "GET", v3 + "/rooms/" + room + "/state", "", 401, "M_MISSING_TOKEN"},
		{a, "GET", v3 + "/rooms/not-a-room/state", "", 400, "M_INVALID_PARAM"},
		{a, "PUT", v3 + "/rooms/not-a-room/send/m.room.message/t1", "{}", 400, "M_INVALID_PARAM"},
		{a, "GET", v3 + "/rooms/" + unknown + "/state", "", 403, "M_FORBIDDEN"},
		{a, "GET", v3 + "/rooms/" + unknown + "/messages?dir=b", "", 403, "M_FORBIDDEN"},
		{a, "POST", v3 + "/rooms/" + unknown + "/join", "{}", 404, "M_NOT_FOUND"},
		{b, "GET", v3 + "/rooms/" + room + "/state", "", 403, "M_FORBIDDEN"},
		{b, "GET", v3 + "/rooms/" + room + "/messages?dir=b", "", 403, "M_FORBIDDEN"},
		{b, "GET", v3 + "/rooms/" + room + "/joined_members", "", 403, "M_FORBIDDEN"},
		{b, "PUT", v3 + "/rooms/" + room + "/send/m.room.message/t1", `{"body":"x"}`, 403, "M_FORBIDDEN"},
		{b, "POST", v3 + "/rooms/" + room + "/join", "{}", 403, "M_FORBIDDEN"},
		{a, "PUT", v3 + "/rooms/" + room + "/send/m.room.message/t2", `{"body":`, 400, "M_NOT_JSON"},
		{a, "PUT", v3 + "/rooms/" + room + "/send/m.room.message/t3", `["body"]`, 400, "M_BAD_JSON"},
		{a, "PUT", v3 + "/rooms/" + room + "/send/m.room.message/t4", `{"body":"` + strings.Repeat("x", 70000) + `"}`, 413, "M_TOO_LARGE"},
		{a, "PUT", v3 + "/rooms/" + room + "/send/m.room.message/t5", `{"body":"` + strings.Repeat("x", 65400) + `"}`, 413, "M_TOO_LARGE"},
		{a, "PUT", v3 + "/rooms/" + room + "/send/m.room.message/t6", `{"n":1.5}`, 400, "M_BAD_JSON"},
		{a, "GET", v3 + "/rooms/" + room + "/messages", "", 400, "M_INVALID_PARAM"},
		{a, "GET", v3 + "/rooms/" + room + "/messages?dir=b&from=nonsense", "", 400, "M_INVALID_PARAM"},
		{a, "GET", v3 + "/rooms/" + room + "/messages?dir=b&limit=-1", "", 400, "M_INVALID_PARAM"},
		{a, "GET", v3 + "/rooms/" + room + "/messages?dir=b&filter=notjson", "", 400, "M_INVALID_PARAM"},
		{a, "GET", v3 + "/rooms/" + room + "/event/notanevent", "", 400, "M_INVALID_PARAM"},
		{a, "GET", v3 + "/rooms/" + room + "/event/" + esc("$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaA"), "", 404, "M_NOT_FOUND"},
		{a, "GET", v3 + "/rooms/" + room + "/state/m.room.topic/", "", 404, "M_NOT_FOUND"},
		{a, "GET", v3 + "/rooms/" + room + "/members?membership=weird", "", 400, "M_INVALID_PARAM"},
		{a, "POST", v3 + "/createRoom", `{"room_version":"999"}`, 400, "M_UNSUPPORTED_ROOM_VERSION"},
		{a, "POST", v3 + "/createRoom", `{"room_alias_name":"taken"}`, 400, "M_ROOM_IN_USE"},
		{a, "POST", v3 + "/createRoom", `{"preset":"party"}`, 400, "M_INVALID_PARAM"},
		{a, "POST", v3 + "/createRoom", `{"invite":["not a user"]}`, 400, "M_INVALID_PARAM"},
		{a, "POST", v3 + "/createRoom", `{"name":5}`, 400, "M_BAD_JSON"},
		{a, "POST", v3 + "/createRoom", `{"power_level_content_override":{"users":{"@x:y":"high"}},"room_version":"10"}`, 400, "M_INVALID_ROOM_STATE"},
		{a, "POST", v3 + "/rooms/" + room + "/invite", `{}`, 400, "M_MISSING_PARAM"},
		{a, "POST", v3 + "/rooms/" + room + "/kick", `{"user_id":"nope"}`, 400, "M_INVALID_PARAM"},
		{a, "POST", v3 + "/rooms/" + room + "/kick", `{"user_id":"` + bob.UserID.String() + `"}`, 403, "M_FORBIDDEN"},
		{a, "POST", v3 + "/rooms/" + room + "/unban", `{"user_id":"` + bob.UserID.String() + `"}`, 403, "M_FORBIDDEN"},
		{a, "POST", v3 + "/rooms/" + room + "/forget", `{}`, 400, "M_UNKNOWN"},
		{a, "PUT", v3 + "/rooms/" + room + "/typing/" + esc(bob.UserID.String()), `{"typing":true}`, 403, "M_FORBIDDEN"},
		{a, "PUT", v3 + "/rooms/" + room + "/typing/" + esc(alice.UserID.String()), `{}`, 400, "M_BAD_JSON"},
		{a, "POST", v3 + "/rooms/" + room + "/receipt/m.read/" + esc("$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaA"), `{"thread_id":""}`, 400, "M_INVALID_PARAM"},
		{a, "POST", v3 + "/rooms/" + room + "/receipt/m.bogus/" + esc("$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaA"), `{}`, 400, "M_INVALID_PARAM"},
		{a, "PUT", v3 + "/rooms/" + room + "/state/m.room.canonical_alias", `{"alias":"#nope:` + node.ServerName() + `"}`, 400, "M_BAD_ALIAS"},
		{a, "PUT", v3 + "/rooms/" + room + "/state/m.room.canonical_alias", `{"alias":"bad alias"}`, 400, "M_INVALID_PARAM"},
		{a, "PUT", v3 + "/rooms/" + room + "/state/m.room.name/" + strings.Repeat("k", 300), `{"name":"x"}`, 400, "M_TOO_LARGE"},
		{a, "PUT", v3 + "/directory/room/" + esc("#taken:"+node.ServerName()), `{"room_id":"` + other.RoomID.String() + `"}`, 409, "M_UNKNOWN"},
		{a, "PUT", v3 + "/directory/room/notalias", `{"room_id":"` + other.RoomID.String() + `"}`, 400, "M_INVALID_PARAM"},
		{b, "PUT", v3 + "/directory/room/" + esc("#bobs:"+node.ServerName()), `{"room_id":"` + other.RoomID.String() + `"}`, 403, "M_FORBIDDEN"},
		{"", "GET", v3 + "/directory/room/" + esc("#missing:"+node.ServerName()), "", 404, "M_NOT_FOUND"},
		{"", "GET", v3 + "/directory/room/missing", "", 400, "M_INVALID_PARAM"},
		{"", "GET", v3 + "/directory/list/room/" + unknown, "", 404, "M_NOT_FOUND"},
		{b, "GET", v3 + "/rooms/" + room + "/aliases", "", 403, "M_FORBIDDEN"},
		{a, "POST", v3 + "/join/" + esc("#missing:"+node.ServerName()), "{}", 404, "M_NOT_FOUND"},
		{a, "DELETE", v3 + "/rooms/" + room + "/state", "", 405, "M_UNRECOGNIZED"},
	}
	for _, c := range cases {
		var body []byte
		if c.body != "" {
			body = []byte(c.body)
		}
		expectErr(t, node, c.token, c.method, c.path, body, c.status, c.errcode)
	}
	// The canonical alias check accepts an alias that points to the room.
	st, out := rawCall(t, node, a, "PUT", v3+"/rooms/"+room+"/state/m.room.canonical_alias",
		[]byte(`{"alias":"#taken:`+node.ServerName()+`"}`))
	if st != 200 || out["event_id"] == nil {
		t.Fatalf("valid canonical alias: %d %v", st, out)
	}
}

func TestRoomTransactionSurvivesRestart(t *testing.T) {
	node := shoaltest.Start(t)
	ctx := context.Background()
	alice := node.Register("alice")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := alice.SendMessageEvent(ctx, created.RoomID, event.EventMessage, map[string]any{"body": "hi"}, mautrix.ReqSendEvent{TransactionID: "txn-1"})
	if err != nil {
		t.Fatal(err)
	}
	node.Restart()
	again, err := alice.SendMessageEvent(ctx, created.RoomID, event.EventMessage, map[string]any{"body": "hi"}, mautrix.ReqSendEvent{TransactionID: "txn-1"})
	if err != nil || again.EventID != first.EventID {
		t.Fatalf("after restart: %v %v (first %s)", again, err, first.EventID)
	}
	msgs, err := alice.Messages(ctx, created.RoomID, "", "", mautrix.DirectionBackward, &mautrix.FilterPart{Types: []event.Type{event.EventMessage}}, 10)
	if err != nil || len(msgs.Chunk) != 1 {
		t.Fatalf("messages after restart: %v", err)
	}
}
