package gateway_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/gateway"
	"github.com/shoal-chat/shoal/gateway/fedclient"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// signedPost sends a POST signed by id with a JSON body to node's TLS
// listener.
func signedPost(t *testing.T, fed *shoaltest.Federation, node *shoaltest.Node, pid *actors.ServerIdentity, uri string, body any) (int, map[string]any) {
	t.Helper()
	content, _ := json.Marshal(body)
	auth, err := fedclient.SignRequest(pid, http.MethodPost, uri, node.ServerName(), content)
	if err != nil {
		t.Fatal(err)
	}
	cli := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: fed.CA.Pool(), ServerName: node.ServerName()}}, Timeout: 30 * time.Second}
	defer cli.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodPost, "https://"+node.TLSAddrs[0]+uri, bytes.NewReader(content))
	req.Header.Set("Authorization", auth)
	req.Header.Set("Content-Type", "application/json")
	resp, err := cli.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

func mkRoom(t *testing.T, cli *mautrix.Client, req *mautrix.ReqCreateRoom) id.RoomID {
	t.Helper()
	res, err := cli.CreateRoom(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return res.RoomID
}

func chunkNames(v any) []string {
	var out []string
	list, _ := v.([]any)
	for _, c := range list {
		if m, ok := c.(map[string]any); ok {
			name, _ := m["name"].(string)
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// a.test's public rooms, listed by another server over federation (GET
// and POST with a filter) and by a client of b.test with ?server=a.test.
func TestFederationPublicRooms(t *testing.T) {
	fed, a, b := twoNodes(t)
	ctx := context.Background()
	peer := startFakePeer(t, fed, "peer.test")
	alice := a.Register("alice")
	mkRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Visibility: "public", Name: "Lobby"})
	mkRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Visibility: "public", Name: "Garden"})
	mkRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Secret"})

	st, out := signedGet(t, fed, a, peer.id, "a.test", "/_matrix/federation/v1/publicRooms")
	if st != http.StatusOK || !slices.Equal(chunkNames(out["chunk"]), []string{"Garden", "Lobby"}) {
		t.Fatalf("federation GET publicRooms: %d %v", st, out)
	}
	st, out = signedGet(t, fed, a, peer.id, "a.test", "/_matrix/federation/v1/publicRooms?limit=1")
	if st != http.StatusOK || len(chunkNames(out["chunk"])) != 1 || out["next_batch"] == nil {
		t.Fatalf("federation GET publicRooms limit=1: %d %v", st, out)
	}
	st, out = signedPost(t, fed, a, peer.id, "/_matrix/federation/v1/publicRooms",
		map[string]any{"filter": map[string]any{"generic_search_term": "gard"}, "include_all_networks": false})
	if st != http.StatusOK || !slices.Equal(chunkNames(out["chunk"]), []string{"Garden"}) {
		t.Fatalf("federation POST publicRooms: %d %v", st, out)
	}
	st, out = signedPost(t, fed, a, peer.id, "/_matrix/federation/v1/publicRooms", map[string]any{"limit": -1})
	if st != http.StatusBadRequest || out["errcode"] != "M_INVALID_PARAM" {
		t.Fatalf("negative limit: %d %v", st, out)
	}
	if st, out := fedGet(t, fed, a, "/_matrix/federation/v1/publicRooms", ""); st != http.StatusUnauthorized {
		t.Fatalf("unsigned publicRooms: %d %v", st, out)
	}

	bob := b.Register("bob")
	res, err := bob.PublicRooms(ctx, &mautrix.ReqPublicRooms{Server: "a.test"})
	if err != nil {
		t.Fatalf("client publicRooms of a.test: %v", err)
	}
	var names []string
	for _, r := range res.Chunk {
		names = append(names, r.Name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"Garden", "Lobby"}) {
		t.Fatalf("client publicRooms of a.test: %v", names)
	}
	st, out = rawCall(t, b, bob.AccessToken, "POST", "/_matrix/client/v3/publicRooms?server=a.test",
		[]byte(`{"filter":{"generic_search_term":"lob"},"limit":5}`))
	if st != http.StatusOK || !slices.Equal(chunkNames(out["chunk"]), []string{"Lobby"}) {
		t.Fatalf("client POST publicRooms of a.test: %d %v", st, out)
	}
	// b.test's own directory is still its own.
	st, out = rawCall(t, b, "", "GET", "/_matrix/client/v3/publicRooms", nil)
	if st != http.StatusOK || len(chunkNames(out["chunk"])) != 0 {
		t.Fatalf("b.test's directory: %d %v", st, out)
	}
	expectErr(t, b, bob.AccessToken, "GET", "/_matrix/client/v3/publicRooms?server=nowhere.test", nil, http.StatusBadGateway, "M_UNKNOWN")
	expectErr(t, b, bob.AccessToken, "GET", "/_matrix/client/v3/publicRooms?server=bad%20name", nil, http.StatusBadRequest, "M_INVALID_PARAM")
}

func hierarchyChildIDs(v any) []string {
	var out []string
	list, _ := v.([]any)
	for _, c := range list {
		switch x := c.(type) {
		case map[string]any:
			if s, ok := x["room_id"].(string); ok {
				out = append(out, s)
			} else if s, ok := x["state_key"].(string); ok {
				out = append(out, s)
			}
		case string:
			out = append(out, x)
		}
	}
	slices.Sort(out)
	return out
}

// A space on a.test as another server sees it (/hierarchy over
// federation), and as a client of b.test sees its children on a.test
// through its own server (/hierarchy, room summaries).
func TestFederationHierarchy(t *testing.T) {
	fed, a, b := twoNodes(t)
	ctx := context.Background()
	peer := startFakePeer(t, fed, "peer.test")
	alice := a.Register("alice")
	space := mkRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Space of A",
		CreationContent: map[string]any{"type": "m.space"}})
	pub := mkRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Public child",
		InitialState: []*event.Event{{Type: event.StateEncryption, Content: event.Content{Raw: map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}}}}})
	priv := mkRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Private child"})
	child := func(space, c id.RoomID, content map[string]any) {
		if _, err := alice.SendStateEvent(ctx, space, event.StateSpaceChild, c.String(), content); err != nil {
			t.Fatal(err)
		}
	}
	child(space, pub, map[string]any{"via": []string{"a.test"}, "suggested": true})
	child(space, priv, map[string]any{"via": []string{"a.test"}})
	child(space, "!unknown:elsewhere.test", map[string]any{"via": []string{"elsewhere.test"}})

	uri := "/_matrix/federation/v1/hierarchy/" + url.PathEscape(space.String())
	st, out := signedGet(t, fed, a, peer.id, "a.test", uri)
	if st != http.StatusOK {
		t.Fatalf("federation hierarchy: %d %v", st, out)
	}
	room, _ := out["room"].(map[string]any)
	if room["room_id"] != space.String() || room["room_type"] != "m.space" || room["room_version"] == nil ||
		len(hierarchyChildIDs(room["children_state"])) != 3 {
		t.Fatalf("hierarchy room: %v", room)
	}
	if _, ok := room["membership"]; ok {
		t.Fatalf("a server's view has no membership: %v", room)
	}
	if got := hierarchyChildIDs(out["children"]); !slices.Equal(got, []string{pub.String()}) {
		t.Fatalf("children %v", out["children"])
	}
	c0 := out["children"].([]any)[0].(map[string]any)
	if c0["name"] != "Public child" || c0["encryption"] != "m.megolm.v1.aes-sha2" || c0["room_version"] == nil || c0["children_state"] == nil {
		t.Fatalf("child chunk %v", c0)
	}
	if got := hierarchyChildIDs(out["inaccessible_children"]); !slices.Equal(got, []string{priv.String()}) {
		t.Fatalf("inaccessible_children %v", out["inaccessible_children"])
	}
	st, out = signedGet(t, fed, a, peer.id, "a.test", uri+"?suggested_only=true")
	room, _ = out["room"].(map[string]any)
	if st != http.StatusOK || !slices.Equal(hierarchyChildIDs(room["children_state"]), []string{pub.String()}) ||
		len(hierarchyChildIDs(out["inaccessible_children"])) != 0 {
		t.Fatalf("suggested only: %d %v", st, out)
	}
	st, out = signedGet(t, fed, a, peer.id, "a.test", "/_matrix/federation/v1/hierarchy/"+url.PathEscape(priv.String()))
	if st != http.StatusNotFound || out["errcode"] != "M_NOT_FOUND" {
		t.Fatalf("private room: %d %v", st, out)
	}
	st, out = signedGet(t, fed, a, peer.id, "a.test", uri+"?suggested_only=maybe")
	if st != http.StatusBadRequest {
		t.Fatalf("bad suggested_only: %d %v", st, out)
	}

	// bob's space on b.test has alice's two rooms as children: the public
	// one comes from a.test, the private one is not shown.
	bob := b.Register("bob")
	bspace := mkRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Space of B",
		CreationContent: map[string]any{"type": "m.space"}})
	for _, c := range []id.RoomID{pub, priv} {
		if _, err := bob.SendStateEvent(ctx, bspace, event.StateSpaceChild, c.String(), map[string]any{"via": []string{"a.test"}}); err != nil {
			t.Fatal(err)
		}
	}
	h, err := bob.Hierarchy(ctx, bspace, &mautrix.ReqHierarchy{})
	if err != nil {
		t.Fatalf("client hierarchy: %v", err)
	}
	if got := hierarchyIDs(h); len(got) != 2 || got[0] != bspace || got[1] != pub {
		t.Fatalf("client hierarchy rooms %v", got)
	}
	if h.Rooms[1].Name != "Public child" {
		t.Fatalf("remote child %+v", h.Rooms[1])
	}

	sum, err := bob.GetRoomSummary(ctx, pub.String(), "a.test")
	if err != nil || sum.Name != "Public child" || sum.RoomVersion == "" {
		t.Fatalf("remote room summary: %+v %v", sum, err)
	}
	if sum.Membership != "leave" {
		t.Fatalf("remote room summary membership %q", sum.Membership)
	}
	if _, err := bob.GetRoomSummary(ctx, priv.String(), "a.test"); !errors.Is(err, mautrix.MNotFound) {
		t.Fatalf("private remote room summary: %v", err)
	}
	if _, err := bob.GetRoomSummary(ctx, pub.String(), "nowhere.test"); !errors.Is(err, mautrix.MNotFound) {
		t.Fatalf("summary via an unreachable server: %v", err)
	}
}

// timestamp_to_event over federation answers only servers in the room.
func TestFederationTimestampToEventRefusesOutsiders(t *testing.T) {
	fed, a, _ := twoNodes(t)
	peer := startFakePeer(t, fed, "peer.test")
	alice := a.Register("alice")
	room := mkRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Timeline"})
	uri := "/_matrix/federation/v1/timestamp_to_event/" + url.PathEscape(room.String()) + "?dir=b&ts=" + strconv.FormatInt(time.Now().UnixMilli(), 10)
	if st, out := signedGet(t, fed, a, peer.id, "a.test", uri); st != http.StatusForbidden || out["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("outsider: %d %v", st, out)
	}
	if st, out := signedGet(t, fed, a, peer.id, "a.test", "/_matrix/federation/v1/timestamp_to_event/"+url.PathEscape("!nope:a.test")+"?dir=b&ts=1"); st != http.StatusNotFound {
		t.Fatalf("unknown room: %d %v", st, out)
	}
	if st, out := signedGet(t, fed, a, peer.id, "a.test", "/_matrix/federation/v1/timestamp_to_event/"+url.PathEscape(room.String())+"?dir=x&ts=1"); st != http.StatusBadRequest {
		t.Fatalf("bad dir: %d %v", st, out)
	}
}

// A server in the room gets the event closest to a time; a client of a
// server whose own timeline has nothing there is answered by another
// server in the room. Needs joins over federation.
func TestFederationTimestampToEvent(t *testing.T) {
	_, a, b := twoNodes(t)
	ctx := context.Background()
	alice, bob := a.Register("alice"), b.Register("bob")
	room := mkRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Timeline"})
	first, err := alice.SendText(ctx, room, "before bob")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	mid := time.Now()
	time.Sleep(20 * time.Millisecond)
	if _, err := bob.JoinRoom(ctx, room.String(), &mautrix.ReqJoinRoom{Via: []string{"a.test"}}); err != nil {
		t.Skipf("joining over federation is not available yet: %v", err)
	}
	// bob's server has no timeline before the join: a.test answers with
	// alice's message.
	res, err := bob.TimestampToEvent(ctx, room, mid, mautrix.DirectionBackward)
	if err != nil || res.EventID != first.EventID {
		t.Fatalf("client timestamp_to_event through a.test: %+v %v, want %s", res, err, first.EventID)
	}
	// Forward from the same instant, b.test has bob's join itself.
	res, err = bob.TimestampToEvent(ctx, room, mid, mautrix.DirectionForward)
	if err != nil || res.EventID == "" || res.EventID == first.EventID {
		t.Fatalf("forward: %+v %v", res, err)
	}
}

// Custom profile fields (MSC4133) over federation, one field with field=,
// and MSC4170's 403 for lookups a restricting server refuses.
func TestFederationProfileFields(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a := fed.Start(t, "a.test")
	b := fed.Start(t, "b.test", func(c *gateway.NodeConfig) { c.Gateway.RestrictProfileLookups = true })
	peer := startFakePeer(t, fed, "peer.test")
	ctx := context.Background()
	alice := a.Register("alice")
	if st, out := rawCall(t, a, alice.AccessToken, "PUT", "/_matrix/client/v3/profile/"+esc(alice.UserID.String())+"/org.example.pet",
		[]byte(`{"org.example.pet":{"kind":"cat","name":"Tom"}}`)); st != http.StatusOK {
		t.Fatalf("set custom field: %d %v", st, out)
	}
	if err := alice.SetDisplayName(ctx, "Alice"); err != nil {
		t.Fatal(err)
	}
	st, out := signedGet(t, fed, a, peer.id, "a.test", "/_matrix/federation/v1/query/profile?user_id="+url.QueryEscape(alice.UserID.String()))
	if st != http.StatusOK || out["displayname"] != "Alice" || out["org.example.pet"] == nil {
		t.Fatalf("federation profile: %d %v", st, out)
	}
	st, out = signedGet(t, fed, a, peer.id, "a.test", "/_matrix/federation/v1/query/profile?field=org.example.pet&user_id="+url.QueryEscape(alice.UserID.String()))
	if st != http.StatusOK || len(out) != 1 || out["org.example.pet"] == nil {
		t.Fatalf("federation profile field: %d %v", st, out)
	}
	st, out = signedGet(t, fed, a, peer.id, "a.test", "/_matrix/federation/v1/query/profile?field=org.example.none&user_id="+url.QueryEscape(alice.UserID.String()))
	if st != http.StatusNotFound {
		t.Fatalf("missing field: %d %v", st, out)
	}
	carol := b.Register("carol")
	if st, out := rawCall(t, b, carol.AccessToken, "PUT", "/_matrix/client/v3/profile/"+esc(carol.UserID.String())+"/org.example.pet",
		[]byte(`{"org.example.pet":{"kind":"dog","name":"Rex"}}`)); st != http.StatusOK {
		t.Fatalf("set custom field: %d %v", st, out)
	}

	// b.test restricts lookups: carol is in no public room and shares none
	// with anyone from a.test.
	quser := "/_matrix/federation/v1/query/profile?user_id=" + url.QueryEscape(carol.UserID.String())
	if st, out := signedGet(t, fed, b, peer.id, "b.test", quser); st != http.StatusForbidden || out["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("restricted lookup: %d %v", st, out)
	}
	if st, out := signedGet(t, fed, b, peer.id, "b.test", "/_matrix/federation/v1/query/profile?user_id="+url.QueryEscape("@nobody:b.test")); st != http.StatusForbidden {
		t.Fatalf("restricted lookup of an unknown user: %d %v", st, out)
	}
	// The refusal reaches a.test's client as 403.
	if _, err := alice.GetProfile(ctx, carol.UserID); !errors.Is(err, mautrix.MForbidden) {
		t.Fatalf("client lookup of a restricted remote profile: %v", err)
	}
	// In a public room, carol's profile is served.
	mkRoom(t, carol, &mautrix.ReqCreateRoom{Preset: "public_chat", Visibility: "public", Name: "Carol's"})
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, out := signedGet(t, fed, b, peer.id, "b.test", quser)
		if st == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lookup of a user in a public room: %d %v", st, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// A client of a.test reads carol's custom field through a.test.
	st, out = rawCall(t, a, alice.AccessToken, "GET", "/_matrix/client/v3/profile/"+esc(carol.UserID.String())+"/org.example.pet", nil)
	if pet, _ := out["org.example.pet"].(map[string]any); st != http.StatusOK || pet["name"] != "Rex" {
		t.Fatalf("remote custom field: %d %v", st, out)
	}
}
