package gateway_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

func sendRaw(t *testing.T, cli *mautrix.Client, roomID id.RoomID, typ string, content map[string]any) id.EventID {
	t.Helper()
	resp, err := cli.SendMessageEvent(context.Background(), roomID, event.Type{Type: typ, Class: event.MessageEventType}, content)
	if err != nil {
		t.Fatalf("send %s: %v", typ, err)
	}
	return resp.EventID
}

func threadReply(root id.EventID, body string) map[string]any {
	return map[string]any{"msgtype": "m.text", "body": body,
		"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}}
}

// relationsOf reads unsigned["m.relations"] of an event served to cli.
func relationsOf(t *testing.T, node *shoaltest.Node, cli *mautrix.Client, roomID id.RoomID, eventID id.EventID) map[string]any {
	t.Helper()
	st, out := rawCall(t, node, cli.AccessToken, "GET", "/_matrix/client/v3/rooms/"+esc(roomID.String())+"/event/"+esc(eventID.String()), nil)
	if st != 200 {
		t.Fatalf("get event: %d %v", st, out)
	}
	u, _ := out["unsigned"].(map[string]any)
	rel, _ := u["m.relations"].(map[string]any)
	return rel
}

func TestRelationsAndThreads(t *testing.T) {
	node := shoaltest.Start(t)
	ctx := context.Background()
	alice, bob, carol := node.Register("alice"), node.Register("bob"), node.Register("carol")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID}})
	if err != nil {
		t.Fatal(err)
	}
	rid := room.RoomID
	if _, err := bob.JoinRoomByID(ctx, rid); err != nil {
		t.Fatal(err)
	}
	root := sendRaw(t, alice, rid, "m.room.message", map[string]any{"msgtype": "m.text", "body": "root"})
	r1 := sendRaw(t, bob, rid, "m.room.message", threadReply(root, "one"))
	r2 := sendRaw(t, alice, rid, "m.room.message", threadReply(root, "two"))
	r3 := sendRaw(t, bob, rid, "m.room.message", threadReply(root, "three"))
	edit := sendRaw(t, alice, rid, "m.room.message", map[string]any{"msgtype": "m.text", "body": "* root edited",
		"m.new_content": map[string]any{"msgtype": "m.text", "body": "root edited"},
		"m.relates_to":  map[string]any{"rel_type": "m.replace", "event_id": root}})
	// An "edit" by someone else is not a replacement.
	sendRaw(t, bob, rid, "m.room.message", map[string]any{"msgtype": "m.text", "body": "* hijack",
		"m.new_content": map[string]any{"msgtype": "m.text", "body": "hijack"},
		"m.relates_to":  map[string]any{"rel_type": "m.replace", "event_id": root}})
	ref := sendRaw(t, bob, rid, "m.room.message", map[string]any{"msgtype": "m.text", "body": "see above",
		"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": root}})
	sendRaw(t, bob, rid, "m.reaction", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": root, "key": "👍"}})

	// Bundled aggregations.
	rel := relationsOf(t, node, alice, rid, root)
	th, _ := rel["m.thread"].(map[string]any)
	if th == nil || th["count"] != float64(3) || th["current_user_participated"] != true {
		t.Fatalf("m.thread bundle = %v", rel["m.thread"])
	}
	if le, _ := th["latest_event"].(map[string]any); le == nil || le["event_id"] != r3.String() {
		t.Errorf("latest_event = %v, want %s", th["latest_event"], r3)
	}
	if rp, _ := rel["m.replace"].(map[string]any); rp == nil || rp["event_id"] != edit.String() {
		t.Errorf("m.replace = %v, want %s", rel["m.replace"], edit)
	}
	refs, _ := rel["m.reference"].(map[string]any)
	if chunk, _ := refs["chunk"].([]any); len(chunk) != 1 || chunk[0].(map[string]any)["event_id"] != ref.String() {
		t.Errorf("m.reference = %v", rel["m.reference"])
	}
	// The same bundle in /messages.
	msgs, err := alice.Messages(ctx, rid, "", "", mautrix.DirectionBackward, nil, 50)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ev := range msgs.Chunk {
		if ev.ID == root {
			found = ev.Unsigned.Relations != nil && ev.Unsigned.Relations.LatestEdit != nil && ev.Unsigned.Relations.Thread != nil
		}
	}
	if !found {
		t.Error("/messages: root event without its m.replace bundle")
	}

	// /relations: everything, newest first, paginated without repeats.
	all, err := alice.GetRelations(ctx, rid, root, &mautrix.ReqGetRelations{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Chunk) != 7 || all.Chunk[0].Type.Type != "m.reaction" || all.Chunk[6].ID != r1 {
		t.Fatalf("relations = %d events, first %v", len(all.Chunk), all.Chunk[0].Type)
	}
	seen := map[id.EventID]bool{}
	from := ""
	for page := 0; page < 10; page++ {
		p, err := alice.GetRelations(ctx, rid, root, &mautrix.ReqGetRelations{Limit: 2, From: from})
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range p.Chunk {
			if seen[ev.ID] {
				t.Fatalf("page %d repeats %s", page, ev.ID)
			}
			seen[ev.ID] = true
		}
		if p.NextBatch == "" {
			break
		}
		from = p.NextBatch
	}
	if len(seen) != 7 {
		t.Errorf("pagination saw %d events, want 7", len(seen))
	}
	fwd, err := alice.GetRelations(ctx, rid, root, &mautrix.ReqGetRelations{RelationType: event.RelThread, Dir: mautrix.DirectionForward})
	if err != nil {
		t.Fatal(err)
	}
	if len(fwd.Chunk) != 3 || fwd.Chunk[0].ID != r1 || fwd.Chunk[1].ID != r2 || fwd.Chunk[2].ID != r3 {
		t.Errorf("m.thread forwards = %v", fwd.Chunk)
	}
	reacts, err := alice.GetRelations(ctx, rid, root, &mautrix.ReqGetRelations{RelationType: event.RelAnnotation, EventType: event.EventReaction})
	if err != nil || len(reacts.Chunk) != 1 {
		t.Errorf("annotations of type m.reaction: %v %v", reacts, err)
	}
	// recurse follows a reference to a thread reply.
	sendRaw(t, alice, rid, "m.room.message", map[string]any{"msgtype": "m.text", "body": "re one",
		"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": r1}})
	deep, err := alice.GetRelations(ctx, rid, root, &mautrix.ReqGetRelations{Recurse: true})
	if err != nil || len(deep.Chunk) != 8 || deep.RecursionDepth != 2 {
		t.Errorf("recursive relations: %d events, depth %d, %v", len(deep.Chunk), deep.RecursionDepth, err)
	}

	// /threads.
	base := "/_matrix/client/v1/rooms/" + esc(rid.String())
	st, out := rawCall(t, node, alice.AccessToken, "GET", base+"/threads", nil)
	if chunk, _ := out["chunk"].([]any); st != 200 || len(chunk) != 1 || chunk[0].(map[string]any)["event_id"] != root.String() {
		t.Fatalf("threads: %d %v", st, out)
	}
	if _, err := alice.InviteUser(ctx, rid, &mautrix.ReqInviteUser{UserID: carol.UserID}); err != nil {
		t.Fatal(err)
	}
	if _, err := carol.JoinRoomByID(ctx, rid); err != nil {
		t.Fatal(err)
	}
	st, out = rawCall(t, node, carol.AccessToken, "GET", base+"/threads?include=participated", nil)
	if chunk, _ := out["chunk"].([]any); st != 200 || len(chunk) != 0 {
		t.Errorf("carol's participated threads: %d %v", st, out)
	}
	st, out = rawCall(t, node, bob.AccessToken, "GET", base+"/threads?include=participated", nil)
	if chunk, _ := out["chunk"].([]any); st != 200 || len(chunk) != 1 {
		t.Errorf("bob's participated threads: %d %v", st, out)
	}
	// A second thread, more recently active, comes first; limit pages.
	root2 := sendRaw(t, bob, rid, "m.room.message", map[string]any{"msgtype": "m.text", "body": "root2"})
	sendRaw(t, bob, rid, "m.room.message", threadReply(root2, "r2"))
	st, out = rawCall(t, node, alice.AccessToken, "GET", base+"/threads?limit=1", nil)
	chunk, _ := out["chunk"].([]any)
	if st != 200 || len(chunk) != 1 || chunk[0].(map[string]any)["event_id"] != root2.String() || out["next_batch"] == nil {
		t.Fatalf("threads page 1: %d %v", st, out)
	}
	st, out = rawCall(t, node, alice.AccessToken, "GET", base+"/threads?limit=1&from="+out["next_batch"].(string), nil)
	chunk, _ = out["chunk"].([]any)
	if st != 200 || len(chunk) != 1 || chunk[0].(map[string]any)["event_id"] != root.String() {
		t.Fatalf("threads page 2: %d %v", st, out)
	}

	// Redacting a reply takes it out of the thread.
	if _, err := bob.RedactEvent(ctx, rid, r3); err != nil {
		t.Fatal(err)
	}
	th, _ = relationsOf(t, node, alice, rid, root)["m.thread"].(map[string]any)
	if th == nil || th["count"] != float64(2) || th["latest_event"].(map[string]any)["event_id"] != r2.String() {
		t.Errorf("after redaction m.thread = %v", th)
	}

	// Errors.
	dave := node.Register("dave")
	rel1 := base + "/relations/" + esc(root.String())
	expectErr(t, node, dave.AccessToken, "GET", rel1, nil, http.StatusNotFound, "M_NOT_FOUND")
	expectErr(t, node, alice.AccessToken, "GET", base+"/relations/"+esc("$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaA"), nil, http.StatusNotFound, "M_NOT_FOUND")
	expectErr(t, node, alice.AccessToken, "GET", rel1+"?dir=x", nil, http.StatusBadRequest, "M_INVALID_PARAM")
	expectErr(t, node, alice.AccessToken, "GET", rel1+"?from=garbage", nil, http.StatusBadRequest, "M_INVALID_PARAM")
	expectErr(t, node, alice.AccessToken, "GET", rel1+"?recurse=maybe", nil, http.StatusBadRequest, "M_INVALID_PARAM")
	expectErr(t, node, "", "GET", rel1, nil, http.StatusUnauthorized, "M_MISSING_TOKEN")
	expectErr(t, node, dave.AccessToken, "GET", base+"/threads", nil, http.StatusForbidden, "M_FORBIDDEN")
	expectErr(t, node, alice.AccessToken, "GET", base+"/threads?include=some", nil, http.StatusBadRequest, "M_INVALID_PARAM")
	expectErr(t, node, alice.AccessToken, "GET", base+"/threads?from=zz", nil, http.StatusBadRequest, "M_INVALID_PARAM")
}

func TestThreadVisibilityAfterLeaving(t *testing.T) {
	node := shoaltest.Start(t)
	ctx := context.Background()
	alice, bob := node.Register("alice"), node.Register("bob")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	rid := room.RoomID
	if _, err := bob.JoinRoomByID(ctx, rid); err != nil {
		t.Fatal(err)
	}
	root := sendRaw(t, alice, rid, "m.room.message", map[string]any{"msgtype": "m.text", "body": "root"})
	r1 := sendRaw(t, alice, rid, "m.room.message", threadReply(root, "before"))
	if _, err := bob.LeaveRoom(ctx, rid); err != nil {
		t.Fatal(err)
	}
	sendRaw(t, alice, rid, "m.room.message", threadReply(root, "after"))
	// Bob still sees the root (sent while he was there), but the bundle's
	// latest event is the last reply he may see.
	th, _ := relationsOf(t, node, bob, rid, root)["m.thread"].(map[string]any)
	if th == nil || th["latest_event"].(map[string]any)["event_id"] != r1.String() {
		t.Errorf("bob's m.thread bundle = %v, want latest %s", th, r1)
	}
	rels, err := bob.GetRelations(ctx, rid, root, &mautrix.ReqGetRelations{})
	if err != nil || len(rels.Chunk) != 1 || rels.Chunk[0].ID != r1 {
		t.Errorf("bob's relations: %v %v", rels, err)
	}
}

func TestTimestampToEvent(t *testing.T) {
	node := shoaltest.Start(t)
	ctx := context.Background()
	alice, bob := node.Register("alice"), node.Register("bob")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	rid := room.RoomID
	var ids []id.EventID
	var stamps []int64
	for i := range 3 {
		time.Sleep(5 * time.Millisecond)
		ev := sendRaw(t, alice, rid, "m.room.message", map[string]any{"msgtype": "m.text", "body": fmt.Sprint(i)})
		got, err := alice.GetEvent(ctx, rid, ev)
		if err != nil {
			t.Fatal(err)
		}
		ids, stamps = append(ids, ev), append(stamps, got.Timestamp)
	}
	res, err := alice.TimestampToEvent(ctx, rid, time.UnixMilli(stamps[1]), mautrix.DirectionForward)
	if err != nil || res.EventID != ids[1] {
		t.Errorf("forward from ts[1]: %v %v, want %s", res, err, ids[1])
	}
	res, err = alice.TimestampToEvent(ctx, rid, time.UnixMilli(stamps[2]-1), mautrix.DirectionBackward)
	if err != nil || res.EventID != ids[1] {
		t.Errorf("backward from ts[2]-1: %v %v, want %s", res, err, ids[1])
	}
	res, err = alice.TimestampToEvent(ctx, rid, time.UnixMilli(stamps[2]+60000), mautrix.DirectionBackward)
	if err != nil || res.EventID != ids[2] {
		t.Errorf("backward from the future: %v %v", res, err)
	}
	base := "/_matrix/client/v1/rooms/" + esc(rid.String()) + "/timestamp_to_event"
	expectErr(t, node, alice.AccessToken, "GET", base+fmt.Sprintf("?dir=f&ts=%d", stamps[2]+60000), nil, http.StatusNotFound, "M_NOT_FOUND")
	expectErr(t, node, alice.AccessToken, "GET", base+"?dir=b&ts=0", nil, http.StatusNotFound, "M_NOT_FOUND")
	expectErr(t, node, alice.AccessToken, "GET", base+"?ts=1", nil, http.StatusBadRequest, "M_INVALID_PARAM")
	expectErr(t, node, alice.AccessToken, "GET", base+"?dir=f&ts=abc", nil, http.StatusBadRequest, "M_INVALID_PARAM")
	expectErr(t, node, bob.AccessToken, "GET", base+"?dir=f&ts=1", nil, http.StatusForbidden, "M_FORBIDDEN")
}

// spaceChild adds child to space with an m.space.child event.
func spaceChild(t *testing.T, cli *mautrix.Client, space, child id.RoomID, extra map[string]any) {
	t.Helper()
	c := map[string]any{"via": []string{"test.local"}}
	for k, v := range extra {
		c[k] = v
	}
	if _, err := cli.SendStateEvent(context.Background(), space, event.StateSpaceChild, child.String(), c); err != nil {
		t.Fatal(err)
	}
}

func hierarchyIDs(h *mautrix.RespHierarchy) []id.RoomID {
	var out []id.RoomID
	for _, r := range h.Rooms {
		out = append(out, r.RoomID)
	}
	return out
}

func TestHierarchyAndSummary(t *testing.T) {
	node := shoaltest.Start(t)
	ctx := context.Background()
	alice, bob := node.Register("alice"), node.Register("bob")
	mk := func(preset string, space bool, extra ...func(*mautrix.ReqCreateRoom)) id.RoomID {
		req := &mautrix.ReqCreateRoom{Preset: preset, Name: "room"}
		if space {
			req.CreationContent = map[string]any{"type": "m.space"}
		}
		for _, f := range extra {
			f(req)
		}
		r, err := alice.CreateRoom(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return r.RoomID
	}
	space := mk("public_chat", true)
	a := mk("public_chat", false, func(r *mautrix.ReqCreateRoom) {
		r.RoomAliasName = "aroom"
		r.InitialState = []*event.Event{{Type: event.StateEncryption, Content: event.Content{Raw: map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}}}}
	})
	b := mk("private_chat", false)
	sub := mk("public_chat", true)
	c := mk("public_chat", false)
	spaceChild(t, alice, space, a, map[string]any{"order": "a", "suggested": true})
	spaceChild(t, alice, space, b, map[string]any{"order": "b"})
	spaceChild(t, alice, space, sub, map[string]any{"order": "c"})
	spaceChild(t, alice, space, "!unknown:elsewhere.example", nil)
	spaceChild(t, alice, sub, c, nil)

	h, err := alice.Hierarchy(ctx, space, &mautrix.ReqHierarchy{})
	if err != nil {
		t.Fatal(err)
	}
	if got := hierarchyIDs(h); fmt.Sprint(got) != fmt.Sprint([]id.RoomID{space, a, b, sub, c}) {
		t.Fatalf("alice's hierarchy = %v", got)
	}
	if len(h.Rooms[0].ChildrenState) != 4 || h.Rooms[0].RoomType != "m.space" {
		t.Errorf("space chunk: %d children, type %q", len(h.Rooms[0].ChildrenState), h.Rooms[0].RoomType)
	}
	// Bob is in none of them: the private room is hidden.
	h, err = bob.Hierarchy(ctx, space, &mautrix.ReqHierarchy{})
	if err != nil {
		t.Fatal(err)
	}
	if got := hierarchyIDs(h); fmt.Sprint(got) != fmt.Sprint([]id.RoomID{space, a, sub, c}) {
		t.Errorf("bob's hierarchy = %v", got)
	}
	h, err = bob.Hierarchy(ctx, space, &mautrix.ReqHierarchy{SuggestedOnly: true})
	if err != nil || fmt.Sprint(hierarchyIDs(h)) != fmt.Sprint([]id.RoomID{space, a}) {
		t.Errorf("suggested only: %v %v", hierarchyIDs(h), err)
	}
	one := 1
	h, err = alice.Hierarchy(ctx, space, &mautrix.ReqHierarchy{MaxDepth: &one})
	if err != nil || fmt.Sprint(hierarchyIDs(h)) != fmt.Sprint([]id.RoomID{space, a, b, sub}) {
		t.Errorf("max_depth 1: %v %v", hierarchyIDs(h), err)
	}
	// Paging one room at a time walks the same order.
	var paged []id.RoomID
	from := ""
	for range 10 {
		p, err := alice.Hierarchy(ctx, space, &mautrix.ReqHierarchy{Limit: 1, From: from})
		if err != nil {
			t.Fatal(err)
		}
		paged = append(paged, hierarchyIDs(p)...)
		if p.NextBatch == "" {
			break
		}
		from = p.NextBatch
	}
	if fmt.Sprint(paged) != fmt.Sprint([]id.RoomID{space, a, b, sub, c}) {
		t.Errorf("paged hierarchy = %v", paged)
	}
	p, err := alice.Hierarchy(ctx, space, &mautrix.ReqHierarchy{Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	hb := "/_matrix/client/v1/rooms/" + esc(space.String()) + "/hierarchy"
	expectErr(t, node, alice.AccessToken, "GET", hb+"?suggested_only=true&from="+p.NextBatch, nil, http.StatusBadRequest, "M_INVALID_PARAM")
	expectErr(t, node, alice.AccessToken, "GET", hb+"?from=!!", nil, http.StatusBadRequest, "M_INVALID_PARAM")
	expectErr(t, node, alice.AccessToken, "GET", hb+"?limit=0", nil, http.StatusBadRequest, "M_INVALID_PARAM")
	expectErr(t, node, alice.AccessToken, "GET", hb+"?max_depth=-1", nil, http.StatusBadRequest, "M_INVALID_PARAM")
	expectErr(t, node, bob.AccessToken, "GET", "/_matrix/client/v1/rooms/"+esc(b.String())+"/hierarchy", nil, http.StatusForbidden, "M_FORBIDDEN")

	// Room summaries (MSC3266).
	sum := "/_matrix/client/v1/room_summary/"
	st, out := rawCall(t, node, bob.AccessToken, "GET", sum+esc("#aroom:test.local"), nil)
	if st != 200 || out["room_id"] != a.String() || out["membership"] != "leave" || out["room_version"] != "12" ||
		out["encryption"] != "m.megolm.v1.aes-sha2" || out["join_rule"] != "public" {
		t.Errorf("summary of a: %d %v", st, out)
	}
	st, out = rawCall(t, node, alice.AccessToken, "GET", sum+esc(b.String()), nil)
	if st != 200 || out["membership"] != "join" {
		t.Errorf("alice's summary of b: %d %v", st, out)
	}
	st, out = rawCall(t, node, "", "GET", sum+esc(a.String()), nil)
	if _, has := out["membership"]; st != 200 || has {
		t.Errorf("anonymous summary of a: %d %v", st, out)
	}
	if res, err := bob.GetRoomSummary(ctx, a.String()); err != nil || res.RoomID != a || res.Membership != "leave" {
		t.Errorf("mautrix room summary: %+v %v", res, err)
	}
	expectErr(t, node, bob.AccessToken, "GET", sum+esc(b.String()), nil, http.StatusNotFound, "M_NOT_FOUND")
	expectErr(t, node, "", "GET", sum+esc(b.String()), nil, http.StatusNotFound, "M_NOT_FOUND")
	expectErr(t, node, bob.AccessToken, "GET", sum+esc("!nothere:test.local"), nil, http.StatusNotFound, "M_NOT_FOUND")
	expectErr(t, node, bob.AccessToken, "GET", sum+esc("#nothere:test.local"), nil, http.StatusNotFound, "M_NOT_FOUND")
	expectErr(t, node, "bogus", "GET", sum+esc(a.String()), nil, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
}

func TestRoomUpgrade(t *testing.T) {
	node := shoaltest.Start(t)
	ctx := context.Background()
	alice, bob := node.Register("alice"), node.Register("bob")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Old", Topic: "t",
		RoomAliasName: "up", Visibility: "public", RoomVersion: "10"})
	if err != nil {
		t.Fatal(err)
	}
	old := room.RoomID
	if _, err := bob.JoinRoomByID(ctx, old); err != nil {
		t.Fatal(err)
	}
	mallory := node.Register("mallory")
	if _, err := alice.BanUser(ctx, old, &mautrix.ReqBanUser{UserID: mallory.UserID}); err != nil {
		t.Fatal(err)
	}
	up := "/_matrix/client/v3/rooms/" + esc(old.String()) + "/upgrade"
	expectErr(t, node, bob.AccessToken, "POST", up, []byte(`{"new_version":"12"}`), http.StatusForbidden, "M_FORBIDDEN")
	expectErr(t, node, alice.AccessToken, "POST", up, []byte(`{"new_version":"999"}`), http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION")
	expectErr(t, node, alice.AccessToken, "POST", up, []byte(`{}`), http.StatusBadRequest, "M_MISSING_PARAM")
	expectErr(t, node, alice.AccessToken, "POST", up, []byte(`{"new_version":"12","additional_creators":["nope"]}`), http.StatusBadRequest, "M_INVALID_PARAM")
	expectErr(t, node, bob.AccessToken, "POST", "/_matrix/client/v3/rooms/"+esc("!none:test.local")+"/upgrade", []byte(`{"new_version":"12"}`), http.StatusNotFound, "M_NOT_FOUND")

	st, out := rawCall(t, node, alice.AccessToken, "POST", up, []byte(`{"new_version":"12","additional_creators":["`+bob.UserID.String()+`"]}`))
	if st != 200 {
		t.Fatalf("upgrade: %d %v", st, out)
	}
	newID := id.RoomID(out["replacement_room"].(string))
	var tomb event.TombstoneEventContent
	if err := alice.StateEvent(ctx, old, event.StateTombstone, "", &tomb); err != nil || tomb.ReplacementRoom != newID {
		t.Errorf("tombstone: %v %v", tomb, err)
	}
	var create map[string]any
	if err := alice.StateEvent(ctx, newID, event.StateCreate, "", &create); err != nil {
		t.Fatal(err)
	}
	pred, _ := create["predecessor"].(map[string]any)
	if pred["room_id"] != old.String() || create["room_version"] != "12" ||
		fmt.Sprint(create["additional_creators"]) != fmt.Sprint([]any{bob.UserID.String()}) {
		t.Errorf("new create content = %v", create)
	}
	var name event.RoomNameEventContent
	if err := alice.StateEvent(ctx, newID, event.StateRoomName, "", &name); err != nil || name.Name != "Old" {
		t.Errorf("name copied: %v %v", name, err)
	}
	var ban event.MemberEventContent
	if err := alice.StateEvent(ctx, newID, event.StateMember, mallory.UserID.String(), &ban); err != nil || ban.Membership != event.MembershipBan {
		t.Errorf("ban carried over: %v %v", ban, err)
	}
	var jr event.JoinRulesEventContent
	if err := alice.StateEvent(ctx, newID, event.StateJoinRules, "", &jr); err != nil || jr.JoinRule != event.JoinRulePublic {
		t.Errorf("join rule copied: %v %v", jr, err)
	}
	var pl map[string]any
	if err := alice.StateEvent(ctx, newID, event.StatePowerLevels, "", &pl); err != nil {
		t.Fatal(err)
	}
	if users, _ := pl["users"].(map[string]any); users[alice.UserID.String()] != nil || users[bob.UserID.String()] != nil {
		t.Errorf("v12 power levels list creators: %v", pl["users"])
	}
	var oldPL map[string]any
	if err := alice.StateEvent(ctx, old, event.StatePowerLevels, "", &oldPL); err != nil || oldPL["events_default"] != float64(50) || oldPL["invite"] != float64(50) {
		t.Errorf("old room restricted: %v %v", oldPL, err)
	}
	res, err := alice.ResolveAlias(ctx, "#up:test.local")
	if err != nil || res.RoomID != newID {
		t.Errorf("alias now points to %v (%v), want %s", res, err, newID)
	}
	var ca event.CanonicalAliasEventContent
	if err := alice.StateEvent(ctx, newID, event.StateCanonicalAlias, "", &ca); err != nil || ca.Alias != "#up:test.local" {
		t.Errorf("new canonical alias: %v %v", ca, err)
	}
	if st, out := rawCall(t, node, alice.AccessToken, "GET", "/_matrix/client/v3/directory/list/room/"+esc(newID.String()), nil); st != 200 || out["visibility"] != "public" {
		t.Errorf("new room visibility: %d %v", st, out)
	}
	// Upgrading back to v11: creators become 100s, the upgrader keeps power.
	st, out = rawCall(t, node, alice.AccessToken, "POST", "/_matrix/client/v3/rooms/"+esc(newID.String())+"/upgrade", []byte(`{"new_version":"11"}`))
	if st != 200 {
		t.Fatalf("upgrade to 11: %d %v", st, out)
	}
	third := id.RoomID(out["replacement_room"].(string))
	if err := alice.StateEvent(ctx, third, event.StatePowerLevels, "", &pl); err != nil {
		t.Fatal(err)
	}
	if users, _ := pl["users"].(map[string]any); users[alice.UserID.String()] != float64(100) || users[bob.UserID.String()] != float64(100) {
		t.Errorf("v11 power levels: %v", pl["users"])
	}
}

func TestUserDirectorySearch(t *testing.T) {
	node := shoaltest.Start(t)
	ctx := context.Background()
	alice, bob, carol, dave := node.Register("alice"), node.Register("bob"), node.Register("carol"), node.Register("dave")
	if err := bob.SetDisplayName(ctx, "Bobby Tables"); err != nil {
		t.Fatal(err)
	}
	priv, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, priv.RoomID); err != nil {
		t.Fatal(err)
	}
	if _, err := carol.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"}); err != nil {
		t.Fatal(err)
	}
	if _, err := dave.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"}); err != nil {
		t.Fatal(err)
	}
	search := func(term string, limit int) *mautrix.RespSearchUserDirectory {
		t.Helper()
		res, err := alice.SearchUserDirectory(ctx, term, limit)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	// The directory is fed asynchronously: wait for the last update.
	deadline := time.Now().Add(5 * time.Second)
	for len(search("carol", 10).Results) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if r := search("TABLES", 10); len(r.Results) != 1 || r.Results[0].UserID != bob.UserID || r.Results[0].Extra["display_name"] != "Bobby Tables" {
		// The spec names the field display_name (mautrix reads displayname).
		t.Errorf("display name search: %+v", r.Results)
	}
	if r := search("bob", 10); len(r.Results) != 1 {
		t.Errorf("user ID search: %+v", r.Results)
	}
	if r := search("carol", 10); len(r.Results) != 1 {
		t.Errorf("public room member: %+v", r.Results)
	}
	if r := search("dave", 10); len(r.Results) != 0 {
		t.Errorf("dave shares nothing with alice: %+v", r.Results)
	}
	if r := search("o", 1); len(r.Results) != 1 || !r.Limited {
		t.Errorf("limit 1: %+v limited=%v", r.Results, r.Limited)
	}
	// Leaving the shared room hides bob.
	if _, err := bob.LeaveRoom(ctx, priv.RoomID); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for len(search("tables", 10).Results) != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if r := search("tables", 10); len(r.Results) != 0 {
		t.Errorf("bob after leaving: %+v", r.Results)
	}
	// The index survives a restart.
	node.Restart()
	if r := search("carol", 10); len(r.Results) != 1 {
		t.Errorf("after restart: %+v", r.Results)
	}
	ud := "/_matrix/client/v3/user_directory/search"
	expectErr(t, node, alice.AccessToken, "POST", ud, []byte(`{}`), http.StatusBadRequest, "M_MISSING_PARAM")
	expectErr(t, node, alice.AccessToken, "POST", ud, []byte(`{"search_term":"a","limit":-1}`), http.StatusBadRequest, "M_INVALID_PARAM")
	expectErr(t, node, alice.AccessToken, "POST", ud, []byte(`{"search_term":5}`), http.StatusBadRequest, "M_BAD_JSON")
	expectErr(t, node, alice.AccessToken, "POST", ud, []byte(`nope`), http.StatusBadRequest, "M_NOT_JSON")
	expectErr(t, node, "", "POST", ud, []byte(`{"search_term":"a"}`), http.StatusUnauthorized, "M_MISSING_TOKEN")
}

// A room without a canonical alias upgrades too (the old room's missing
// alias must not become an m.room.canonical_alias event of content null).
func TestRoomUpgradeWithoutAlias(t *testing.T) {
	node := shoaltest.Start(t)
	ctx := context.Background()
	alice := node.Register("alice")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "10"})
	if err != nil {
		t.Fatal(err)
	}
	st, out := rawCall(t, node, alice.AccessToken, "POST", "/_matrix/client/v3/rooms/"+esc(room.RoomID.String())+"/upgrade", []byte(`{"new_version":"11"}`))
	if st != 200 {
		t.Fatalf("upgrade of a room without an alias: %d %v", st, out)
	}
	var alias map[string]any
	if err := alice.StateEvent(ctx, id.RoomID(out["replacement_room"].(string)), event.StateCanonicalAlias, "", &alias); err == nil {
		t.Fatalf("the new room got a canonical alias event: %v", alias)
	}
}
