package gateway_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

type searchResp struct {
	SearchCategories struct {
		RoomEvents struct {
			Results []struct {
				Rank   float64     `json:"rank"`
				Result event.Event `json:"result"`
			} `json:"results"`
			Count     int    `json:"count"`
			NextBatch string `json:"next_batch"`
		} `json:"room_events"`
	} `json:"search_categories"`
}

func search(t *testing.T, node *shoaltest.Node, cli *mautrix.Client, body map[string]any, nextBatch string) searchResp {
	t.Helper()
	path := "/_matrix/client/v3/search"
	if nextBatch != "" {
		path += "?next_batch=" + nextBatch
	}
	b, _ := json.Marshal(map[string]any{"search_categories": map[string]any{"room_events": body}})
	st, out := rawCall(t, node, cli.AccessToken, "POST", path, b)
	if st != 200 {
		t.Fatalf("search %v: %d %v", body, st, out)
	}
	raw, _ := json.Marshal(out)
	var res searchResp
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatal(err)
	}
	return res
}

func searchIDs(r searchResp) []id.EventID {
	var out []id.EventID
	for _, h := range r.SearchCategories.RoomEvents.Results {
		out = append(out, h.Result.ID)
	}
	return out
}

func TestSearchRoomEvents(t *testing.T) {
	node := shoaltest.Start(t)
	ctx := context.Background()
	alice, bob, carol := node.Register("alice"), node.Register("bob"), node.Register("carol")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Animal facts"})
	if err != nil {
		t.Fatal(err)
	}
	rid := room.RoomID
	if _, err := alice.SendStateEvent(ctx, rid, event.StateHistoryVisibility, "", map[string]any{"history_visibility": "joined"}); err != nil {
		t.Fatal(err)
	}
	msg := func(cli *mautrix.Client, body string) id.EventID {
		return sendRaw(t, cli, rid, "m.room.message", map[string]any{"msgtype": "m.text", "body": body})
	}
	early := msg(alice, "the quick brown fox")
	if _, err := bob.JoinRoomByID(ctx, rid); err != nil {
		t.Fatal(err)
	}
	lazy := msg(alice, "jumps over the lazy dog")
	quick := msg(bob, "a quick dog indeed")
	gone := msg(bob, "quick thing to delete")
	if _, err := bob.RedactEvent(ctx, rid, gone); err != nil {
		t.Fatal(err)
	}

	r := search(t, node, alice, map[string]any{"search_term": "quick"}, "")
	if ids := searchIDs(r); len(ids) != 2 || !containsID(ids, early) || !containsID(ids, quick) {
		t.Errorf("alice searching quick: %v", ids)
	}
	// Bob joined after the first message of a joined-only room.
	if ids := searchIDs(search(t, node, bob, map[string]any{"search_term": "quick"}, "")); len(ids) != 1 || ids[0] != quick {
		t.Errorf("bob searching quick: %v", ids)
	}
	if ids := searchIDs(search(t, node, alice, map[string]any{"search_term": "DOG", "order_by": "recent"}, "")); len(ids) != 2 || ids[0] != quick || ids[1] != lazy {
		t.Errorf("recent dogs: %v", ids)
	}
	if ids := searchIDs(search(t, node, alice, map[string]any{"search_term": "facts", "keys": []string{"content.name"}}, "")); len(ids) != 1 {
		t.Errorf("room name search: %v", ids)
	}
	// Paging.
	p1 := search(t, node, alice, map[string]any{"search_term": "dog", "filter": map[string]any{"limit": 1}}, "")
	if len(p1.SearchCategories.RoomEvents.Results) != 1 || p1.SearchCategories.RoomEvents.NextBatch == "" {
		t.Fatalf("page 1: %+v", p1)
	}
	p2 := search(t, node, alice, map[string]any{"search_term": "dog", "filter": map[string]any{"limit": 1}}, p1.SearchCategories.RoomEvents.NextBatch)
	if ids := searchIDs(p2); len(ids) != 1 || ids[0] == searchIDs(p1)[0] || p2.SearchCategories.RoomEvents.NextBatch != "" {
		t.Errorf("page 2: %v", ids)
	}
	// Rooms filter, and a user in no room finds nothing.
	if ids := searchIDs(search(t, node, alice, map[string]any{"search_term": "dog", "filter": map[string]any{"not_rooms": []string{rid.String()}}}, "")); len(ids) != 0 {
		t.Errorf("not_rooms: %v", ids)
	}
	if ids := searchIDs(search(t, node, carol, map[string]any{"search_term": "dog"}, "")); len(ids) != 0 {
		t.Errorf("carol: %v", ids)
	}
	// New messages are found on the next search; the index survives a restart.
	late := msg(bob, "another dog")
	node.Restart()
	if ids := searchIDs(search(t, node, alice, map[string]any{"search_term": "another"}, "")); len(ids) != 1 || ids[0] != late {
		t.Errorf("after restart: %v", ids)
	}

	sp := "/_matrix/client/v3/search"
	expectErr(t, node, alice.AccessToken, "POST", sp, []byte(`{"search_categories":{"room_events":{}}}`), http.StatusBadRequest, "M_MISSING_PARAM")
	expectErr(t, node, alice.AccessToken, "POST", sp, []byte(`{"search_categories":{"room_events":{"search_term":"x","keys":["content.nope"]}}}`), http.StatusBadRequest, "M_INVALID_PARAM")
	expectErr(t, node, alice.AccessToken, "POST", sp, []byte(`{"search_categories":{"room_events":{"search_term":"x","order_by":"size"}}}`), http.StatusBadRequest, "M_INVALID_PARAM")
	expectErr(t, node, alice.AccessToken, "POST", sp+"?next_batch=%21%21", []byte(`{"search_categories":{"room_events":{"search_term":"x"}}}`), http.StatusBadRequest, "M_INVALID_PARAM")
	expectErr(t, node, alice.AccessToken, "POST", sp, []byte(`{"search_categories":{"room_events":{"search_term":7}}}`), http.StatusBadRequest, "M_BAD_JSON")
	expectErr(t, node, "", "POST", sp, []byte(`{}`), http.StatusUnauthorized, "M_MISSING_TOKEN")
}

func containsID(ids []id.EventID, want id.EventID) bool {
	for _, x := range ids {
		if x == want {
			return true
		}
	}
	return false
}
