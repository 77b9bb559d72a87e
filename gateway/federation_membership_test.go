package gateway_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/gateway/fedclient"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// fmDo sends a federation request signed by from straight to node and
// returns the status and the decoded body.
func fmDo(t *testing.T, fed *shoaltest.Federation, node *shoaltest.Node, from *actors.ServerIdentity, method, uri string, body []byte) (int, map[string]json.RawMessage) {
	t.Helper()
	st, raw := fmDoRaw(t, fed, node, from, method, uri, body)
	var out map[string]json.RawMessage
	_ = json.Unmarshal(raw, &out)
	return st, out
}

// fmDoRaw is fmDo returning the body undecoded.
func fmDoRaw(t *testing.T, fed *shoaltest.Federation, node *shoaltest.Node, from *actors.ServerIdentity, method, uri string, body []byte) (int, []byte) {
	t.Helper()
	auth, err := fedclient.SignRequest(from, method, uri, node.ServerName(), body)
	if err != nil {
		t.Fatal(err)
	}
	cli := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: fed.CA.Pool(), ServerName: node.ServerName()}}, Timeout: 30 * time.Second}
	defer cli.CloseIdleConnections()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, _ := http.NewRequest(method, "https://"+node.TLSAddrs[0]+uri, rd)
	req.Header.Set("Authorization", auth)
	resp, err := cli.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, raw
}

func fmErrcode(body map[string]json.RawMessage) string {
	var s string
	_ = json.Unmarshal(body["errcode"], &s)
	return s
}

func fmWant(t *testing.T, what string, status int, body map[string]json.RawMessage, wantStatus int, wantCode string) {
	t.Helper()
	if status != wantStatus || (wantCode != "" && fmErrcode(body) != wantCode) {
		t.Fatalf("%s: got %d %s, want %d %s (%v)", what, status, fmErrcode(body), wantStatus, wantCode, body)
	}
}

// fmPeerRoom is a room made up by a fake peer: its create event and an
// invite of invitee, both signed by the peer.
func fmPeerRoom(t *testing.T, peer *fakePeer, version eventgraph.RoomVersionID, invitee string) (create, invite *eventgraph.Event) {
	t.Helper()
	rv := eventgraph.MustRoomVersion(version)
	sender := "@pat:" + peer.id.ServerName
	empty := ""
	cc := map[string]any{"room_version": string(version)}
	roomID := ""
	if !rv.RoomIDFromCreateEvent {
		var rnd [9]byte
		_, _ = rand.Read(rnd[:])
		roomID = "!r" + eventgraph.EncodeBase64URL(rnd[:]) + ":" + peer.id.ServerName
	}
	if !rv.ImplicitCreator {
		cc["creator"] = sender
	}
	content, _ := json.Marshal(cc)
	now := time.Now().UnixMilli()
	create, err := eventgraph.BuildEvent(eventgraph.ProtoEvent{RoomID: roomID, Sender: sender, Type: "m.room.create", StateKey: &empty,
		Content: content, Depth: 1, OriginServerTS: now}, rv, peer.id.ServerName, peer.id.KeyID, peer.id.PrivateKey, eventgraph.WithRandom(rand.Reader))
	if err != nil {
		t.Fatal(err)
	}
	roomID = create.RoomID()
	var auth []string
	if !rv.RoomIDFromCreateEvent {
		auth = []string{create.EventID()}
	}
	invite, err = eventgraph.BuildEvent(eventgraph.ProtoEvent{RoomID: roomID, Sender: sender, Type: "m.room.member", StateKey: &invitee,
		Content: json.RawMessage(`{"membership":"invite"}`), PrevEvents: []string{create.EventID()}, AuthEvents: auth,
		Depth: 2, OriginServerTS: now + 1}, rv, peer.id.ServerName, peer.id.KeyID, peer.id.PrivateKey, eventgraph.WithRandom(rand.Reader))
	if err != nil {
		t.Fatal(err)
	}
	return create, invite
}

func fmInviteURI(roomID, eventID string) string {
	return "/_matrix/federation/v2/invite/" + url.PathEscape(roomID) + "/" + url.PathEscape(eventID)
}

func fmJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The resident side of the handshakes refuses what the spec says it must,
// against a fake peer: a user of another server than the one asking, an
// event that is not the one in the URL, an invite without the create event
// (MSC4311) or with another room's, an unsupported room version, a sender
// of another server; and it serves a well-formed make_join/send_join and a
// well-formed invite, which then shows in the invitee's /sync, and whose
// rejection (the inviter being unreachable for make_leave) drops it.
func TestFedMembershipValidation(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a := fed.Start(t, "a.test")
	peer := startFakePeer(t, fed, "p.test")
	other := startFakePeer(t, fed, "q.test")
	ctx := context.Background()
	alice := a.Register("alice")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "10"})
	if err != nil {
		t.Fatal(err)
	}
	rid := url.PathEscape(room.RoomID.String())

	// make_join for a user of another server than the origin.
	st, body := fmDo(t, fed, a, peer.id, http.MethodGet, "/_matrix/federation/v1/make_join/"+rid+"/"+url.PathEscape("@x:q.test")+"?ver=10", nil)
	fmWant(t, "make_join for another server's user", st, body, http.StatusForbidden, "M_FORBIDDEN")
	// make_join without the room's version among ver.
	st, body = fmDo(t, fed, a, peer.id, http.MethodGet, "/_matrix/federation/v1/make_join/"+rid+"/"+url.PathEscape("@x:p.test")+"?ver=9", nil)
	fmWant(t, "make_join with other versions", st, body, http.StatusBadRequest, "M_INCOMPATIBLE_ROOM_VERSION")
	if string(body["room_version"]) != `"10"` {
		t.Fatalf("M_INCOMPATIBLE_ROOM_VERSION without the room's version: %v", body)
	}
	// make_knock needs ver.
	st, body = fmDo(t, fed, a, peer.id, http.MethodGet, "/_matrix/federation/v1/make_knock/"+rid+"/"+url.PathEscape("@x:p.test"), nil)
	fmWant(t, "make_knock without ver", st, body, http.StatusBadRequest, "M_MISSING_PARAM")

	// A good make_join: the template is @x:p.test's join.
	st, body = fmDo(t, fed, a, peer.id, http.MethodGet, "/_matrix/federation/v1/make_join/"+rid+"/"+url.PathEscape("@x:p.test")+"?ver=9&ver=10", nil)
	fmWant(t, "make_join", st, body, http.StatusOK, "")
	var tmpl map[string]json.RawMessage
	if err := json.Unmarshal(body["event"], &tmpl); err != nil || string(tmpl["state_key"]) != `"@x:p.test"` {
		t.Fatalf("template %s", body["event"])
	}
	tmpl["origin"], tmpl["origin_server_ts"] = json.RawMessage(`"p.test"`), json.RawMessage(fmJSON(t, time.Now().UnixMilli()))
	rv := eventgraph.MustRoomVersion("10")
	raw, err := eventgraph.AddContentHash(fmJSON(t, tmpl))
	if err != nil {
		t.Fatal(err)
	}
	if raw, err = eventgraph.SignEvent(raw, rv, "p.test", peer.id.KeyID, peer.id.PrivateKey); err != nil {
		t.Fatal(err)
	}
	join, err := eventgraph.ParseEvent(raw, rv)
	if err != nil {
		t.Fatal(err)
	}
	sendJoin := func(from *actors.ServerIdentity, eventID string, pdu []byte) (int, map[string]json.RawMessage) {
		return fmDo(t, fed, a, from, http.MethodPut, "/_matrix/federation/v2/send_join/"+rid+"/"+url.PathEscape(eventID), pdu)
	}
	st, body = sendJoin(peer.id, "$notthisone", raw)
	fmWant(t, "send_join with another event ID", st, body, http.StatusBadRequest, "M_INVALID_PARAM")
	st, body = sendJoin(other.id, join.EventID(), raw)
	fmWant(t, "send_join from another origin", st, body, http.StatusBadRequest, "M_INVALID_PARAM")
	// A changed timestamp: the signature no longer verifies.
	var tampered map[string]json.RawMessage
	_ = json.Unmarshal(raw, &tampered)
	tampered["origin_server_ts"] = json.RawMessage(fmJSON(t, time.Now().UnixMilli()+5))
	forged := fmJSON(t, tampered)
	fe, err := eventgraph.ParseEvent(forged, rv)
	if err != nil {
		t.Fatal(err)
	}
	st, body = sendJoin(peer.id, fe.EventID(), forged)
	fmWant(t, "send_join of a tampered event", st, body, http.StatusBadRequest, "M_INVALID_PARAM")
	st, body = sendJoin(peer.id, join.EventID(), raw)
	fmWant(t, "send_join", st, body, http.StatusOK, "")
	var state []json.RawMessage
	_ = json.Unmarshal(body["state"], &state)
	hasCreate := false
	for _, e := range state {
		if se, _ := eventgraph.ParseEvent(e, rv); se != nil && se.Type() == "m.room.create" {
			hasCreate = true
		}
	}
	if !hasCreate || len(body["auth_chain"]) == 0 || string(body["origin"]) != `"a.test"` {
		t.Fatalf("send_join answer: %d state events, create %v, %s", len(state), hasCreate, body["origin"])
	}
	members, err := alice.JoinedMembers(ctx, room.RoomID)
	if err != nil {
		t.Fatalf("joined members after send_join: %v", err)
	}
	if _, ok := members.Joined["@x:p.test"]; !ok {
		t.Fatalf("@x:p.test is not joined: %v", members.Joined)
	}
	// And leaves through the deprecated v1 send_leave: [200, {}].
	st, body = fmDo(t, fed, a, peer.id, http.MethodGet, "/_matrix/federation/v1/make_leave/"+rid+"/"+url.PathEscape("@x:p.test"), nil)
	fmWant(t, "make_leave", st, body, http.StatusOK, "")
	var leaveTmpl map[string]json.RawMessage
	_ = json.Unmarshal(body["event"], &leaveTmpl)
	leaveTmpl["origin"], leaveTmpl["origin_server_ts"] = fmJSON(t, "p.test"), fmJSON(t, time.Now().UnixMilli())
	leaveRaw, err := eventgraph.AddContentHash(fmJSON(t, leaveTmpl))
	if err != nil {
		t.Fatal(err)
	}
	if leaveRaw, err = eventgraph.SignEvent(leaveRaw, rv, "p.test", peer.id.KeyID, peer.id.PrivateKey); err != nil {
		t.Fatal(err)
	}
	leave, err := eventgraph.ParseEvent(leaveRaw, rv)
	if err != nil {
		t.Fatal(err)
	}
	st, rawAnswer := fmDoRaw(t, fed, a, peer.id, http.MethodPut, "/_matrix/federation/v1/send_leave/"+rid+"/"+url.PathEscape(leave.EventID()), leaveRaw)
	if st != http.StatusOK || string(rawAnswer) != `[200,{}]` {
		t.Fatalf("v1 send_leave: %d %s", st, rawAnswer)
	}
	if m := fmMembership(alice, room.RoomID, "@x:p.test"); m != "leave" {
		t.Fatalf("membership after send_leave: %q", m)
	}

	// Invites.
	for _, version := range []eventgraph.RoomVersionID{"10", "12"} {
		t.Run("invite v"+string(version), func(t *testing.T) {
			create, invite := fmPeerRoom(t, peer, version, alice.UserID.String())
			uri := fmInviteURI(invite.RoomID(), invite.EventID())
			req := func(v string, irs ...*eventgraph.Event) []byte {
				list := []json.RawMessage{json.RawMessage(`{"type":"m.room.name","state_key":"","sender":"@pat:p.test","content":{"name":"Peer room"}}`)}
				for _, e := range irs {
					list = append(list, e.JSON())
				}
				return fmJSON(t, map[string]any{"room_version": v, "event": json.RawMessage(invite.JSON()), "invite_room_state": list})
			}
			if version == "12" {
				// MSC4311: refused from v12 on; earlier versions take such
				// invites from servers that predate it (Dendrite 0.13).
				st, body := fmDo(t, fed, a, peer.id, http.MethodPut, uri, req(string(version)))
				fmWant(t, "invite without the create event", st, body, http.StatusBadRequest, "M_MISSING_PARAM")
			}
			st, body := fmDo(t, fed, a, peer.id, http.MethodPut, uri, req("99", create))
			fmWant(t, "invite of an unknown version", st, body, http.StatusBadRequest, "M_INCOMPATIBLE_ROOM_VERSION")
			otherCreate, _ := fmPeerRoom(t, peer, version, alice.UserID.String())
			st, body = fmDo(t, fed, a, peer.id, http.MethodPut, uri, req(string(version), otherCreate))
			fmWant(t, "invite with another room's create event", st, body, http.StatusBadRequest, "M_INVALID_PARAM")
			st, body = fmDo(t, fed, a, other.id, http.MethodPut, uri, req(string(version), create))
			fmWant(t, "invite from another origin", st, body, http.StatusBadRequest, "M_INVALID_PARAM")
			st, body = fmDo(t, fed, a, peer.id, http.MethodPut, fmInviteURI(invite.RoomID(), "$other"), req(string(version), create))
			fmWant(t, "invite with another event ID", st, body, http.StatusBadRequest, "M_INVALID_PARAM")
			_, ghostInvite := fmPeerRoom(t, peer, version, "@ghost:a.test")
			ghostBody := fmJSON(t, map[string]any{"room_version": string(version), "event": json.RawMessage(ghostInvite.JSON()),
				"invite_room_state": []json.RawMessage{create.JSON()}})
			st, body = fmDo(t, fed, a, peer.id, http.MethodPut, fmInviteURI(ghostInvite.RoomID(), ghostInvite.EventID()), ghostBody)
			fmWant(t, "invite of nobody", st, body, http.StatusNotFound, "M_NOT_FOUND")

			st, body = fmDo(t, fed, a, peer.id, http.MethodPut, uri, req(string(version), create))
			fmWant(t, "invite", st, body, http.StatusOK, "")
			signed, err := eventgraph.ParseEvent(body["event"], eventgraph.MustRoomVersion(version))
			if err != nil || signed.EventID() != invite.EventID() {
				t.Fatalf("signed invite: %v", err)
			}
			sigs, _ := signed.Signatures()
			if len(sigs["a.test"]) == 0 || len(sigs["p.test"]) == 0 {
				t.Fatalf("invite signatures %v", sigs)
			}
			roomID := id.RoomID(invite.RoomID())
			fmSyncUntil(t, alice, "the invite", func(s *mautrix.RespSync) bool {
				inv, ok := s.Rooms.Invite[roomID]
				if !ok {
					return false
				}
				for _, e := range inv.State.Events {
					if e.Type.Type == "m.room.name" {
						return true
					}
				}
				return false
			})
			// p.test answers nothing but its keys: the rejection cannot go
			// through it, so a.test drops the invite on its own.
			if _, err := alice.LeaveRoom(ctx, roomID); err != nil {
				t.Fatalf("reject: %v", err)
			}
			full, err := alice.FullSyncRequest(ctx, mautrix.ReqSync{Timeout: 0})
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := full.Rooms.Invite[roomID]; ok {
				t.Fatal("the rejected invite is still there")
			}
		})
	}
}

// fmPeerJoin makes user (of the fake peer) join room on node through
// make_join and send_join, as a remote server would.
func fmPeerJoin(t *testing.T, fed *shoaltest.Federation, node *shoaltest.Node, peer *fakePeer, room id.RoomID, user string) {
	t.Helper()
	rid := url.PathEscape(room.String())
	st, body := fmDo(t, fed, node, peer.id, http.MethodGet, "/_matrix/federation/v1/make_join/"+rid+"/"+url.PathEscape(user)+"?ver=10&ver=12", nil)
	fmWant(t, "make_join", st, body, http.StatusOK, "")
	var version string
	_ = json.Unmarshal(body["room_version"], &version)
	rv := eventgraph.MustRoomVersion(eventgraph.RoomVersionID(version))
	var tmpl map[string]json.RawMessage
	if err := json.Unmarshal(body["event"], &tmpl); err != nil {
		t.Fatal(err)
	}
	tmpl["origin"], tmpl["origin_server_ts"] = fmJSON(t, peer.id.ServerName), fmJSON(t, time.Now().UnixMilli())
	raw, err := eventgraph.AddContentHash(fmJSON(t, tmpl))
	if err != nil {
		t.Fatal(err)
	}
	if raw, err = eventgraph.SignEvent(raw, rv, peer.id.ServerName, peer.id.KeyID, peer.id.PrivateKey); err != nil {
		t.Fatal(err)
	}
	ev, err := eventgraph.ParseEvent(raw, rv)
	if err != nil {
		t.Fatal(err)
	}
	st, body = fmDo(t, fed, node, peer.id, http.MethodPut, "/_matrix/federation/v2/send_join/"+rid+"/"+url.PathEscape(ev.EventID()), raw)
	fmWant(t, "send_join", st, body, http.StatusOK, "")
}

// The resident's answers to restricted joins: M_UNABLE_TO_AUTHORISE_JOIN
// when it is in none of the allowed rooms, M_UNABLE_TO_GRANT_JOIN when the
// user qualifies but no user here may invite, 403 when the user is in none
// of the allowed rooms, and a template naming the authorising user when
// all is well.
func TestFedMembershipRestrictedResident(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a := fed.Start(t, "a.test")
	peer := startFakePeer(t, fed, "p.test")
	ctx := context.Background()
	alice := a.Register("alice")
	space, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "10"})
	if err != nil {
		t.Fatal(err)
	}
	fmPeerJoin(t, fed, a, peer, space.RoomID, "@x:p.test")
	restricted := func(allow string, inviteLevel int) id.RoomID {
		req := &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "10",
			InitialState: []*event.Event{{Type: event.StateJoinRules, Content: event.Content{Raw: map[string]any{
				"join_rule": "restricted", "allow": []any{map[string]any{"type": "m.room_membership", "room_id": allow}}}}}}}
		if inviteLevel > 0 {
			req.PowerLevelOverride = &event.PowerLevelsEventContent{InvitePtr: &inviteLevel,
				Users: map[id.UserID]int{alice.UserID: 100}}
		}
		room, err := alice.CreateRoom(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return room.RoomID
	}
	makeJoin := func(room id.RoomID, user string) (int, map[string]json.RawMessage) {
		return fmDo(t, fed, a, peer.id, http.MethodGet, "/_matrix/federation/v1/make_join/"+url.PathEscape(room.String())+"/"+url.PathEscape(user)+"?ver=10", nil)
	}
	st, body := makeJoin(restricted("!unknown:elsewhere.test", 0), "@x:p.test")
	fmWant(t, "allowed room unknown here", st, body, http.StatusBadRequest, "M_UNABLE_TO_AUTHORISE_JOIN")
	st, body = makeJoin(restricted(space.RoomID.String(), 101), "@x:p.test")
	fmWant(t, "nobody here may invite", st, body, http.StatusBadRequest, "M_UNABLE_TO_GRANT_JOIN")
	ok := restricted(space.RoomID.String(), 0)
	st, body = makeJoin(ok, "@y:p.test")
	fmWant(t, "user in no allowed room", st, body, http.StatusForbidden, "M_FORBIDDEN")
	st, body = makeJoin(ok, "@x:p.test")
	fmWant(t, "restricted make_join", st, body, http.StatusOK, "")
	var tmpl struct {
		Content map[string]any `json:"content"`
	}
	_ = json.Unmarshal(body["event"], &tmpl)
	if tmpl.Content["join_authorised_via_users_server"] != alice.UserID.String() {
		t.Fatalf("template content %v", tmpl.Content)
	}
	// send_join of it: a.test adds its signature and returns the event.
	fmPeerJoin(t, fed, a, peer, ok, "@x:p.test")
	members, err := alice.JoinedMembers(ctx, ok)
	if err != nil {
		t.Fatal(err)
	}
	if _, in := members.Joined["@x:p.test"]; !in {
		t.Fatalf("@x:p.test did not join the restricted room: %v", members.Joined)
	}
}

// Inviting users of servers that misbehave: one that refuses the invite
// with M_MISSING_PARAM (MSC4311: the client gets a 5xx), one that returns
// the invite without its signature (refused), and one that counter-signs
// it properly after checking that invite_room_state carries the create
// event as a full PDU (the invite goes in the room).
func TestFedMembershipInviteOut(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a := fed.Start(t, "a.test")
	var gotState atomic.Value
	answer := func(mode string) func(p *fakePeer, w http.ResponseWriter, r *http.Request) {
		return func(p *fakePeer, w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodPut || !strings.HasPrefix(r.URL.Path, "/_matrix/federation/v2/invite/") {
				http.Error(w, `{"errcode":"M_UNRECOGNIZED","error":"no"}`, http.StatusNotFound)
				return
			}
			var req struct {
				RoomVersion     string            `json:"room_version"`
				Event           json.RawMessage   `json:"event"`
				InviteRoomState []json.RawMessage `json:"invite_room_state"`
			}
			_ = json.NewDecoder(r.Body).Decode(&req)
			w.Header().Set("Content-Type", "application/json")
			switch mode {
			case "missing":
				w.WriteHeader(http.StatusBadRequest)
				_, _ = w.Write([]byte(`{"errcode":"M_MISSING_PARAM","error":"no create event"}`))
			case "unsigned":
				_, _ = w.Write(fmJSON(t, map[string]any{"event": req.Event}))
			default:
				gotState.Store(req.InviteRoomState)
				rv := eventgraph.MustRoomVersion(eventgraph.RoomVersionID(req.RoomVersion))
				signed, err := eventgraph.SignEvent(req.Event, rv, p.id.ServerName, p.id.KeyID, p.id.PrivateKey)
				if err != nil {
					t.Error(err)
				}
				_, _ = w.Write(fmJSON(t, map[string]any{"event": json.RawMessage(signed)}))
			}
		}
	}
	startFakePeerWith(t, fed, "missing.test", answer("missing"))
	startFakePeerWith(t, fed, "unsigned.test", answer("unsigned"))
	startFakePeerWith(t, fed, "good.test", answer("good"))
	ctx := context.Background()
	alice := a.Register("alice")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "invites out"})
	if err != nil {
		t.Fatal(err)
	}
	var he mautrix.HTTPError
	_, err = alice.InviteUser(ctx, room.RoomID, &mautrix.ReqInviteUser{UserID: "@x:missing.test"})
	if !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != http.StatusBadGateway {
		t.Fatalf("invite refused with M_MISSING_PARAM: %v", err)
	}
	_, err = alice.InviteUser(ctx, room.RoomID, &mautrix.ReqInviteUser{UserID: "@x:unsigned.test"})
	if !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != http.StatusBadGateway {
		t.Fatalf("invite returned unsigned: %v", err)
	}
	if m := fmMembership(alice, room.RoomID, "@x:unsigned.test"); m != "" {
		t.Fatalf("the unsigned invite went in the room: %q", m)
	}
	if _, err := alice.InviteUser(ctx, room.RoomID, &mautrix.ReqInviteUser{UserID: "@x:good.test"}); err != nil {
		t.Fatalf("invite: %v", err)
	}
	if m := fmMembership(alice, room.RoomID, "@x:good.test"); m != "invite" {
		t.Fatalf("membership after the invite: %q", m)
	}
	irs, _ := gotState.Load().([]json.RawMessage)
	rv := eventgraph.MustRoomVersion(eventgraph.DefaultRoomVersion)
	found := false
	for _, e := range irs {
		if ev, err := eventgraph.ParseEvent(e, rv); err == nil && ev.Type() == "m.room.create" && ev.RoomID() == room.RoomID.String() {
			found = true
		}
	}
	if !found {
		t.Fatalf("invite_room_state has no create event PDU of the room: %s", irs)
	}
}

// fmSyncUntil syncs c until cond holds for a response (30 s at most).
func fmSyncUntil(t *testing.T, c *mautrix.Client, what string, cond func(*mautrix.RespSync) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	since := ""
	for time.Now().Before(deadline) {
		resp, err := c.SyncRequest(context.Background(), 2000, since, "", since == "", "")
		if err != nil {
			t.Fatalf("sync for %s: %v", what, err)
		}
		if cond(resp) {
			return
		}
		since = resp.NextBatch
	}
	t.Fatalf("%s never showed in %s's /sync", what, c.UserID)
}

// fmHasMessage is a sync condition: body was sent in room.
func fmHasMessage(room id.RoomID, body string) func(*mautrix.RespSync) bool {
	return func(s *mautrix.RespSync) bool {
		jr, ok := s.Rooms.Join[room]
		if !ok {
			return false
		}
		for _, e := range jr.Timeline.Events {
			if e.Type == event.EventMessage && e.Content.Raw["body"] == body {
				return true
			}
		}
		return false
	}
}

// fmMembership is user's membership in room as c's server sees it ("" when
// it has none).
func fmMembership(c *mautrix.Client, room id.RoomID, user id.UserID) string {
	var m struct {
		Membership string `json:"membership"`
	}
	if err := c.StateEvent(context.Background(), room, event.StateMember, user.String(), &m); err != nil {
		return ""
	}
	return m.Membership
}

func fmWaitMembership(t *testing.T, c *mautrix.Client, room id.RoomID, user id.UserID, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if fmMembership(c, room, user) == want {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s's membership in %s never became %q for %s (is %q)", user, room, want, c.UserID, fmMembership(c, room, user))
}

// Two shoal servers: bob of b.test joins alice's public rooms on a.test
// (room versions 1, 6, 10, 11, 12) and they talk both ways.
func TestFedMembershipJoinVersions(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a, b := fed.Start(t, "a.test"), fed.Start(t, "b.test")
	ctx := context.Background()
	alice, bob := a.Register("alice"), b.Register("bob")
	for _, v := range []string{"1", "6", "10", "11", "12"} {
		t.Run("v"+v, func(t *testing.T) {
			room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: id.RoomVersion(v), Name: "room v" + v})
			if err != nil {
				t.Fatal(err)
			}
			resp, err := bob.JoinRoom(ctx, room.RoomID.String(), &mautrix.ReqJoinRoom{Via: []string{"a.test"}})
			if err != nil {
				t.Fatalf("join: %v", err)
			}
			if resp.RoomID != room.RoomID {
				t.Fatalf("joined %s, not %s", resp.RoomID, room.RoomID)
			}
			fmWaitMembership(t, alice, room.RoomID, bob.UserID, "join")
			if _, err := bob.SendText(ctx, room.RoomID, "hello from b, v"+v); err != nil {
				t.Fatalf("bob sends: %v", err)
			}
			fmSyncUntil(t, alice, "bob's message", fmHasMessage(room.RoomID, "hello from b, v"+v))
			if _, err := alice.SendText(ctx, room.RoomID, "hello from a, v"+v); err != nil {
				t.Fatal(err)
			}
			fmSyncUntil(t, bob, "alice's message", fmHasMessage(room.RoomID, "hello from a, v"+v))
			members, err := bob.JoinedMembers(ctx, room.RoomID)
			if err != nil || len(members.Joined) != 2 {
				t.Fatalf("b.test's joined members: %v %v", members, err)
			}
		})
	}
}

// Two shoal servers: invites both ways of acceptance and rejection,
// knocking, leaving, a join through a room alias of the other server, and
// restricted joins through a space.
func TestFedMembershipFlows(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a, b := fed.Start(t, "a.test"), fed.Start(t, "b.test")
	ctx := context.Background()
	alice, bob, carol := a.Register("alice"), b.Register("bob"), b.Register("carol")

	t.Run("invite and join", func(t *testing.T) {
		room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "secret"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := alice.InviteUser(ctx, room.RoomID, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
			t.Fatalf("invite: %v", err)
		}
		fmWaitMembership(t, alice, room.RoomID, bob.UserID, "invite")
		fmSyncUntil(t, bob, "the invite", func(s *mautrix.RespSync) bool {
			inv, ok := s.Rooms.Invite[room.RoomID]
			return ok && slices.ContainsFunc(inv.State.Events, func(e *event.Event) bool { return e.Type == event.StateRoomName })
		})
		// No via: b.test joins through the inviter's server.
		if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
			t.Fatalf("accept: %v", err)
		}
		fmWaitMembership(t, alice, room.RoomID, bob.UserID, "join")
		if _, err := bob.SendText(ctx, room.RoomID, "thanks for the invite"); err != nil {
			t.Fatal(err)
		}
		fmSyncUntil(t, alice, "bob's message", fmHasMessage(room.RoomID, "thanks for the invite"))

		// b.test is in the room now: carol's invite is one more event of
		// its graph, and her join a local one that b.test sends out.
		if _, err := alice.InviteUser(ctx, room.RoomID, &mautrix.ReqInviteUser{UserID: carol.UserID}); err != nil {
			t.Fatalf("invite carol: %v", err)
		}
		fmSyncUntil(t, carol, "carol's invite", func(s *mautrix.RespSync) bool { _, ok := s.Rooms.Invite[room.RoomID]; return ok })
		if _, err := carol.JoinRoomByID(ctx, room.RoomID); err != nil {
			t.Fatalf("carol joins: %v", err)
		}
		fmWaitMembership(t, alice, room.RoomID, carol.UserID, "join")
		if _, err := carol.LeaveRoom(ctx, room.RoomID); err != nil {
			t.Fatalf("carol leaves: %v", err)
		}
		fmWaitMembership(t, alice, room.RoomID, carol.UserID, "leave")

		// Leaving a room b.test is in is a plain leave that reaches a.test.
		if _, err := bob.LeaveRoom(ctx, room.RoomID); err != nil {
			t.Fatalf("leave: %v", err)
		}
		fmWaitMembership(t, alice, room.RoomID, bob.UserID, "leave")
	})

	t.Run("reject", func(t *testing.T) {
		room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := alice.InviteUser(ctx, room.RoomID, &mautrix.ReqInviteUser{UserID: carol.UserID}); err != nil {
			t.Fatalf("invite: %v", err)
		}
		fmSyncUntil(t, carol, "the invite", func(s *mautrix.RespSync) bool { _, ok := s.Rooms.Invite[room.RoomID]; return ok })
		if _, err := carol.LeaveRoom(ctx, room.RoomID, &mautrix.ReqLeave{Reason: "no thanks"}); err != nil {
			t.Fatalf("reject: %v", err)
		}
		fmWaitMembership(t, alice, room.RoomID, carol.UserID, "leave")
		full, err := carol.FullSyncRequest(ctx, mautrix.ReqSync{})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := full.Rooms.Invite[room.RoomID]; ok {
			t.Fatal("the rejected invite still shows")
		}
	})

	t.Run("knock", func(t *testing.T) {
		room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "knock here",
			InitialState: []*event.Event{{Type: event.StateJoinRules, Content: event.Content{Raw: map[string]any{"join_rule": "knock"}}}}})
		if err != nil {
			t.Fatal(err)
		}
		// The first server cannot be reached; a.test's refusal is what bob
		// hears.
		_, err = bob.JoinRoom(ctx, room.RoomID.String(), &mautrix.ReqJoinRoom{Via: []string{"nowhere.test", "a.test"}})
		if !errors.Is(err, mautrix.MForbidden) {
			t.Fatalf("bob joining a knock room uninvited: %v", err)
		}
		if _, err := bob.KnockRoom(ctx, room.RoomID.String(), &mautrix.ReqKnockRoom{Via: []string{"a.test"}, Reason: "let me in"}); err != nil {
			t.Fatalf("knock: %v", err)
		}
		fmWaitMembership(t, alice, room.RoomID, bob.UserID, "knock")
		fmSyncUntil(t, bob, "the knock", func(s *mautrix.RespSync) bool {
			k, ok := s.Rooms.Knock[room.RoomID]
			return ok && slices.ContainsFunc(k.State.Events, func(e *event.Event) bool { return e.Type == event.StateRoomName })
		})
		if _, err := alice.InviteUser(ctx, room.RoomID, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
			t.Fatalf("accept the knock: %v", err)
		}
		fmSyncUntil(t, bob, "the invite", func(s *mautrix.RespSync) bool { _, ok := s.Rooms.Invite[room.RoomID]; return ok })
		if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
			t.Fatalf("join after the knock: %v", err)
		}
		fmWaitMembership(t, alice, room.RoomID, bob.UserID, "join")

		// A knock retracted: b.test is not in the (v12) room, whose ID
		// names no server; the leave goes out through a server of the
		// knock's stripped state.
		other, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat",
			InitialState: []*event.Event{{Type: event.StateJoinRules, Content: event.Content{Raw: map[string]any{"join_rule": "knock"}}}}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := bob.KnockRoom(ctx, other.RoomID.String(), &mautrix.ReqKnockRoom{Via: []string{"a.test"}}); err != nil {
			t.Fatalf("knock: %v", err)
		}
		fmWaitMembership(t, alice, other.RoomID, bob.UserID, "knock")
		if _, err := bob.LeaveRoom(ctx, other.RoomID); err != nil {
			t.Fatalf("retract the knock: %v", err)
		}
		fmWaitMembership(t, alice, other.RoomID, bob.UserID, "leave")
	})

	t.Run("alias", func(t *testing.T) {
		room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomAliasName: "lobby"})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := bob.JoinRoom(ctx, "#lobby:a.test", nil)
		if err != nil || resp.RoomID != room.RoomID {
			t.Fatalf("join by alias: %v %v", resp, err)
		}
		fmWaitMembership(t, alice, room.RoomID, bob.UserID, "join")
		// Leaving and coming back: b.test has the room's state but no
		// member in it any more, so the rejoin goes through a.test again.
		if _, err := bob.LeaveRoom(ctx, room.RoomID); err != nil {
			t.Fatalf("leave: %v", err)
		}
		fmWaitMembership(t, alice, room.RoomID, bob.UserID, "leave")
		if _, err := bob.JoinRoom(ctx, room.RoomID.String(), &mautrix.ReqJoinRoom{Via: []string{"a.test"}}); err != nil {
			t.Fatalf("rejoin: %v", err)
		}
		fmWaitMembership(t, alice, room.RoomID, bob.UserID, "join")
		if _, err := bob.SendText(ctx, room.RoomID, "back again"); err != nil {
			t.Fatal(err)
		}
		fmSyncUntil(t, alice, "bob's message after the rejoin", fmHasMessage(room.RoomID, "back again"))
		_, err = bob.JoinRoom(ctx, "#nothere:a.test", nil)
		if !errors.Is(err, mautrix.MNotFound) {
			t.Fatalf("unknown remote alias: %v", err)
		}
	})

	t.Run("restricted", func(t *testing.T) {
		for _, v := range []string{"10", "12"} {
			space, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: id.RoomVersion(v),
				CreationContent: map[string]any{"type": "m.space"}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := bob.JoinRoom(ctx, space.RoomID.String(), &mautrix.ReqJoinRoom{Via: []string{"a.test"}}); err != nil {
				t.Fatalf("join the space: %v", err)
			}
			fmWaitMembership(t, alice, space.RoomID, bob.UserID, "join")
			room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: id.RoomVersion(v),
				InitialState: []*event.Event{{Type: event.StateJoinRules, Content: event.Content{Raw: map[string]any{
					"join_rule": "restricted", "allow": []any{map[string]any{"type": "m.room_membership", "room_id": space.RoomID.String()}}}}}}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := bob.JoinRoom(ctx, room.RoomID.String(), &mautrix.ReqJoinRoom{Via: []string{"a.test"}}); err != nil {
				t.Fatalf("v%s: restricted join through the space: %v", v, err)
			}
			fmWaitMembership(t, alice, room.RoomID, bob.UserID, "join")
			var m map[string]any
			if err := alice.StateEvent(ctx, room.RoomID, event.StateMember, bob.UserID.String(), &m); err != nil || m["join_authorised_via_users_server"] != alice.UserID.String() {
				t.Fatalf("v%s: join content %v %v", v, m, err)
			}
			_, err = carol.JoinRoom(ctx, room.RoomID.String(), &mautrix.ReqJoinRoom{Via: []string{"a.test"}})
			if !errors.Is(err, mautrix.MForbidden) {
				t.Fatalf("v%s: carol, not in the space, joined: %v", v, err)
			}
		}
	})
}

// An identity server tells a.test that alice's e-mail address, invited to
// a room of res.test, is now hers: a.test asks res.test, signed, to turn
// the third-party invite into an invite of alice. Invites for users of
// other servers are refused.
func TestFedMembershipThirdPartyOnBind(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a := fed.Start(t, "a.test")
	got := make(chan map[string]any, 4)
	startFakePeerWith(t, fed, "res.test", func(p *fakePeer, w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPut || !strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/exchange_third_party_invite/") {
			http.Error(w, `{"errcode":"M_UNRECOGNIZED","error":"no"}`, http.StatusNotFound)
			return
		}
		x, err := fedclient.ParseXMatrix(r.Header.Get("Authorization"))
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		if err != nil || x.Origin != "a.test" {
			t.Errorf("exchange request not signed by a.test: %v %v", x, err)
		}
		body["_path"] = r.URL.Path
		got <- body
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{}`))
	})
	alice := a.Register("alice")
	signed := map[string]any{"mxid": alice.UserID.String(), "token": "abc123",
		"signatures": map[string]any{"id.test": map[string]string{"ed25519:0": "c2ln"}}}
	onbind := func(mxid string) int {
		body := fmJSON(t, map[string]any{"medium": "email", "address": "alice@example.org", "mxid": mxid,
			"invites": []any{map[string]any{"medium": "email", "address": "alice@example.org", "mxid": mxid,
				"room_id": "!room:res.test", "sender": "@pat:res.test", "signed": signed}}})
		cli := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: fed.CA.Pool(), ServerName: "a.test"}}, Timeout: 30 * time.Second}
		defer cli.CloseIdleConnections()
		req, _ := http.NewRequest(http.MethodPut, "https://"+a.TLSAddrs[0]+"/_matrix/federation/v1/3pid/onbind", bytes.NewReader(body))
		resp, err := cli.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := onbind("@bob:elsewhere.test"); st != http.StatusBadRequest {
		t.Fatalf("onbind for another server's user: %d", st)
	}
	if st := onbind(alice.UserID.String()); st != http.StatusOK {
		t.Fatalf("onbind: %d", st)
	}
	select {
	case body := <-got:
		content, _ := body["content"].(map[string]any)
		tpi, _ := content["third_party_invite"].(map[string]any)
		sg, _ := tpi["signed"].(map[string]any)
		if body["_path"] != "/_matrix/federation/v1/exchange_third_party_invite/!room:res.test" || body["state_key"] != alice.UserID.String() ||
			body["sender"] != "@pat:res.test" || content["membership"] != "invite" || sg["token"] != "abc123" {
			t.Fatalf("exchange request %v", body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("res.test was not asked to exchange the invite")
	}
}

// Third-party invites made by alice on a.test: q.test, whose user bound
// the invited address, has a.test make the invite (exchange_third_party_invite,
// then /invite to q.test); a forged signed object, an unknown token and a
// user of another server than the asking one are refused; and an address
// bound by a user of a.test itself (onbind) is exchanged locally.
func TestFedMembershipThirdPartyExchange(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a := fed.Start(t, "a.test")
	q := startFakePeerWith(t, fed, "q.test", func(p *fakePeer, w http.ResponseWriter, r *http.Request) {
		var req struct {
			RoomVersion string          `json:"room_version"`
			Event       json.RawMessage `json:"event"`
		}
		if r.Method != http.MethodPut || !strings.HasPrefix(r.URL.Path, "/_matrix/federation/v2/invite/") || json.NewDecoder(r.Body).Decode(&req) != nil {
			http.Error(w, `{"errcode":"M_UNRECOGNIZED","error":"no"}`, http.StatusNotFound)
			return
		}
		signed, err := eventgraph.SignEvent(req.Event, eventgraph.MustRoomVersion(eventgraph.RoomVersionID(req.RoomVersion)), p.id.ServerName, p.id.KeyID, p.id.PrivateKey)
		if err != nil {
			t.Error(err)
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(fmJSON(t, map[string]any{"event": json.RawMessage(signed)}))
	})
	ctx := context.Background()
	alice, bob := a.Register("alice"), a.Register("bob")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	isPub, isPriv, _ := ed25519.GenerateKey(rand.Reader)
	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	tpiType := event.Type{Type: "m.room.third_party_invite", Class: event.StateEventType}
	for _, tok := range []string{"tok1", "tok2"} {
		if _, err := alice.SendStateEvent(ctx, room.RoomID, tpiType, tok, map[string]any{"display_name": "someone@example.org",
			"key_validity_url": "https://id.test/_matrix/identity/v2/pubkey/isvalid", "public_key": eventgraph.EncodeBase64(isPub),
			"public_keys": []any{map[string]any{"public_key": eventgraph.EncodeBase64(isPub)}}}); err != nil {
			t.Fatal(err)
		}
	}
	sign := func(mxid, token string, priv ed25519.PrivateKey) json.RawMessage {
		b, err := eventgraph.SignJSON(fmJSON(t, map[string]string{"mxid": mxid, "token": token}), "id.test", "ed25519:0", priv)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	exchange := func(target string, signed json.RawMessage) (int, map[string]json.RawMessage) {
		return fmDo(t, fed, a, q.id, http.MethodPut, "/_matrix/federation/v1/exchange_third_party_invite/"+url.PathEscape(room.RoomID.String()),
			fmJSON(t, map[string]any{"type": "m.room.member", "room_id": room.RoomID, "sender": alice.UserID, "state_key": target,
				"content": map[string]any{"membership": "invite", "third_party_invite": map[string]any{"display_name": "x", "signed": signed}}}))
	}
	st, body := exchange("@x:q.test", sign("@x:q.test", "tok1", otherPriv))
	fmWant(t, "forged signed object", st, body, http.StatusForbidden, "M_FORBIDDEN")
	st, body = exchange("@x:q.test", sign("@x:q.test", "nosuchtoken", isPriv))
	fmWant(t, "unknown token", st, body, http.StatusForbidden, "M_FORBIDDEN")
	st, body = exchange("@x:elsewhere.test", sign("@x:elsewhere.test", "tok1", isPriv))
	fmWant(t, "invitee of another server", st, body, http.StatusForbidden, "M_FORBIDDEN")
	if m := fmMembership(alice, room.RoomID, "@x:q.test"); m != "" {
		t.Fatalf("a refused exchange left membership %q", m)
	}
	st, body = exchange("@x:q.test", sign("@x:q.test", "tok1", isPriv))
	fmWant(t, "exchange", st, body, http.StatusOK, "")
	var member struct {
		Membership       string `json:"membership"`
		ThirdPartyInvite struct {
			DisplayName string `json:"display_name"`
		} `json:"third_party_invite"`
	}
	if err := alice.StateEvent(ctx, room.RoomID, event.StateMember, "@x:q.test", &member); err != nil ||
		member.Membership != "invite" || member.ThirdPartyInvite.DisplayName != "someone@example.org" {
		t.Fatalf("member event after the exchange: %+v %v", member, err)
	}

	// bob of a.test binds the address of tok2: a.test makes the invite.
	onbind := fmJSON(t, map[string]any{"medium": "email", "address": "bob@example.org", "mxid": bob.UserID,
		"invites": []any{map[string]any{"medium": "email", "address": "bob@example.org", "mxid": bob.UserID,
			"room_id": room.RoomID, "sender": alice.UserID, "signed": sign(bob.UserID.String(), "tok2", isPriv)}}})
	cli := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: fed.CA.Pool(), ServerName: "a.test"}}, Timeout: 30 * time.Second}
	defer cli.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodPut, "https://"+a.TLSAddrs[0]+"/_matrix/federation/v1/3pid/onbind", bytes.NewReader(onbind))
	resp, err := cli.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("onbind: %d", resp.StatusCode)
	}
	if m := fmMembership(alice, room.RoomID, bob.UserID); m != "invite" {
		t.Fatalf("bob's membership after onbind: %q", m)
	}
}
