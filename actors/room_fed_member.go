package actors

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/storage"
)

// Membership over federation, the room's side: templates for make_join,
// make_leave and make_knock; accepting the signed event of send_join,
// send_leave and send_knock; starting the room here from a send_join answer
// (a local user joined a remote room); building invites of remote users;
// and remembering invites and knocks of local users in rooms this server is
// not in ("outsider" memberships).

// outsiderMembership is a local user's membership in a room this server is
// not in, as /sync shows it.
type outsiderMembership struct {
	Membership string          `json:"membership"`
	EventID    string          `json:"event_id"`
	Event      json.RawMessage `json:"event"`
	Stripped   json.RawMessage `json:"stripped"`
	Pos        uint64          `json:"pos"`
}

// strippedTypes are the state events shown to invitees and knockers.
var strippedTypes = []string{eventgraph.TypeCreate, eventgraph.TypeJoinRules, "m.room.name", "m.room.avatar",
	"m.room.canonical_alias", "m.room.encryption", "m.room.topic"}

// strippedPDUs lists the stripped state events as full PDUs, as federation
// sends them (MSC4311).
func (r *roomActor) strippedPDUs() json.RawMessage {
	var out []json.RawMessage
	for _, t := range strippedTypes {
		if ev := r.stateEvent(t, ""); ev != nil {
			out = append(out, ev.CanonicalPDU())
		}
	}
	raw, _ := json.Marshal(out)
	return raw
}

// makeMembership builds the template of make_join, make_leave or make_knock.
func (r *roomActor) makeMembership(m *pb.RoomMakeMembership) (*pb.RoomMakeMembershipReply, error) {
	if err := r.fedCheckOrigin(m.Origin); err != nil {
		return nil, err
	}
	if serverOf(m.UserId) != m.Origin {
		return nil, ErrForbidden("user %s does not belong to %s", m.UserId, m.Origin)
	}
	if m.Membership == eventgraph.MembershipJoin || m.Membership == eventgraph.MembershipKnock {
		versions := m.Versions
		if len(versions) == 0 {
			versions = []string{"1"}
		}
		if !containsStr(versions, string(r.rv.ID)) {
			return nil, r.incompatibleVersion()
		}
	}
	extra := map[string]json.RawMessage{}
	switch m.Membership {
	case eventgraph.MembershipJoin:
		if m.RestrictedVia != "" {
			if err := r.authoriseRestrictedJoin(&pb.Membership{RestrictedVia: m.RestrictedVia}, r.members[m.UserId], extra); err != nil {
				return nil, err
			}
		}
	case eventgraph.MembershipKnock:
		if !r.rv.Knock {
			return nil, ErrForbidden("room version %s does not support knocking", r.rv.ID)
		}
	case eventgraph.MembershipLeave:
	default:
		return nil, ErrInvalidParam("unknown membership %q", m.Membership)
	}
	content, err := memberContent(m.Membership, nil, "", false, extra)
	if err != nil {
		return nil, err
	}
	b := r.newBatch()
	ev, err := b.add(eventDraft{Type: eventgraph.TypeMember, StateKey: strPtr(m.UserId), Sender: m.UserId, Content: content}, "", "")
	if err != nil {
		return nil, err
	}
	tmpl, err := templateJSON(ev)
	if err != nil {
		return nil, fmt.Errorf("room %s: template: %w", r.roomID, err)
	}
	return &pb.RoomMakeMembershipReply{RoomVersion: string(r.rv.ID), Event: tmpl}, nil
}

// sendMembership accepts the signed event of send_join, send_leave or
// send_knock.
func (r *roomActor) sendMembership(m *pb.RoomSendMembership) (*pb.RoomSendMembershipReply, error) {
	if err := r.fedCheckOrigin(m.Origin); err != nil {
		return nil, err
	}
	ev, err := eventgraph.ParseEvent(m.Pdu, r.rv)
	if err != nil {
		return nil, ErrBadJSON("invalid event: %v", err)
	}
	mem, _ := ev.Membership()
	switch {
	case ev.RoomID() != r.roomID:
		return nil, ErrBadJSON("event is for another room")
	case ev.Type() != eventgraph.TypeMember || !ev.StateKeyEquals(ev.Sender()):
		return nil, ErrBadJSON("not a membership event of its sender")
	case serverOf(ev.Sender()) != m.Origin:
		return nil, ErrForbidden("the sender does not belong to %s", m.Origin)
	case mem != m.Membership:
		return nil, ErrBadJSON("membership is %q, not %q", mem, m.Membership)
	}
	rep := &pb.RoomSendMembershipReply{RoomVersion: string(r.rv.ID)}
	if mem == eventgraph.MembershipJoin {
		var c struct {
			Via string `json:"join_authorised_via_users_server"`
		}
		_ = json.Unmarshal(ev.Content(), &c)
		if c.Via != "" && r.isLocal(c.Via) && r.rv.Restricted {
			signed, err := eventgraph.SignEvent(ev.CanonicalPDU(), r.rv, r.env.Server.ServerName, r.env.Server.KeyID, r.env.Server.PrivateKey)
			if err != nil {
				return nil, fmt.Errorf("room %s: sign restricted join: %w", r.roomID, err)
			}
			if ev, err = eventgraph.ParseEvent(signed, r.rv); err != nil {
				return nil, fmt.Errorf("room %s: parse signed join: %w", r.roomID, err)
			}
			rep.Event = ev.CanonicalPDU()
		}
	}
	b := r.newBatch()
	var res string
	err = r.env.Partition.View(func(tx *bbolt.Tx) error {
		rt := storage.Room(tx, r.env.Identity)
		b.rt = &rt
		defer func() { b.rt = nil }()
		var err error
		res, err = b.place(ev, nil, ingestOptions{origin: m.Origin, noSoftFail: true}, map[string]bool{}, map[string]bool{})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("room %s: send_%s: %w", r.roomID, m.Membership, err)
	}
	if res != "" {
		return nil, ErrForbidden("%s", res)
	}
	b.forwardFrom = m.Origin
	if err := b.commit(); err != nil {
		return nil, err
	}
	switch mem {
	case eventgraph.MembershipJoin:
		rep.ServersInRoom = r.joinedServers()
		err = r.env.Partition.View(func(tx *bbolt.Tx) error {
			rt := storage.Room(tx, r.env.Identity)
			b := r.newBatch()
			b.rt = &rt
			read := &pb.RoomFedReadReply{}
			if err := r.readStateAt(b, ev.EventID(), false, read); err != nil {
				return err
			}
			rep.State, rep.AuthChain = read.Pdus, read.AuthChain
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("room %s: state for send_join: %w", r.roomID, err)
		}
	case eventgraph.MembershipKnock:
		rep.KnockRoomState = r.strippedPDUs()
	}
	return rep, nil
}

// prepareMembership builds (without committing) a local user's invite of a
// remote user, for the invitee's server to counter-sign.
func (r *roomActor) prepareMembership(m *pb.RoomPrepareMembership) (*pb.RoomPrepareMembershipReply, error) {
	if !r.exists {
		return nil, ErrForbidden("user %s is not in room %s", m.Sender, r.roomID)
	}
	if m.Membership != eventgraph.MembershipInvite {
		return nil, ErrInvalidParam("only invites are prepared")
	}
	if m.Sender == m.Target {
		return nil, ErrForbidden("cannot invite yourself")
	}
	if !r.aclAllows(serverOf(m.Target)) {
		return nil, errACLDenied(serverOf(m.Target))
	}
	extra := map[string]json.RawMessage{}
	if len(m.ExtraContent) > 0 {
		if err := json.Unmarshal(m.ExtraContent, &extra); err != nil {
			return nil, ErrBadJSON("extra member content must be a JSON object")
		}
		for k := range extra {
			if membershipExtraDenied[k] {
				delete(extra, k)
			}
		}
	}
	content, err := memberContent(eventgraph.MembershipInvite, nil, m.Reason, m.IsDirect, extra)
	if err != nil {
		return nil, err
	}
	b := r.newBatch()
	ev, err := b.add(eventDraft{Type: eventgraph.TypeMember, StateKey: strPtr(m.Target), Sender: m.Sender, Content: content}, "", "")
	if err != nil {
		return nil, err
	}
	return &pb.RoomPrepareMembershipReply{RoomVersion: string(r.rv.ID), Pdu: ev.CanonicalPDU(),
		InviteRoomState: r.strippedPDUs(), CreateEvent: r.create.CanonicalPDU()}, nil
}

// fedJoin starts (or rejoins) the room from a remote server's send_join
// answer.
func (r *roomActor) fedJoin(m *pb.RoomFedJoin) (*pb.SendEventReply, error) {
	if r.exists {
		return r.rejoin(m)
	}
	rv, ok := eventgraph.GetRoomVersion(eventgraph.RoomVersionID(m.RoomVersion))
	if !ok {
		return nil, Errorf(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "unsupported room version %q", m.RoomVersion)
	}
	if len(m.State)+len(m.AuthChain) > maxJoinStateEvents {
		return nil, ErrInvalidParam("the room's state is too large")
	}
	join, err := eventgraph.ParseEvent(m.JoinEvent, rv)
	if err != nil {
		return nil, ErrBadJSON("join event: %v", err)
	}
	if join.RoomID() != r.roomID || join.Type() != eventgraph.TypeMember || !r.isLocal(join.Sender()) {
		return nil, ErrBadJSON("not a local user's join of this room")
	}
	var state, all []*eventgraph.Event
	var create *eventgraph.Event
	for i, raw := range append(append([][]byte{}, m.State...), m.AuthChain...) {
		ev, err := eventgraph.ParseEvent(raw, rv)
		if err != nil {
			return nil, ErrBadJSON("send_join answer: %v", err)
		}
		if ev.RoomID() != r.roomID {
			return nil, ErrBadJSON("send_join answer has an event of another room")
		}
		if i < len(m.State) {
			if !ev.IsState() {
				return nil, ErrBadJSON("send_join state has a non-state event")
			}
			state = append(state, ev)
		}
		if ev.Type() == eventgraph.TypeCreate && ev.StateKeyEquals("") {
			create = ev
		}
		all = append(all, ev)
	}
	if create == nil {
		return nil, ErrBadJSON("send_join answer has no create event")
	}
	if rv.RoomIDFromCreateEvent {
		if rid, err := eventgraph.RoomIDFromCreateEventID(create.EventID()); err != nil || rid != r.roomID {
			return nil, ErrBadJSON("the create event does not match the room ID")
		}
	}
	// The room takes its version and create event from the answer; both are
	// undone unless the join commits.
	prevMeta, prevRV := r.meta, r.rv
	r.rv = rv
	// The timeline starts above room for history fetched later with
	// /backfill (and above the positions of an invite shown before).
	base := max(prevMeta.Pos, backfillRoom)
	r.meta = storage.RoomMeta{Version: string(rv.ID), CreateID: create.EventID(), NextGroup: 1,
		Pos: base, TimelineBase: base, BackfillNext: base}
	defer func() {
		if !r.exists {
			r.meta, r.rv = prevMeta, prevRV
		}
	}()
	b := r.newBatch()
	var pos uint64
	err = r.env.Partition.View(func(tx *bbolt.Tx) error {
		rt := storage.Room(tx, r.env.Identity)
		b.rt = &rt
		defer func() { b.rt = nil }()
		missing := map[string]bool{}
		if err := b.storeOutliers(all, missing); err != nil {
			return err
		}
		if len(missing) > 0 {
			return ErrBadJSON("send_join answer lacks %d auth events", len(missing))
		}
		st := eventgraph.StateMap{}
		for _, ev := range state {
			if !b.rejected(ev.EventID()) {
				st[ev.StateTuple()] = ev.EventID()
			}
		}
		if reason, missingAuth, err := b.checkOwnAuth(join); err != nil {
			return err
		} else if len(missingAuth) > 0 || reason != "" {
			return ErrForbidden("the join does not pass its auth events: %s", reason)
		}
		if err := eventgraph.AllowedByState(join, st, b.lookup); err != nil {
			return ErrForbidden("the join does not pass the room's state: %v", err)
		}
		beforeGroup, err := b.newGroupFrom(0, st)
		if err != nil {
			return err
		}
		after := make(eventgraph.StateMap, len(st)+1)
		for k, v := range st {
			after[k] = v
		}
		after[join.StateTuple()] = join.EventID()
		joinGroup, err := b.newGroupFrom(beforeGroup, after)
		if err != nil {
			return err
		}
		// The whole state becomes current; only the join is a change at its
		// position, so /sync shows the state before it as the room's state.
		for k, v := range st {
			b.setState(k, v, 0)
		}
		b.pos++
		pos = b.pos
		k := join.StateTuple()
		pe := &pendingEvent{ev: join, rec: storage.RoomEvent{PDU: join.CanonicalPDU(), Pos: b.pos, StateGroup: joinGroup,
			ReplacesState: st[k]}}
		pe.deltas = []storage.RoomStateDelta{{Type: k.Type, StateKey: k.StateKey, Prev: st[k], New: join.EventID()}}
		b.setState(k, join.EventID(), b.pos)
		b.added[join.EventID()] = join
		b.events = append(b.events, pe)
		b.extrem = []string{join.EventID()}
		b.depth = join.Depth()
		b.group, b.groupChain = joinGroup, b.groupChainOf(joinGroup)
		return nil
	})
	if err != nil {
		return nil, err
	}
	b.noFederate, b.bootstrap = true, true
	if err := b.commitJoined(join.Sender()); err != nil {
		return nil, err
	}
	return &pb.SendEventReply{EventId: join.EventID(), Pos: pos}, nil
}

// backfillRoom is how many history events a room joined over federation
// can place below its first event.
const backfillRoom = 1 << 16

// maxJoinStateEvents bounds the state and auth chain of a send_join answer.
const maxJoinStateEvents = 200000

// rejoin handles RoomFedJoin for a room this server already has: the join
// is placed with the state the answer gave.
func (r *roomActor) rejoin(m *pb.RoomFedJoin) (*pb.SendEventReply, error) {
	join, err := eventgraph.ParseEvent(m.JoinEvent, r.rv)
	if err != nil {
		return nil, ErrBadJSON("join event: %v", err)
	}
	if len(m.State)+len(m.AuthChain) > maxJoinStateEvents {
		return nil, ErrInvalidParam("the room's state is too large")
	}
	var ids []string
	for _, raw := range m.State {
		if id, err := eventgraph.ComputeEventID(raw, r.rv); err == nil {
			ids = append(ids, id)
		}
	}
	b := r.newBatch()
	var res string
	err = r.env.Partition.View(func(tx *bbolt.Tx) error {
		rt := storage.Room(tx, r.env.Identity)
		b.rt = &rt
		defer func() { b.rt = nil }()
		missing := map[string]bool{}
		if err := b.storeOutliers(r.parseForRoom(append(append([][]byte{}, m.State...), m.AuthChain...), nil), missing); err != nil {
			return err
		}
		var err error
		res, err = b.place(join, ids, ingestOptions{origin: m.Origin, noSoftFail: true}, map[string]bool{}, missing)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("room %s: rejoin: %w", r.roomID, err)
	}
	if res != "" {
		return nil, ErrForbidden("%s", res)
	}
	b.noFederate = true
	if err := b.commitJoined(join.Sender()); err != nil {
		return nil, err
	}
	return &pb.SendEventReply{EventId: join.EventID(), Pos: r.meta.Pos}, nil
}

// commitJoined commits a join made through another server and forgets the
// user's outsider membership (an invite they accepted).
func (b *batch) commitJoined(user string) error {
	r := b.r
	wasOutsider := r.meta.Outsider
	if err := b.commit(); err != nil {
		return err
	}
	if _, ok := r.outsiders[user]; ok || wasOutsider {
		delete(r.outsiders, user)
		identity := r.env.Identity
		err := r.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
			return storage.Room(tx, identity).DeleteOutsider(user)
		})
		if err != nil {
			return fmt.Errorf("room %s: forget outsider membership: %w", r.roomID, err)
		}
	}
	return nil
}

// fedOutsider records a local user's invite, rejected invite or knock in a
// room this server is not in.
func (r *roomActor) fedOutsider(m *pb.RoomFedOutsider) (*pb.SendEventReply, error) {
	if !r.isLocal(m.UserId) {
		return nil, ErrForbidden("only local users")
	}
	switch m.Membership {
	case eventgraph.MembershipInvite, eventgraph.MembershipLeave, eventgraph.MembershipKnock:
	default:
		return nil, ErrInvalidParam("unknown membership %q", m.Membership)
	}
	if r.exists {
		// The room is here: the membership event goes through the graph.
		rep, err := r.fedIngest(&pb.RoomFedIngest{RoomId: r.roomID, Origin: serverOf(m.UserId), Pdus: [][]byte{m.Event}})
		if err != nil {
			return nil, err
		}
		for _, res := range rep.Results {
			if res != "" {
				return nil, ErrForbidden("%s", res)
			}
		}
		return &pb.SendEventReply{Pos: r.meta.Pos}, nil
	}
	rv, ok := eventgraph.GetRoomVersion(eventgraph.RoomVersionID(m.RoomVersion))
	if !ok {
		return nil, Errorf(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "unsupported room version %q", m.RoomVersion)
	}
	ev, err := eventgraph.ParseEvent(m.Event, rv)
	if err != nil {
		return nil, ErrBadJSON("membership event: %v", err)
	}
	if ev.RoomID() != r.roomID || ev.Type() != eventgraph.TypeMember || !ev.StateKeyEquals(m.UserId) {
		return nil, ErrBadJSON("not the user's membership event in this room")
	}
	if mem, _ := ev.Membership(); mem != m.Membership {
		return nil, ErrBadJSON("membership is %q, not %q", mem, m.Membership)
	}
	if len(m.StrippedState) > 0 && !json.Valid(m.StrippedState) {
		return nil, ErrBadJSON("stripped state is not JSON")
	}
	meta := r.meta
	meta.Version, meta.Outsider = string(rv.ID), true
	meta.Pos++
	om := outsiderMembership{Membership: m.Membership, EventID: ev.EventID(), Event: ev.CanonicalPDU(),
		Stripped: m.StrippedState, Pos: meta.Pos}
	if m.Membership == eventgraph.MembershipLeave {
		// A rejected invite or retracted knock keeps the stripped state the
		// invite had, for the leave section of /sync.
		if old, ok := r.outsiders[m.UserId]; ok && len(om.Stripped) == 0 {
			om.Stripped = old.Stripped
		}
	}
	identity, user := r.env.Identity, m.UserId
	err = r.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
		rt := storage.Room(tx, identity)
		raw, err := json.Marshal(om)
		if err != nil {
			return err
		}
		if err := rt.PutOutsider(user, raw); err != nil {
			return err
		}
		return rt.PutMeta(meta)
	})
	if err != nil {
		return nil, fmt.Errorf("room %s: record outsider membership: %w", r.roomID, err)
	}
	r.meta, r.rv = meta, rv
	if r.outsiders == nil {
		r.outsiders = map[string]outsiderMembership{}
	}
	r.outsiders[user] = om
	r.env.Router.Send(&pb.RoomNotice{UserId: user, RoomId: r.roomID, Pos: meta.Pos, Membership: m.Membership, EphemeralPos: r.ephPos})
	return &pb.SendEventReply{EventId: ev.EventID(), Pos: meta.Pos}, nil
}

// loadOutsiders reads the outsider memberships of a room this server is
// not in.
func (r *roomActor) loadOutsiders(rt storage.RoomTx) error {
	r.outsiders = map[string]outsiderMembership{}
	return rt.Outsiders(func(user string, raw []byte) error {
		var om outsiderMembership
		if err := json.Unmarshal(raw, &om); err != nil {
			return fmt.Errorf("room %s: outsider membership of %s: %w", r.roomID, user, err)
		}
		r.outsiders[user] = om
		return nil
	})
}

// outsiderSync answers /sync for a user with an outsider membership: the
// stripped state (client format) and the user's own membership event.
func (r *roomActor) outsiderSync(m *pb.SyncRoom, rep *pb.SyncRoomReply) error {
	om, ok := r.outsiders[m.UserId]
	if !ok {
		rep.Empty = true
		return nil
	}
	var entries []json.RawMessage
	if len(om.Stripped) > 0 {
		_ = json.Unmarshal(om.Stripped, &entries)
	}
	var events []json.RawMessage
	for _, e := range entries {
		if s := strippedClientForm(e); s != nil {
			events = append(events, s)
		}
	}
	if ev, err := eventgraph.NewEventFromTrustedJSON(om.Event, r.rv, om.EventID); err == nil {
		if s := strippedClientForm(ev.CanonicalPDU()); s != nil {
			events = append(events, s)
		}
	}
	key := "invite_state"
	switch om.Membership {
	case eventgraph.MembershipKnock:
		key = "knock_state"
	case eventgraph.MembershipLeave:
		rep.Empty = true
		return nil
	}
	body, err := json.Marshal(map[string]any{key: map[string]any{"events": events}})
	if err != nil {
		return fmt.Errorf("room %s: encode %s: %w", r.roomID, key, err)
	}
	rep.Json = body
	return nil
}

// strippedClientForm turns a full PDU or a stripped event into the stripped
// form clients see; nil for anything that is neither.
func strippedClientForm(raw json.RawMessage) json.RawMessage {
	var e struct {
		Content  json.RawMessage `json:"content"`
		Sender   string          `json:"sender"`
		StateKey *string         `json:"state_key"`
		Type     string          `json:"type"`
	}
	if json.Unmarshal(raw, &e) != nil || e.Type == "" || e.StateKey == nil || len(e.Content) == 0 {
		return nil
	}
	out, err := json.Marshal(e)
	if err != nil {
		return nil
	}
	return out
}
