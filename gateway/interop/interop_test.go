package interop

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// pair is one shoal node and one Dendrite that federate with each other.
type pair struct {
	ca    *shoaltest.CA
	shoal *shoaltest.Node
	den   *dendrite
	// hc trusts the test CA: it reaches both servers' HTTPS listeners.
	hc       *http.Client
	shoalLog string
}

func newPair(t *testing.T) *pair {
	t.Helper()
	ca := shoaltest.NewCA(t)
	den := startDendrite(t, ca) // skips when Dendrite is not installed
	shoalLog := filepath.Join(den.dir, "shoal.log")
	p := &pair{ca: ca, den: den, shoal: startShoal(t, ca, shoalLog), shoalLog: shoalLog,
		hc: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}}
	t.Cleanup(p.hc.CloseIdleConnections)
	t.Logf("dendrite %s as %s (client API %s), shoal as %s (client API %s)",
		den.Version, den.ServerName, den.ClientURL, p.shoal.ServerName(), p.shoal.BaseURL)
	return p
}

// fedJSON sends an unauthenticated request to a server's HTTPS listener
// (server name = host:port) and decodes a 200 answer.
func (p *pair) fedJSON(t *testing.T, method, server, path string, body any) map[string]any {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "https://"+server+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.hc.Do(req)
	if err != nil {
		t.Fatalf("%s https://%s%s: %v", method, server, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s https://%s%s: %s %s", method, server, path, resp.Status, raw)
	}
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s https://%s%s: %v in %s", method, server, path, err, raw)
	}
	return out
}

// ownKeys is a server's own key response (GET /_matrix/key/v2/server),
// checked to be self-signed by each of its keys: key ID → public key.
func (p *pair) ownKeys(t *testing.T, server string) map[string]ed25519.PublicKey {
	t.Helper()
	resp := p.fedJSON(t, http.MethodGet, server, "/_matrix/key/v2/server", nil)
	if resp["server_name"] != server {
		t.Fatalf("keys of %s: server_name %v", server, resp["server_name"])
	}
	keys := verifyKeys(t, resp)
	raw, _ := json.Marshal(resp)
	for kid, pub := range keys {
		if err := eventgraph.VerifyJSON(raw, server, kid, pub); err != nil {
			t.Fatalf("keys of %s: self-signature by %s: %v", server, kid, err)
		}
	}
	return keys
}

func verifyKeys(t *testing.T, resp map[string]any) map[string]ed25519.PublicKey {
	t.Helper()
	vk, _ := resp["verify_keys"].(map[string]any)
	if len(vk) == 0 {
		t.Fatalf("no verify_keys in %v", resp)
	}
	keys := map[string]ed25519.PublicKey{}
	for kid, k := range vk {
		s, _ := k.(map[string]any)["key"].(string)
		pub, err := eventgraph.DecodeBase64(s)
		if err != nil || len(pub) != ed25519.PublicKeySize {
			t.Fatalf("verify key %s: %q %v", kid, s, err)
		}
		keys[kid] = pub
	}
	return keys
}

// checkNotaryAnswer checks that a notary's answer about subject holds
// exactly subject's own keys, signed by subject and by the notary.
func checkNotaryAnswer(t *testing.T, what string, resp map[string]any, subject string, subjectKeys map[string]ed25519.PublicKey,
	notary string, notaryKeys map[string]ed25519.PublicKey) {
	t.Helper()
	list, _ := resp["server_keys"].([]any)
	if len(list) != 1 {
		t.Fatalf("%s: want one key response, got %d: %v", what, len(list), resp)
	}
	entry, _ := list[0].(map[string]any)
	if entry["server_name"] != subject {
		t.Fatalf("%s: response for %v, want %s", what, entry["server_name"], subject)
	}
	got := verifyKeys(t, entry)
	if len(got) != len(subjectKeys) {
		t.Fatalf("%s: keys %v, want %v", what, got, subjectKeys)
	}
	raw, _ := json.Marshal(entry)
	for kid, pub := range subjectKeys {
		if !got[kid].Equal(pub) {
			t.Fatalf("%s: key %s is %x, the server itself says %x", what, kid, got[kid], pub)
		}
		if err := eventgraph.VerifyJSON(raw, subject, kid, pub); err != nil {
			t.Fatalf("%s: %s's own signature: %v", what, subject, err)
		}
	}
	for kid, pub := range notaryKeys {
		if err := eventgraph.VerifyJSON(raw, notary, kid, pub); err != nil {
			t.Fatalf("%s: notary %s's signature by %s: %v", what, notary, kid, err)
		}
	}
}

// TestDendrite runs shoal against Dendrite: one Dendrite and one shoal
// node serve all the subtests (Dendrite takes a second or more to start),
// each with its own users and rooms. Most scenarios run twice, with either
// server hosting the room (…/DendriteHosts, …/ShoalHosts); -run
// 'TestDendrite/History' picks one. Downtime stops and restarts both
// servers and so comes last.
func TestDendrite(t *testing.T) {
	p := newPair(t)
	ctx := context.Background()
	sh, den := p.shoal, p.den

	// Shoal, as a notary, fetches Dendrite's keys over TLS checked against
	// the test CA and serves them with both signatures; Dendrite, as a
	// notary, does the same with shoal's.
	t.Run("Keys", func(t *testing.T) {
		shoalKeys := p.ownKeys(t, sh.ServerName())
		denKeys := p.ownKeys(t, den.ServerName)
		resp := p.fedJSON(t, http.MethodGet, sh.ServerName(), "/_matrix/key/v2/query/"+url.PathEscape(den.ServerName), nil)
		checkNotaryAnswer(t, "shoal's notary GET", resp, den.ServerName, denKeys, sh.ServerName(), shoalKeys)
		resp = p.fedJSON(t, http.MethodPost, sh.ServerName(), "/_matrix/key/v2/query",
			map[string]any{"server_keys": map[string]any{den.ServerName: map[string]any{}}})
		checkNotaryAnswer(t, "shoal's notary POST", resp, den.ServerName, denKeys, sh.ServerName(), shoalKeys)
		resp = p.fedJSON(t, http.MethodPost, den.ServerName, "/_matrix/key/v2/query",
			map[string]any{"server_keys": map[string]any{sh.ServerName(): map[string]any{}}})
		checkNotaryAnswer(t, "Dendrite's notary POST", resp, sh.ServerName(), shoalKeys, den.ServerName, denKeys)
	})

	// Profile queries both ways: each server signs a federation request
	// the other verifies with keys it fetched from the requester.
	t.Run("Profiles", func(t *testing.T) {
		alice := sh.Register("alice")
		if err := alice.SetDisplayName(ctx, "Alice of shoal"); err != nil {
			t.Fatal(err)
		}
		bob := den.Register("bob")
		if err := bob.SetDisplayName(ctx, "Bob of Dendrite"); err != nil {
			t.Fatal(err)
		}

		got, err := alice.GetProfile(ctx, bob.UserID)
		if err != nil {
			t.Fatalf("shoal user reads a Dendrite user's profile: %v", err)
		}
		if got.DisplayName != "Bob of Dendrite" {
			t.Fatalf("shoal user reads a Dendrite user's profile: displayname %q", got.DisplayName)
		}
		dn, err := alice.GetDisplayName(ctx, bob.UserID)
		if err != nil || dn.DisplayName != "Bob of Dendrite" {
			t.Fatalf("shoal user reads a Dendrite user's displayname: %+v %v", dn, err)
		}
		if _, err := alice.GetProfile(ctx, den.UserID("nobody")); !errors.Is(err, mautrix.MNotFound) {
			t.Fatalf("shoal user reads an unknown Dendrite user's profile: want M_NOT_FOUND, got %v", err)
		}

		got, err = bob.GetProfile(ctx, alice.UserID)
		if err != nil {
			t.Fatalf("Dendrite user reads a shoal user's profile: %v\nDendrite's log:\n%s", err, den.LogTail(3000))
		}
		if got.DisplayName != "Alice of shoal" {
			t.Fatalf("Dendrite user reads a shoal user's profile: displayname %q", got.DisplayName)
		}
		if _, err := bob.GetProfile(ctx, sh.UserID("nobody")); !errors.Is(err, mautrix.MNotFound) {
			t.Fatalf("Dendrite user reads an unknown shoal user's profile: want M_NOT_FOUND, got %v", err)
		}
	})

	// Rooms over federation, both ways, in the room versions both servers
	// support that Dendrite v0.13 creates by default (10) and the latest it
	// knows (11).
	for _, v := range []id.RoomVersion{"10", "11"} {
		t.Run("RoomV"+string(v)+"/DendriteCreates", func(t *testing.T) {
			p.roomExchange(t, v, den.Register("dcreator"+string(v)), sh.Register("sjoiner"+string(v)), den.ServerName)
		})
		t.Run("RoomV"+string(v)+"/ShoalCreates", func(t *testing.T) {
			p.roomExchange(t, v, sh.Register("screator"+string(v)), den.Register("djoiner"+string(v)), sh.ServerName())
		})
	}

	p.bothWays(t, "InviteAccept", p.inviteAccept)
	p.bothWays(t, "InviteReject", p.inviteReject)
	p.bothWays(t, "LeaveRejoin", p.leaveRejoin)
	p.bothWays(t, "History", p.history)
	p.bothWays(t, "Ephemeral", p.ephemeral)
	p.bothWays(t, "StateChanges", p.stateChanges)
	p.bothWays(t, "KickBan", p.kickBan)
	for _, v := range []id.RoomVersion{"10", "11"} {
		p.bothWays(t, "RedactionV"+string(v), func(t *testing.T, a, b side, tag string) { p.redaction(t, v, a, b, tag+string(v)) })
	}
	p.bothWays(t, "Alias", p.alias)
	p.bothWays(t, "PublicRooms", p.publicRooms)
	p.bothWays(t, "E2EE", p.e2ee)
	p.bothWays(t, "CrossSigning", p.crossSigning)
	p.bothWays(t, "Media", p.media)
	p.bothWays(t, "Thumbnail", p.thumbnail)
	p.bothWays(t, "Restricted", p.restricted)
	p.bothWays(t, "Presence", p.presence)
	p.bothWays(t, "Upgrade", p.upgrade)
	p.bothWays(t, "Hierarchy", p.hierarchy)
	p.bothWays(t, "TrickyContent", p.trickyContent)
	p.bothWays(t, "Relations", p.relations)
	t.Run("ServerACL/ShoalHosts", p.serverACL)
	t.Run("ThreeServers", p.threeServers)
	// Last: it stops and restarts both servers.
	t.Run("Downtime", p.downtime)
}

// fedDeadline bounds each wait for something to cross from one server to
// the other (federation is asynchronous: transactions, retries).
const fedDeadline = 15 * time.Second

// syncer follows one client's /sync and keeps what it has seen.
type syncer struct {
	cli       *mautrix.Client
	since     string
	events    map[id.RoomID][]*event.Event // state and timeline, joined and left rooms
	invites   map[id.RoomID][]*event.Event // invite_state
	ephemeral map[id.RoomID][]*event.Event
	toDevice  []*event.Event
	presence  []*event.Event
	prevBatch map[id.RoomID]string // of the first timeline seen of each room
	// deviceChanged holds the users device_lists.changed named.
	deviceChanged map[id.UserID]bool
}

// drainDeviceLists catches up with /sync and forgets the device list
// changes seen so far.
func (s *syncer) drainDeviceLists() {
	for range 2 {
		if err := s.pollFor(context.Background(), 0); err != nil {
			break
		}
	}
	s.deviceChanged = map[id.UserID]bool{}
}

func newSyncer(cli *mautrix.Client) *syncer {
	return &syncer{cli: cli, events: map[id.RoomID][]*event.Event{}, invites: map[id.RoomID][]*event.Event{},
		ephemeral: map[id.RoomID][]*event.Event{}, prevBatch: map[id.RoomID]string{}, deviceChanged: map[id.UserID]bool{}}
}

// poll runs one /sync (long-polling up to a second).
func (s *syncer) poll(ctx context.Context) error { return s.pollFor(ctx, 1000) }

// pollFor runs one /sync long-polling up to timeoutMS.
func (s *syncer) pollFor(ctx context.Context, timeoutMS int) error {
	resp, err := s.cli.SyncRequest(ctx, timeoutMS, s.since, "", false, event.PresenceOffline)
	if err != nil {
		return err
	}
	s.since = resp.NextBatch
	timeline := func(roomID id.RoomID, state []*event.Event, tl mautrix.SyncTimeline) {
		if _, ok := s.prevBatch[roomID]; !ok && tl.PrevBatch != "" {
			s.prevBatch[roomID] = tl.PrevBatch
		}
		s.events[roomID] = append(s.events[roomID], state...)
		s.events[roomID] = append(s.events[roomID], tl.Events...)
	}
	for roomID, room := range resp.Rooms.Join {
		timeline(roomID, room.State.Events, room.Timeline)
		s.ephemeral[roomID] = append(s.ephemeral[roomID], room.Ephemeral.Events...)
	}
	for roomID, room := range resp.Rooms.Leave {
		timeline(roomID, room.State.Events, room.Timeline)
	}
	for roomID, room := range resp.Rooms.Invite {
		s.invites[roomID] = append(s.invites[roomID], room.State.Events...)
	}
	s.toDevice = append(s.toDevice, resp.ToDevice.Events...)
	s.presence = append(s.presence, resp.Presence.Events...)
	for _, u := range resp.DeviceLists.Changed {
		s.deviceChanged[u] = true
	}
	return nil
}

// find is the first event in list that match accepts.
func find(list []*event.Event, match func(*event.Event) bool) *event.Event {
	for _, e := range list {
		if match(e) {
			return e
		}
	}
	return nil
}

// waitUntil syncs until found returns an event, or fails the test after
// fedDeadline with what was seen and diagnose's output.
func (s *syncer) waitUntil(t *testing.T, what string, found func() *event.Event, diagnose func() string) *event.Event {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(fedDeadline)
	var lastErr error
	for {
		if e := found(); e != nil {
			return e
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s did not see it in /sync within %v (last sync error: %v); it saw:\n%s\n%s",
				what, s.cli.UserID, fedDeadline, lastErr, s.dump(), diagnose())
		}
		if err := s.poll(ctx); err != nil {
			lastErr = err
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// waitFor waits for an event of roomID's state or timeline.
func (s *syncer) waitFor(t *testing.T, roomID id.RoomID, what string, match func(*event.Event) bool, diagnose func() string) *event.Event {
	t.Helper()
	return s.waitUntil(t, what, func() *event.Event { return find(s.events[roomID], match) }, diagnose)
}

// dump lists what the syncer saw, for failure messages.
func (s *syncer) dump() string {
	var b strings.Builder
	line := func(kind string, roomID id.RoomID, e *event.Event) {
		sk := ""
		if e.StateKey != nil {
			sk = " [" + *e.StateKey + "]"
		}
		fmt.Fprintf(&b, "  %s %s: %s %s%s from %s %s\n", kind, roomID, e.ID, e.Type.Type, sk, e.Sender, tail(string(e.Content.VeryRaw), 300))
	}
	for roomID, list := range s.events {
		for _, e := range list {
			line("event", roomID, e)
		}
	}
	for roomID, list := range s.invites {
		for _, e := range list {
			line("invite_state", roomID, e)
		}
	}
	for roomID, list := range s.ephemeral {
		for _, e := range list {
			line("ephemeral", roomID, e)
		}
	}
	for _, e := range s.toDevice {
		line("to_device", "", e)
	}
	for _, e := range s.presence {
		line("presence", "", e)
	}
	return b.String()
}

func isMember(user id.UserID, membership string) func(*event.Event) bool {
	return func(e *event.Event) bool {
		return e.Type == event.StateMember && e.StateKey != nil && *e.StateKey == user.String() &&
			e.Content.Raw["membership"] == membership
	}
}

func isEvent(eventID id.EventID) func(*event.Event) bool {
	return func(e *event.Event) bool { return e.ID == eventID }
}

// joinVia joins roomIDOrAlias through server, naming it both as via (the
// current spec) and server_name (deprecated; the only one Dendrite v0.13
// reads).
func joinVia(ctx context.Context, cli *mautrix.Client, roomIDOrAlias string, server string) (*mautrix.RespJoinRoom, error) {
	u := cli.BuildURLWithFullQuery(mautrix.ClientURLPath{"v3", "join", roomIDOrAlias}, func(q url.Values) {
		q["via"] = []string{server}
		q["server_name"] = []string{server}
	})
	var resp mautrix.RespJoinRoom
	_, err := cli.MakeRequest(ctx, http.MethodPost, u, map[string]any{}, &resp)
	return &resp, err
}

// checkMessage asserts that e is exactly the message sent.
func checkMessage(t *testing.T, what string, e *event.Event, roomID id.RoomID, eventID id.EventID, sender id.UserID, body string) {
	t.Helper()
	if e.ID != eventID || e.RoomID != "" && e.RoomID != roomID || e.Sender != sender || e.Type != event.EventMessage ||
		e.Content.Raw["msgtype"] != "m.text" || e.Content.Raw["body"] != body || len(e.Content.Raw) != 2 {
		t.Fatalf("%s: got %s %s from %s in %q: %s; want %s m.room.message from %s: {\"body\":%q,\"msgtype\":\"m.text\"}",
			what, e.ID, e.Type.Type, e.Sender, e.RoomID, e.Content.VeryRaw, eventID, sender, body)
	}
}

// tail is the last n bytes of s.
func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// diagnose returns what both servers logged about a room (for failures).
func (p *pair) diagnose(roomID id.RoomID) func() string {
	return func() string {
		return fmt.Sprintf("Dendrite's log about the room:\n%s\nshoal's log about the room:\n%s\n(whole logs: %s and %s)",
			tail(p.den.LogGrep(string(roomID)), 4000), tail(fileGrep(p.shoalLog, string(roomID)), 4000),
			p.den.logPath, p.shoalLog)
	}
}

// room is a room that a creator and a joiner on the other server share.
type room struct {
	id              id.RoomID
	creator, joiner *mautrix.Client
	cs, js          *syncer
	diagnose        func() string
}

// sharedRoom: creator makes a room of version v on its server (with extra
// createRoom fields from req), joiner joins it over federation through the
// creator's server, and both servers see the join. The joiner's server
// must then hold the room's real state: the creation event of version v
// and both members.
func (p *pair) sharedRoom(t *testing.T, v id.RoomVersion, creator, joiner *mautrix.Client, creatorServer string, req mautrix.ReqCreateRoom) *room {
	t.Helper()
	ctx := context.Background()
	if req.Preset == "" {
		req.Preset = "public_chat"
	}
	req.RoomVersion = v
	created, err := creator.CreateRoom(ctx, &req)
	if err != nil {
		t.Fatalf("%s creates a v%s room: %v", creator.UserID, v, err)
	}
	r := &room{id: created.RoomID, creator: creator, joiner: joiner, cs: newSyncer(creator), js: newSyncer(joiner),
		diagnose: p.diagnose(created.RoomID)}
	join, err := joinVia(ctx, joiner, string(r.id), creatorServer)
	if err != nil {
		t.Fatalf("%s joins %s via %s: %v\n%s", joiner.UserID, r.id, creatorServer, err, r.diagnose())
	}
	if join.RoomID != r.id {
		t.Fatalf("join answered room_id %q, want %q", join.RoomID, r.id)
	}
	r.cs.waitFor(t, r.id, "the joiner's membership reaches the creator's server", isMember(joiner.UserID, "join"), r.diagnose)
	r.js.waitFor(t, r.id, "the joiner sees its own join", isMember(joiner.UserID, "join"), r.diagnose)
	r.checkJoinerState(t, v)
	return r
}

// checkJoinerState: the joiner's server has the creation event of version
// v, sent by the creator, and both users as its joined members.
func (r *room) checkJoinerState(t *testing.T, v id.RoomVersion) {
	t.Helper()
	ctx := context.Background()
	var create map[string]any
	if err := r.joiner.StateEvent(ctx, r.id, event.StateCreate, "", &create); err != nil {
		t.Fatalf("joiner reads m.room.create: %v", err)
	}
	if create["room_version"] != string(v) {
		t.Fatalf("m.room.create on the joiner's server: room_version %v, want %s (%v)", create["room_version"], v, create)
	}
	members, err := r.joiner.JoinedMembers(ctx, r.id)
	if err != nil {
		t.Fatalf("joiner reads joined members: %v", err)
	}
	_, hasCreator := members.Joined[r.creator.UserID]
	_, hasJoiner := members.Joined[r.joiner.UserID]
	if !hasCreator || !hasJoiner || len(members.Joined) != 2 {
		t.Fatalf("joined members on the joiner's server: %v, want %s and %s", members.Joined, r.creator.UserID, r.joiner.UserID)
	}
}

// send sends a text message and waits until the other side's /sync holds
// exactly it.
func (r *room) send(t *testing.T, from *mautrix.Client, body string) id.EventID {
	t.Helper()
	sent, err := from.SendText(context.Background(), r.id, body)
	if err != nil {
		t.Fatalf("%s sends: %v\n%s", from.UserID, err, r.diagnose())
	}
	other := r.js
	if from == r.joiner {
		other = r.cs
	}
	got := other.waitFor(t, r.id, fmt.Sprintf("%s's message %q reaches %s", from.UserID, body, other.cli.UserID),
		isEvent(sent.EventID), r.diagnose)
	checkMessage(t, other.cli.UserID.String()+"'s copy", got, r.id, sent.EventID, from.UserID, body)
	return sent.EventID
}

// messages is the order of the m.room.message events s saw in the room.
func (s *syncer) messages(roomID id.RoomID) []id.EventID {
	var order []id.EventID
	for _, e := range s.events[roomID] {
		if e.Type == event.EventMessage {
			order = append(order, e.ID)
		}
	}
	return order
}

// roomExchange is the scenario both ways: the joiner joins the creator's
// room of version v, each sends a message the other must receive (the
// creator first, then the joiner once it has seen the creator's), and both
// timelines hold the two messages in that order.
func (p *pair) roomExchange(t *testing.T, v id.RoomVersion, creator, joiner *mautrix.Client, creatorServer string) {
	r := p.sharedRoom(t, v, creator, joiner, creatorServer, mautrix.ReqCreateRoom{Name: "interop v" + string(v)})
	first := r.send(t, creator, fmt.Sprintf("hello from %s in a v%s room", creator.UserID, v))
	second := r.send(t, joiner, fmt.Sprintf("hello back from %s in a v%s room", joiner.UserID, v))
	r.js.waitFor(t, r.id, "the joiner sees its own message", isEvent(second), r.diagnose)
	r.cs.waitFor(t, r.id, "the creator sees its own message", isEvent(second), r.diagnose)
	for _, s := range []*syncer{r.cs, r.js} {
		if got := s.messages(r.id); len(got) != 2 || got[0] != first || got[1] != second {
			t.Fatalf("%s's timeline messages: %v, want [%s %s]", s.cli.UserID, got, first, second)
		}
	}
	r.sameState(t)
}

// stateIDs is the room's current state as cli's server serves it: (type,
// state key) → event ID.
func stateIDs(t *testing.T, cli *mautrix.Client, roomID id.RoomID) map[string]id.EventID {
	t.Helper()
	var evs []*event.Event
	if _, err := cli.MakeRequest(context.Background(), http.MethodGet, cli.BuildClientURL("v3", "rooms", roomID, "state"), nil, &evs); err != nil {
		t.Fatalf("%s reads the room's state: %v", cli.UserID, err)
	}
	out := map[string]id.EventID{}
	for _, e := range evs {
		sk := ""
		if e.StateKey != nil {
			sk = *e.StateKey
		}
		out[e.Type.Type+"|"+sk] = e.ID
	}
	return out
}

// sameState: both servers serve the same current state, event for event
// (their state resolutions agree).
func (r *room) sameState(t *testing.T) {
	t.Helper()
	a, b := stateIDs(t, r.creator, r.id), stateIDs(t, r.joiner, r.id)
	if len(a) == 0 || !maps.Equal(a, b) {
		t.Fatalf("the servers disagree on the room's state:\n%s's: %v\n%s's: %v", r.creator.UserID, a, r.joiner.UserID, b)
	}
}
