package actors

import (
	"encoding/json"
	"fmt"
	"strconv"

	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/storage"
)

const (
	defaultPageLimit = 10
	maxPageLimit     = 1000
)

// query answers the reads of RoomQuery; kind selects which.
func (r *roomActor) query(m *pb.RoomQuery) (*pb.RoomQueryReply, error) {
	if !r.exists {
		switch m.Kind {
		case "state", "state_event", "members", "joined_members", "messages", "context":
			// As for a room the user is not in: an unknown room ID reveals
			// nothing (the spec's 403 for these endpoints; Synapse does the same).
			return nil, ErrForbidden("you are not in this room")
		}
		return nil, r.mustExist()
	}
	var out any
	err := r.env.Partition.View(func(tx *bbolt.Tx) error {
		rd := r.reader(storage.Room(tx, r.env.Identity))
		var err error
		switch m.Kind {
		case "event":
			out, err = r.queryEvent(rd, m)
		case "state":
			out, err = r.queryState(rd, m)
		case "state_event":
			out, err = r.queryStateEvent(rd, m)
		case "members":
			out, err = r.queryMembers(rd, m)
		case "joined_members":
			out, err = r.queryJoinedMembers(m)
		case "messages":
			out, err = r.queryMessages(rd, m)
		case "context":
			out, err = r.queryContext(rd, m)
		case "summary":
			out = r.summary()
		case "membership":
			mi := r.members[m.UserId]
			out = map[string]any{"membership": mi.Membership, "event_id": mi.EventID, "pos": mi.Pos}
		case "join_rules":
			jr := r.stateEvent(eventgraph.TypeJoinRules, "")
			out = map[string]any{"join_rule": eventgraph.JoinRule(jr), "allow": orNone(allowedRooms(jr)),
				"room_version": string(r.rv.ID)}
		case "aliases":
			out, err = r.queryAliases(rd, m)
		case "power":
			// Whether user, joined, may send the state event type m.Type.
			var pl *eventgraph.PowerLevels
			if pl, err = r.powerLevels(); err == nil {
				allowed := r.membershipOf(m.UserId) == eventgraph.MembershipJoin &&
					pl.UserLevel(m.UserId).AtLeast(pl.EventLevel(m.Type, true))
				out = map[string]bool{"allowed": allowed}
			}
		default:
			err = ErrInvalidParam("unknown room query %q", m.Kind)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	raw, err := json.Marshal(out)
	if err != nil {
		return nil, fmt.Errorf("room %s: encode %s: %w", r.roomID, m.Kind, err)
	}
	return &pb.RoomQueryReply{Json: raw}, nil
}

func orNone(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// readCap is the last position user may read up to: the current end for
// members, invitees and knockers, the user's leave or ban for former
// members, and the current end for anyone in a world-readable room.
func (r *roomActor) readCap(user string) (uint64, error) {
	mi := r.members[user]
	switch mi.Membership {
	case eventgraph.MembershipJoin, eventgraph.MembershipInvite, eventgraph.MembershipKnock:
		return r.meta.Pos, nil
	case eventgraph.MembershipLeave, eventgraph.MembershipBan:
		if historyVisibility(r.stateEvent(hvKey.Type, "")) == hvWorldReadable {
			return r.meta.Pos, nil
		}
		return mi.Pos, nil
	}
	if historyVisibility(r.stateEvent(hvKey.Type, "")) == hvWorldReadable {
		return r.meta.Pos, nil
	}
	return 0, ErrForbidden("user %s is not in room %s", user, r.roomID)
}

// stateCap is the position whose state user may read: the current state for
// members and world-readable rooms, the state at their departure otherwise.
func (r *roomActor) stateCap(user string) (uint64, error) {
	mi := r.members[user]
	if mi.Membership == eventgraph.MembershipJoin || historyVisibility(r.stateEvent(hvKey.Type, "")) == hvWorldReadable {
		return r.meta.Pos, nil
	}
	if (mi.Membership == eventgraph.MembershipLeave || mi.Membership == eventgraph.MembershipBan) && mi.EventID != "" {
		return mi.Pos, nil
	}
	return 0, ErrForbidden("user %s is not in room %s", user, r.roomID)
}

// visibleEvent loads an event if user may see it, with the user's
// membership after it.
func (r *roomActor) visibleEvent(rd *roomReader, user, eventID string) (*loadedEvent, string, error) {
	l, err := rd.event(eventID)
	if err != nil {
		return nil, "", err
	}
	if l == nil || l.rec.Pos == 0 {
		return nil, "", ErrNotFound("event not found")
	}
	after, err := rd.visAt(l.rec.Pos, user)
	if err != nil {
		return nil, "", err
	}
	before, err := rd.before(l, user, after)
	if err != nil {
		return nil, "", err
	}
	ok, err := rd.canSee(l, user, before, after)
	if err != nil {
		return nil, "", err
	}
	if !ok {
		return nil, "", ErrNotFound("event not found")
	}
	return l, orLeave(after.mem), nil
}

func (r *roomActor) queryEvent(rd *roomReader, m *pb.RoomQuery) (any, error) {
	l, mem, err := r.visibleEvent(rd, m.UserId, m.EventId)
	if err != nil {
		return nil, err
	}
	return rd.format(l, formatOpts{user: m.UserId, membership: mem})
}

func (r *roomActor) queryState(rd *roomReader, m *pb.RoomQuery) (any, error) {
	p, err := r.stateCap(m.UserId)
	if err != nil {
		return nil, err
	}
	st, err := rd.stateAt(p, nil)
	if err != nil {
		return nil, err
	}
	evs, err := r.formatState(rd, st, m.UserId)
	if err != nil {
		return nil, err
	}
	return orEmpty(evs), nil
}

// queryStateEvent answers one piece of state as its full client event; the
// gateway returns its content unless the client asked for the event.
func (r *roomActor) queryStateEvent(rd *roomReader, m *pb.RoomQuery) (any, error) {
	p, err := r.stateCap(m.UserId)
	if err != nil {
		return nil, err
	}
	k := eventgraph.StateKey{Type: m.Type, StateKey: m.StateKey}
	st, err := rd.stateAt(p, map[eventgraph.StateKey]bool{k: true})
	if err != nil {
		return nil, err
	}
	id, ok := st[k]
	if !ok {
		return nil, ErrNotFound("event not found")
	}
	l, err := rd.event(id)
	if err != nil {
		return nil, err
	}
	if l == nil {
		return nil, ErrNotFound("event not found")
	}
	return rd.format(l, formatOpts{user: m.UserId})
}

// parsePosToken reads a pagination token: "t<pos>", the room's own, or a
// /sync next_batch ("u<n>", which the spec lets clients pass too), which
// stands for the room's current end.
func (r *roomActor) parsePosToken(tok string) (uint64, error) {
	kind, rest := byte(0), ""
	if len(tok) > 1 {
		kind, rest = tok[0], tok[1:]
	}
	n, err := strconv.ParseUint(rest, 10, 64)
	if err != nil || (kind != 't' && kind != 'u') {
		return 0, ErrInvalidParam("invalid pagination token")
	}
	if kind == 'u' {
		return r.meta.Pos, nil
	}
	return n, nil
}

func (r *roomActor) queryMembers(rd *roomReader, m *pb.RoomQuery) (any, error) {
	p, err := r.stateCap(m.UserId)
	if err != nil {
		return nil, err
	}
	if m.At != "" {
		at, err := r.parsePosToken(m.At)
		if err != nil {
			return nil, err
		}
		p = min(p, at)
	}
	var st eventgraph.StateMap
	if p >= r.meta.Pos {
		st = eventgraph.StateMap{}
		for k, id := range r.state {
			if k.Type == eventgraph.TypeMember {
				st[k] = id
			}
		}
	} else if st, err = rd.stateAt(p, nil); err != nil {
		return nil, err
	}
	chunk := eventgraph.StateMap{}
	for k, id := range st {
		if k.Type != eventgraph.TypeMember {
			continue
		}
		l, err := rd.event(id)
		if err != nil {
			return nil, err
		}
		if l == nil {
			continue
		}
		mem := membershipIn(l.ev)
		if m.Membership != "" && mem != m.Membership {
			continue
		}
		if m.NotMembership != "" && mem == m.NotMembership {
			continue
		}
		chunk[k] = id
	}
	evs, err := r.formatState(rd, chunk, m.UserId)
	if err != nil {
		return nil, err
	}
	return map[string]any{"chunk": orEmpty(evs)}, nil
}

func (r *roomActor) queryJoinedMembers(m *pb.RoomQuery) (any, error) {
	if r.membershipOf(m.UserId) != eventgraph.MembershipJoin {
		return nil, ErrForbidden("user %s is not in room %s", m.UserId, r.roomID)
	}
	type profile struct {
		DisplayName *string `json:"display_name,omitempty"`
		AvatarURL   *string `json:"avatar_url,omitempty"`
	}
	joined := map[string]profile{}
	for u, mi := range r.members {
		if mi.Membership != eventgraph.MembershipJoin {
			continue
		}
		var c struct {
			DisplayName *string `json:"displayname"`
			AvatarURL   *string `json:"avatar_url"`
		}
		if ev := r.stateEvents[mi.EventID]; ev != nil {
			_ = json.Unmarshal(ev.Content(), &c)
		}
		joined[u] = profile{DisplayName: c.DisplayName, AvatarURL: c.AvatarURL}
	}
	return map[string]any{"joined": joined}, nil
}

// page walks the timeline from position from (exclusive for "f", inclusive
// for "b") towards to (0: no bound) and cap, collecting up to limit events
// user may see and filter matches. next is the token to continue from, or ""
// when nothing is left in that direction. Positions need not be dense: the
// walk follows the timeline's entries (history fetched with /backfill sits
// below a joined room's first position).
func (r *roomActor) page(rd *roomReader, user string, from, to, limit, cap uint64, backwards bool, f *roomEventFilter) (evs []*loadedEvent, mems []string, next string, err error) {
	budget := max(limit*scanFactor, minScan)
	if backwards {
		from = min(from, cap)
		low := uint64(1)
		if to > 0 {
			low = to + 1
		}
		after, err := rd.visAt(from, user)
		if err != nil {
			return nil, nil, "", err
		}
		err = rd.rt.ScanTimeline(low, from, true, func(p uint64, _ string) (bool, error) {
			if uint64(len(evs)) == limit || budget == 0 {
				next = posToken(p)
				return false, nil
			}
			budget--
			l, err := rd.at(p)
			if err != nil || l == nil {
				return err == nil, err
			}
			before, err := rd.before(l, user, after)
			if err != nil {
				return false, err
			}
			ok, err := rd.canSee(l, user, before, after)
			if err != nil {
				return false, err
			}
			if ok && f.matches(l.ev) {
				evs = append(evs, l)
				mems = append(mems, orLeave(after.mem))
			}
			after = before
			return true, nil
		})
		if err != nil {
			return nil, nil, "", err
		}
		return evs, mems, next, nil
	}
	high := cap
	if to > 0 {
		high = min(high, to)
	}
	from = min(from, high)
	before, err := rd.visAt(from, user)
	if err != nil {
		return nil, nil, "", err
	}
	if from >= high {
		return evs, mems, "", nil
	}
	err = rd.rt.ScanTimeline(from+1, high, false, func(p uint64, _ string) (bool, error) {
		if uint64(len(evs)) == limit || budget == 0 {
			next = posToken(p - 1)
			return false, nil
		}
		budget--
		l, err := rd.at(p)
		if err != nil || l == nil {
			return err == nil, err
		}
		after := rd.after(l, user, before)
		ok, err := rd.canSee(l, user, before, after)
		if err != nil {
			return false, err
		}
		if ok && f.matches(l.ev) {
			evs = append(evs, l)
			mems = append(mems, orLeave(after.mem))
		}
		before = after
		return true, nil
	})
	if err != nil {
		return nil, nil, "", err
	}
	return evs, mems, next, nil
}

func pageLimit(n int32) uint64 {
	if n <= 0 {
		return defaultPageLimit
	}
	return uint64(min(int(n), maxPageLimit))
}

// queryMessages answers /messages.
func (r *roomActor) queryMessages(rd *roomReader, m *pb.RoomQuery) (any, error) {
	cap, err := r.readCap(m.UserId)
	if err != nil {
		return nil, err
	}
	f, err := parseRoomEventFilter(m.Filter)
	if err != nil {
		return nil, err
	}
	backwards := m.Dir != "f"
	var from uint64
	switch {
	case m.From != "":
		if from, err = r.parsePosToken(m.From); err != nil {
			return nil, err
		}
	case backwards:
		from = cap
	}
	var to uint64
	if m.To != "" {
		if to, err = r.parsePosToken(m.To); err != nil {
			return nil, err
		}
		if !backwards && to <= from {
			return map[string]any{"chunk": []json.RawMessage{}, "start": posToken(from)}, nil
		}
		if backwards && to >= from {
			return map[string]any{"chunk": []json.RawMessage{}, "start": posToken(from)}, nil
		}
	}
	limit := pageLimit(m.Limit)
	if f.Limit != nil && *f.Limit > 0 {
		limit = min(limit, uint64(*f.Limit))
	}
	evs, mems, next, err := r.page(rd, m.UserId, from, to, limit, cap, backwards, f)
	if err != nil {
		return nil, err
	}
	chunk := make([]json.RawMessage, 0, len(evs))
	senders := map[string]bool{}
	for i, l := range evs {
		raw, err := rd.format(l, formatOpts{user: m.UserId, membership: mems[i]})
		if err != nil {
			return nil, err
		}
		chunk = append(chunk, raw)
		senders[l.ev.Sender()] = true
	}
	out := map[string]any{"chunk": chunk, "start": posToken(from)}
	if next != "" {
		out["end"] = next
	}
	if f.LazyLoadMembers && len(senders) > 0 {
		st, err := r.memberState(rd, senders, cap)
		if err != nil {
			return nil, err
		}
		out["state"] = st
	}
	return out, nil
}

// memberState renders the member events of users as of position p.
func (r *roomActor) memberState(rd *roomReader, users map[string]bool, p uint64) ([]json.RawMessage, error) {
	keys := map[eventgraph.StateKey]bool{}
	for u := range users {
		keys[eventgraph.StateKey{Type: eventgraph.TypeMember, StateKey: u}] = true
	}
	st, err := rd.stateAt(p, keys)
	if err != nil {
		return nil, err
	}
	evs, err := r.formatState(rd, st, "")
	return orEmpty(evs), err
}

// queryContext answers /context/{eventId}: the event, up to limit events
// around it (half before), and the state at the last one returned.
func (r *roomActor) queryContext(rd *roomReader, m *pb.RoomQuery) (any, error) {
	cap, err := r.readCap(m.UserId)
	if err != nil {
		return nil, err
	}
	f, err := parseRoomEventFilter(m.Filter)
	if err != nil {
		return nil, err
	}
	l, mem, err := r.visibleEvent(rd, m.UserId, m.EventId)
	if err != nil {
		return nil, err
	}
	if l.rec.Pos > cap {
		return nil, ErrNotFound("event not found")
	}
	// Limit 0 means the default; a negative limit asks for no context.
	limit := uint64(defaultPageLimit)
	switch {
	case m.Limit > 0:
		limit = uint64(min(int(m.Limit), maxPageLimit))
	case m.Limit < 0:
		limit = 0
	}
	beforeLimit := limit / 2
	afterLimit := limit - beforeLimit
	pos := l.rec.Pos
	var before, after []*loadedEvent
	var bmems, amems []string
	startTok, endTok := posToken(pos-1), posToken(pos)
	if beforeLimit > 0 && pos > 1 {
		before, bmems, _, err = r.page(rd, m.UserId, pos-1, 0, beforeLimit, cap, true, f)
		if err != nil {
			return nil, err
		}
		if len(before) > 0 {
			startTok = posToken(before[len(before)-1].rec.Pos - 1)
		}
	}
	if afterLimit > 0 {
		after, amems, _, err = r.page(rd, m.UserId, pos, 0, afterLimit, cap, false, f)
		if err != nil {
			return nil, err
		}
		if len(after) > 0 {
			endTok = posToken(after[len(after)-1].rec.Pos)
		}
	}
	format := func(ls []*loadedEvent, mems []string) ([]json.RawMessage, error) {
		out := make([]json.RawMessage, 0, len(ls))
		for i, e := range ls {
			raw, err := rd.format(e, formatOpts{user: m.UserId, membership: mems[i]})
			if err != nil {
				return nil, err
			}
			out = append(out, raw)
		}
		return out, nil
	}
	evRaw, err := rd.format(l, formatOpts{user: m.UserId, membership: mem})
	if err != nil {
		return nil, err
	}
	bRaw, err := format(before, bmems)
	if err != nil {
		return nil, err
	}
	aRaw, err := format(after, amems)
	if err != nil {
		return nil, err
	}
	last := pos
	if len(after) > 0 {
		last = after[len(after)-1].rec.Pos
	}
	var stateEvs []json.RawMessage
	if f.LazyLoadMembers {
		senders := map[string]bool{l.ev.Sender(): true}
		for _, e := range append(append([]*loadedEvent{}, before...), after...) {
			senders[e.ev.Sender()] = true
		}
		if stateEvs, err = r.memberState(rd, senders, last); err != nil {
			return nil, err
		}
	} else {
		st, err := rd.stateAt(last, nil)
		if err != nil {
			return nil, err
		}
		if stateEvs, err = r.formatState(rd, st, m.UserId); err != nil {
			return nil, err
		}
	}
	return map[string]any{"event": evRaw, "events_before": bRaw, "events_after": aRaw,
		"start": startTok, "end": endTok, "state": orEmpty(stateEvs)}, nil
}

func (r *roomActor) queryAliases(rd *roomReader, m *pb.RoomQuery) (any, error) {
	if r.membershipOf(m.UserId) != eventgraph.MembershipJoin &&
		historyVisibility(r.stateEvent(hvKey.Type, "")) != hvWorldReadable {
		return nil, ErrForbidden("user %s is not in room %s", m.UserId, r.roomID)
	}
	aliases, err := rd.rt.Aliases()
	if err != nil {
		return nil, err
	}
	return map[string]any{"aliases": orNone(aliases)}, nil
}

// publicRoomsChunk is a room as the public room directory lists it.
type publicRoomsChunk struct {
	RoomID           string `json:"room_id"`
	Name             string `json:"name,omitempty"`
	Topic            string `json:"topic,omitempty"`
	AvatarURL        string `json:"avatar_url,omitempty"`
	CanonicalAlias   string `json:"canonical_alias,omitempty"`
	NumJoinedMembers int    `json:"num_joined_members"`
	WorldReadable    bool   `json:"world_readable"`
	GuestCanJoin     bool   `json:"guest_can_join"`
	JoinRule         string `json:"join_rule,omitempty"`
	RoomType         string `json:"room_type,omitempty"`
}

// summary describes the room for the directory and room summaries.
func (r *roomActor) summary() publicRoomsChunk {
	s := publicRoomsChunk{RoomID: r.roomID}
	str := func(typ, key string) string {
		ev := r.stateEvent(typ, "")
		if ev == nil {
			return ""
		}
		var c map[string]json.RawMessage
		if json.Unmarshal(ev.Content(), &c) != nil {
			return ""
		}
		var v string
		_ = json.Unmarshal(c[key], &v)
		return v
	}
	s.Name = str("m.room.name", "name")
	s.Topic = str("m.room.topic", "topic")
	s.AvatarURL = str("m.room.avatar", "url")
	s.CanonicalAlias = str("m.room.canonical_alias", "alias")
	s.GuestCanJoin = str("m.room.guest_access", "guest_access") == "can_join"
	s.WorldReadable = historyVisibility(r.stateEvent(hvKey.Type, "")) == hvWorldReadable
	s.JoinRule = eventgraph.JoinRule(r.stateEvent(eventgraph.TypeJoinRules, ""))
	s.RoomType = str(eventgraph.TypeCreate, "type")
	for _, mi := range r.members {
		if mi.Membership == eventgraph.MembershipJoin {
			s.NumJoinedMembers++
		}
	}
	return s
}
