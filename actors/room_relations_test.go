package actors_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/shoal-chat/shoal/actors/pb"
)

func (tn *testNode) sendContent(room, sender, typ string, content any) string {
	tn.t.Helper()
	rep := tn.must(&pb.SendEvent{RoomId: room, Sender: sender, Type: typ, Content: raw(content)}).(*pb.SendEventReply)
	return rep.EventId
}

func (tn *testNode) jsonOf(msg pb.Targeted, out any) {
	tn.t.Helper()
	rep := tn.must(msg).(*pb.RoomQueryReply)
	if err := json.Unmarshal(rep.Json, out); err != nil {
		tn.t.Fatalf("decode %T: %v: %s", msg, err, rep.Json)
	}
}

func TestRoomRelationsActor(t *testing.T) {
	tn := startNode(t)
	alice, bob := user("alice"), user("bob")
	room := tn.createRoom("11", alice)
	tn.member(room, alice, bob, "invite")
	tn.member(room, bob, bob, "join")
	root := tn.send(room, alice, "root")
	var replies []string
	for i := range 3 {
		replies = append(replies, tn.sendContent(room, []string{alice, bob}[i%2], "m.room.message", map[string]any{
			"msgtype": "m.text", "body": "reply", "m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}}))
	}
	// The bundle shows in the /sync timeline.
	_, obj := tn.syncRoom(&pb.SyncRoom{RoomId: room, UserId: bob, Membership: "join", Limit: 20})
	var tl struct {
		Timeline struct {
			Events []clientEvent `json:"events"`
		} `json:"timeline"`
	}
	if err := json.Unmarshal(raw(obj), &tl); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range tl.Timeline.Events {
		if e.EventID != root {
			continue
		}
		rel, _ := e.Unsigned["m.relations"].(map[string]any)
		th, _ := rel["m.thread"].(map[string]any)
		found = th != nil && th["count"] == float64(3) && th["current_user_participated"] == true
	}
	if !found {
		t.Errorf("sync timeline lacks the root's m.thread bundle: %s", raw(obj))
	}
	// Restarting keeps the index.
	tn.restart()
	var page struct {
		Chunk     []clientEvent `json:"chunk"`
		NextBatch string        `json:"next_batch"`
	}
	tn.jsonOf(&pb.RoomRelations{RoomId: room, UserId: bob, EventId: root, Limit: 2}, &page)
	if len(page.Chunk) != 2 || page.Chunk[0].EventID != replies[2] || page.NextBatch == "" {
		t.Fatalf("relations page 1 = %+v", page)
	}
	next := page.NextBatch
	page.NextBatch = ""
	tn.jsonOf(&pb.RoomRelations{RoomId: room, UserId: bob, EventId: root, Limit: 2, From: next}, &page)
	if len(page.Chunk) != 1 || page.Chunk[0].EventID != replies[0] || page.NextBatch != "" {
		t.Fatalf("relations page 2 = %+v", page)
	}
	// Redacting the root's relation events one by one empties the thread.
	for _, r := range replies {
		tn.must(&pb.SendEvent{RoomId: room, Sender: alice, Type: "m.room.redaction", Content: raw(map[string]any{}), Redacts: r})
	}
	var threads struct {
		Chunk []clientEvent `json:"chunk"`
	}
	tn.jsonOf(&pb.RoomThreads{RoomId: room, UserId: alice}, &threads)
	if len(threads.Chunk) != 0 {
		t.Errorf("threads after redacting every reply = %+v", threads.Chunk)
	}
	tn.mustFail(&pb.RoomRelations{RoomId: room, UserId: user("eve"), EventId: root}, "M_NOT_FOUND", 404)
	tn.mustFail(&pb.RoomThreads{RoomId: room, UserId: user("eve")}, "M_FORBIDDEN", 403)
	tn.mustFail(&pb.RoomTimestamp{RoomId: room, UserId: alice, Ts: 1, Dir: "x"}, "M_INVALID_PARAM", 400)
}

func TestUserDirActor(t *testing.T) {
	tn := startNode(t)
	alice, bob, carol := user("alice"), user("bob"), user("carol")
	room := tn.createRoom("11", alice)
	tn.must(&pb.Membership{RoomId: room, Sender: alice, Target: bob, Membership: "invite"})
	tn.must(&pb.Membership{RoomId: room, Sender: bob, Target: bob, Membership: "join", Profile: raw(map[string]string{"displayname": "Bob Dylan"})})
	other := tn.createRoom("11", carol)
	search := func(searcher, term string) []map[string]any {
		var out struct {
			Results []map[string]any `json:"results"`
		}
		tn.jsonOf(&pb.UserDirSearch{Searcher: searcher, Term: term}, &out)
		return out.Results
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(search(alice, "dylan")) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if r := search(alice, "dylan"); len(r) != 1 || r[0]["user_id"] != bob || r[0]["display_name"] != "Bob Dylan" {
		t.Errorf("alice finds bob: %v", r)
	}
	if r := search(alice, "carol"); len(r) != 0 {
		t.Errorf("carol's room is private: %v", r)
	}
	// Making carol's room public shows her.
	tn.setState(other, carol, "m.room.join_rules", "", map[string]string{"join_rule": "public"})
	deadline = time.Now().Add(5 * time.Second)
	for len(search(alice, "carol")) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if r := search(alice, "CAROL"); len(r) != 1 {
		t.Errorf("carol in a public room: %v", r)
	}
}
