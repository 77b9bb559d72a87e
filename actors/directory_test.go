package actors_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/shoal-chat/shoal/actors/pb"
)

func TestAliasActor(t *testing.T) {
	tn := startNode(t)
	alice, bob := user("alice"), user("bob")
	alias := "#pub:" + testServer
	tn.mustFail(&pb.AliasOp{Alias: alias, Op: "get"}, "M_NOT_FOUND", http.StatusNotFound)
	rep := tn.must(&pb.AliasOp{Alias: alias, Op: "set", RoomId: "!r1:test.local", UserId: alice}).(*pb.AliasReply)
	if rep.RoomId != "!r1:test.local" || rep.Creator != alice || len(rep.Servers) != 1 || rep.Servers[0] != testServer {
		t.Fatalf("set reply %+v", rep)
	}
	tn.mustFail(&pb.AliasOp{Alias: alias, Op: "set", RoomId: "!r2:test.local", UserId: bob}, "M_UNKNOWN", http.StatusConflict)
	tn.restart()
	got := tn.must(&pb.AliasOp{Alias: alias, Op: "get"}).(*pb.AliasReply)
	if got.RoomId != "!r1:test.local" {
		t.Fatalf("after restart %+v", got)
	}
	// Only the creator, or a caller the gateway vouches for, may delete.
	tn.mustFail(&pb.AliasOp{Alias: alias, Op: "delete", UserId: bob}, "M_FORBIDDEN", http.StatusForbidden)
	tn.mustFail(&pb.AliasOp{Alias: alias, Op: "delete", UserId: alice, RoomId: "!other:test.local"}, "M_NOT_FOUND", http.StatusNotFound)
	tn.must(&pb.AliasOp{Alias: alias, Op: "delete", UserId: bob, Admin: true})
	tn.mustFail(&pb.AliasOp{Alias: alias, Op: "get"}, "M_NOT_FOUND", http.StatusNotFound)
	tn.must(&pb.AliasOp{Alias: alias, Op: "set", RoomId: "!r2:test.local", UserId: bob})
}

type listing struct {
	Chunk []struct {
		RoomID           string `json:"room_id"`
		Name             string `json:"name"`
		NumJoinedMembers int    `json:"num_joined_members"`
		RoomType         string `json:"room_type"`
		WorldReadable    bool   `json:"world_readable"`
		GuestCanJoin     bool   `json:"guest_can_join"`
		JoinRule         string `json:"join_rule"`
	} `json:"chunk"`
	NextBatch string `json:"next_batch"`
	PrevBatch string `json:"prev_batch"`
	Total     int    `json:"total_room_count_estimate"`
}

func (tn *testNode) list(op *pb.DirectoryOp) listing {
	tn.t.Helper()
	op.Op = "list"
	rep := tn.must(op).(*pb.DirectoryReply)
	var l listing
	if err := json.Unmarshal(rep.Json, &l); err != nil {
		tn.t.Fatal(err)
	}
	return l
}

// publish makes alice publish room the way the gateway does.
func (tn *testNode) publish(room, userID, vis string) {
	tn.t.Helper()
	rep := tn.must(&pb.RoomPublish{RoomId: room, UserId: userID, Visibility: vis}).(*pb.RoomPublishReply)
	op := &pb.DirectoryOp{Op: "unpublish", RoomId: room, Pos: rep.Pos}
	if vis == "public" {
		op = &pb.DirectoryOp{Op: "publish", RoomId: room, Summary: rep.Summary, Pos: rep.Pos}
	}
	tn.must(op)
}

func TestDirectoryPublishRefreshAndList(t *testing.T) {
	tn := startNode(t)
	alice, bob := user("alice"), user("bob")
	var rooms []string
	for i := 0; i < 3; i++ {
		r := tn.createRoom("11", alice, &pb.StateEvent{Type: "m.room.name", Content: raw(map[string]string{"name": fmt.Sprint("Room ", i)})})
		tn.setState(r, alice, "m.room.join_rules", "", map[string]string{"join_rule": "public"})
		rooms = append(rooms, r)
	}
	space := tn.createRoom("11", alice, &pb.StateEvent{Type: "m.room.name", Content: raw(map[string]string{"name": "A space"})})
	// Not everyone may publish.
	tn.member(rooms[0], bob, bob, "join")
	tn.mustFail(&pb.RoomPublish{RoomId: rooms[0], UserId: bob, Visibility: "public"}, "M_FORBIDDEN", http.StatusForbidden)
	tn.mustFail(&pb.RoomPublish{RoomId: "!nope:test.local"}, "M_NOT_FOUND", http.StatusNotFound)
	for _, r := range append(rooms, space) {
		tn.publish(r, alice, "public")
	}
	if vis := tn.must(&pb.RoomPublish{RoomId: rooms[1]}).(*pb.RoomPublishReply); vis.Visibility != "public" {
		t.Fatalf("visibility %s", vis.Visibility)
	}
	l := tn.list(&pb.DirectoryOp{})
	if l.Total != 4 || l.Chunk[0].RoomID != rooms[0] || l.Chunk[0].NumJoinedMembers != 2 {
		t.Fatalf("listing %+v", l)
	}
	// Paging.
	l = tn.list(&pb.DirectoryOp{Limit: 3})
	if len(l.Chunk) != 3 || l.NextBatch == "" {
		t.Fatalf("page 1 %+v", l)
	}
	l2 := tn.list(&pb.DirectoryOp{Limit: 3, Since: l.NextBatch})
	if len(l2.Chunk) != 1 || l2.NextBatch != "" || l2.PrevBatch == "" {
		t.Fatalf("page 2 %+v", l2)
	}
	// Search.
	l = tn.list(&pb.DirectoryOp{Filter: `{"generic_search_term":"SPACE"}`})
	if len(l.Chunk) != 1 || l.Chunk[0].RoomID != space {
		t.Fatalf("search %+v", l)
	}
	l = tn.list(&pb.DirectoryOp{Filter: `{"room_types":["m.space"]}`})
	if len(l.Chunk) != 0 {
		t.Fatalf("room type filter %+v", l)
	}
	l = tn.list(&pb.DirectoryOp{Filter: `{"room_types":[null]}`})
	if len(l.Chunk) != 4 {
		t.Fatalf("untyped rooms %+v", l)
	}
	// The room refreshes its entry when its name changes.
	tn.setState(rooms[2], alice, "m.room.name", "", map[string]string{"name": "Renamed"})
	deadline := time.Now().Add(5 * time.Second)
	for {
		l = tn.list(&pb.DirectoryOp{Filter: `{"generic_search_term":"renamed"}`})
		if len(l.Chunk) == 1 && l.Chunk[0].RoomID == rooms[2] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rename not refreshed: %+v", l)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A stale summary (older position) does not replace a newer one.
	tn.must(&pb.DirectoryOp{Op: "refresh", RoomId: rooms[2], Summary: raw(map[string]any{"room_id": rooms[2], "name": "Stale"}), Pos: 1})
	if l = tn.list(&pb.DirectoryOp{Filter: `{"generic_search_term":"stale"}`}); len(l.Chunk) != 0 {
		t.Fatal("stale summary replaced a newer one")
	}
	// Unpublish, and it stays so across a restart.
	tn.publish(rooms[0], alice, "private")
	tn.restart()
	l = tn.list(&pb.DirectoryOp{})
	if l.Total != 3 {
		t.Fatalf("after unpublish and restart %+v", l)
	}
	if vis := tn.must(&pb.RoomPublish{RoomId: rooms[0]}).(*pb.RoomPublishReply); vis.Visibility != "private" {
		t.Fatalf("visibility after restart %s", vis.Visibility)
	}
	tn.mustFail(&pb.DirectoryOp{Op: "list", Since: "garbage"}, "M_INVALID_PARAM", http.StatusBadRequest)
}
