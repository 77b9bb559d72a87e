package actors

import (
	"encoding/json"
	"fmt"
	"sort"

	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/storage"
)

const (
	defaultSyncLimit = 10
	maxSyncLimit     = 1000
	// scanFactor bounds the timeline events one read may examine per event
	// it may return, so a filter matching nothing cannot make it walk the
	// whole room.
	scanFactor = 10
	minScan    = 200
	maxHeroes  = 5
)

// syncRoom answers the room's part of one /sync for one user (see the sync
// contract in the package documentation of the gateway's sync handler).
func (r *roomActor) syncRoom(m *pb.SyncRoom) (*pb.SyncRoomReply, error) {
	rep := &pb.SyncRoomReply{Pos: r.meta.Pos, EphemeralPos: r.ephPos}
	if !r.exists {
		if r.meta.Outsider && m.FullState {
			return rep, r.outsiderSync(m, rep)
		}
		rep.Empty = true
		return rep, nil
	}
	switch m.Membership {
	case eventgraph.MembershipInvite, eventgraph.MembershipKnock:
		if !m.FullState {
			rep.Empty = true
			return rep, nil
		}
		own := r.stateEvent(eventgraph.TypeMember, m.UserId)
		key := "invite_state"
		if m.Membership == eventgraph.MembershipKnock {
			key = "knock_state"
		}
		body, err := json.Marshal(map[string]any{key: map[string]any{"events": r.strippedState(own)}})
		if err != nil {
			return nil, fmt.Errorf("room %s: encode %s: %w", r.roomID, key, err)
		}
		rep.Json = body
		return rep, nil
	}
	f, err := parseRoomEventFilter(m.Filter)
	if err != nil {
		return nil, err
	}
	err = r.env.Partition.View(func(tx *bbolt.Tx) error {
		return r.syncTimeline(r.reader(storage.Room(tx, r.env.Identity)), m, f, rep)
	})
	if err != nil {
		return nil, err
	}
	return rep, nil
}

type syncTimelineJSON struct {
	Events    []json.RawMessage `json:"events"`
	Limited   bool              `json:"limited"`
	PrevBatch string            `json:"prev_batch"`
}

type eventsJSON struct {
	Events []json.RawMessage `json:"events"`
}

func (r *roomActor) syncTimeline(rd *roomReader, m *pb.SyncRoom, f *roomEventFilter, rep *pb.SyncRoomReply) error {
	user := m.UserId
	joined := m.Membership == eventgraph.MembershipJoin
	upper := r.meta.Pos
	if !joined && m.MembershipPos > 0 {
		upper = min(upper, m.MembershipPos)
	}
	if cur := r.members[user]; cur.Membership != eventgraph.MembershipJoin && cur.EventID != "" {
		// Whatever the user actor believes, nothing after the user left is shown.
		upper = min(upper, cur.Pos)
	}
	from := min(m.From, upper)
	initial := m.From == 0 || m.FullState
	limit := int(m.Limit)
	if f.Limit != nil && *f.Limit > 0 {
		limit = *f.Limit
	}
	if limit <= 0 {
		limit = defaultSyncLimit
	}
	limit = min(limit, maxSyncLimit)

	// Walk back from upper, collecting visible, matching events.
	var picked []*loadedEvent
	var memberships []string
	limited := false
	after, err := rd.visAt(upper, user)
	if err != nil {
		return err
	}
	scanned, budget := 0, max(limit*scanFactor, minScan)
	start := upper + 1 // first position covered by the timeline
	for p := upper; p > from; p-- {
		if len(picked) == limit || scanned == budget {
			limited = true
			break
		}
		scanned++
		l, err := rd.at(p)
		if err != nil {
			return err
		}
		if l == nil {
			continue
		}
		before, err := rd.before(l, user, after)
		if err != nil {
			return err
		}
		ok, err := rd.canSee(l, user, before, after)
		if err != nil {
			return err
		}
		if ok && f.matches(l.ev) {
			picked = append(picked, l)
			memberships = append(memberships, orLeave(after.mem))
		}
		after = before
		start = p
	}
	if limited && len(picked) > 0 {
		start = picked[len(picked)-1].rec.Pos
	}

	events := make([]json.RawMessage, 0, len(picked))
	senders := map[string]bool{}
	for i := len(picked) - 1; i >= 0; i-- {
		raw, err := rd.format(picked[i], formatOpts{user: user, device: m.DeviceId, membership: memberships[i]})
		if err != nil {
			return err
		}
		events = append(events, raw)
		senders[picked[i].ev.Sender()] = true
	}

	// State at the start of the timeline: all of it for an initial or full
	// sync, else what changed between from and the timeline's start.
	stateEnd := start - 1
	var keys map[eventgraph.StateKey]bool
	if !initial {
		if keys, err = rd.changedBetween(from, stateEnd); err != nil {
			return err
		}
	}
	if f.LazyLoadMembers {
		senders[user] = true
		if keys == nil {
			st, err := rd.stateAt(stateEnd, nil)
			if err != nil {
				return err
			}
			keys = map[eventgraph.StateKey]bool{}
			for k := range st {
				keys[k] = true
			}
		}
		for k := range keys {
			if k.Type == eventgraph.TypeMember && !senders[k.StateKey] {
				delete(keys, k)
			}
		}
		for s := range senders {
			keys[eventgraph.StateKey{Type: eventgraph.TypeMember, StateKey: s}] = true
		}
	}
	var stateEvents []json.RawMessage
	if keys == nil || len(keys) > 0 {
		st, err := rd.stateAt(stateEnd, keys)
		if err != nil {
			return err
		}
		if stateEvents, err = r.formatState(rd, st, user); err != nil {
			return err
		}
	}

	obj := map[string]any{
		"timeline": syncTimelineJSON{Events: events, Limited: limited, PrevBatch: posToken(start - 1)},
		"state":    eventsJSON{Events: orEmpty(stateEvents)},
	}
	ephChanged := false
	summaryChanged := false
	if joined {
		eph := r.syncEphemeral(user, m.EphemeralFrom, initial)
		ephChanged = len(eph) > 0
		obj["ephemeral"] = eventsJSON{Events: orEmpty(eph)}
		summaryChanged = initial
		if !summaryChanged {
			changed, err := rd.changedBetween(from, upper)
			if err != nil {
				return err
			}
			for k := range changed {
				if k.Type == eventgraph.TypeMember {
					summaryChanged = true
					break
				}
			}
		}
		if summaryChanged {
			obj["summary"] = r.syncSummary(user)
		}
		n, h, err := r.unreadCounts(rd, user, m.PushRules)
		if err != nil {
			return err
		}
		obj["unread_notifications"] = map[string]int{"notification_count": n, "highlight_count": h}
	}
	rep.Empty = !m.FullState && len(events) == 0 && len(stateEvents) == 0 && !ephChanged && !summaryChanged
	body, err := json.Marshal(obj)
	if err != nil {
		return fmt.Errorf("room %s: encode sync: %w", r.roomID, err)
	}
	rep.Json = body
	return nil
}

func orLeave(mem string) string {
	if mem == "" {
		return eventgraph.MembershipLeave
	}
	return mem
}

func orEmpty(evs []json.RawMessage) []json.RawMessage {
	if evs == nil {
		return []json.RawMessage{}
	}
	return evs
}

// formatState renders a state map's events, ordered by type and state key.
func (r *roomActor) formatState(rd *roomReader, st eventgraph.StateMap, user string) ([]json.RawMessage, error) {
	keys := make([]eventgraph.StateKey, 0, len(st))
	for k := range st {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].Type != keys[j].Type {
			return keys[i].Type < keys[j].Type
		}
		return keys[i].StateKey < keys[j].StateKey
	})
	out := make([]json.RawMessage, 0, len(keys))
	for _, k := range keys {
		l, err := rd.event(st[k])
		if err != nil {
			return nil, err
		}
		if l == nil {
			continue
		}
		raw, err := rd.format(l, formatOpts{user: user})
		if err != nil {
			return nil, err
		}
		out = append(out, raw)
	}
	return out, nil
}

// syncSummary is the room summary of a joined room: heroes and counts.
func (r *roomActor) syncSummary(user string) map[string]any {
	joined, invited := 0, 0
	type cand struct {
		user string
		pos  uint64
		in   bool
	}
	var cands []cand
	for u, m := range r.members {
		switch m.Membership {
		case eventgraph.MembershipJoin:
			joined++
		case eventgraph.MembershipInvite:
			invited++
		}
		if u != user {
			in := m.Membership == eventgraph.MembershipJoin || m.Membership == eventgraph.MembershipInvite
			cands = append(cands, cand{u, m.Pos, in})
		}
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].in != cands[j].in {
			return cands[i].in
		}
		if cands[i].pos != cands[j].pos {
			return cands[i].pos < cands[j].pos
		}
		return cands[i].user < cands[j].user
	})
	heroes := []string{}
	for _, c := range cands {
		if len(heroes) == maxHeroes || (!c.in && len(heroes) > 0) {
			break
		}
		heroes = append(heroes, c.user)
	}
	return map[string]any{"m.heroes": heroes, "m.joined_member_count": joined, "m.invited_member_count": invited}
}

// posToken is the pagination token "t<pos>": the point after position pos.
func posToken(pos uint64) string { return fmt.Sprintf("t%d", pos) }
