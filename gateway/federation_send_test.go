package gateway_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
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

// sendTxn PUTs a transaction body signed by id to node and returns status
// and decoded body.
func sendTxn(t *testing.T, fed *shoaltest.Federation, node *shoaltest.Node, id *actors.ServerIdentity, txnID string, body []byte) (int, map[string]any) {
	t.Helper()
	uri := "/_matrix/federation/v1/send/" + txnID
	var content []byte
	if json.Valid(body) {
		content = body
	}
	auth, err := fedclient.SignRequest(id, http.MethodPut, uri, node.ServerName(), content)
	if err != nil {
		t.Fatal(err)
	}
	return fedPut(t, fed, node, uri, auth, body)
}

func fedPut(t *testing.T, fed *shoaltest.Federation, node *shoaltest.Node, uri, auth string, body []byte) (int, map[string]any) {
	t.Helper()
	cli := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: fed.CA.Pool(), ServerName: node.ServerName()}}, Timeout: 30 * time.Second}
	defer cli.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodPut, "https://"+node.TLSAddrs[0]+uri, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := cli.Do(req)
	if err != nil {
		t.Errorf("PUT %s: %v", uri, err)
		return 0, nil
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

func txnBody(t *testing.T, origin string, pdus, edus []any) []byte {
	t.Helper()
	if pdus == nil {
		pdus = []any{}
	}
	m := map[string]any{"origin": origin, "origin_server_ts": time.Now().UnixMilli(), "pdus": pdus}
	if edus != nil {
		m["edus"] = edus
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFederationSendValidation: what a transaction must look like, and
// that EDUs that are bad or unknown never fail it.
func TestFederationSendValidation(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a := fed.Start(t, "a.test")
	peer := startFakePeer(t, fed, "p.test")
	many := func(n int, v any) []any {
		out := make([]any, n)
		for i := range out {
			out[i] = v
		}
		return out
	}
	cases := []struct {
		name    string
		body    []byte
		status  int
		errcode string
	}{
		{"empty transaction", txnBody(t, "p.test", nil, nil), 200, ""},
		// A body that is not JSON cannot be covered by the X-Matrix
		// signature: authentication refuses it before the handler.
		{"not JSON", []byte(`{"origin":`), 401, "M_UNAUTHORIZED"},
		{"not an object", []byte(`[1,2]`), 400, "M_BAD_JSON"},
		{"pdus not a list", []byte(`{"origin":"p.test","origin_server_ts":1,"pdus":{}}`), 400, "M_BAD_JSON"},
		{"missing origin", []byte(`{"origin_server_ts":1,"pdus":[]}`), 400, "M_BAD_JSON"},
		{"another origin", txnBody(t, "q.test", nil, nil), 403, "M_FORBIDDEN"},
		{"51 PDUs", txnBody(t, "p.test", many(51, map[string]any{}), nil), 400, "M_BAD_JSON"},
		{"101 EDUs", txnBody(t, "p.test", nil, many(101, map[string]any{"edu_type": "m.x", "content": map[string]any{}})), 400, "M_BAD_JSON"},
		{"bad and unknown EDUs", txnBody(t, "p.test", nil, []any{
			"not an object", 5, map[string]any{"edu_type": "m.unknown", "content": map[string]any{}},
			map[string]any{"edu_type": "m.typing", "content": "nope"},
			map[string]any{"edu_type": "m.typing", "content": map[string]any{"room_id": 5}},
			map[string]any{"edu_type": "m.receipt", "content": map[string]any{"!r:a.test": "x"}},
			map[string]any{"edu_type": "m.presence", "content": map[string]any{"push": []any{map[string]any{"user_id": "@u:p.test", "presence": "dancing"}}}},
			map[string]any{"edu_type": "m.direct_to_device", "content": map[string]any{"sender": "@u:q.test"}},
		}), 200, ""},
	}
	for i, c := range cases {
		status, body := sendTxn(t, fed, a, peer.id, fmt.Sprintf("v%d", i), c.body)
		if status != c.status {
			t.Fatalf("%s: status %d, want %d (%v)", c.name, status, c.status, body)
		}
		if c.errcode != "" && body["errcode"] != c.errcode {
			t.Fatalf("%s: errcode %v, want %s", c.name, body["errcode"], c.errcode)
		}
		if c.status == 200 {
			if pdus, ok := body["pdus"].(map[string]any); !ok || len(pdus) != 0 {
				t.Fatalf("%s: response %v", c.name, body)
			}
		}
	}
	// Unsigned, and signed for another transaction.
	if status, body := fedPut(t, fed, a, "/_matrix/federation/v1/send/u1", "", txnBody(t, "p.test", nil, nil)); status != 401 {
		t.Fatalf("unsigned: %d %v", status, body)
	}
	auth, _ := fedclient.SignRequest(peer.id, http.MethodPut, "/_matrix/federation/v1/send/u2", "a.test", txnBody(t, "p.test", nil, nil))
	if status, _ := fedPut(t, fed, a, "/_matrix/federation/v1/send/u3", auth, txnBody(t, "p.test", nil, nil)); status != 401 {
		t.Fatalf("signature of another URI: %d", status)
	}
	// A transaction ID longer than the bound.
	if status, body := sendTxn(t, fed, a, peer.id, strings.Repeat("x", 300), txnBody(t, "p.test", nil, nil)); status != 400 {
		t.Fatalf("long transaction ID: %d %v", status, body)
	}
}

func toDeviceEDU(sender, target, device, messageID, text string) map[string]any {
	return map[string]any{"edu_type": "m.direct_to_device", "content": map[string]any{
		"sender": sender, "type": "m.test", "message_id": messageID,
		"messages": map[string]any{target: map[string]any{device: map[string]any{"text": text}}}}}
}

// toDeviceTexts syncs cli until want messages arrived (or 10 s passed) and
// returns the texts of the m.test to-device messages, then waits a moment
// for any extra one.
func toDeviceTexts(t *testing.T, cli *mautrix.Client, want int) []string {
	t.Helper()
	ctx := context.Background()
	var texts []string
	since := ""
	deadline := time.Now().Add(10 * time.Second)
	for {
		timeout := 1000
		if len(texts) >= want {
			timeout = 0
		}
		resp, err := cli.SyncRequest(ctx, timeout, since, "", false, event.PresenceOffline)
		if err != nil {
			t.Fatal(err)
		}
		since = resp.NextBatch
		for _, ev := range resp.ToDevice.Events {
			if ev.Type.Type == "m.test" {
				texts = append(texts, fmt.Sprint(ev.Content.Raw["text"]))
			}
		}
		if len(texts) >= want {
			time.Sleep(300 * time.Millisecond)
			resp, err := cli.SyncRequest(ctx, 0, since, "", false, event.PresenceOffline)
			if err != nil {
				t.Fatal(err)
			}
			for _, ev := range resp.ToDevice.Events {
				if ev.Type.Type == "m.test" {
					texts = append(texts, fmt.Sprint(ev.Content.Raw["text"]))
				}
			}
			return texts
		}
		if time.Now().After(deadline) {
			return texts
		}
	}
}

// TestFederationSendIdempotent: a transaction is processed once per
// (origin, ID): sent again — even with another body — it gets the first
// response and nothing is applied; copies sent at the same time are
// processed once between them.
func TestFederationSendIdempotent(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a := fed.Start(t, "a.test")
	peer := startFakePeer(t, fed, "p.test")
	alice := a.Register("alice")
	target, dev := alice.UserID.String(), alice.DeviceID.String()

	one := txnBody(t, "p.test", nil, []any{toDeviceEDU("@u:p.test", target, dev, "m1", "one")})
	if status, body := sendTxn(t, fed, a, peer.id, "t1", one); status != 200 {
		t.Fatalf("first: %d %v", status, body)
	}
	// The same ID with another message: answered, not applied.
	two := txnBody(t, "p.test", nil, []any{toDeviceEDU("@u:p.test", target, dev, "m2", "two")})
	if status, body := sendTxn(t, fed, a, peer.id, "t1", two); status != 200 {
		t.Fatalf("repeat: %d %v", status, body)
	}
	three := txnBody(t, "p.test", nil, []any{toDeviceEDU("@u:p.test", target, dev, "m3", "three")})
	if status, body := sendTxn(t, fed, a, peer.id, "t2", three); status != 200 {
		t.Fatalf("second transaction: %d %v", status, body)
	}
	// Four copies of t3 at once, each with its own message.
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := txnBody(t, "p.test", nil, []any{toDeviceEDU("@u:p.test", target, dev, fmt.Sprintf("m4-%d", i), "four")})
			if status, body := sendTxn(t, fed, a, peer.id, "t3", b); status != 200 {
				t.Errorf("concurrent copy: %d %v", status, body)
			}
		}()
	}
	wg.Wait()
	texts := toDeviceTexts(t, alice, 3)
	if strings.Join(texts, ",") != "one,three,four" {
		t.Fatalf("to-device messages %v, want one,three,four", texts)
	}
}

// TestFederationSendEDUOfOtherServer: a server speaks for its own users
// only: typing and receipts it sends for a local user are dropped.
func TestFederationSendEDUOfOtherServer(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a := fed.Start(t, "a.test")
	peer := startFakePeer(t, fed, "p.test")
	alice := a.Register("alice")
	bob := a.Register("bob")
	ctx := context.Background()
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	sent, err := alice.SendText(ctx, room.RoomID, "hi")
	if err != nil {
		t.Fatal(err)
	}
	first, err := bob.SyncRequest(ctx, 0, "", "", false, event.PresenceOffline)
	if err != nil {
		t.Fatal(err)
	}
	body := txnBody(t, "p.test", nil, []any{
		map[string]any{"edu_type": "m.typing", "content": map[string]any{"room_id": room.RoomID, "user_id": alice.UserID, "typing": true}},
		map[string]any{"edu_type": "m.receipt", "content": map[string]any{room.RoomID.String(): map[string]any{"m.read": map[string]any{
			alice.UserID.String(): map[string]any{"event_ids": []string{sent.EventID.String()}, "data": map[string]any{"ts": 1}}}}}},
	})
	if status, resp := sendTxn(t, fed, a, peer.id, "e1", body); status != 200 {
		t.Fatalf("transaction: %d %v", status, resp)
	}
	// A local change after the EDUs: once bob sees it, he would have seen
	// them.
	if _, err := bob.UserTyping(ctx, room.RoomID, true, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	since := first.NextBatch
	for {
		resp, err := bob.SyncRequest(ctx, 1000, since, "", false, event.PresenceOffline)
		if err != nil {
			t.Fatal(err)
		}
		since = resp.NextBatch
		jr, ok := resp.Rooms.Join[room.RoomID]
		sawBob := false
		if ok {
			for _, ev := range jr.Ephemeral.Events {
				raw, _ := json.Marshal(ev.Content.Raw)
				if ev.Type.Type == "m.typing" && strings.Contains(string(raw), alice.UserID.String()) {
					t.Fatalf("typing of a local user accepted from p.test: %s", raw)
				}
				if ev.Type.Type == "m.receipt" && strings.Contains(string(raw), `"ts":1}`) {
					t.Fatalf("receipt of a local user accepted from p.test: %s", raw)
				}
				if ev.Type.Type == "m.typing" && strings.Contains(string(raw), bob.UserID.String()) {
					sawBob = true
				}
			}
		}
		if sawBob {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("bob's own typing never showed")
		}
	}
}

// syncUntil syncs cli (incrementally, from since) until pred holds for a
// response, and returns the next batch token.
func syncUntil(t *testing.T, cli *mautrix.Client, since, what string, pred func(*mautrix.RespSync) bool) string {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := cli.SyncRequest(ctx, 1000, since, "", false, "")
		if err != nil {
			t.Fatalf("%s: sync: %v", what, err)
		}
		since = resp.NextBatch
		if pred(resp) {
			return since
		}
	}
	t.Fatalf("%s: never seen", what)
	return ""
}

// ephemeralHas reports whether a sync response holds, in room, an
// ephemeral event of type typ whose content mentions all of subs.
func ephemeralHas(room id.RoomID, typ string, subs ...string) func(*mautrix.RespSync) bool {
	return func(s *mautrix.RespSync) bool {
		jr, ok := s.Rooms.Join[room]
		if !ok {
			return false
		}
		for _, ev := range jr.Ephemeral.Events {
			if ev.Type.Type != typ {
				continue
			}
			raw, _ := json.Marshal(ev.Content.Raw)
			all := true
			for _, sub := range subs {
				all = all && strings.Contains(string(raw), sub)
			}
			if all {
				return true
			}
		}
		return false
	}
}

func typingEDU(room id.RoomID, user string, typing bool) map[string]any {
	return map[string]any{"edu_type": "m.typing", "content": map[string]any{"room_id": room, "user_id": user, "typing": typing}}
}

func receiptEDU(room id.RoomID, user, eventID string, ts int64) map[string]any {
	return map[string]any{"edu_type": "m.receipt", "content": map[string]any{room.String(): map[string]any{"m.read": map[string]any{
		user: map[string]any{"event_ids": []string{eventID}, "data": map[string]any{"ts": ts}}}}}}
}

// TestFederationSendTypingACL: a remote server's typing and receipts for
// its joined user show to local members until the room's server ACL denies
// that server (MSC4163); from then on they are dropped.
func TestFederationSendTypingACL(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a := fed.Start(t, "a.test")
	peer := startFakePeer(t, fed, "p.test")
	alice := a.Register("alice")
	ctx := context.Background()
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	pat := "@pat:p.test"
	fmPeerJoin(t, fed, a, peer, room.RoomID, pat)
	sent, err := alice.SendText(ctx, room.RoomID, "hi pat")
	if err != nil {
		t.Fatal(err)
	}
	first, err := alice.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if st, body := sendTxn(t, fed, a, peer.id, "a1", txnBody(t, "p.test", nil, []any{
		typingEDU(room.RoomID, pat, true), receiptEDU(room.RoomID, pat, sent.EventID.String(), 1111)})); st != 200 {
		t.Fatalf("transaction: %d %v", st, body)
	}
	since := syncUntil(t, alice, first.NextBatch, "pat typing", ephemeralHas(room.RoomID, "m.typing", pat))
	syncUntil(t, alice, first.NextBatch, "pat's receipt", ephemeralHas(room.RoomID, "m.receipt", pat, `"ts":1111`))

	if _, err := alice.SendStateEvent(ctx, room.RoomID, event.StateServerACL, "",
		map[string]any{"allow": []string{"*"}, "deny": []string{"p.test"}}); err != nil {
		t.Fatal(err)
	}
	if st, body := sendTxn(t, fed, a, peer.id, "a2", txnBody(t, "p.test", nil, []any{
		typingEDU(room.RoomID, pat, false), receiptEDU(room.RoomID, pat, sent.EventID.String(), 2222)})); st != 200 {
		t.Fatalf("transaction: %d %v", st, body)
	}
	// alice's own typing after the EDUs: her sync shows the room's typing
	// set with pat still in it, and no second receipt.
	if _, err := alice.UserTyping(ctx, room.RoomID, true, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	var last *mautrix.RespSync
	syncUntil(t, alice, since, "alice typing", func(s *mautrix.RespSync) bool {
		last = s
		if ephemeralHas(room.RoomID, "m.receipt", "2222")(s) {
			t.Fatal("an ACL-denied server's receipt was applied")
		}
		return ephemeralHas(room.RoomID, "m.typing", alice.UserID.String())(s)
	})
	if !ephemeralHas(room.RoomID, "m.typing", alice.UserID.String(), pat)(last) {
		t.Fatal("an ACL-denied server's typing stop was applied")
	}
}

// presenceHas reports whether a sync response holds a presence event of
// sender whose content mentions all of subs.
func presenceHas(sender string, subs ...string) func(*mautrix.RespSync) bool {
	return func(s *mautrix.RespSync) bool {
		for _, ev := range s.Presence.Events {
			if ev.Sender.String() != sender {
				continue
			}
			raw, _ := json.Marshal(ev.Content.Raw)
			all := true
			for _, sub := range subs {
				all = all && strings.Contains(string(raw), sub)
			}
			if all {
				return true
			}
		}
		return false
	}
}

// TestFederationEphemeralTwoServers: two shoal servers sharing a room see
// each other's users typing, their read receipts and their presence, both
// ways, through transactions the outbound queues send.
func TestFederationEphemeralTwoServers(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a, b := fed.Start(t, "a.test"), fed.Start(t, "b.test")
	ctx := context.Background()
	alice, bob := a.Register("alice"), b.Register("bob")
	aliceID, bobID := alice.UserID.String(), bob.UserID.String()
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	aSince, err := alice.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoom(ctx, room.RoomID.String(), &mautrix.ReqJoinRoom{Via: []string{"a.test"}}); err != nil {
		t.Fatalf("bob joins: %v", err)
	}
	bSince, err := bob.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	as := aSince.NextBatch
	bs := bSince.NextBatch

	// Typing, both ways.
	if _, err := bob.UserTyping(ctx, room.RoomID, true, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	as = syncUntil(t, alice, as, "bob typing at a.test", ephemeralHas(room.RoomID, "m.typing", bobID))
	if _, err := alice.UserTyping(ctx, room.RoomID, true, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	bs = syncUntil(t, bob, bs, "alice typing at b.test", ephemeralHas(room.RoomID, "m.typing", aliceID))
	if _, err := bob.UserTyping(ctx, room.RoomID, false, 0); err != nil {
		t.Fatal(err)
	}
	as = syncUntil(t, alice, as, "bob's typing stop at a.test", func(s *mautrix.RespSync) bool {
		return ephemeralHas(room.RoomID, "m.typing")(s) && !ephemeralHas(room.RoomID, "m.typing", bobID)(s)
	})

	// Read receipts, both ways.
	fromAlice, err := alice.SendText(ctx, room.RoomID, "from alice")
	if err != nil {
		t.Fatal(err)
	}
	fromBob, err := bob.SendText(ctx, room.RoomID, "from bob")
	if err != nil {
		t.Fatal(err)
	}
	as = syncUntil(t, alice, as, "bob's message at a.test", func(s *mautrix.RespSync) bool {
		jr, ok := s.Rooms.Join[room.RoomID]
		if !ok {
			return false
		}
		for _, ev := range jr.Timeline.Events {
			if ev.ID == fromBob.EventID {
				return true
			}
		}
		return false
	})
	bs = syncUntil(t, bob, bs, "alice's message at b.test", func(s *mautrix.RespSync) bool {
		jr, ok := s.Rooms.Join[room.RoomID]
		if !ok {
			return false
		}
		for _, ev := range jr.Timeline.Events {
			if ev.ID == fromAlice.EventID {
				return true
			}
		}
		return false
	})
	if err := bob.MarkRead(ctx, room.RoomID, fromAlice.EventID); err != nil {
		t.Fatal(err)
	}
	as = syncUntil(t, alice, as, "bob's receipt at a.test", ephemeralHas(room.RoomID, "m.receipt", fromAlice.EventID.String(), bobID))
	if err := alice.MarkRead(ctx, room.RoomID, fromBob.EventID); err != nil {
		t.Fatal(err)
	}
	bs = syncUntil(t, bob, bs, "alice's receipt at b.test", ephemeralHas(room.RoomID, "m.receipt", fromBob.EventID.String(), aliceID))
	// A receipt right behind its event: both usually travel in one
	// transaction, and the receipt must wait for the PDU.
	again, err := bob.SendText(ctx, room.RoomID, "read at once")
	if err != nil {
		t.Fatal(err)
	}
	if err := bob.MarkRead(ctx, room.RoomID, again.EventID); err != nil {
		t.Fatal(err)
	}
	as = syncUntil(t, alice, as, "bob's receipt of his new message at a.test", ephemeralHas(room.RoomID, "m.receipt", again.EventID.String(), bobID))

	// Presence, both ways.
	if err := alice.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: "at a"}); err != nil {
		t.Fatal(err)
	}
	syncUntil(t, bob, bs, "alice's presence at b.test", presenceHas(aliceID, `"status_msg":"at a"`))
	if err := bob.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceUnavailable, StatusMsg: "at b"}); err != nil {
		t.Fatal(err)
	}
	syncUntil(t, alice, as, "bob's presence at a.test", presenceHas(bobID, `"status_msg":"at b"`))
}

// TestFederationSendPDUs: a transaction's PDUs reach the room, and the
// response has an entry per PDU — empty when accepted, an error when the
// room refused it.
func TestFederationSendPDUs(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a := fed.Start(t, "a.test")
	peer := startFakePeer(t, fed, "p.test")
	alice := a.Register("alice")
	ctx := context.Background()
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	pat := "@pat:p.test"
	fmPeerJoin(t, fed, a, peer, room.RoomID, pat)
	first, err := alice.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	state, err := alice.State(ctx, room.RoomID)
	if err != nil {
		t.Fatal(err)
	}
	sm := eventgraph.StateMap{}
	var version string
	for typ, evs := range state {
		for key, ev := range evs {
			sm[eventgraph.StateKey{Type: typ.Type, StateKey: key}] = ev.ID.String()
			if typ.Type == "m.room.create" {
				version, _ = ev.Content.Raw["room_version"].(string)
			}
		}
	}
	rv := eventgraph.MustRoomVersion(eventgraph.RoomVersionID(version))
	join := state[event.StateMember][pat]
	if join == nil {
		t.Fatal("pat's join is not in the room's state")
	}
	build := func(typ string, stateKey *string, content map[string]any) *eventgraph.Event {
		c, _ := json.Marshal(content)
		ev, err := eventgraph.BuildEvent(eventgraph.ProtoEvent{RoomID: room.RoomID.String(), Sender: pat, Type: typ,
			StateKey: stateKey, Content: c, PrevEvents: []string{join.ID.String()},
			AuthEvents: eventgraph.SelectAuthEvents(typ, stateKey, pat, c, rv, sm), Depth: 20,
			OriginServerTS: time.Now().UnixMilli()}, rv, "p.test", peer.id.KeyID, peer.id.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	msg := build("m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "hello from p.test"})
	empty := ""
	// pat has no power to change the power levels.
	pl := build("m.room.power_levels", &empty, map[string]any{"users": map[string]any{pat: 100}})
	status, body := sendTxn(t, fed, a, peer.id, "p1", txnBody(t, "p.test", []any{
		json.RawMessage(msg.CanonicalPDU()), json.RawMessage(pl.CanonicalPDU())}, nil))
	if status != 200 {
		t.Fatalf("transaction: %d %v", status, body)
	}
	pdus, _ := body["pdus"].(map[string]any)
	if r, ok := pdus[msg.EventID()].(map[string]any); !ok || len(r) != 0 {
		t.Fatalf("message result: %v", body)
	}
	if r, ok := pdus[pl.EventID()].(map[string]any); !ok || r["error"] == nil || r["error"] == "" {
		t.Fatalf("refused power levels result: %v", body)
	}
	syncUntil(t, alice, first.NextBatch, "pat's message", func(s *mautrix.RespSync) bool {
		jr, ok := s.Rooms.Join[room.RoomID]
		if !ok {
			return false
		}
		for _, ev := range jr.Timeline.Events {
			if ev.ID.String() == msg.EventID() {
				return true
			}
		}
		return false
	})
}
