package actors_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/storage"
)

func TestRoomCreateInEveryVersionShape(t *testing.T) {
	tn := startNode(t)
	alice := user("alice")
	v1ID := regexp.MustCompile(`^\$[A-Za-z0-9_-]+:test\.local$`)
	v3ID := regexp.MustCompile(`^\$[A-Za-z0-9+/]{43}$`)
	v4ID := regexp.MustCompile(`^\$[A-Za-z0-9_-]{43}$`)
	for _, v := range []string{"1", "3", "6", "10", "11", "12"} {
		t.Run("v"+v, func(t *testing.T) {
			room := tn.createRoom(v, alice)
			if v == "12" {
				if strings.Contains(room, ":") {
					t.Fatalf("v12 room ID %s has a server part", room)
				}
			} else if !strings.HasSuffix(room, ":"+testServer) {
				t.Fatalf("room ID %s", room)
			}
			evID := tn.send(room, alice, "hello "+v)
			switch v {
			case "1":
				if !v1ID.MatchString(evID) {
					t.Fatalf("v1 event ID %s", evID)
				}
			case "3":
				if !v3ID.MatchString(evID) {
					t.Fatalf("v3 event ID %s", evID)
				}
			default:
				if !v4ID.MatchString(evID) {
					t.Fatalf("v%s event ID %s", v, evID)
				}
			}
			var create clientEvent
			tn.query(&pb.RoomQuery{RoomId: room, UserId: alice, Kind: "state_event", Type: "m.room.create"}, &create)
			var cc map[string]any
			_ = json.Unmarshal(create.Content, &cc)
			if cc["room_version"] != v {
				t.Fatalf("create content %v", cc)
			}
			if create.RoomID != room {
				t.Fatalf("create event room_id %q, want %q", create.RoomID, room)
			}
			var state []clientEvent
			tn.query(&pb.RoomQuery{RoomId: room, UserId: alice, Kind: "state"}, &state)
			types := map[string]bool{}
			for _, e := range state {
				types[e.Type] = true
			}
			for _, want := range []string{"m.room.create", "m.room.member", "m.room.power_levels", "m.room.join_rules", "m.room.history_visibility"} {
				if !types[want] {
					t.Fatalf("state lacks %s: %v", want, types)
				}
			}
			var msgs messagesResp
			tn.query(&pb.RoomQuery{RoomId: room, UserId: alice, Kind: "messages", Dir: "b", Limit: 1}, &msgs)
			if len(msgs.Chunk) != 1 || msgs.Chunk[0].EventID != evID || msgs.Chunk[0].body() != "hello "+v {
				t.Fatalf("latest message %+v", msgs.Chunk)
			}
			// The stored event verifies: its ID is its reference hash (v3+).
			verifyStoredEvent(t, tn, room, evID, v)
		})
	}
}

// verifyStoredEvent checks the content hash and, from v3, that the event ID
// is the reference hash of the stored PDU.
func verifyStoredEvent(t *testing.T, tn *testNode, room, evID, v string) {
	t.Helper()
	tn.stop()
	defer tn.start()
	rv := eventgraph.MustRoomVersion(eventgraph.RoomVersionID(v))
	p := storage.PartitionOf(pb.RoomIdentity(room), 4)
	db, err := bbolt.Open(filepath.Join(tn.dir, storage.PartitionFile(p)), 0o600, &bbolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bbolt.Tx) error {
		rec, err := storage.Room(tx, pb.RoomIdentity(room)).Event(evID)
		if err != nil || rec == nil {
			return fmt.Errorf("event %s not stored: %v", evID, err)
		}
		// A redacted event keeps its hashes, so only the unredacted one
		// still matches its content hash; the reference hash holds for both.
		if err := eventgraph.CheckContentHash(rec.PDU); err != nil && rec.RedactedBy == "" {
			return err
		}
		if redacted := rec.RedactedBy != ""; redacted != strings.Contains(t.Name(), "Redaction") {
			return fmt.Errorf("event %s redacted_by %q", evID, rec.RedactedBy)
		}
		id, err := eventgraph.ComputeEventID(rec.PDU, rv)
		if err != nil {
			return err
		}
		if id != evID {
			return fmt.Errorf("computed event ID %s, stored under %s", id, evID)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestRoomUnsupportedVersionAndUnknownRoom(t *testing.T) {
	tn := startNode(t)
	tn.mustFail(&pb.CreateRoom{RoomId: "!x:test.local", RoomVersion: "99", Creator: user("alice")},
		"M_UNSUPPORTED_ROOM_VERSION", http.StatusBadRequest)
	ghost := "!ghost:test.local"
	tn.mustFail(&pb.RoomQuery{RoomId: ghost, UserId: user("alice"), Kind: "state"}, "M_FORBIDDEN", http.StatusForbidden)
	tn.mustFail(&pb.RoomQuery{RoomId: ghost, UserId: user("alice"), Kind: "event", EventId: "$e"}, "M_NOT_FOUND", http.StatusNotFound)
	tn.mustFail(&pb.Membership{RoomId: ghost, Sender: user("alice"), Membership: "join"}, "M_NOT_FOUND", http.StatusNotFound)
	tn.mustFail(&pb.SendEvent{RoomId: ghost, Sender: user("alice"), Type: "m.room.message", Content: raw(map[string]string{})},
		"M_FORBIDDEN", http.StatusForbidden)
	// Asking a never-created room wrote nothing.
	tn.stop()
	defer tn.start()
	p := storage.PartitionOf(pb.RoomIdentity(ghost), 4)
	db, err := bbolt.Open(filepath.Join(tn.dir, storage.PartitionFile(p)), 0o600, &bbolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_ = db.View(func(tx *bbolt.Tx) error {
		if tx.Bucket([]byte(pb.RoomIdentity(ghost))) != nil {
			t.Fatal("a query to an unknown room created its bucket")
		}
		return nil
	})
	if _, err := os.Stat(tn.dir); err != nil {
		t.Fatal(err)
	}
}

func TestRoomTxnIdempotentAcrossRestart(t *testing.T) {
	tn := startNode(t)
	alice := user("alice")
	room := tn.createRoom("11", alice)
	send := func(txn, body string) string {
		rep := tn.must(&pb.SendEvent{RoomId: room, Sender: alice, DeviceId: "DEV", TxnId: txn, Type: "m.room.message",
			Content: raw(map[string]string{"msgtype": "m.text", "body": body})}).(*pb.SendEventReply)
		return rep.EventId
	}
	first := send("t1", "one")
	if again := send("t1", "one"); again != first {
		t.Fatalf("repeat of t1 sent %s, first was %s", again, first)
	}
	tn.restart()
	if again := send("t1", "one"); again != first {
		t.Fatalf("after restart, repeat of t1 sent %s, first was %s", again, first)
	}
	// Another device's t1 is another transaction.
	other := tn.must(&pb.SendEvent{RoomId: room, Sender: alice, DeviceId: "DEV2", TxnId: "t1", Type: "m.room.message",
		Content: raw(map[string]string{"msgtype": "m.text", "body": "two"})}).(*pb.SendEventReply)
	if other.EventId == first {
		t.Fatal("a different device's transaction was deduplicated")
	}
	var msgs messagesResp
	tn.query(&pb.RoomQuery{RoomId: room, UserId: alice, Kind: "messages", Dir: "b", Limit: 10,
		Filter: raw(map[string]any{"types": []string{"m.room.message"}})}, &msgs)
	if got := bodies(msgs.Chunk); strings.Join(got, ",") != "two,one" {
		t.Fatalf("messages %v, want two,one", got)
	}
}

func TestRoomAuthRefusals(t *testing.T) {
	tn := startNode(t)
	alice, bob, carol := user("alice"), user("bob"), user("carol")
	room := tn.createRoom("10", alice)
	// Not joined: cannot send.
	tn.mustFail(&pb.SendEvent{RoomId: room, Sender: bob, Type: "m.room.message", Content: raw(map[string]string{"body": "x"})},
		"M_FORBIDDEN", http.StatusForbidden)
	// Invite-only: cannot join uninvited.
	tn.mustFail(&pb.Membership{RoomId: room, Sender: bob, Membership: "join"}, "M_FORBIDDEN", http.StatusForbidden)
	tn.member(room, alice, bob, "invite")
	tn.member(room, bob, bob, "join")
	// Bob has power 0: cannot change power levels, ban, or kick.
	tn.mustFail(&pb.SendEvent{RoomId: room, Sender: bob, Type: "m.room.power_levels", IsState: true,
		Content: raw(map[string]any{"users": map[string]int{bob: 100}})}, "M_FORBIDDEN", http.StatusForbidden)
	tn.mustFail(&pb.Membership{RoomId: room, Sender: bob, Target: alice, Membership: "ban"}, "M_FORBIDDEN", http.StatusForbidden)
	tn.mustFail(&pb.Membership{RoomId: room, Sender: bob, Target: alice, Membership: "leave"}, "M_FORBIDDEN", http.StatusForbidden)
	// Kicking someone not in the room is refused before the auth rules.
	tn.mustFail(&pb.Membership{RoomId: room, Sender: alice, Target: carol, Membership: "leave"}, "M_FORBIDDEN", http.StatusForbidden)
	// Too large: 70 000 bytes of body.
	tn.mustFail(&pb.SendEvent{RoomId: room, Sender: bob, Type: "m.room.message",
		Content: raw(map[string]string{"body": strings.Repeat("x", 70000)})}, "M_TOO_LARGE", http.StatusRequestEntityTooLarge)
	// Floats are not canonical JSON from v6.
	tn.mustFail(&pb.SendEvent{RoomId: room, Sender: bob, Type: "m.room.message",
		Content: []byte(`{"body":"x","n":1.5}`)}, "M_BAD_JSON", http.StatusBadRequest)
	// Redacting someone else's event needs the redact power.
	ev := tn.send(room, alice, "mine")
	tn.mustFail(&pb.SendEvent{RoomId: room, Sender: bob, Type: "m.room.redaction", Redacts: ev, Content: raw(map[string]any{})},
		"M_FORBIDDEN", http.StatusForbidden)
	// A v12 room refuses creators in power_levels.users.
	room12 := tn.createRoom("12", alice)
	tn.mustFail(&pb.SendEvent{RoomId: room12, Sender: alice, Type: "m.room.power_levels", IsState: true,
		Content: raw(map[string]any{"users": map[string]int{alice: 100}})}, "M_FORBIDDEN", http.StatusForbidden)
}

func TestRoomMembershipTransitions(t *testing.T) {
	tn := startNode(t)
	alice, bob, carol := user("alice"), user("bob"), user("carol")
	room := tn.createRoom("11", alice)
	membership := func(u string) string {
		var out struct {
			Membership string `json:"membership"`
		}
		tn.query(&pb.RoomQuery{RoomId: room, UserId: u, Kind: "membership"}, &out)
		return out.Membership
	}
	steps := []struct {
		sender, target, op, want string
	}{
		{alice, bob, "invite", "invite"},
		{bob, bob, "leave", "leave"}, // reject
		{alice, bob, "invite", "invite"},
		{bob, bob, "join", "join"},
		{alice, bob, "leave", "leave"}, // kick
		{alice, bob, "ban", "ban"},
		{alice, bob, "unban", "leave"},
		{alice, bob, "invite", "invite"},
		{bob, bob, "join", "join"},
		{bob, bob, "leave", "leave"},
	}
	for i, s := range steps {
		tn.member(room, s.sender, s.target, s.op)
		if got := membership(s.target); got != s.want {
			t.Fatalf("step %d (%s %s %s): membership %q, want %q", i, s.sender, s.op, s.target, got, s.want)
		}
	}
	// Banned users cannot join or be invited; unban of a non-banned user fails.
	tn.member(room, alice, carol, "ban")
	tn.mustFail(&pb.Membership{RoomId: room, Sender: carol, Membership: "join"}, "M_FORBIDDEN", http.StatusForbidden)
	tn.mustFail(&pb.Membership{RoomId: room, Sender: alice, Target: carol, Membership: "invite"}, "M_FORBIDDEN", http.StatusForbidden)
	tn.mustFail(&pb.Membership{RoomId: room, Sender: alice, Target: bob, Membership: "unban"}, "M_FORBIDDEN", http.StatusForbidden)

	// Joining twice is idempotent: the same event comes back.
	tn.member(room, alice, bob, "invite")
	first := tn.member(room, bob, bob, "join")
	if again := tn.member(room, bob, bob, "join"); again != first {
		t.Fatalf("second join sent %s, first was %s", again, first)
	}

	// Knocking (v7+) needs the knock join rule.
	dave := user("dave")
	tn.mustFail(&pb.Membership{RoomId: room, Sender: dave, Membership: "knock"}, "M_FORBIDDEN", http.StatusForbidden)
	tn.setState(room, alice, "m.room.join_rules", "", map[string]string{"join_rule": "knock"})
	tn.member(room, dave, dave, "knock")
	if got := membership(dave); got != "knock" {
		t.Fatalf("knock: %q", got)
	}
	tn.member(room, dave, dave, "leave") // retract
	if got := membership(dave); got != "leave" {
		t.Fatalf("retract knock: %q", got)
	}
	// Knocking is refused in room versions without it.
	room6 := tn.createRoom("6", alice)
	tn.mustFail(&pb.Membership{RoomId: room6, Sender: dave, Membership: "knock"}, "M_FORBIDDEN", http.StatusForbidden)

	// Public rooms admit anyone.
	tn.setState(room, alice, "m.room.join_rules", "", map[string]string{"join_rule": "public"})
	tn.member(room, dave, dave, "join")
	var joined struct {
		Joined map[string]struct {
			DisplayName *string `json:"display_name"`
		} `json:"joined"`
	}
	tn.query(&pb.RoomQuery{RoomId: room, UserId: alice, Kind: "joined_members"}, &joined)
	if len(joined.Joined) != 3 || joined.Joined[alice].DisplayName == nil || *joined.Joined[alice].DisplayName != "Creator" {
		t.Fatalf("joined members %+v", joined.Joined)
	}
	// Members with a membership filter, and at an earlier point.
	var members struct {
		Chunk []clientEvent `json:"chunk"`
	}
	tn.query(&pb.RoomQuery{RoomId: room, UserId: alice, Kind: "members", NotMembership: "join"}, &members)
	if len(members.Chunk) != 1 || *members.Chunk[0].StateKey != carol {
		t.Fatalf("non-joined members %+v", members.Chunk)
	}
	tn.query(&pb.RoomQuery{RoomId: room, UserId: alice, Kind: "members", At: "t2"}, &members)
	if len(members.Chunk) != 1 || *members.Chunk[0].StateKey != alice {
		t.Fatalf("members at t2 %+v", members.Chunk)
	}
}

func TestRoomRestrictedJoin(t *testing.T) {
	tn := startNode(t)
	alice, bob := user("alice"), user("bob")
	space := tn.createRoom("10", alice)
	tn.setState(space, alice, "m.room.join_rules", "", map[string]string{"join_rule": "public"})
	tn.member(space, bob, bob, "join")
	room := tn.createRoom("10", alice)
	tn.setState(room, alice, "m.room.join_rules", "", map[string]any{"join_rule": "restricted",
		"allow": []map[string]string{{"type": "m.room_membership", "room_id": space}}})
	// Without the gateway's check the join is refused.
	tn.mustFail(&pb.Membership{RoomId: room, Sender: bob, Membership: "join"}, "M_FORBIDDEN", http.StatusForbidden)
	// A room not on the allow list does not help.
	tn.mustFail(&pb.Membership{RoomId: room, Sender: bob, Membership: "join", RestrictedVia: "!other:test.local"},
		"M_FORBIDDEN", http.StatusForbidden)
	id := tn.must(&pb.Membership{RoomId: room, Sender: bob, Membership: "join", RestrictedVia: space}).(*pb.SendEventReply).EventId
	var ev clientEvent
	tn.query(&pb.RoomQuery{RoomId: room, UserId: bob, Kind: "event", EventId: id}, &ev)
	var c map[string]string
	_ = json.Unmarshal(ev.Content, &c)
	if c["join_authorised_via_users_server"] != alice || c["membership"] != "join" {
		t.Fatalf("restricted join content %v", c)
	}
}

func TestRoomStateSurvivesRestart(t *testing.T) {
	tn := startNode(t)
	alice, bob := user("alice"), user("bob")
	room := tn.createRoom("12", alice)
	tn.setState(room, alice, "m.room.name", "", map[string]string{"name": "Before"})
	tn.setState(room, alice, "m.room.name", "", map[string]string{"name": "After"})
	tn.member(room, alice, bob, "invite")
	tn.member(room, bob, bob, "join")
	last := tn.send(room, bob, "before restart")
	tn.restart()
	var name clientEvent
	tn.query(&pb.RoomQuery{RoomId: room, UserId: bob, Kind: "state_event", Type: "m.room.name"}, &name)
	if !strings.Contains(string(name.Content), "After") {
		t.Fatalf("name after restart %s", name.Content)
	}
	if name.Unsigned["prev_content"] == nil {
		t.Fatalf("no prev_content: %v", name.Unsigned)
	}
	// New events continue the graph: prev_events is the last event before the restart.
	next := tn.send(room, bob, "after restart")
	var ctx struct {
		EventsBefore []clientEvent `json:"events_before"`
		Event        clientEvent   `json:"event"`
	}
	tn.query(&pb.RoomQuery{RoomId: room, UserId: bob, Kind: "context", EventId: next, Limit: 2}, &ctx)
	if ctx.Event.EventID != next || len(ctx.EventsBefore) != 1 || ctx.EventsBefore[0].EventID != last {
		t.Fatalf("context %+v", ctx)
	}
	// Bob, joined before the restart, can still send; a stranger still cannot.
	tn.mustFail(&pb.SendEvent{RoomId: room, Sender: user("eve"), Type: "m.room.message", Content: raw(map[string]string{})},
		"M_FORBIDDEN", http.StatusForbidden)
}

func TestRoomMessagesBothDirections(t *testing.T) {
	tn := startNode(t)
	alice := user("alice")
	room := tn.createRoom("11", alice)
	for i := 1; i <= 25; i++ {
		tn.send(room, alice, fmt.Sprint(i))
	}
	onlyMsgs := raw(map[string]any{"types": []string{"m.room.message"}})
	// Backwards from the end, in pages of 10.
	var got []string
	from := ""
	for page := 0; page < 10; page++ {
		var r messagesResp
		tn.query(&pb.RoomQuery{RoomId: room, UserId: alice, Kind: "messages", Dir: "b", From: from, Limit: 10, Filter: onlyMsgs}, &r)
		got = append(got, bodies(r.Chunk)...)
		if r.End == "" {
			break
		}
		from = r.End
	}
	want := make([]string, 0, 25)
	for i := 25; i >= 1; i-- {
		want = append(want, fmt.Sprint(i))
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("backwards: %v", got)
	}
	// Forwards from the start.
	got = nil
	from = "t0"
	for page := 0; page < 10; page++ {
		var r messagesResp
		tn.query(&pb.RoomQuery{RoomId: room, UserId: alice, Kind: "messages", Dir: "f", From: from, Limit: 7, Filter: onlyMsgs}, &r)
		got = append(got, bodies(r.Chunk)...)
		if r.End == "" {
			break
		}
		from = r.End
	}
	for i, j := 0, len(want)-1; i < j; i, j = i+1, j-1 {
		want[i], want[j] = want[j], want[i]
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("forwards: %v", got)
	}
	// A bounded window with to.
	var r messagesResp
	tn.query(&pb.RoomQuery{RoomId: room, UserId: alice, Kind: "messages", Dir: "b", From: "t10", To: "t7", Limit: 50}, &r)
	if len(r.Chunk) != 3 {
		t.Fatalf("window (t7, t10]: %d events", len(r.Chunk))
	}
	// A /sync next_batch stands for the room's current end.
	tn.query(&pb.RoomQuery{RoomId: room, UserId: alice, Kind: "messages", Dir: "b", From: "u17", Limit: 1}, &r)
	if got := bodies(r.Chunk); len(got) != 1 || got[0] != "25" {
		t.Fatalf("from a sync token: %v", got)
	}
	tn.mustFail(&pb.RoomQuery{RoomId: room, UserId: alice, Kind: "messages", Dir: "b", From: "bogus"}, "M_INVALID_PARAM", http.StatusBadRequest)
	tn.mustFail(&pb.RoomQuery{RoomId: room, UserId: user("stranger"), Kind: "messages", Dir: "b"}, "M_FORBIDDEN", http.StatusForbidden)
}

func TestRoomHistoryVisibility(t *testing.T) {
	tn := startNode(t)
	alice, bob, carol := user("alice"), user("bob"), user("carol")
	room := tn.createRoom("11", alice)
	tn.setState(room, alice, "m.room.history_visibility", "", map[string]string{"history_visibility": "joined"})
	secret := tn.send(room, alice, "before bob")
	tn.member(room, alice, bob, "invite")
	tn.member(room, bob, bob, "join")
	tn.send(room, alice, "after bob")
	var r messagesResp
	tn.query(&pb.RoomQuery{RoomId: room, UserId: bob, Kind: "messages", Dir: "b", Limit: 50}, &r)
	if got := bodies(r.Chunk); strings.Join(got, ",") != "after bob" {
		t.Fatalf("bob sees %v", got)
	}
	tn.mustFail(&pb.RoomQuery{RoomId: room, UserId: bob, Kind: "event", EventId: secret}, "M_NOT_FOUND", http.StatusNotFound)
	// unsigned.membership (MSC4115) is the requester's membership after the
	// event: join for what bob saw as a member, leave before he was one
	// (the room's first events, sent while history was shared, stay visible).
	for _, e := range r.Chunk {
		want := "join"
		if e.Type == "m.room.create" {
			want = "leave"
		}
		if (e.Type == "m.room.message" || e.Type == "m.room.create") && e.Unsigned["membership"] != want {
			t.Fatalf("%s %s unsigned.membership %v, want %s", e.Type, e.EventID, e.Unsigned["membership"], want)
		}
	}
	// After bob leaves, nothing new is visible to him, but the old remains.
	tn.member(room, bob, bob, "leave")
	tn.send(room, alice, "after bob left")
	tn.query(&pb.RoomQuery{RoomId: room, UserId: bob, Kind: "messages", Dir: "b", Limit: 50}, &r)
	if got := bodies(r.Chunk); strings.Join(got, ",") != "after bob" {
		t.Fatalf("bob after leaving sees %v", got)
	}
	// shared: a newly joined member sees everything before, world_readable: anyone.
	room2 := tn.createRoom("11", alice)
	tn.send(room2, alice, "old")
	tn.member(room2, alice, carol, "invite")
	tn.member(room2, carol, carol, "join")
	tn.query(&pb.RoomQuery{RoomId: room2, UserId: carol, Kind: "messages", Dir: "b", Limit: 50}, &r)
	if got := bodies(r.Chunk); strings.Join(got, ",") != "old" {
		t.Fatalf("shared history for carol: %v", got)
	}
	tn.mustFail(&pb.RoomQuery{RoomId: room2, UserId: user("dan"), Kind: "messages", Dir: "b"}, "M_FORBIDDEN", http.StatusForbidden)
	tn.setState(room2, alice, "m.room.history_visibility", "", map[string]string{"history_visibility": "world_readable"})
	tn.send(room2, alice, "public")
	tn.query(&pb.RoomQuery{RoomId: room2, UserId: user("dan"), Kind: "messages", Dir: "b", Limit: 50}, &r)
	if got := bodies(r.Chunk); strings.Join(got, ",") != "public" {
		t.Fatalf("world readable for dan: %v", got)
	}
}

func TestRoomRedaction(t *testing.T) {
	tn := startNode(t)
	alice, bob := user("alice"), user("bob")
	for _, v := range []string{"6", "11"} {
		t.Run("v"+v, func(t *testing.T) {
			room := tn.createRoom(v, alice)
			tn.member(room, alice, bob, "invite")
			tn.member(room, bob, bob, "join")
			target := tn.send(room, bob, "oops")
			// Bob may redact his own event.
			red := tn.must(&pb.SendEvent{RoomId: room, Sender: bob, Type: "m.room.redaction", Redacts: target,
				Content: raw(map[string]string{"reason": "typo"}), DeviceId: "D", TxnId: "r1"}).(*pb.SendEventReply).EventId
			var ev clientEvent
			tn.query(&pb.RoomQuery{RoomId: room, UserId: alice, Kind: "event", EventId: target}, &ev)
			if string(ev.Content) != "{}" {
				t.Fatalf("redacted content %s", ev.Content)
			}
			because, _ := ev.Unsigned["redacted_because"].(map[string]any)
			if because == nil || because["event_id"] != red {
				t.Fatalf("redacted_because %v", ev.Unsigned)
			}
			var redEv clientEvent
			tn.query(&pb.RoomQuery{RoomId: room, UserId: alice, Kind: "event", EventId: red}, &redEv)
			var rc map[string]any
			_ = json.Unmarshal(redEv.Content, &rc)
			if v == "11" && rc["redacts"] != target {
				t.Fatalf("v11 redaction content %v", rc)
			}
			// Alice (power 100) may redact Bob's events too.
			other := tn.send(room, bob, "spam")
			tn.must(&pb.SendEvent{RoomId: room, Sender: alice, Type: "m.room.redaction", Redacts: other, Content: raw(map[string]any{})})
			tn.mustFail(&pb.SendEvent{RoomId: room, Sender: alice, Type: "m.room.redaction", Redacts: "$nope", Content: raw(map[string]any{})},
				"M_NOT_FOUND", http.StatusNotFound)
			verifyStoredEvent(t, tn, room, target, v)
		})
	}
}

func TestRoomNotices(t *testing.T) {
	tn := startNode(t)
	alice, bob, remote := user("alice"), user("bob"), "@zed:elsewhere.example"
	room := tn.createRoom("11", alice)
	tn.notices.waitFor(t, "creator joined", func(n *pb.RoomNotice) bool {
		return n.UserId == alice && n.RoomId == room && n.Membership == "join"
	})
	tn.member(room, alice, bob, "invite")
	inv := tn.notices.waitFor(t, "bob invited", func(n *pb.RoomNotice) bool {
		return n.UserId == bob && n.Membership == "invite"
	})
	tn.member(room, alice, remote, "invite")
	tn.member(room, bob, bob, "join")
	tn.notices.waitFor(t, "bob joined", func(n *pb.RoomNotice) bool {
		return n.UserId == bob && n.Membership == "join" && n.Pos > inv.Pos
	})
	tn.send(room, alice, "hi")
	var msgPos uint64
	n := tn.notices.waitFor(t, "bob told of the message", func(n *pb.RoomNotice) bool {
		return n.UserId == bob && n.Membership == "" && n.Pos >= inv.Pos+3
	})
	msgPos = n.Pos
	// Typing moves the ephemeral position and tells joined members.
	tn.must(&pb.Typing{RoomId: room, UserId: alice, Typing: true, TimeoutMs: 30000})
	tn.notices.waitFor(t, "typing", func(n *pb.RoomNotice) bool {
		return n.UserId == bob && n.EphemeralPos > 0 && n.Pos == msgPos
	})
	tn.notices.mu.Lock()
	defer tn.notices.mu.Unlock()
	for _, n := range tn.notices.notices {
		if strings.HasSuffix(n.UserId, ":elsewhere.example") {
			t.Fatalf("remote user got a notice: %v", n)
		}
	}
}

func TestRoomUnsignedTransactionID(t *testing.T) {
	tn := startNode(t)
	alice := user("alice")
	room := tn.createRoom("11", alice)
	id := tn.must(&pb.SendEvent{RoomId: room, Sender: alice, DeviceId: "PHONE", TxnId: "abc", Type: "m.room.message",
		Content: raw(map[string]string{"body": "x"})}).(*pb.SendEventReply).EventId
	check := func(device string, want bool) {
		t.Helper()
		_, obj := tn.syncRoom(&pb.SyncRoom{RoomId: room, UserId: alice, DeviceId: device, Membership: "join", Limit: 5})
		var tl struct {
			Events []clientEvent `json:"events"`
		}
		_ = json.Unmarshal(obj["timeline"], &tl)
		for _, e := range tl.Events {
			if e.EventID == id {
				if has := e.Unsigned["transaction_id"] == "abc"; has != want {
					t.Fatalf("device %s: transaction_id present %v, want %v", device, has, want)
				}
				return
			}
		}
		t.Fatalf("event not in timeline")
	}
	check("PHONE", true)
	check("LAPTOP", false)
}
