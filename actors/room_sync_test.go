package actors_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/shoal-chat/shoal/actors/pb"
)

type syncTimeline struct {
	Events    []clientEvent `json:"events"`
	Limited   bool          `json:"limited"`
	PrevBatch string        `json:"prev_batch"`
}

type syncEvents struct {
	Events []json.RawMessage `json:"events"`
}

func decodeInto(t *testing.T, raw json.RawMessage, out any) {
	t.Helper()
	if len(raw) == 0 {
		t.Fatal("missing section")
	}
	if err := json.Unmarshal(raw, out); err != nil {
		t.Fatalf("decode %s: %v", raw, err)
	}
}

func stateTypes(t *testing.T, raw json.RawMessage) map[string]bool {
	t.Helper()
	var st struct {
		Events []clientEvent `json:"events"`
	}
	decodeInto(t, raw, &st)
	out := map[string]bool{}
	for _, e := range st.Events {
		key := e.Type
		if e.StateKey != nil && *e.StateKey != "" {
			key += "|" + *e.StateKey
		}
		out[key] = true
	}
	return out
}

func TestSyncRoomJoinShape(t *testing.T) {
	tn := startNode(t)
	alice, bob := user("alice"), user("bob")
	room := tn.createRoom("11", alice, &pb.StateEvent{Type: "m.room.name", Content: raw(map[string]string{"name": "Pub"})})
	tn.member(room, alice, bob, "invite")
	tn.member(room, bob, bob, "join")
	for i := 1; i <= 12; i++ {
		tn.send(room, alice, fmt.Sprint(i))
	}
	// Initial sync: the last 5 events, limited, with the state at their start.
	rep, obj := tn.syncRoom(&pb.SyncRoom{RoomId: room, UserId: bob, Membership: "join", Limit: 5, FullState: true})
	if rep.Empty || rep.Pos == 0 {
		t.Fatalf("initial sync reply %+v", rep)
	}
	var tl syncTimeline
	decodeInto(t, obj["timeline"], &tl)
	if len(tl.Events) != 5 || !tl.Limited || tl.Events[4].body() != "12" || tl.Events[0].body() != "8" {
		t.Fatalf("timeline %+v", tl)
	}
	if tl.PrevBatch != fmt.Sprintf("t%d", rep.Pos-5) {
		t.Fatalf("prev_batch %s, pos %d", tl.PrevBatch, rep.Pos)
	}
	for _, e := range tl.Events {
		if e.Unsigned["membership"] != "join" {
			t.Fatalf("unsigned.membership %v", e.Unsigned)
		}
	}
	st := stateTypes(t, obj["state"])
	for _, want := range []string{"m.room.create", "m.room.name", "m.room.power_levels", "m.room.member|" + bob, "m.room.member|" + alice} {
		if !st[want] {
			t.Fatalf("state lacks %s: %v", want, st)
		}
	}
	var summary map[string]any
	decodeInto(t, obj["summary"], &summary)
	if summary["m.joined_member_count"] != float64(2) || fmt.Sprint(summary["m.heroes"]) != "["+alice+"]" {
		t.Fatalf("summary %v", summary)
	}
	if _, ok := obj["unread_notifications"]; !ok {
		t.Fatal("no unread_notifications")
	}
	// /messages continues from prev_batch.
	var older messagesResp
	tn.query(&pb.RoomQuery{RoomId: room, UserId: bob, Kind: "messages", Dir: "b", From: tl.PrevBatch, Limit: 3}, &older)
	if got := bodies(older.Chunk); strings.Join(got, ",") != "7,6,5" {
		t.Fatalf("messages from prev_batch: %v", got)
	}

	// Incremental: nothing moved → empty; one message → just that.
	rep2, _ := tn.syncRoom(&pb.SyncRoom{RoomId: room, UserId: bob, Membership: "join", From: rep.Pos, EphemeralFrom: rep.EphemeralPos, Limit: 5})
	if !rep2.Empty {
		t.Fatalf("nothing moved, yet not empty: %s", rep2.Json)
	}
	tn.setState(room, alice, "m.room.topic", "", map[string]string{"topic": "beer"})
	tn.send(room, alice, "13")
	rep3, obj3 := tn.syncRoom(&pb.SyncRoom{RoomId: room, UserId: bob, Membership: "join", From: rep.Pos, EphemeralFrom: rep.EphemeralPos, Limit: 5})
	if rep3.Empty || rep3.Pos != rep.Pos+2 {
		t.Fatalf("incremental reply %+v", rep3)
	}
	decodeInto(t, obj3["timeline"], &tl)
	if len(tl.Events) != 2 || tl.Limited || tl.Events[0].Type != "m.room.topic" || tl.Events[1].body() != "13" {
		t.Fatalf("incremental timeline %+v", tl)
	}
	if st := stateTypes(t, obj3["state"]); len(st) != 0 {
		t.Fatalf("incremental state %v", st)
	}
	if _, ok := obj3["summary"]; ok {
		t.Fatal("summary sent though no member changed")
	}
	// A gap: the topic change falls before the timeline's start and comes as state.
	rep4, obj4 := tn.syncRoom(&pb.SyncRoom{RoomId: room, UserId: bob, Membership: "join", From: rep.Pos, EphemeralFrom: rep.EphemeralPos, Limit: 1})
	decodeInto(t, obj4["timeline"], &tl)
	if len(tl.Events) != 1 || !tl.Limited || tl.PrevBatch != fmt.Sprintf("t%d", rep4.Pos-1) {
		t.Fatalf("gapped timeline %+v", tl)
	}
	if st := stateTypes(t, obj4["state"]); !st["m.room.topic"] || len(st) != 1 {
		t.Fatalf("gapped state %v", st)
	}
}

func TestSyncRoomLazyMembersAndFilter(t *testing.T) {
	tn := startNode(t)
	alice, bob, carol := user("alice"), user("bob"), user("carol")
	room := tn.createRoom("11", alice)
	tn.setState(room, alice, "m.room.join_rules", "", map[string]string{"join_rule": "public"})
	tn.member(room, bob, bob, "join")
	tn.member(room, carol, carol, "join")
	for i := 0; i < 5; i++ {
		tn.send(room, bob, fmt.Sprint("b", i))
	}
	filter := raw(map[string]any{"lazy_load_members": true, "types": []string{"m.room.message"}})
	_, obj := tn.syncRoom(&pb.SyncRoom{RoomId: room, UserId: carol, Membership: "join", Limit: 3, Filter: filter, FullState: true})
	var tl syncTimeline
	decodeInto(t, obj["timeline"], &tl)
	if len(tl.Events) != 3 || !tl.Limited {
		t.Fatalf("filtered timeline %+v", tl)
	}
	st := stateTypes(t, obj["state"])
	if !st["m.room.member|"+bob] || !st["m.room.member|"+carol] || st["m.room.member|"+alice] || !st["m.room.create"] {
		t.Fatalf("lazy-loaded state %v", st)
	}
}

func TestSyncRoomInviteAndLeaveShapes(t *testing.T) {
	tn := startNode(t)
	alice, bob := user("alice"), user("bob")
	room := tn.createRoom("12", alice, &pb.StateEvent{Type: "m.room.name", Content: raw(map[string]string{"name": "Secret"})})
	tn.send(room, alice, "private")
	tn.member(room, alice, bob, "invite")
	// Invite: stripped state with the create event, the name and bob's invite.
	rep, obj := tn.syncRoom(&pb.SyncRoom{RoomId: room, UserId: bob, Membership: "invite", FullState: true})
	if rep.Empty {
		t.Fatal("invite sync empty")
	}
	var inv struct {
		Events []struct {
			Type     string          `json:"type"`
			StateKey string          `json:"state_key"`
			Sender   string          `json:"sender"`
			Content  json.RawMessage `json:"content"`
			EventID  string          `json:"event_id"`
		} `json:"events"`
	}
	decodeInto(t, obj["invite_state"], &inv)
	types := map[string]bool{}
	for _, e := range inv.Events {
		types[e.Type+"|"+e.StateKey] = true
		if e.EventID != "" {
			t.Fatal("stripped state carries event_id")
		}
	}
	if !types["m.room.create|"] || !types["m.room.name|"] || !types["m.room.member|"+bob] || types["m.room.message|"] {
		t.Fatalf("invite_state %v", types)
	}
	if _, ok := obj["timeline"]; ok {
		t.Fatal("invite has a timeline")
	}
	// Not newly: nothing to say.
	if rep, _ := tn.syncRoom(&pb.SyncRoom{RoomId: room, UserId: bob, Membership: "invite", From: rep.Pos}); !rep.Empty {
		t.Fatal("repeated invite sync not empty")
	}

	// Join, see a message, leave; events after leaving are not shown.
	tn.member(room, bob, bob, "join")
	tn.send(room, alice, "while bob is here")
	leave := tn.member(room, bob, bob, "leave")
	tn.send(room, alice, "after bob left")
	var mi struct {
		Pos uint64 `json:"pos"`
	}
	tn.query(&pb.RoomQuery{RoomId: room, UserId: bob, Kind: "membership"}, &mi)
	rep, obj = tn.syncRoom(&pb.SyncRoom{RoomId: room, UserId: bob, Membership: "leave", MembershipPos: mi.Pos, Limit: 10, FullState: true})
	var tl syncTimeline
	decodeInto(t, obj["timeline"], &tl)
	last := tl.Events[len(tl.Events)-1]
	if last.EventID != leave || strings.Contains(strings.Join(bodies(tl.Events), ","), "after bob left") {
		t.Fatalf("leave timeline %v, last %s", bodies(tl.Events), last.EventID)
	}
	if _, ok := obj["ephemeral"]; ok {
		t.Fatal("left room has ephemeral events")
	}
	if rep.Pos < mi.Pos {
		t.Fatalf("left room reply pos %d below the leave %d", rep.Pos, mi.Pos)
	}
}

func TestSyncRoomEphemeral(t *testing.T) {
	tn := startNode(t)
	alice, bob := user("alice"), user("bob")
	room := tn.createRoom("11", alice)
	tn.member(room, alice, bob, "invite")
	tn.member(room, bob, bob, "join")
	ev := tn.send(room, alice, "read me")
	base, _ := tn.syncRoom(&pb.SyncRoom{RoomId: room, UserId: bob, Membership: "join", FullState: true})

	tn.must(&pb.Typing{RoomId: room, UserId: alice, Typing: true, TimeoutMs: 60000})
	tn.must(&pb.Receipt{RoomId: room, UserId: alice, ReceiptType: "m.read", EventId: ev, Ts: 1234})
	tn.must(&pb.Receipt{RoomId: room, UserId: alice, ReceiptType: "m.read.private", EventId: ev, ThreadId: "main"})
	rep, obj := tn.syncRoom(&pb.SyncRoom{RoomId: room, UserId: bob, Membership: "join", From: base.Pos, EphemeralFrom: base.EphemeralPos})
	if rep.Empty || rep.EphemeralPos <= base.EphemeralPos {
		t.Fatalf("ephemeral sync %+v (base %d)", rep, base.EphemeralPos)
	}
	var eph struct {
		Events []struct {
			Type    string          `json:"type"`
			Content json.RawMessage `json:"content"`
		} `json:"events"`
	}
	decodeInto(t, obj["ephemeral"], &eph)
	got := map[string]string{}
	for _, e := range eph.Events {
		got[e.Type] = string(e.Content)
	}
	if !strings.Contains(got["m.typing"], alice) {
		t.Fatalf("typing %v", got)
	}
	if !strings.Contains(got["m.receipt"], `"m.read":{"`+alice+`":{"ts":1234}}`) || strings.Contains(got["m.receipt"], "m.read.private") {
		t.Fatalf("receipts for bob %s", got["m.receipt"])
	}
	// Alice sees her own private receipt.
	_, obj = tn.syncRoom(&pb.SyncRoom{RoomId: room, UserId: alice, Membership: "join", From: base.Pos, EphemeralFrom: base.EphemeralPos})
	if !strings.Contains(string(obj["ephemeral"]), "m.read.private") {
		t.Fatalf("alice's ephemeral %s", obj["ephemeral"])
	}
	// Stopping typing is a change too; receipts already seen are not repeated.
	tn.must(&pb.Typing{RoomId: room, UserId: alice, Typing: false})
	rep2, obj := tn.syncRoom(&pb.SyncRoom{RoomId: room, UserId: bob, Membership: "join", From: rep.Pos, EphemeralFrom: rep.EphemeralPos})
	if rep2.Empty || !strings.Contains(string(obj["ephemeral"]), `"user_ids":[]`) || strings.Contains(string(obj["ephemeral"]), "m.receipt") {
		t.Fatalf("after typing stopped: %s", obj["ephemeral"])
	}
	// Receipts survive a restart; the ephemeral position keeps growing.
	tn.restart()
	rep3, obj := tn.syncRoom(&pb.SyncRoom{RoomId: room, UserId: bob, Membership: "join", FullState: true})
	if rep3.EphemeralPos < rep2.EphemeralPos || !strings.Contains(string(obj["ephemeral"]), `"ts":1234`) {
		t.Fatalf("after restart eph %d (was %d): %s", rep3.EphemeralPos, rep2.EphemeralPos, obj["ephemeral"])
	}
	// Not in the room: no typing, no receipts.
	tn.mustFail(&pb.Typing{RoomId: room, UserId: user("eve"), Typing: true}, "M_FORBIDDEN", 403)
	tn.mustFail(&pb.Receipt{RoomId: room, UserId: user("eve"), ReceiptType: "m.read", EventId: ev}, "M_FORBIDDEN", 403)
	tn.mustFail(&pb.Receipt{RoomId: room, UserId: bob, ReceiptType: "m.read", EventId: "$missing"}, "M_NOT_FOUND", 404)
}
