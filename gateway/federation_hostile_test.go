package gateway_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
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

	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/gateway/fedclient"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// A hostile peer: a server of its own (keys served, requests signed) that
// joins a room on a shoal node and then sends what no honest server would.
// Each bad input must be refused with the spec's error or result, nothing
// that should not be stored is stored, and the node stays healthy.

type hostile struct {
	t     testing.TB
	fed   *shoaltest.Federation
	peer  *fakePeer
	node  *shoaltest.Node
	rv    *eventgraph.RoomVersion
	room  string
	state eventgraph.StateMap
	evs   map[string]*eventgraph.Event
	last  string // the peer's newest event (its prev for the next)
	txn   int
}

func (h *hostile) user(local string) string { return "@" + local + ":" + h.peer.id.ServerName }

// do sends a signed federation request to the node.
func (h *hostile) do(method, uri string, body any) (int, map[string]any) {
	h.t.Helper()
	var raw []byte
	if body != nil {
		var err error
		if raw, err = json.Marshal(body); err != nil {
			h.t.Fatal(err)
		}
	}
	auth, err := fedclient.SignRequest(h.peer.id, method, uri, h.node.ServerName(), raw)
	if err != nil {
		h.t.Fatal(err)
	}
	return h.doRaw(method, uri, raw, auth)
}

func (h *hostile) doRaw(method, uri string, raw []byte, auth string) (int, map[string]any) {
	h.t.Helper()
	cli := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: h.fed.CA.Pool(), ServerName: h.node.ServerName()}}, Timeout: 60 * time.Second}
	defer cli.CloseIdleConnections()
	req, _ := http.NewRequest(method, "https://"+h.node.TLSAddrs[0]+uri, bytes.NewReader(raw))
	req.Header.Set("Content-Type", "application/json")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := cli.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(out, &m)
	return resp.StatusCode, m
}

// join makes the peer's user a member through make_join/send_join.
func (h *hostile) join(local string) {
	h.t.Helper()
	u := h.user(local)
	st, mk := h.do("GET", "/_matrix/federation/v1/make_join/"+url.PathEscape(h.room)+"/"+url.PathEscape(u)+"?ver="+string(h.rv.ID), nil)
	if st != 200 {
		h.t.Fatalf("make_join: %d %v", st, mk)
	}
	tmpl := mk["event"].(map[string]any)
	tmpl["origin"] = h.peer.id.ServerName
	tmpl["origin_server_ts"] = time.Now().UnixMilli()
	raw, _ := json.Marshal(tmpl)
	pdu, err := eventgraph.AddContentHash(raw)
	if err != nil {
		h.t.Fatal(err)
	}
	if pdu, err = eventgraph.SignEvent(pdu, h.rv, h.peer.id.ServerName, h.peer.id.KeyID, h.peer.id.PrivateKey); err != nil {
		h.t.Fatal(err)
	}
	ev, err := eventgraph.ParseEvent(pdu, h.rv)
	if err != nil {
		h.t.Fatal(err)
	}
	var body map[string]any
	_ = json.Unmarshal(pdu, &body)
	st, sj := h.do("PUT", "/_matrix/federation/v2/send_join/"+url.PathEscape(h.room)+"/"+url.PathEscape(ev.EventID()), body)
	if st != 200 {
		h.t.Fatalf("send_join: %d %v", st, sj)
	}
	for _, s := range sj["state"].([]any) {
		raw, _ := json.Marshal(s)
		sev, err := eventgraph.ParseEvent(raw, h.rv)
		if err != nil {
			h.t.Fatal(err)
		}
		h.state[sev.StateTuple()] = sev.EventID()
		h.evs[sev.EventID()] = sev
	}
	h.state[ev.StateTuple()] = ev.EventID()
	h.evs[ev.EventID()] = ev
	h.last = ev.EventID()
}

// build makes a signed event of the peer on top of its last event.
func (h *hostile) build(sender, typ string, stateKey *string, content any, mutate func(*eventgraph.ProtoEvent)) *eventgraph.Event {
	h.t.Helper()
	c, _ := json.Marshal(content)
	p := eventgraph.ProtoEvent{RoomID: h.room, Sender: sender, Type: typ, StateKey: stateKey, Content: c,
		PrevEvents: []string{h.last}, AuthEvents: eventgraph.SelectAuthEvents(typ, stateKey, sender, c, h.rv, h.state),
		Depth: h.evs[h.last].Depth() + 1, OriginServerTS: time.Now().UnixMilli()}
	if mutate != nil {
		mutate(&p)
	}
	ev, err := eventgraph.BuildEvent(p, h.rv, h.peer.id.ServerName, h.peer.id.KeyID, h.peer.id.PrivateKey)
	if err != nil {
		h.t.Fatal(err)
	}
	h.evs[ev.EventID()] = ev
	return ev
}

// send sends PDUs in a transaction and returns the per-PDU results.
func (h *hostile) send(pdus ...json.RawMessage) (int, map[string]any) {
	h.t.Helper()
	h.txn++
	return h.sendTxn(fmt.Sprintf("t%d", h.txn), h.peer.id.ServerName, pdus)
}

func (h *hostile) sendTxn(txnID, origin string, pdus []json.RawMessage) (int, map[string]any) {
	h.t.Helper()
	if pdus == nil {
		pdus = []json.RawMessage{}
	}
	return h.do("PUT", "/_matrix/federation/v1/send/"+txnID, map[string]any{
		"origin": origin, "origin_server_ts": time.Now().UnixMilli(), "pdus": pdus, "edus": []any{}})
}

func pduResult(res map[string]any, eventID string) (string, bool) {
	pdus, _ := res["pdus"].(map[string]any)
	r, ok := pdus[eventID].(map[string]any)
	if !ok {
		return "", false
	}
	e, _ := r["error"].(string)
	return e, true
}

// clientEvent fetches an event through the client API ("" status on 404).
func clientEvent(ctx context.Context, cli *mautrix.Client, room id.RoomID, eventID string) (*event.Event, bool) {
	ev, err := cli.GetEvent(ctx, room, id.EventID(eventID))
	return ev, err == nil
}

func TestFederationHostilePeer(t *testing.T) {
	ctx := context.Background()
	fed := shoaltest.NewFederation(t)
	a := fed.Start(t, "a.test")
	peer := startFakePeer(t, fed, "evil.test")
	alice := a.Register("alice")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "11"})
	if err != nil {
		t.Fatal(err)
	}
	room := created.RoomID
	h := &hostile{t: t, fed: fed, peer: peer, node: a, rv: eventgraph.MustRoomVersion("11"), room: room.String(),
		state: eventgraph.StateMap{}, evs: map[string]*eventgraph.Event{}}
	h.join("mallory")
	mallory := h.user("mallory")

	// An honest message is accepted: the baseline the refusals compare to.
	ok := h.build(mallory, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "hello"}, nil)
	st, res := h.send(ok.CanonicalPDU())
	if e, found := pduResult(res, ok.EventID()); st != 200 || !found || e != "" {
		t.Fatalf("honest PDU: %d %v", st, res)
	}
	h.last = ok.EventID()
	if _, found := clientEvent(ctx, alice, room, ok.EventID()); !found {
		t.Fatal("accepted event not readable")
	}

	t.Run("forged signature", func(t *testing.T) {
		_, other, _ := ed25519.GenerateKey(rand.Reader)
		c, _ := json.Marshal(map[string]string{"msgtype": "m.text", "body": "forged"})
		ev, err := eventgraph.BuildEvent(eventgraph.ProtoEvent{RoomID: h.room, Sender: mallory, Type: "m.room.message", Content: c,
			PrevEvents: []string{h.last}, AuthEvents: eventgraph.SelectAuthEvents("m.room.message", nil, mallory, c, h.rv, h.state),
			Depth: 100, OriginServerTS: time.Now().UnixMilli()}, h.rv, "evil.test", h.peer.id.KeyID, other)
		if err != nil {
			t.Fatal(err)
		}
		_, res := h.send(ev.CanonicalPDU())
		if e, _ := pduResult(res, ev.EventID()); e == "" {
			if _, found := clientEvent(ctx, alice, room, ev.EventID()); found {
				t.Fatal("event with a forged signature stored")
			}
		}
		if _, found := clientEvent(ctx, alice, room, ev.EventID()); found {
			t.Fatal("event with a forged signature readable")
		}
	})

	t.Run("wrong origin", func(t *testing.T) {
		st, res := h.sendTxn("wrong-origin", "a.test", nil)
		if st != 400 && st != 403 {
			t.Fatalf("transaction claiming another origin: %d %v", st, res)
		}
		// A request signed by a key the origin does not have: 401.
		auth, _ := fedclient.SignRequest(h.peer.id, "GET", "/_matrix/federation/v1/version", "a.test", nil)
		st, _ = h.doRaw("GET", "/_matrix/federation/v1/query/profile?user_id="+url.QueryEscape(alice.UserID.String()),
			nil, strings.Replace(auth, `origin="evil.test"`, `origin="a.test"`, 1))
		if st != 401 {
			t.Fatalf("request with another origin's name: %d, want 401", st)
		}
	})

	t.Run("event failing auth", func(t *testing.T) {
		pl := h.build(mallory, "m.room.power_levels", strp(""), map[string]any{"users": map[string]int{mallory: 100}}, nil)
		_, res := h.send(pl.CanonicalPDU())
		if e, _ := pduResult(res, pl.EventID()); e == "" {
			t.Fatalf("power levels change by mallory accepted: %v", res)
		}
		var plc struct {
			Users map[string]int `json:"users"`
		}
		if err := alice.StateEvent(ctx, room, event.StatePowerLevels, "", &plc); err != nil || plc.Users[mallory] != 0 {
			t.Fatalf("power levels changed: %v %v", plc.Users, err)
		}
		if _, found := clientEvent(ctx, alice, room, pl.EventID()); found {
			t.Fatal("rejected event served to clients")
		}
	})

	t.Run("bad content hash", func(t *testing.T) {
		ev := h.build(mallory, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "original"}, nil)
		var m map[string]any
		_ = json.Unmarshal(ev.CanonicalPDU(), &m)
		m["content"] = map[string]string{"msgtype": "m.text", "body": "tampered"}
		tampered, _ := json.Marshal(m)
		// The signature covers the redacted event, so it still verifies;
		// only the content hash gives the tampering away.
		_, res := h.send(tampered)
		if e, _ := pduResult(res, ev.EventID()); e != "" {
			t.Fatalf("hash mismatch should be kept redacted, got refusal %q", e)
		}
		h.last = ev.EventID()
		got, found := clientEvent(ctx, alice, room, ev.EventID())
		if !found {
			t.Fatal("event with a bad hash not kept")
		}
		if strings.Contains(string(got.Content.VeryRaw), "tampered") || strings.Contains(string(got.Content.VeryRaw), "original") {
			t.Fatalf("event with a bad hash kept its content: %s", got.Content.VeryRaw)
		}
	})

	t.Run("auth events from another room", func(t *testing.T) {
		// Mallory's own room elsewhere: its create event as an auth event.
		c, _ := json.Marshal(map[string]any{"room_version": "11"})
		create, err := eventgraph.BuildEvent(eventgraph.ProtoEvent{RoomID: "!other:evil.test", Sender: mallory, Type: "m.room.create",
			StateKey: strp(""), Content: c, PrevEvents: []string{}, AuthEvents: []string{}, Depth: 1, OriginServerTS: time.Now().UnixMilli()},
			h.rv, "evil.test", h.peer.id.KeyID, h.peer.id.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		ev := h.build(mallory, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "cross-room"}, func(p *eventgraph.ProtoEvent) {
			p.AuthEvents = append(p.AuthEvents, create.EventID())
		})
		_, res := h.send(create.CanonicalPDU(), ev.CanonicalPDU())
		if e, _ := pduResult(res, ev.EventID()); e == "" {
			t.Fatalf("event with another room's auth event accepted: %v", res)
		}
		if _, found := clientEvent(ctx, alice, room, ev.EventID()); found {
			t.Fatal("event with another room's auth event served")
		}
	})

	t.Run("oversized and replayed transactions", func(t *testing.T) {
		var many []json.RawMessage
		for i := range 51 {
			many = append(many, h.build(mallory, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": fmt.Sprint("many ", i)}, nil).CanonicalPDU())
		}
		st, res := h.send(many...)
		if st != 400 {
			t.Fatalf("51 PDUs: %d %v, want 400", st, res)
		}
		big := strings.Repeat("x", 70000)
		huge := h.build(mallory, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "small"}, nil)
		var m map[string]any
		_ = json.Unmarshal(huge.CanonicalPDU(), &m)
		m["content"] = map[string]string{"msgtype": "m.text", "body": big}
		raw, _ := json.Marshal(m)
		_, res = h.send(raw)
		if e, found := pduResult(res, huge.EventID()); found && e == "" {
			t.Fatal("event over 65,536 bytes accepted")
		}

		replay := h.build(mallory, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "once"}, nil)
		h.last = replay.EventID()
		st1, r1 := h.sendTxn("replayed", "evil.test", []json.RawMessage{replay.CanonicalPDU()})
		st2, r2 := h.sendTxn("replayed", "evil.test", []json.RawMessage{replay.CanonicalPDU()})
		if st1 != 200 || st2 != 200 || fmt.Sprint(r1) != fmt.Sprint(r2) {
			t.Fatalf("replayed transaction: %d %v / %d %v", st1, r1, st2, r2)
		}
		n := 0
		got, err := bodies(ctx, alice, room)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range got {
			if b == "once" {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("replayed event shown %d times", n)
		}
	})

	t.Run("ACL-denied server", func(t *testing.T) {
		if _, err := alice.SendStateEvent(ctx, room, event.StateServerACL, "", map[string]any{"allow": []string{"*"}, "deny": []string{"evil.test"}}); err != nil {
			t.Fatal(err)
		}
		ev := h.build(mallory, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "denied"}, nil)
		_, res := h.send(ev.CanonicalPDU())
		if e, _ := pduResult(res, ev.EventID()); e == "" {
			t.Fatalf("PDU of an ACL-denied server accepted: %v", res)
		}
		st, _ := h.do("GET", "/_matrix/federation/v1/make_join/"+url.PathEscape(h.room)+"/"+url.PathEscape(h.user("eve"))+"?ver=11", nil)
		if st != 403 {
			t.Fatalf("make_join from an ACL-denied server: %d, want 403", st)
		}
		// Typing from the denied server is dropped.
		_, _ = h.do("PUT", "/_matrix/federation/v1/send/typing-denied", map[string]any{"origin": "evil.test",
			"origin_server_ts": time.Now().UnixMilli(), "pdus": []any{},
			"edus": []any{map[string]any{"edu_type": "m.typing", "content": map[string]any{"room_id": h.room, "user_id": mallory, "typing": true}}}})
		resp, err := alice.SyncRequest(ctx, 0, "", "", true, event.PresenceOnline)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range resp.Rooms.Join[room].Ephemeral.Events {
			if ev.Type == event.EphemeralEventTyping && strings.Contains(string(ev.Content.VeryRaw), mallory) {
				t.Fatal("typing of an ACL-denied server shown")
			}
		}
	})

	// Still healthy: alice talks in the room.
	if _, err := alice.SendText(ctx, room, "still here"); err != nil {
		t.Fatalf("node unhealthy after the hostile peer: %v", err)
	}
}

func strp(s string) *string { return &s }
