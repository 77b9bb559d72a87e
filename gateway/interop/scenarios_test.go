package interop

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// side is one of the two servers, as the scenarios see it.
type side struct {
	name     string // "shoal" or "Dendrite"
	server   string
	register func(localpart string) *mautrix.Client
}

// sides returns (shoal, Dendrite).
func (p *pair) sides() (side, side) {
	return side{"shoal", p.shoal.ServerName(), p.shoal.Register},
		side{"Dendrite", p.den.ServerName, p.den.Register}
}

// keepsLeaveReason: Dendrite v0.13 drops the reason of a leave (its
// clientapi/routing/leaveroom.go never reads the request body).
func (sd side) keepsLeaveReason() bool { return sd.name == "shoal" }

// bothWays runs a scenario with each server as the room's home (a) and the
// other as the remote one (b).
func (p *pair) bothWays(t *testing.T, name string, scenario func(t *testing.T, a, b side, tag string)) {
	sh, den := p.sides()
	t.Run(name+"/DendriteHosts", func(t *testing.T) { scenario(t, den, sh, "d") })
	t.Run(name+"/ShoalHosts", func(t *testing.T) { scenario(t, sh, den, "s") })
}

// inviteAccept: a user of a invites a user of b into a private room; the
// invite crosses (invite v2: b's server counter-signs), shows in the
// invitee's /sync with the room's stripped state, and the invitee accepts
// without naming a server (POST /rooms/{id}/join, as clients do): b's
// server must join through the inviter's. Then a message each way.
func (p *pair) inviteAccept(t *testing.T, a, b side, tag string) {
	ctx := context.Background()
	inviter, invitee := a.register("inviter"+tag), b.register("invitee"+tag)
	created, err := inviter.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "invite " + tag, RoomVersion: "10"})
	if err != nil {
		t.Fatal(err)
	}
	roomID := created.RoomID
	diagnose := p.diagnose(roomID)
	if _, err := inviter.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: invitee.UserID, Reason: "come in"}); err != nil {
		t.Fatalf("%s invites %s: %v\n%s", inviter.UserID, invitee.UserID, err, diagnose())
	}
	is, ins := newSyncer(inviter), newSyncer(invitee)
	inv := ins.waitUntil(t, "the invite reaches the invitee", func() *event.Event {
		return find(ins.invites[roomID], isMember(invitee.UserID, "invite"))
	}, diagnose)
	if inv.Sender != inviter.UserID || inv.Content.Raw["reason"] != "come in" {
		t.Fatalf("invite in the invitee's /sync: sender %s content %s", inv.Sender, inv.Content.VeryRaw)
	}
	name := find(ins.invites[roomID], func(e *event.Event) bool { return e.Type == event.StateRoomName })
	if name == nil || name.Content.Raw["name"] != "invite "+tag {
		t.Fatalf("invite_state has no m.room.name %q: %v", "invite "+tag, ins.invites[roomID])
	}
	if _, err := invitee.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatalf("%s accepts the invite (POST /rooms/%s/join): %v\n%s", invitee.UserID, roomID, err, diagnose())
	}
	is.waitFor(t, roomID, "the invitee's join reaches the inviter", isMember(invitee.UserID, "join"), diagnose)
	r := &room{id: roomID, creator: inviter, joiner: invitee, cs: is, js: ins, diagnose: diagnose}
	r.checkJoinerState(t, "10")
	r.send(t, inviter, "welcome, "+invitee.UserID.String())
	r.send(t, invitee, "thanks, "+inviter.UserID.String())
	r.sameState(t)
}

// inviteReject: the invitee rejects (leaves) a remote invite; b's server
// must make the leave through a's (make_leave/send_leave) and a's
// server then holds the rejection.
func (p *pair) inviteReject(t *testing.T, a, b side, tag string) {
	ctx := context.Background()
	inviter, invitee := a.register("rinviter"+tag), b.register("rinvitee"+tag)
	created, err := inviter.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "11"})
	if err != nil {
		t.Fatal(err)
	}
	roomID := created.RoomID
	diagnose := p.diagnose(roomID)
	if _, err := inviter.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: invitee.UserID}); err != nil {
		t.Fatalf("%s invites %s: %v\n%s", inviter.UserID, invitee.UserID, err, diagnose())
	}
	is, ins := newSyncer(inviter), newSyncer(invitee)
	ins.waitUntil(t, "the invite reaches the invitee", func() *event.Event {
		return find(ins.invites[roomID], isMember(invitee.UserID, "invite"))
	}, diagnose)
	if _, err := invitee.LeaveRoom(ctx, roomID, &mautrix.ReqLeave{Reason: "no thanks"}); err != nil {
		t.Fatalf("%s rejects the invite: %v\n%s", invitee.UserID, err, diagnose())
	}
	rej := is.waitFor(t, roomID, "the rejection reaches the inviter", isMember(invitee.UserID, "leave"), diagnose)
	if rej.Sender != invitee.UserID || b.keepsLeaveReason() && rej.Content.Raw["reason"] != "no thanks" {
		t.Fatalf("rejection on the inviter's server: sender %s content %s", rej.Sender, rej.Content.VeryRaw)
	}
	members, err := inviter.JoinedMembers(ctx, roomID)
	if err != nil || len(members.Joined) != 1 {
		t.Fatalf("joined members after the rejection: %v %v", members, err)
	}
}

// leaveRejoin: the remote member leaves (over federation: its server is
// the only one it is in the room through) and joins again; the host sees
// both; a message after the rejoin still crosses.
func (p *pair) leaveRejoin(t *testing.T, a, b side, tag string) {
	ctx := context.Background()
	r := p.sharedRoom(t, "10", a.register("lhost"+tag), b.register("lguest"+tag), a.server, mautrix.ReqCreateRoom{})
	if _, err := r.joiner.LeaveRoom(ctx, r.id, &mautrix.ReqLeave{Reason: "bye"}); err != nil {
		t.Fatalf("%s leaves: %v\n%s", r.joiner.UserID, err, r.diagnose())
	}
	left := r.cs.waitFor(t, r.id, "the leave reaches the host", isMember(r.joiner.UserID, "leave"), r.diagnose)
	if left.Sender != r.joiner.UserID || b.keepsLeaveReason() && left.Content.Raw["reason"] != "bye" {
		t.Fatalf("leave on the host: sender %s content %s", left.Sender, left.Content.VeryRaw)
	}
	if _, err := joinVia(ctx, r.joiner, string(r.id), a.server); err != nil {
		t.Fatalf("%s joins again: %v\n%s", r.joiner.UserID, err, r.diagnose())
	}
	r.cs.waitFor(t, r.id, "the second join reaches the host", func(e *event.Event) bool {
		return isMember(r.joiner.UserID, "join")(e) && e.Timestamp > left.Timestamp
	}, r.diagnose)
	r.send(t, r.creator, "glad you are back")
	r.send(t, r.joiner, "me too")
	r.sameState(t)
}

// history: messages sent before the remote user joined are readable by it
// (history_visibility "shared") through /messages, which makes its server
// backfill them from the host.
func (p *pair) history(t *testing.T, a, b side, tag string) {
	ctx := context.Background()
	host := a.register("hhost" + tag)
	created, err := host.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "11"})
	if err != nil {
		t.Fatal(err)
	}
	roomID := created.RoomID
	diagnose := p.diagnose(roomID)
	var early []id.EventID
	for i := range 5 {
		sent, err := host.SendText(ctx, roomID, fmt.Sprintf("early message %d", i))
		if err != nil {
			t.Fatal(err)
		}
		early = append(early, sent.EventID)
	}
	guest := b.register("hguest" + tag)
	if _, err := joinVia(ctx, guest, string(roomID), a.server); err != nil {
		t.Fatalf("%s joins: %v\n%s", guest.UserID, err, diagnose())
	}
	gs := newSyncer(guest)
	gs.waitFor(t, roomID, "the guest sees its join", isMember(guest.UserID, "join"), diagnose)
	// Page back from the newest event (no from: spec v1.3) until there is
	// no more: the guest's server holds only the state and the join, so
	// the earlier messages come from backfilling the host.
	bodies := map[id.EventID]string{}
	var seen []id.EventID // newest first, as /messages backwards returns
	from := ""
	for page := 0; page < 20; page++ {
		resp, err := guest.Messages(ctx, roomID, from, "", mautrix.DirectionBackward, nil, 10)
		if err != nil {
			t.Fatalf("%s's /messages: %v\n%s", guest.UserID, err, diagnose())
		}
		for _, e := range resp.Chunk {
			if e.Type == event.EventMessage {
				seen = append(seen, e.ID)
				bodies[e.ID] = fmt.Sprint(e.Content.Raw["body"])
			}
		}
		if resp.End == "" {
			break
		}
		from = resp.End
	}
	slices.Reverse(seen)
	if !slices.Equal(seen, early) {
		t.Fatalf("%s's history: %v, want %v\n%s", guest.UserID, seen, early, diagnose())
	}
	for i, eid := range early {
		if want := fmt.Sprintf("early message %d", i); bodies[eid] != want {
			t.Fatalf("%s: body %q, want %q", eid, bodies[eid], want)
		}
	}
}

// ephemeral: typing notifications and read receipts cross both ways.
func (p *pair) ephemeral(t *testing.T, a, b side, tag string) {
	ctx := context.Background()
	r := p.sharedRoom(t, "10", a.register("ehost"+tag), b.register("eguest"+tag), a.server, mautrix.ReqCreateRoom{})
	for _, dir := range []struct {
		from, to *mautrix.Client
		toSync   *syncer
	}{{r.creator, r.joiner, r.js}, {r.joiner, r.creator, r.cs}} {
		if _, err := dir.from.UserTyping(ctx, r.id, true, 20*time.Second); err != nil {
			t.Fatal(err)
		}
		dir.toSync.waitUntil(t, fmt.Sprintf("%s's typing reaches %s", dir.from.UserID, dir.to.UserID), func() *event.Event {
			return find(dir.toSync.ephemeral[r.id], func(e *event.Event) bool {
				ids, _ := e.Content.Raw["user_ids"].([]any)
				return e.Type == event.EphemeralEventTyping && slices.Contains(ids, any(dir.from.UserID.String()))
			})
		}, r.diagnose)
		if _, err := dir.from.UserTyping(ctx, r.id, false, 0); err != nil {
			t.Fatal(err)
		}
	}
	for _, dir := range []struct {
		reader, author *mautrix.Client
		authorSync     *syncer
	}{{r.joiner, r.creator, r.cs}, {r.creator, r.joiner, r.js}} {
		msg := r.send(t, dir.author, "read me, "+dir.reader.UserID.String())
		if err := dir.reader.SendReceipt(ctx, r.id, msg, event.ReceiptTypeRead, nil); err != nil {
			t.Fatal(err)
		}
		dir.authorSync.waitUntil(t, fmt.Sprintf("%s's read receipt reaches %s", dir.reader.UserID, dir.author.UserID), func() *event.Event {
			return find(dir.authorSync.ephemeral[r.id], func(e *event.Event) bool {
				if e.Type != event.EphemeralEventReceipt {
					return false
				}
				byType, _ := e.Content.Raw[msg.String()].(map[string]any)
				users, _ := byType["m.read"].(map[string]any)
				_, ok := users[dir.reader.UserID.String()]
				return ok
			})
		}, r.diagnose)
	}
}

// stateChanges: a new name and a new display name (a member event sent by
// the remote user's server) cross.
func (p *pair) stateChanges(t *testing.T, a, b side, tag string) {
	ctx := context.Background()
	r := p.sharedRoom(t, "11", a.register("shost"+tag), b.register("sguest"+tag), a.server, mautrix.ReqCreateRoom{Name: "before"})
	sent, err := r.creator.SendStateEvent(ctx, r.id, event.StateRoomName, "", map[string]any{"name": "after"})
	if err != nil {
		t.Fatal(err)
	}
	r.js.waitFor(t, r.id, "the new name reaches the guest", isEvent(sent.EventID), r.diagnose)
	var name struct {
		Name string `json:"name"`
	}
	if err := r.joiner.StateEvent(ctx, r.id, event.StateRoomName, "", &name); err != nil || name.Name != "after" {
		t.Fatalf("room name on the guest's server: %q %v", name.Name, err)
	}

	if err := r.joiner.SetDisplayName(ctx, "Renamed "+tag); err != nil {
		t.Fatal(err)
	}
	r.cs.waitFor(t, r.id, "the guest's new display name reaches the host", func(e *event.Event) bool {
		return isMember(r.joiner.UserID, "join")(e) && e.Content.Raw["displayname"] == "Renamed "+tag
	}, r.diagnose)
	r.js.waitFor(t, r.id, "the guest sees its new display name", func(e *event.Event) bool {
		return isMember(r.joiner.UserID, "join")(e) && e.Content.Raw["displayname"] == "Renamed "+tag
	}, r.diagnose)
	r.sameState(t)
}

// kickBan: the host kicks the remote member, who sees it; it joins again,
// is banned, and can no longer join.
func (p *pair) kickBan(t *testing.T, a, b side, tag string) {
	ctx := context.Background()
	r := p.sharedRoom(t, "10", a.register("khost"+tag), b.register("kguest"+tag), a.server, mautrix.ReqCreateRoom{})
	if _, err := r.creator.KickUser(ctx, r.id, &mautrix.ReqKickUser{UserID: r.joiner.UserID, Reason: "out"}); err != nil {
		t.Fatal(err)
	}
	kick := r.js.waitFor(t, r.id, "the kick reaches the guest", isMember(r.joiner.UserID, "leave"), r.diagnose)
	if kick.Sender != r.creator.UserID || kick.Content.Raw["reason"] != "out" {
		t.Fatalf("kick on the guest's server: sender %s content %s", kick.Sender, kick.Content.VeryRaw)
	}
	if _, err := joinVia(ctx, r.joiner, string(r.id), a.server); err != nil {
		t.Fatalf("join after a kick: %v\n%s", err, r.diagnose())
	}
	r.cs.waitFor(t, r.id, "the rejoin reaches the host", func(e *event.Event) bool {
		return isMember(r.joiner.UserID, "join")(e) && e.Timestamp > kick.Timestamp
	}, r.diagnose)
	if _, err := r.creator.BanUser(ctx, r.id, &mautrix.ReqBanUser{UserID: r.joiner.UserID, Reason: "gone"}); err != nil {
		t.Fatal(err)
	}
	r.js.waitFor(t, r.id, "the ban reaches the guest", isMember(r.joiner.UserID, "ban"), r.diagnose)
	if _, err := joinVia(ctx, r.joiner, string(r.id), a.server); err == nil {
		t.Fatalf("a banned user joined again\n%s", r.diagnose())
	}
}

// alias: the remote user joins by the host's alias (a federation directory
// query, then the join through the servers it names).
func (p *pair) alias(t *testing.T, a, b side, tag string) {
	ctx := context.Background()
	host, guest := a.register("ahost"+tag), b.register("aguest"+tag)
	created, err := host.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomAliasName: "interop-" + tag, RoomVersion: "10"})
	if err != nil {
		t.Fatal(err)
	}
	alias := id.NewRoomAlias("interop-"+tag, a.server)
	join, err := guest.JoinRoom(ctx, alias.String(), nil)
	if err != nil {
		t.Fatalf("%s joins %s: %v\n%s", guest.UserID, alias, err, p.diagnose(created.RoomID)())
	}
	if join.RoomID != created.RoomID {
		t.Fatalf("joined %s, want %s", join.RoomID, created.RoomID)
	}
	res, err := guest.ResolveAlias(ctx, alias)
	if err != nil {
		t.Fatalf("%s resolves %s (GET /directory/room): %v\n%s", guest.UserID, alias, err, p.diagnose(created.RoomID)())
	}
	if res.RoomID != created.RoomID || !slices.Contains(res.Servers, a.server) {
		t.Fatalf("%s resolves to %s via %v, want %s via %s", alias, res.RoomID, res.Servers, created.RoomID, a.server)
	}
	hs := newSyncer(host)
	hs.waitFor(t, created.RoomID, "the alias join reaches the host", isMember(guest.UserID, "join"), p.diagnose(created.RoomID))
}

// publicRooms: the remote user lists the host's public room directory.
func (p *pair) publicRooms(t *testing.T, a, b side, tag string) {
	ctx := context.Background()
	host, guest := a.register("phost"+tag), b.register("pguest"+tag)
	created, err := host.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Visibility: "public",
		Name: "listed " + tag, Topic: "a topic " + tag, RoomVersion: "11"})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := guest.PublicRooms(ctx, &mautrix.ReqPublicRooms{Server: a.server, Limit: 50})
	if err != nil {
		t.Fatalf("%s lists %s's public rooms: %v", guest.UserID, a.server, err)
	}
	found := false
	for _, pr := range resp.Chunk {
		if pr.RoomID == created.RoomID {
			if pr.Name != "listed "+tag || pr.Topic != "a topic "+tag || pr.NumJoinedMembers != 1 || !pr.WorldReadable && pr.GuestCanJoin {
				t.Fatalf("public room entry: %+v", pr)
			}
			found = true
		}
	}
	if !found {
		t.Fatalf("%s's public rooms as %s sees them lack %s: %+v", a.server, guest.UserID, created.RoomID, resp.Chunk)
	}
	// A search (POST with a filter) goes to the remote directory too.
	var search struct {
		Chunk []struct {
			RoomID id.RoomID `json:"room_id"`
		} `json:"chunk"`
	}
	u := guest.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "publicRooms"}, map[string]string{"server": a.server})
	if _, err := guest.MakeRequest(ctx, http.MethodPost, u, map[string]any{"limit": 10,
		"filter": map[string]any{"generic_search_term": "listed " + tag}}, &search); err != nil {
		t.Fatalf("%s searches %s's public rooms: %v", guest.UserID, a.server, err)
	}
	if len(search.Chunk) != 1 || search.Chunk[0].RoomID != created.RoomID {
		t.Fatalf("%s searches %s's public rooms for %q: %+v, want only %s", guest.UserID, a.server, "listed "+tag, search.Chunk, created.RoomID)
	}
}

// redaction: in a room of version v, the host redacts the guest's message
// and the guest its own; each redaction reaches the other server, which
// then serves the target redacted. Dendrite v0.13.8 reads only a
// redaction's top-level "redacts" (gomatrixserverlib's eventV1.Redacts),
// which room version 11 moved into content; shoal writes both, as
// Dendrite does, so v11 redactions from shoal take effect there too.
func (p *pair) redaction(t *testing.T, v id.RoomVersion, a, b side, tag string) {
	r := p.sharedRoom(t, v, a.register("rhost"+tag), b.register("rguest"+tag), a.server, mautrix.ReqCreateRoom{})
	steps := []struct {
		who            string
		redactor       *mautrix.Client
		redactorSide   side
		author         *mautrix.Client
		observer       *mautrix.Client
		observerSync   *syncer
		observerServer side
	}{
		{"the host redacts the guest's message", r.creator, a, r.joiner, r.joiner, r.js, b},
		{"the guest redacts its own message", r.joiner, b, r.joiner, r.creator, r.cs, a},
	}
	// Dendrite's redactions first: the skipped step, if any, comes last.
	if b.name == "Dendrite" {
		steps[0], steps[1] = steps[1], steps[0]
	}
	for _, st := range steps {
		p.redactStep(t, r, st.who, st.redactor, st.author, st.observer, st.observerSync)
	}
}

func (p *pair) redactStep(t *testing.T, r *room, who string, redactor, author, observer *mautrix.Client, observerSync *syncer) {
	ctx := context.Background()
	msg := r.send(t, author, "regrettable: "+who)
	red, err := redactor.RedactEvent(ctx, r.id, msg, mautrix.ReqRedact{Reason: "oops"})
	if err != nil {
		t.Fatalf("%s: %v", who, err)
	}
	got := observerSync.waitFor(t, r.id, who+": the redaction reaches the other server", isEvent(red.EventID), r.diagnose)
	redacts := got.Redacts.String()
	if redacts == "" {
		redacts = fmt.Sprint(got.Content.Raw["redacts"])
	}
	if got.Type != event.EventRedaction || redacts != msg.String() || got.Sender != redactor.UserID || got.Content.Raw["reason"] != "oops" {
		t.Fatalf("%s: redaction on the other server: %s redacts %s from %s, content %s", who, got.Type.Type, redacts, got.Sender, got.Content.VeryRaw)
	}
	ev, err := observer.GetEvent(ctx, r.id, msg)
	if err != nil {
		t.Fatalf("%s: the other server reads the redacted event: %v", who, err)
	}
	if len(ev.Content.Raw) != 0 {
		t.Fatalf("%s: the redacted event on the other server still has content %s", who, ev.Content.VeryRaw)
	}
}

// restricted: a room of a whose join rule admits members of another room
// (v10 "restricted"): a user of b who is in that room joins, authorised by
// a's server (join_authorised_via_users_server names a's user); one who
// is not is refused.
func (p *pair) restricted(t *testing.T, a, b side, tag string) {
	ctx := context.Background()
	host := a.register("xhost" + tag)
	outer, err := host.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "10", Name: "outer " + tag})
	if err != nil {
		t.Fatal(err)
	}
	inner, err := host.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "10", Name: "inner " + tag,
		InitialState: []*event.Event{{Type: event.StateJoinRules, StateKey: new(string), Content: event.Content{Raw: map[string]any{
			"join_rule": "restricted", "allow": []any{map[string]any{"type": "m.room_membership", "room_id": outer.RoomID}}}}}}})
	if err != nil {
		t.Fatal(err)
	}
	diagnose := p.diagnose(inner.RoomID)
	member, stranger := b.register("xmember"+tag), b.register("xstranger"+tag)
	if _, err := joinVia(ctx, member, string(outer.RoomID), a.server); err != nil {
		t.Fatalf("%s joins the outer room: %v\n%s", member.UserID, err, p.diagnose(outer.RoomID)())
	}
	hs := newSyncer(host)
	hs.waitFor(t, outer.RoomID, "the outer join reaches the host", isMember(member.UserID, "join"), p.diagnose(outer.RoomID))
	if _, err := joinVia(ctx, member, string(inner.RoomID), a.server); err != nil {
		t.Fatalf("%s joins the restricted room: %v\n%s", member.UserID, err, diagnose())
	}
	join := hs.waitFor(t, inner.RoomID, "the restricted join reaches the host", isMember(member.UserID, "join"), diagnose)
	if via := join.Content.Raw["join_authorised_via_users_server"]; via != host.UserID.String() {
		t.Fatalf("restricted join authorised via %v, want %s (content %s)", via, host.UserID, join.Content.VeryRaw)
	}
	if _, err := joinVia(ctx, stranger, string(inner.RoomID), a.server); err == nil {
		t.Fatalf("%s, in no allowed room, joined the restricted room\n%s", stranger.UserID, diagnose())
	}
	members, err := host.JoinedMembers(ctx, inner.RoomID)
	if err != nil || len(members.Joined) != 2 {
		t.Fatalf("restricted room's members on the host: %v %v", members, err)
	}
}

// presence: users sharing a room see each other's presence and status
// message (m.presence EDUs both ways; Dendrite's presence is switched on
// for this).
func (p *pair) presence(t *testing.T, a, b side, tag string) {
	ctx := context.Background()
	r := p.sharedRoom(t, "10", a.register("prhost"+tag), b.register("prguest"+tag), a.server, mautrix.ReqCreateRoom{})
	for _, dir := range []struct {
		from   *mautrix.Client
		toSync *syncer
	}{{r.creator, r.js}, {r.joiner, r.cs}} {
		status := "busy interop-testing " + tag
		if err := dir.from.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceUnavailable, StatusMsg: status}); err != nil {
			t.Fatal(err)
		}
		got := dir.toSync.waitUntil(t, fmt.Sprintf("%s's presence reaches %s", dir.from.UserID, dir.toSync.cli.UserID), func() *event.Event {
			return find(dir.toSync.presence, func(e *event.Event) bool {
				return e.Sender == dir.from.UserID && e.Content.Raw["status_msg"] == status
			})
		}, r.diagnose)
		if got.Content.Raw["presence"] != "unavailable" {
			t.Fatalf("%s's presence as %s sees it: %s", dir.from.UserID, dir.toSync.cli.UserID, got.Content.VeryRaw)
		}
	}
}

// downtime: each server in turn is stopped while the other's user sends
// into a shared room, then started again on the same data: the sender's
// queue must keep the events and deliver them once the peer is back
// (shoal's outbound queue, persisted and retried with backoff; Dendrite's
// likewise), and traffic flows both ways afterwards.
func (p *pair) downtime(t *testing.T) {
	sh, den := p.sides()
	r := p.sharedRoom(t, "10", den.register("dthost"), sh.register("dtguest"), den.server, mautrix.ReqCreateRoom{})
	ctx := context.Background()
	sendAll := func(from *mautrix.Client, bodies ...string) []id.EventID {
		var ids []id.EventID
		for _, b := range bodies {
			sent, err := from.SendText(ctx, r.id, b)
			if err != nil {
				t.Fatalf("%s sends %q: %v", from.UserID, b, err)
			}
			ids = append(ids, sent.EventID)
		}
		return ids
	}

	p.den.Stop(t)
	queued := sendAll(r.joiner, "sent while Dendrite is down 1", "sent while Dendrite is down 2")
	p.den.launch(t)
	p.den.waitReady(t)
	for i, eid := range queued {
		got := r.cs.waitFor(t, r.id, "a message queued for the stopped Dendrite arrives", isEvent(eid), r.diagnose)
		checkMessage(t, "Dendrite's copy", got, r.id, eid, r.joiner.UserID, fmt.Sprintf("sent while Dendrite is down %d", i+1))
	}

	p.shoal.Stop()
	queued = sendAll(r.creator, "sent while shoal is down 1", "sent while shoal is down 2")
	p.shoal.Restart()
	js := newSyncer(r.joiner) // a fresh initial sync after the restart
	for i, eid := range queued {
		got := js.waitFor(t, r.id, "a message queued for the stopped shoal arrives", isEvent(eid), r.diagnose)
		checkMessage(t, "shoal's copy", got, r.id, eid, r.creator.UserID, fmt.Sprintf("sent while shoal is down %d", i+1))
	}
	r.js = js
	r.send(t, r.creator, "all good?")
	r.send(t, r.joiner, "all good")
}

// upgrade: the host upgrades a shared v10 room to v11; the guest sees the
// tombstone, joins the replacement room through the host, and finds its
// predecessor there; the room's alias has moved to the new room.
func (p *pair) upgrade(t *testing.T, a, b side, tag string) {
	ctx := context.Background()
	r := p.sharedRoom(t, "10", a.register("uhost"+tag), b.register("uguest"+tag), a.server,
		mautrix.ReqCreateRoom{Name: "old " + tag, RoomAliasName: "upgrade-" + tag})
	var up struct {
		ReplacementRoom id.RoomID `json:"replacement_room"`
	}
	if _, err := r.creator.MakeRequest(ctx, http.MethodPost, r.creator.BuildClientURL("v3", "rooms", r.id, "upgrade"),
		map[string]any{"new_version": "11"}, &up); err != nil {
		t.Fatalf("%s upgrades the room: %v\n%s", r.creator.UserID, err, r.diagnose())
	}
	tomb := r.js.waitFor(t, r.id, "the tombstone reaches the guest", func(e *event.Event) bool {
		return e.Type == event.StateTombstone
	}, r.diagnose)
	if tomb.Content.Raw["replacement_room"] != up.ReplacementRoom.String() || tomb.Sender != r.creator.UserID {
		t.Fatalf("tombstone on the guest's server: from %s %s, want replacement %s", tomb.Sender, tomb.Content.VeryRaw, up.ReplacementRoom)
	}
	if _, err := joinVia(ctx, r.joiner, string(up.ReplacementRoom), a.server); err != nil {
		t.Fatalf("%s joins the replacement room: %v\n%s", r.joiner.UserID, err, p.diagnose(up.ReplacementRoom)())
	}
	next := &room{id: up.ReplacementRoom, creator: r.creator, joiner: r.joiner, cs: newSyncer(r.creator), js: newSyncer(r.joiner),
		diagnose: p.diagnose(up.ReplacementRoom)}
	next.cs.waitFor(t, next.id, "the join of the replacement room reaches the host", isMember(r.joiner.UserID, "join"), next.diagnose)
	next.checkJoinerState(t, "11")
	var create map[string]any
	if err := r.joiner.StateEvent(ctx, next.id, event.StateCreate, "", &create); err != nil {
		t.Fatal(err)
	}
	pred, _ := create["predecessor"].(map[string]any)
	if pred["room_id"] != r.id.String() {
		t.Fatalf("replacement room's m.room.create on the guest's server: predecessor %v, want %s", create["predecessor"], r.id)
	}
	next.send(t, r.joiner, "made it to the new room")
	next.sameState(t)
	alias := id.NewRoomAlias("upgrade-"+tag, a.server)
	if res, err := r.creator.ResolveAlias(ctx, alias); err != nil || res.RoomID != next.id {
		t.Fatalf("%s after the upgrade: %+v %v, want %s", alias, res, err, next.id)
	}
}

// serverACL: the shoal host denies the Dendrite guest's server with
// m.room.server_acl (Dendrite is "localhost:<port>", shoal "127.0.0.1:<port>":
// the ACL matches the host part). Afterwards the guest's messages (PDUs)
// and typing (EDUs, MSC4163) must no longer reach the room on shoal, while
// the host's own messages still flow. Only shoal's side is shoal's code,
// so only this direction is tested.
func (p *pair) serverACL(t *testing.T) {
	ctx := context.Background()
	sh, den := p.sides()
	r := p.sharedRoom(t, "10", sh.register("aclhost"), den.register("aclguest"), sh.server, mautrix.ReqCreateRoom{})
	r.send(t, r.joiner, "before the ACL")
	acl, err := r.creator.SendStateEvent(ctx, r.id, event.StateServerACL, "", map[string]any{
		"allow": []string{"*"}, "deny": []string{"localhost"}, "allow_ip_literals": true})
	if err != nil {
		t.Fatalf("%s sets the ACL: %v", r.creator.UserID, err)
	}
	r.js.waitFor(t, r.id, "the ACL reaches the denied server", isEvent(acl.EventID), r.diagnose)
	denied, err := r.joiner.SendText(ctx, r.id, "after the ACL")
	if err != nil {
		t.Fatalf("%s sends (on its own server): %v", r.joiner.UserID, err)
	}
	if _, err := r.joiner.UserTyping(ctx, r.id, true, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	// The denied server's transactions go out before the host's message
	// below is even made; once the host sees its own message, and some
	// more time has passed, whatever shoal accepted would be in /sync.
	after := r.send(t, r.creator, "the host after the ACL")
	r.cs.waitFor(t, r.id, "the host sees its own message", isEvent(after), r.diagnose)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if err := r.cs.poll(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if e := find(r.cs.events[r.id], isEvent(denied.EventID)); e != nil {
		t.Fatalf("shoal accepted %s from the server its ACL denies: %s\n%s", denied.EventID, e.Content.VeryRaw, r.diagnose())
	}
	if e := find(r.cs.ephemeral[r.id], func(e *event.Event) bool {
		ids, _ := e.Content.Raw["user_ids"].([]any)
		return e.Type == event.EphemeralEventTyping && slices.Contains(ids, any(r.joiner.UserID.String()))
	}); e != nil {
		t.Fatalf("shoal shows typing from the server its ACL denies: %s", e.Content.VeryRaw)
	}
}

// hierarchy: a space of a lists a child room; a user of b, joined to the
// space only, walks the space through its own server (/hierarchy), which
// must ask a's server about the child it does not hold (federation
// hierarchy).
func (p *pair) hierarchy(t *testing.T, a, b side, tag string) {
	ctx := context.Background()
	host, guest := a.register("yhost"+tag), b.register("yguest"+tag)
	child, err := host.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "10", Name: "child " + tag, Topic: "the child"})
	if err != nil {
		t.Fatal(err)
	}
	space, err := host.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "10", Name: "space " + tag,
		CreationContent: map[string]any{"type": "m.space"},
		InitialState: []*event.Event{{Type: event.StateSpaceChild, StateKey: ptr(child.RoomID.String()),
			Content: event.Content{Raw: map[string]any{"via": []string{a.server}}}}}})
	if err != nil {
		t.Fatal(err)
	}
	diagnose := p.diagnose(space.RoomID)
	if _, err := joinVia(ctx, guest, string(space.RoomID), a.server); err != nil {
		t.Fatalf("%s joins the space: %v\n%s", guest.UserID, err, diagnose())
	}
	var h struct {
		Rooms []struct {
			RoomID        id.RoomID         `json:"room_id"`
			Name          string            `json:"name"`
			Topic         string            `json:"topic"`
			RoomType      string            `json:"room_type"`
			NumJoined     int               `json:"num_joined_members"`
			ChildrenState []json.RawMessage `json:"children_state"`
		} `json:"rooms"`
	}
	if _, err := guest.MakeRequest(ctx, http.MethodGet, guest.BuildURL(mautrix.ClientURLPath{"v1", "rooms", space.RoomID, "hierarchy"}), nil, &h); err != nil {
		t.Fatalf("%s walks the space: %v\n%s", guest.UserID, err, diagnose())
	}
	if len(h.Rooms) != 2 || h.Rooms[0].RoomID != space.RoomID || h.Rooms[0].RoomType != "m.space" || len(h.Rooms[0].ChildrenState) != 1 ||
		h.Rooms[1].RoomID != child.RoomID || h.Rooms[1].Name != "child "+tag || h.Rooms[1].Topic != "the child" || h.Rooms[1].NumJoined != 1 {
		t.Fatalf("%s's view of the space: %+v\n%s", guest.UserID, h.Rooms, diagnose())
	}
}

func ptr[T any](v T) *T { return &v }

// threeServers: a second shoal node joins Dendrite's room through the
// first shoal node (which must answer make_join/send_join for a room it
// did not create, and pass the join on to Dendrite); then each of the
// three users' messages reaches the two other servers, and all three
// agree on the room's state.
func (p *pair) threeServers(t *testing.T) {
	ctx := context.Background()
	second := startShoal(t, p.ca, p.shoalLog+".second")
	sh, den := p.sides()
	r := p.sharedRoom(t, "11", den.register("trihost"), sh.register("trione"), den.server, mautrix.ReqCreateRoom{})
	two := second.Register("tritwo")
	diagnose := func() string {
		return r.diagnose() + "\nthe second shoal node's log about the room:\n" + tail(fileGrep(p.shoalLog+".second", string(r.id)), 3000)
	}
	if _, err := joinVia(ctx, two, string(r.id), p.shoal.ServerName()); err != nil {
		t.Fatalf("%s joins through %s: %v\n%s", two.UserID, p.shoal.ServerName(), err, diagnose())
	}
	ts := newSyncer(two)
	for _, s := range []*syncer{r.cs, r.js, ts} {
		s.waitFor(t, r.id, "the third server's join reaches "+s.cli.UserID.String(), isMember(two.UserID, "join"), diagnose)
	}
	users := []struct {
		cli *mautrix.Client
		s   *syncer
	}{{r.creator, r.cs}, {r.joiner, r.js}, {two, ts}}
	for i, from := range users {
		body := fmt.Sprintf("message %d of three", i)
		sent, err := from.cli.SendText(ctx, r.id, body)
		if err != nil {
			t.Fatal(err)
		}
		for j, to := range users {
			if j == i {
				continue
			}
			got := to.s.waitFor(t, r.id, fmt.Sprintf("%s's message reaches %s", from.cli.UserID, to.cli.UserID), isEvent(sent.EventID), diagnose)
			checkMessage(t, to.cli.UserID.String()+"'s copy", got, r.id, sent.EventID, from.cli.UserID, body)
		}
	}
	want := stateIDs(t, r.creator, r.id)
	for _, u := range users[1:] {
		if got := stateIDs(t, u.cli, r.id); !maps.Equal(got, want) {
			t.Fatalf("%s's server disagrees on the state:\n%v\nDendrite's:\n%v", u.cli.UserID, got, want)
		}
	}
}

// trickyContent: events whose content stresses canonical JSON (escapes,
// non-ASCII, control characters, the integer bounds, nesting, empty and
// null values) and a state event with an unusual state key are signed by
// one server and verified by the other (a content hash or signature
// mismatch gets them refused), and arrive with the content unchanged.
func (p *pair) trickyContent(t *testing.T, a, b side, tag string) {
	ctx := context.Background()
	r := p.sharedRoom(t, "11", a.register("jhost"+tag), b.register("jguest"+tag), a.server, mautrix.ReqCreateRoom{})
	content := map[string]any{
		"body":    "h\u00e9llo \U0001F41F \u2028 \u0007 \" \\ / \t <&>",
		"msgtype": "m.text",
		"big":     int64(9007199254740991),
		"small":   int64(-9007199254740991),
		"zero":    0,
		"nested":  map[string]any{"b": []any{1, "two", map[string]any{"z": nil, "": "empty key"}}, "a": true, "\u00e9": false},
		"empty":   map[string]any{},
		"list":    []any{},
	}
	want, _ := json.Marshal(content)
	for _, dir := range []struct {
		from *mautrix.Client
		to   *syncer
	}{{r.creator, r.js}, {r.joiner, r.cs}} {
		sent, err := dir.from.SendMessageEvent(ctx, r.id, event.Type{Type: "org.shoal.interop.tricky", Class: event.MessageEventType}, content)
		if err != nil {
			t.Fatal(err)
		}
		got := dir.to.waitFor(t, r.id, fmt.Sprintf("%s's tricky event reaches %s", dir.from.UserID, dir.to.cli.UserID), isEvent(sent.EventID), r.diagnose)
		gotJSON, _ := json.Marshal(got.Content.Raw) // re-encoded: key order and number form normalised
		if string(gotJSON) != string(want) {
			t.Fatalf("content on %s's server:\n%s\nwant\n%s", dir.to.cli.UserID, gotJSON, want)
		}
		stateKey := "k\u00e9y/with spaces:and@odd \U0001F41F " + tag + dir.from.UserID.Localpart()
		st, err := dir.from.SendStateEvent(ctx, r.id, event.Type{Type: "org.shoal.interop.state", Class: event.StateEventType}, stateKey,
			map[string]any{"v": stateKey})
		if err != nil {
			// Only the host may send state (state_default 50); the guest's
			// refusal is its own server's, not a federation matter.
			if dir.from == r.joiner {
				continue
			}
			t.Fatal(err)
		}
		gotSt := dir.to.waitFor(t, r.id, "the state event with an odd state key", isEvent(st.EventID), r.diagnose)
		if gotSt.StateKey == nil || *gotSt.StateKey != stateKey || gotSt.Content.Raw["v"] != stateKey {
			t.Fatalf("state event on %s's server: key %v content %s", dir.to.cli.UserID, gotSt.StateKey, gotSt.Content.VeryRaw)
		}
	}
	r.sameState(t)
}

// relations: the guest answers the host's message in a thread and edits
// its answer; the host's server relates them (/relations) to the events
// they point at.
func (p *pair) relations(t *testing.T, a, b side, tag string) {
	ctx := context.Background()
	r := p.sharedRoom(t, "10", a.register("vhost"+tag), b.register("vguest"+tag), a.server, mautrix.ReqCreateRoom{})
	root := r.send(t, r.creator, "thread root")
	reply, err := r.joiner.SendMessageEvent(ctx, r.id, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "in the thread",
		"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}})
	if err != nil {
		t.Fatal(err)
	}
	edit, err := r.joiner.SendMessageEvent(ctx, r.id, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "* in the thread, edited",
		"m.new_content": map[string]any{"msgtype": "m.text", "body": "in the thread, edited"},
		"m.relates_to":  map[string]any{"rel_type": "m.replace", "event_id": reply.EventID}})
	if err != nil {
		t.Fatal(err)
	}
	r.cs.waitFor(t, r.id, "the edit reaches the host", isEvent(edit.EventID), r.diagnose)
	for _, q := range []struct {
		target  id.EventID
		relType string
		want    id.EventID
	}{{root, "m.thread", reply.EventID}, {reply.EventID, "m.replace", edit.EventID}} {
		var rel struct {
			Chunk []struct {
				EventID id.EventID `json:"event_id"`
			} `json:"chunk"`
		}
		if _, err := r.creator.MakeRequest(ctx, http.MethodGet, r.creator.BuildURL(mautrix.ClientURLPath{"v1", "rooms", r.id, "relations", q.target, q.relType}), nil, &rel); err != nil {
			t.Fatalf("%s's /relations of %s (%s): %v", r.creator.UserID, q.target, q.relType, err)
		}
		if len(rel.Chunk) != 1 || rel.Chunk[0].EventID != q.want {
			t.Fatalf("%s's /relations of %s (%s): %+v, want %s", r.creator.UserID, q.target, q.relType, rel.Chunk, q.want)
		}
	}
}
