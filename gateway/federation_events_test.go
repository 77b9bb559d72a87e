package gateway_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
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

// pduPeer is a Matrix server reduced to what the PDU pipeline talks to: its
// key endpoint and whatever federation routes a test gives it, on real TLS
// with a certificate of the federation's CA. It records the requests it
// receives (method and path).
type pduPeer struct {
	t    *testing.T
	fed  *shoaltest.Federation
	id   *actors.ServerIdentity
	name string

	mu       sync.Mutex
	routes   map[string]http.HandlerFunc // "METHOD /path-prefix"
	requests []string
}

func startPDUPeer(t *testing.T, fed *shoaltest.Federation, name string) *pduPeer {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	p := &pduPeer{t: t, fed: fed, name: name, routes: map[string]http.HandlerFunc{},
		id: &actors.ServerIdentity{ServerName: name, KeyID: "ed25519:pdu1", PrivateKey: priv}}
	startTLSPeer(t, fed, name, http.HandlerFunc(p.serve))
	return p
}

func (p *pduPeer) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/_matrix/key/v2/server" {
		writeServerKeys(p.t, w, p.id)
		return
	}
	p.mu.Lock()
	p.requests = append(p.requests, r.Method+" "+r.URL.Path)
	var h http.HandlerFunc
	best := 0
	for k, v := range p.routes {
		m, prefix, _ := strings.Cut(k, " ")
		if m == r.Method && strings.HasPrefix(r.URL.Path, prefix) && len(prefix) > best {
			h, best = v, len(prefix)
		}
	}
	p.mu.Unlock()
	if h == nil {
		http.Error(w, `{"errcode":"M_UNRECOGNIZED","error":"no"}`, http.StatusNotFound)
		return
	}
	h(w, r)
}

// handle routes requests whose method is method and whose path starts with
// prefix to h.
func (p *pduPeer) handle(method, prefix string, h http.HandlerFunc) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.routes[method+" "+prefix] = h
}

// asked reports whether the peer received a request whose "METHOD path"
// starts with prefix.
func (p *pduPeer) asked(prefix string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.requests {
		if strings.HasPrefix(r, prefix) {
			return true
		}
	}
	return false
}

// event builds an event signed by the peer.
func (p *pduPeer) event(rv *eventgraph.RoomVersion, proto eventgraph.ProtoEvent) *eventgraph.Event {
	p.t.Helper()
	if proto.OriginServerTS == 0 {
		proto.OriginServerTS = time.Now().UnixMilli()
	}
	if proto.AuthEvents == nil {
		proto.AuthEvents = []string{}
	}
	if proto.PrevEvents == nil {
		proto.PrevEvents = []string{}
	}
	ev, err := eventgraph.BuildEvent(proto, rv, p.name, p.id.KeyID, p.id.PrivateKey, eventgraph.WithRandom(rand.Reader))
	if err != nil {
		p.t.Fatal(err)
	}
	return ev
}

// request sends a signed federation request from the peer to node and
// returns the status and the body.
func (p *pduPeer) request(node *shoaltest.Node, method, uri string, body any) (int, map[string]any) {
	p.t.Helper()
	var content []byte
	if body != nil {
		content, _ = json.Marshal(body)
	}
	auth, err := fedclient.SignRequest(p.id, method, uri, node.ServerName(), content)
	if err != nil {
		p.t.Fatal(err)
	}
	cli := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.fed.CA.Pool(), ServerName: node.ServerName()}},
		Timeout: 30 * time.Second}
	defer cli.CloseIdleConnections()
	req, _ := http.NewRequest(method, "https://"+node.TLSAddrs[0]+uri, bytes.NewReader(content))
	req.Header.Set("Authorization", auth)
	resp, err := cli.Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

// The first three checks on a received PDU: a valid PDU signed by its
// sender's server passes as is; a forged signature, a server whose keys
// cannot be had and an oversized PDU are refused; a PDU whose content does
// not match its hash is replaced by its redacted form.
func TestVerifyPDU(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a := fed.Start(t, "a.test")
	peer := startPDUPeer(t, fed, "p.test")
	ctx := context.Background()
	for _, v := range []eventgraph.RoomVersionID{"11", "12"} {
		rv := eventgraph.MustRoomVersion(v)
		room := "!room:p.test"
		if rv.RoomIDFromCreateEvent {
			room = "!" + strings.Repeat("A", 43)
		}
		msg := eventgraph.ProtoEvent{RoomID: room, Sender: "@u:p.test", Type: "m.room.message",
			Content: json.RawMessage(`{"msgtype":"m.text","body":"hello"}`), Depth: 5}
		good := peer.event(rv, msg)
		ev, err := a.Gateway.VerifyPDUForTest(ctx, rv, good.JSON())
		if err != nil {
			t.Fatalf("v%s: good PDU: %v", v, err)
		}
		if ev.EventID() != good.EventID() || !bytes.Equal(ev.CanonicalPDU(), good.CanonicalPDU()) || ev.Redacted() {
			t.Fatalf("v%s: good PDU changed: %s", v, ev.JSON())
		}

		// Content changed after signing: the signature (over the redacted
		// form) still holds, the hash does not.
		var obj map[string]any
		if err := json.Unmarshal(good.JSON(), &obj); err != nil {
			t.Fatal(err)
		}
		obj["content"] = map[string]any{"msgtype": "m.text", "body": "tampered"}
		tampered, _ := json.Marshal(obj)
		ev, err = a.Gateway.VerifyPDUForTest(ctx, rv, tampered)
		if err != nil {
			t.Fatalf("v%s: bad hash: %v", v, err)
		}
		if ev.EventID() != good.EventID() || string(ev.Content()) != "{}" {
			t.Fatalf("v%s: bad hash: want the redacted event %s, got %s (content %s)", v, good.EventID(), ev.EventID(), ev.Content())
		}

		// Signed by another key under the peer's key ID.
		_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
		forged, err := eventgraph.BuildEvent(eventgraph.ProtoEvent{RoomID: room, Sender: "@u:p.test", Type: "m.room.message",
			Content: json.RawMessage(`{"body":"forged"}`), Depth: 5, OriginServerTS: time.Now().UnixMilli(),
			PrevEvents: []string{}, AuthEvents: []string{}}, rv, "p.test", peer.id.KeyID, otherPriv)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.Gateway.VerifyPDUForTest(ctx, rv, forged.JSON()); !errors.Is(err, eventgraph.ErrBadSignature) {
			t.Fatalf("v%s: forged signature: %v", v, err)
		}

		// A sender on a server nobody can reach: no key, no event.
		ghost, err := eventgraph.BuildEvent(eventgraph.ProtoEvent{RoomID: room, Sender: "@u:ghost.test", Type: "m.room.message",
			Content: json.RawMessage(`{"body":"boo"}`), Depth: 5, OriginServerTS: time.Now().UnixMilli(),
			PrevEvents: []string{}, AuthEvents: []string{}}, rv, "ghost.test", "ed25519:g", otherPriv)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.Gateway.VerifyPDUForTest(ctx, rv, ghost.JSON()); !errors.Is(err, eventgraph.ErrNoSignature) {
			t.Fatalf("v%s: unknown server: %v", v, err)
		}

		// Signed by the peer, but sent by a user of another server: that
		// server's signature is missing.
		spoof := peer.event(rv, eventgraph.ProtoEvent{RoomID: room, Sender: "@u:a.test", Type: "m.room.message",
			Content: json.RawMessage(`{"body":"spoof"}`), Depth: 5})
		if _, err := a.Gateway.VerifyPDUForTest(ctx, rv, spoof.JSON()); !errors.Is(err, eventgraph.ErrNoSignature) {
			t.Fatalf("v%s: other server's sender: %v", v, err)
		}

		// Over 65,536 bytes.
		big := eventgraph.ProtoEvent{RoomID: room, Sender: "@u:p.test", Type: "m.room.message", Depth: 5,
			OriginServerTS: time.Now().UnixMilli(), PrevEvents: []string{}, AuthEvents: []string{}}
		var bigObj map[string]any
		_ = json.Unmarshal(peer.event(rv, big).JSON(), &bigObj)
		bigObj["content"] = map[string]any{"body": strings.Repeat("x", eventgraph.MaxPDUSize)}
		bigRaw, _ := json.Marshal(bigObj)
		if _, err := a.Gateway.VerifyPDUForTest(ctx, rv, bigRaw); !errors.Is(err, eventgraph.ErrTooLarge) {
			t.Fatalf("v%s: oversized PDU: %v", v, err)
		}
		if _, err := a.Gateway.VerifyPDUForTest(ctx, rv, []byte(`{"type":`)); err == nil {
			t.Fatalf("v%s: garbage accepted", v)
		}
	}
}

// The read endpoints check their parameters before asking any room.
func TestFederationEventReadParams(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a := fed.Start(t, "a.test")
	peer := startPDUPeer(t, fed, "p.test")
	room := url.PathEscape("!room:a.test")
	ev := url.PathEscape("$" + strings.Repeat("A", 43))
	fed1 := "/_matrix/federation/v1"
	cases := []struct {
		method, uri string
		body        any
		status      int
		errcode     string
	}{
		{"GET", fed1 + "/state_ids/" + room, nil, 400, "M_MISSING_PARAM"},
		{"GET", fed1 + "/state/" + room, nil, 400, "M_MISSING_PARAM"},
		{"GET", fed1 + "/state_ids/" + room + "?event_id=nonsense", nil, 400, "M_INVALID_PARAM"},
		{"GET", fed1 + "/state_ids/notaroom?event_id=" + ev, nil, 400, "M_INVALID_PARAM"},
		{"GET", fed1 + "/event/nonsense", nil, 400, "M_INVALID_PARAM"},
		{"GET", fed1 + "/event/" + ev, nil, 404, "M_NOT_FOUND"},
		{"GET", fed1 + "/event_auth/" + room + "/nonsense", nil, 400, "M_INVALID_PARAM"},
		{"GET", fed1 + "/backfill/" + room + "?limit=10", nil, 400, "M_MISSING_PARAM"},
		{"GET", fed1 + "/backfill/" + room + "?v=" + ev, nil, 400, "M_MISSING_PARAM"},
		{"GET", fed1 + "/backfill/" + room + "?v=" + ev + "&limit=ten", nil, 400, "M_INVALID_PARAM"},
		{"GET", fed1 + "/backfill/" + room + "?v=" + ev + "&limit=-1", nil, 400, "M_INVALID_PARAM"},
		{"GET", fed1 + "/backfill/" + room + "?v=bad&limit=1", nil, 400, "M_INVALID_PARAM"},
		{"POST", fed1 + "/get_missing_events/" + room, map[string]any{"latest_events": []string{}}, 400, "M_MISSING_PARAM"},
		{"POST", fed1 + "/get_missing_events/" + room, map[string]any{"earliest_events": []string{}}, 400, "M_MISSING_PARAM"},
		{"POST", fed1 + "/get_missing_events/" + room, map[string]any{"earliest_events": []string{}, "latest_events": []string{"bad"}}, 400, "M_INVALID_PARAM"},
		{"POST", fed1 + "/get_missing_events/" + room, map[string]any{"earliest_events": []string{}, "latest_events": []string{}}, 400, "M_INVALID_PARAM"},
		{"POST", fed1 + "/get_missing_events/" + room, map[string]any{"earliest_events": "x", "latest_events": []string{}}, 400, "M_BAD_JSON"},
	}
	for _, c := range cases {
		status, body := peer.request(a, c.method, c.uri, c.body)
		if status != c.status || body["errcode"] != c.errcode {
			t.Errorf("%s %s: %d %v, want %d %s", c.method, c.uri, status, body, c.status, c.errcode)
		}
	}
	// Unauthenticated: 401 before anything else.
	status, body := fedGet(t, fed, a, fed1+"/event/"+ev, "")
	if status != 401 || body["errcode"] != "M_UNAUTHORIZED" {
		t.Errorf("unsigned /event: %d %v", status, body)
	}
}

// peerRoom is the fake peer's view of a room it joined on a node: the
// version, the current state and the events it knows.
type peerRoom struct {
	t      *testing.T
	peer   *pduPeer
	id     string
	rv     *eventgraph.RoomVersion
	state  eventgraph.StateMap
	events map[string]*eventgraph.Event
	user   string
}

// join makes user (of the peer) join roomID on node through make_join and
// send_join, as a remote server does.
func (p *pduPeer) join(node *shoaltest.Node, roomID, user string) *peerRoom {
	p.t.Helper()
	esc := url.PathEscape
	status, body := p.request(node, "GET", "/_matrix/federation/v1/make_join/"+esc(roomID)+"/"+esc(user)+"?ver=11&ver=12", nil)
	if status != 200 {
		p.t.Fatalf("make_join: %d %v", status, body)
	}
	rv := eventgraph.MustRoomVersion(eventgraph.RoomVersionID(body["room_version"].(string)))
	tmpl, _ := json.Marshal(body["event"])
	hashed, err := eventgraph.AddContentHash(tmpl)
	if err != nil {
		p.t.Fatal(err)
	}
	signed, err := eventgraph.SignEvent(hashed, rv, p.name, p.id.KeyID, p.id.PrivateKey)
	if err != nil {
		p.t.Fatal(err)
	}
	joinEv, err := eventgraph.ParseEvent(signed, rv)
	if err != nil {
		p.t.Fatal(err)
	}
	status, body = p.request(node, "PUT", "/_matrix/federation/v2/send_join/"+esc(roomID)+"/"+esc(joinEv.EventID()), json.RawMessage(signed))
	if status != 200 {
		p.t.Fatalf("send_join: %d %v", status, body)
	}
	pr := &peerRoom{t: p.t, peer: p, id: roomID, rv: rv, state: eventgraph.StateMap{}, events: map[string]*eventgraph.Event{}, user: user}
	for _, key := range []string{"state", "auth_chain"} {
		list, _ := body[key].([]any)
		for _, e := range list {
			raw, _ := json.Marshal(e)
			ev, err := eventgraph.ParseEvent(raw, rv)
			if err != nil {
				p.t.Fatalf("send_join %s: %v", key, err)
			}
			pr.events[ev.EventID()] = ev
			if key == "state" {
				pr.state[ev.StateTuple()] = ev.EventID()
			}
		}
	}
	pr.add(joinEv)
	return pr
}

// add records ev as known (and its state).
func (pr *peerRoom) add(ev *eventgraph.Event) {
	pr.events[ev.EventID()] = ev
	if ev.IsState() {
		pr.state[ev.StateTuple()] = ev.EventID()
	}
}

// build makes an event of the peer's user on top of prev (which the peer
// must know), without sending it, and records it.
func (pr *peerRoom) build(typ string, stateKey *string, content string, prev ...string) *eventgraph.Event {
	pr.t.Helper()
	var depth int64
	for _, id := range prev {
		ev := pr.events[id]
		if ev == nil {
			pr.t.Fatalf("build on unknown %s", id)
		}
		depth = max(depth, ev.Depth())
	}
	auth := eventgraph.SelectAuthEvents(typ, stateKey, pr.user, json.RawMessage(content), pr.rv, pr.state)
	ev := pr.peer.event(pr.rv, eventgraph.ProtoEvent{RoomID: pr.id, Sender: pr.user, Type: typ, StateKey: stateKey,
		Content: json.RawMessage(content), PrevEvents: prev, AuthEvents: auth, Depth: depth + 1})
	pr.add(ev)
	return ev
}

// learn parses a PDU the node served and records it.
func (pr *peerRoom) learn(v any) *eventgraph.Event {
	pr.t.Helper()
	raw, _ := json.Marshal(v)
	ev, err := eventgraph.ParseEvent(raw, pr.rv)
	if err != nil {
		pr.t.Fatalf("served PDU: %v", err)
	}
	pr.add(ev)
	return ev
}

func pduIDs(t *testing.T, rv *eventgraph.RoomVersion, list any) []string {
	t.Helper()
	items, _ := list.([]any)
	out := []string{}
	for _, e := range items {
		raw, _ := json.Marshal(e)
		id, err := eventgraph.ComputeEventID(raw, rv)
		if err != nil {
			t.Fatalf("served PDU: %v", err)
		}
		out = append(out, id)
	}
	return out
}

// hashID is a room or event ID of the v4+ form: sigil and the unpadded
// URL-safe base64 of a hash.
func hashID(sigil, seed string) string {
	h := sha256.Sum256([]byte(seed))
	return sigil + base64.RawURLEncoding.EncodeToString(h[:])
}

func writeFedJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// A server in a room reads it through /event, /state, /state_ids,
// /event_auth, /get_missing_events and /backfill; a server not in it is
// refused. PDUs whose prev_events this server lacks make it fetch the gap
// (/get_missing_events) or, when that does not close it, the state before
// the PDU (/state_ids and /event for what it lacks).
func TestFederationEventReadsAndGaps(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a := fed.Start(t, "a.test")
	peer := startPDUPeer(t, fed, "p.test")
	stranger := startPDUPeer(t, fed, "q.test")
	ctx := context.Background()
	alice := a.Register("alice")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	room := created.RoomID.String()
	pr := peer.join(a, room, "@p:p.test")
	var msgs []string
	for i := range 5 {
		resp, err := alice.SendText(ctx, created.RoomID, "m"+strconv.Itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, resp.EventID.String())
	}
	last := msgs[4]
	esc := url.PathEscape
	fed1 := "/_matrix/federation/v1"

	// /event: the index learns of the event right after the room stored it.
	var status int
	var body map[string]any
	deadline := time.Now().Add(10 * time.Second)
	for {
		status, body = peer.request(a, "GET", fed1+"/event/"+esc(last), nil)
		if status == 200 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if status != 200 || body["origin"] != "a.test" {
		t.Fatalf("/event: %d %v", status, body)
	}
	if ids := pduIDs(t, pr.rv, body["pdus"]); len(ids) != 1 || ids[0] != last {
		t.Fatalf("/event: %v", ids)
	}
	for _, m := range msgs {
		status, body = peer.request(a, "GET", fed1+"/event/"+esc(m), nil)
		if status != 200 {
			t.Fatalf("/event %s: %d %v", m, status, body)
		}
		pr.learn(body["pdus"].([]any)[0])
	}
	// A server with nobody in the room may not read it.
	if status, body := stranger.request(a, "GET", fed1+"/event/"+esc(last), nil); status != 403 {
		t.Errorf("stranger /event: %d %v", status, body)
	}
	if status, body := stranger.request(a, "GET", fed1+"/state_ids/"+esc(room)+"?event_id="+esc(last), nil); status != 403 {
		t.Errorf("stranger /state_ids: %d %v", status, body)
	}

	// /state_ids and /state before the last message: the peer's view.
	status, body = peer.request(a, "GET", fed1+"/state_ids/"+esc(room)+"?event_id="+esc(last), nil)
	if status != 200 {
		t.Fatalf("/state_ids: %d %v", status, body)
	}
	stateIDs := map[string]bool{}
	for _, id := range body["pdu_ids"].([]any) {
		stateIDs[id.(string)] = true
	}
	if len(stateIDs) != len(pr.state) {
		t.Errorf("/state_ids: %d events, the peer has %d", len(stateIDs), len(pr.state))
	}
	for k, id := range pr.state {
		if !stateIDs[id] {
			t.Errorf("/state_ids lacks %s (%s)", k, id)
		}
	}
	if chain, _ := body["auth_chain_ids"].([]any); len(chain) == 0 {
		t.Error("/state_ids: empty auth chain")
	}
	status, body = peer.request(a, "GET", fed1+"/state/"+esc(room)+"?event_id="+esc(last), nil)
	if status != 200 || len(pduIDs(t, pr.rv, body["pdus"])) != len(stateIDs) || len(pduIDs(t, pr.rv, body["auth_chain"])) == 0 {
		t.Fatalf("/state: %d %v", status, body)
	}
	for _, id := range pduIDs(t, pr.rv, body["pdus"]) {
		if !stateIDs[id] {
			t.Errorf("/state gave %s, not in /state_ids", id)
		}
	}
	// /event_auth: the chain of the peer's member event... of alice's
	// message: her member event and the power levels at least.
	status, body = peer.request(a, "GET", fed1+"/event_auth/"+esc(room)+"/"+esc(last), nil)
	if status != 200 {
		t.Fatalf("/event_auth: %d %v", status, body)
	}
	chain := map[string]bool{}
	for _, id := range pduIDs(t, pr.rv, body["auth_chain"]) {
		chain[id] = true
	}
	for _, k := range []eventgraph.StateKey{{Type: "m.room.power_levels"}, {Type: "m.room.member", StateKey: alice.UserID.String()}} {
		if !chain[pr.state[k]] {
			t.Errorf("/event_auth lacks %v", k)
		}
	}
	if status, _ := peer.request(a, "GET", fed1+"/event_auth/"+esc(room)+"/"+esc(hashID("$", "unknown")), nil); status != 404 {
		t.Errorf("/event_auth of an unknown event: %d", status)
	}

	// /get_missing_events between msgs[1] and last: msgs[2], msgs[3],
	// oldest first.
	status, body = peer.request(a, "POST", fed1+"/get_missing_events/"+esc(room),
		map[string]any{"earliest_events": []string{msgs[1]}, "latest_events": []string{last}, "limit": 10})
	if status != 200 {
		t.Fatalf("/get_missing_events: %d %v", status, body)
	}
	if got := pduIDs(t, pr.rv, body["events"]); len(got) != 2 || got[0] != msgs[2] || got[1] != msgs[3] {
		t.Errorf("/get_missing_events: %v, want %v", got, msgs[2:4])
	}
	// /backfill from last, 3 events: last and the two before, newest first.
	status, body = peer.request(a, "GET", fed1+"/backfill/"+esc(room)+"?v="+esc(last)+"&limit=3", nil)
	if status != 200 || body["origin"] != "a.test" {
		t.Fatalf("/backfill: %d %v", status, body)
	}
	if got := pduIDs(t, pr.rv, body["pdus"]); len(got) != 3 || got[0] != last || got[1] != msgs[3] || got[2] != msgs[2] {
		t.Errorf("/backfill: %v", got)
	}

	// A gap of one event: the peer sends e2 but not e1 before it; a fetches
	// e1 with /get_missing_events.
	e1 := pr.build("m.room.message", nil, `{"msgtype":"m.text","body":"gap 1"}`, last)
	e2 := pr.build("m.room.message", nil, `{"msgtype":"m.text","body":"gap 2"}`, e1.EventID())
	var gotMissing map[string]any
	peer.handle("POST", fed1+"/get_missing_events/", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewDecoder(r.Body).Decode(&gotMissing)
		writeFedJSON(w, map[string]any{"events": []json.RawMessage{e1.JSON()}})
	})
	res := a.Gateway.IngestPDUsForTest(ctx, "p.test", []json.RawMessage{e2.JSON()})
	if r, ok := res[e2.EventID()]; !ok || r != "" {
		t.Fatalf("gap PDU: %v", res)
	}
	if !peer.asked("POST " + fed1 + "/get_missing_events/") {
		t.Fatal("no /get_missing_events")
	}
	if latest, _ := gotMissing["latest_events"].([]any); len(latest) != 1 || latest[0] != e2.EventID() {
		t.Errorf("get_missing_events body: %v", gotMissing)
	}
	msgsPage, err := alice.Messages(ctx, created.RoomID, "", "", mautrix.DirectionBackward, nil, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgsPage.Chunk) != 2 || msgsPage.Chunk[0].ID.String() != e2.EventID() || msgsPage.Chunk[1].ID.String() != e1.EventID() {
		t.Fatalf("alice's timeline after the gap: %v", msgsPage.Chunk)
	}

	// A gap /get_missing_events does not close: a asks for the state before
	// e4 and fetches the one state event it lacks (the peer's new display
	// name, e3) with /event.
	peerKey := pr.user
	e3 := pr.build("m.room.member", &peerKey, `{"membership":"join","displayname":"Peer P"}`, e2.EventID())
	e4 := pr.build("m.room.message", nil, `{"msgtype":"m.text","body":"after the hole"}`, e3.EventID())
	peer.handle("POST", fed1+"/get_missing_events/", func(w http.ResponseWriter, r *http.Request) {
		writeFedJSON(w, map[string]any{"events": []any{}})
	})
	peer.handle("GET", fed1+"/state_ids/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("event_id") != e4.EventID() {
			http.Error(w, `{"errcode":"M_NOT_FOUND","error":"no"}`, 404)
			return
		}
		ids := []string{}
		for _, id := range pr.state {
			ids = append(ids, id)
		}
		writeFedJSON(w, map[string]any{"pdu_ids": ids, "auth_chain_ids": []string{}})
	})
	peer.handle("GET", fed1+"/event/", func(w http.ResponseWriter, r *http.Request) {
		id, _ := url.PathUnescape(strings.TrimPrefix(r.URL.EscapedPath(), fed1+"/event/"))
		ev := pr.events[id]
		if ev == nil {
			http.Error(w, `{"errcode":"M_NOT_FOUND","error":"no"}`, 404)
			return
		}
		writeFedJSON(w, map[string]any{"origin": "p.test", "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{ev.JSON()}})
	})
	res = a.Gateway.IngestPDUsForTest(ctx, "p.test", []json.RawMessage{e4.JSON()})
	if r, ok := res[e4.EventID()]; !ok || r != "" {
		t.Fatalf("PDU after a hole: %v", res)
	}
	if !peer.asked("GET "+fed1+"/state_ids/") || !peer.asked("GET "+fed1+"/event/") {
		t.Fatal("the state before the PDU was not fetched")
	}
	var member struct {
		DisplayName string `json:"displayname"`
	}
	if err := alice.StateEvent(ctx, created.RoomID, event.StateMember, peerKey, &member); err != nil || member.DisplayName != "Peer P" {
		t.Fatalf("peer's member state after the hole: %+v %v", member, err)
	}

	// The events a got over federation are in its index too: another
	// server can fetch them from a.
	status, body = peer.request(a, "GET", fed1+"/event/"+esc(e1.EventID()), nil)
	if got := pduIDs(t, pr.rv, body["pdus"]); status != 200 || len(got) != 1 || got[0] != e1.EventID() {
		t.Errorf("/event of a fetched event: %d %v", status, body)
	}

	// An auth event a has never seen (e5, never sent, not among e6's
	// prev_events): the room reports it missing, a fetches e6's auth chain
	// with /event_auth and tries again.
	e5 := pr.build("m.room.member", &peerKey, `{"membership":"join","displayname":"Peer Q"}`, e4.EventID())
	e6 := pr.build("m.room.message", nil, `{"msgtype":"m.text","body":"auth from afar"}`, e4.EventID())
	if !slices.Contains(e6.AuthEventIDs(), e5.EventID()) {
		t.Fatal("test setup: e6 is not authorised by e5")
	}
	peer.handle("GET", fed1+"/event_auth/", func(w http.ResponseWriter, r *http.Request) {
		chain := []json.RawMessage{e5.JSON()}
		for _, id := range e5.AuthEventIDs() {
			chain = append(chain, pr.events[id].JSON())
		}
		writeFedJSON(w, map[string]any{"auth_chain": chain})
	})
	res = a.Gateway.IngestPDUsForTest(ctx, "p.test", []json.RawMessage{e6.JSON()})
	if r, ok := res[e6.EventID()]; !ok || r != "" {
		t.Fatalf("PDU with an unknown auth event: %v", res)
	}
	if !peer.asked("GET " + fed1 + "/event_auth/") {
		t.Fatal("no /event_auth")
	}

	// A hole with many state events a lacks (51 users of the peer joined
	// in it): one GET /state replaces the GET /event calls.
	prev := e6.EventID()
	var lastUser string
	for i := range 51 {
		lastUser = "@p" + strconv.Itoa(i) + ":p.test"
		saved := pr.user
		pr.user = lastUser
		prev = pr.build("m.room.member", &lastUser, `{"membership":"join"}`, prev).EventID()
		pr.user = saved
	}
	e7 := pr.build("m.room.message", nil, `{"msgtype":"m.text","body":"crowd"}`, prev)
	peer.handle("GET", fed1+"/state/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("event_id") != e7.EventID() {
			http.Error(w, `{"errcode":"M_NOT_FOUND","error":"no"}`, 404)
			return
		}
		pdus := []json.RawMessage{}
		for _, id := range pr.state {
			pdus = append(pdus, pr.events[id].JSON())
		}
		writeFedJSON(w, map[string]any{"pdus": pdus, "auth_chain": []any{}})
	})
	peer.handle("GET", fed1+"/state_ids/", func(w http.ResponseWriter, r *http.Request) {
		ids := []string{}
		for _, id := range pr.state {
			ids = append(ids, id)
		}
		writeFedJSON(w, map[string]any{"pdu_ids": ids, "auth_chain_ids": []string{}})
	})
	res = a.Gateway.IngestPDUsForTest(ctx, "p.test", []json.RawMessage{e7.JSON()})
	if r, ok := res[e7.EventID()]; !ok || r != "" {
		t.Fatalf("PDU after a crowded hole: %v", res)
	}
	if !peer.asked("GET " + fed1 + "/state/") {
		t.Fatal("no GET /state for a hole of 51 state events")
	}
	joined, err := alice.JoinedMembers(ctx, created.RoomID)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := joined.Joined[id.UserID(lastUser)]; !ok || len(joined.Joined) != 53 {
		t.Fatalf("joined after the crowded hole: %d members, %s joined %v", len(joined.Joined), lastUser, ok)
	}

	// PDUs that do not verify get a reason; unparseable ones are left out;
	// PDUs of unknown rooms are dropped.
	forged := pr.build("m.room.message", nil, `{"body":"x"}`, e7.EventID())
	var fobj map[string]any
	_ = json.Unmarshal(forged.JSON(), &fobj)
	fobj["signatures"] = map[string]any{"p.test": map[string]string{peer.id.KeyID: base64.RawStdEncoding.EncodeToString(make([]byte, 64))}}
	forgedRaw, _ := json.Marshal(fobj)
	otherRoom := pr.peer.event(pr.rv, eventgraph.ProtoEvent{RoomID: hashID("!", "other room"), Sender: pr.user,
		Type: "m.room.message", Content: json.RawMessage(`{}`), Depth: 3})
	res = a.Gateway.IngestPDUsForTest(ctx, "p.test", []json.RawMessage{forgedRaw, json.RawMessage(`{"room_id":5}`), otherRoom.JSON()})
	if r, ok := res[forged.EventID()]; !ok || r == "" {
		t.Errorf("forged PDU: %v", res)
	}
	if len(res) != 1 {
		t.Errorf("results for dropped PDUs: %v", res)
	}
}

// A user joining a room that lives on another server pages back past her
// join: her server backfills the older history from the other server.
func TestFederationBackfillForClients(t *testing.T) {
	_, a, b := twoNodes(t)
	ctx := context.Background()
	bob := b.Register("bob")
	created, err := bob.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	const n = 25
	for i := range n {
		if _, err := bob.SendText(ctx, created.RoomID, "old "+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	alice := a.Register("alice")
	if _, err := alice.JoinRoom(ctx, created.RoomID.String(), &mautrix.ReqJoinRoom{Via: []string{"b.test"}}); err != nil {
		t.Fatalf("join through b.test: %v", err)
	}
	seen := map[string]bool{}
	from := ""
	for page := 0; page < 20; page++ {
		resp, err := alice.Messages(ctx, created.RoomID, from, "", mautrix.DirectionBackward, nil, 10)
		if err != nil {
			t.Fatalf("page %d: %v", page, err)
		}
		for _, ev := range resp.Chunk {
			if ev.Type == event.EventMessage {
				body, _ := ev.Content.Raw["body"].(string)
				seen[body] = true
			}
		}
		if resp.End == "" {
			break
		}
		from = resp.End
	}
	for i := range n {
		if !seen["old "+strconv.Itoa(i)] {
			t.Fatalf("alice never saw %q (saw %d messages)", "old "+strconv.Itoa(i), len(seen))
		}
	}
}
