package actors

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/storage"
)

// roomReader reads a room's stored events inside one read transaction,
// caching what it parsed for the length of the request.
type roomReader struct {
	r     *roomActor
	rt    storage.RoomTx
	cache map[string]*loadedEvent
	now   int64
	// joinEnd caches, per user, the position up to which the user was
	// last joined (see joinedAfter).
	joinEnd map[string]uint64
}

type loadedEvent struct {
	ev  *eventgraph.Event
	rec *storage.RoomEvent
}

func (r *roomActor) reader(rt storage.RoomTx) *roomReader {
	return &roomReader{r: r, rt: rt, cache: map[string]*loadedEvent{}, now: r.env.NowMillis(), joinEnd: map[string]uint64{}}
}

// maxReaderCache bounds the events one request keeps parsed.
const maxReaderCache = 4096

// event loads one event of the room (nil if the room has none by that ID).
func (rd *roomReader) event(id string) (*loadedEvent, error) {
	if l, ok := rd.cache[id]; ok {
		return l, nil
	}
	ev, rec, err := rd.r.readEvent(rd.rt, id)
	if err != nil || ev == nil {
		return nil, err
	}
	l := &loadedEvent{ev: ev, rec: rec}
	if len(rd.cache) < maxReaderCache {
		rd.cache[id] = l
	}
	return l, nil
}

// at loads the event at a stream position.
func (rd *roomReader) at(pos uint64) (*loadedEvent, error) {
	id, err := rd.rt.TimelineAt(pos)
	if err != nil || id == "" {
		return nil, err
	}
	l, err := rd.event(id)
	if err == nil && l == nil {
		err = fmt.Errorf("room %s: timeline event %s at %d missing", rd.r.roomID, id, pos)
	}
	return l, err
}

// stateAt is the state after the event at position p: the current state
// with the deltas above p undone. keys, when non-nil, limits the result to
// those keys.
func (rd *roomReader) stateAt(p uint64, keys map[eventgraph.StateKey]bool) (eventgraph.StateMap, error) {
	st := eventgraph.StateMap{}
	for k, id := range rd.r.state {
		if keys == nil || keys[k] {
			st[k] = id
		}
	}
	if p >= rd.r.meta.Pos {
		return st, nil
	}
	err := rd.rt.ScanDeltas(p+1, rd.r.meta.Pos, true, func(_ uint64, d storage.RoomStateDelta) (bool, error) {
		k := eventgraph.StateKey{Type: d.Type, StateKey: d.StateKey}
		if keys != nil && !keys[k] {
			return true, nil
		}
		if d.Prev == "" {
			delete(st, k)
		} else {
			st[k] = d.Prev
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("room %s: state at %d: %w", rd.r.roomID, p, err)
	}
	return st, nil
}

// changedBetween lists the state keys changed by events in (lo, hi].
func (rd *roomReader) changedBetween(lo, hi uint64) (map[eventgraph.StateKey]bool, error) {
	keys := map[eventgraph.StateKey]bool{}
	if hi <= lo {
		return keys, nil
	}
	err := rd.rt.ScanDeltas(lo+1, hi, false, func(_ uint64, d storage.RoomStateDelta) (bool, error) {
		keys[eventgraph.StateKey{Type: d.Type, StateKey: d.StateKey}] = true
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("room %s: state changes in (%d, %d]: %w", rd.r.roomID, lo, hi, err)
	}
	return keys, nil
}

// ---- history visibility ----

// visState is what history visibility reads at one point of the timeline:
// the room's history_visibility and one user's membership.
type visState struct {
	hv  string
	mem string
}

const (
	hvWorldReadable = "world_readable"
	hvShared        = "shared"
	hvInvited       = "invited"
	hvJoined        = "joined"
)

func historyVisibility(ev *eventgraph.Event) string {
	if ev == nil {
		return hvShared
	}
	var c struct {
		HV string `json:"history_visibility"`
	}
	_ = json.Unmarshal(ev.Content(), &c)
	switch c.HV {
	case hvWorldReadable, hvInvited, hvJoined:
		return c.HV
	}
	return hvShared
}

func membershipIn(ev *eventgraph.Event) string {
	if ev == nil {
		return ""
	}
	m, _ := ev.Membership()
	return m
}

var hvKey = eventgraph.StateKey{Type: "m.room.history_visibility"}

// visAt is the visibility state after position p for user.
func (rd *roomReader) visAt(p uint64, user string) (visState, error) {
	mk := eventgraph.StateKey{Type: eventgraph.TypeMember, StateKey: user}
	st, err := rd.stateAt(p, map[eventgraph.StateKey]bool{hvKey: true, mk: true})
	if err != nil {
		return visState{}, err
	}
	var vs visState
	vs.hv, vs.mem = hvShared, ""
	if id, ok := st[hvKey]; ok {
		l, err := rd.event(id)
		if err != nil {
			return vs, err
		}
		if l != nil {
			vs.hv = historyVisibility(l.ev)
		}
	}
	if id, ok := st[mk]; ok {
		l, err := rd.event(id)
		if err != nil {
			return vs, err
		}
		if l != nil {
			vs.mem = membershipIn(l.ev)
		}
	}
	return vs, nil
}

// touches reports whether ev changes what visState tracks for user.
func touches(ev *eventgraph.Event, user string) (hv, mem bool) {
	if !ev.IsState() {
		return false, false
	}
	return ev.Type() == hvKey.Type && ev.StateKeyEquals(""), ev.Type() == eventgraph.TypeMember && ev.StateKeyEquals(user)
}

// after is the visibility state after l, given the state before it.
func (rd *roomReader) after(l *loadedEvent, user string, before visState) visState {
	hv, mem := touches(l.ev, user)
	if hv {
		before.hv = historyVisibility(l.ev)
	}
	if mem {
		before.mem = membershipIn(l.ev)
	}
	return before
}

// before is the visibility state before l, given the state after it: the
// state l replaced.
func (rd *roomReader) before(l *loadedEvent, user string, after visState) (visState, error) {
	hv, mem := touches(l.ev, user)
	if !hv && !mem {
		return after, nil
	}
	var prev *eventgraph.Event
	if l.rec.ReplacesState != "" {
		p, err := rd.event(l.rec.ReplacesState)
		if err != nil {
			return after, err
		}
		if p != nil {
			prev = p.ev
		}
	}
	if hv {
		after.hv = historyVisibility(prev)
	}
	if mem {
		after.mem = membershipIn(prev)
	}
	return after, nil
}

// joinedAfter reports whether user was joined at some point after position
// p: always while the user is joined; otherwise when p lies before the end
// of the user's last period of membership.
func (rd *roomReader) joinedAfter(user string, p uint64) (bool, error) {
	if rd.r.membershipOf(user) == eventgraph.MembershipJoin {
		return true, nil
	}
	end, ok := rd.joinEnd[user]
	if !ok {
		var err error
		end, err = rd.lastJoinEnd(user)
		if err != nil {
			return false, err
		}
		rd.joinEnd[user] = end
	}
	return p < end, nil
}

// maxMembershipHops bounds the walk back through one user's member events.
const maxMembershipHops = 1000

// lastJoinEnd follows user's member events back from the current one to the
// last join, and returns the position of the event that ended it (0 if the
// user never joined).
func (rd *roomReader) lastJoinEnd(user string) (uint64, error) {
	id := rd.r.members[user].EventID
	var later uint64
	for hops := 0; id != "" && hops < maxMembershipHops; hops++ {
		l, err := rd.event(id)
		if err != nil || l == nil {
			return 0, err
		}
		if membershipIn(l.ev) == eventgraph.MembershipJoin {
			return later, nil
		}
		later = l.rec.Pos
		id = l.rec.ReplacesState
	}
	return 0, nil
}

// canSee applies the spec's history visibility rules to the event at
// position p for user, given the states before and after it.
func (rd *roomReader) canSee(l *loadedEvent, user string, before, after visState) (bool, error) {
	check := func(vs visState) (bool, error) {
		switch {
		case vs.hv == hvWorldReadable, vs.mem == eventgraph.MembershipJoin:
			return true, nil
		case vs.hv == hvInvited && vs.mem == eventgraph.MembershipInvite:
			return true, nil
		case vs.hv == hvShared:
			return rd.joinedAfter(user, l.rec.Pos)
		}
		return false, nil
	}
	ok, err := check(before)
	if ok || err != nil {
		return ok, err
	}
	hv, mem := touches(l.ev, user)
	switch {
	case hv:
		return check(visState{hv: after.hv, mem: before.mem})
	case mem:
		return check(visState{hv: before.hv, mem: after.mem})
	}
	return false, nil
}

// ---- client formats ----

// formatOpts say how an event is served to one client.
type formatOpts struct {
	user   string
	device string
	// membership, when set, becomes unsigned.membership (MSC4115).
	membership string
	// noAgg leaves out the bundled aggregations (unsigned["m.relations"]);
	// noThread only their m.thread part.
	noAgg, noThread bool
}

// format renders an event in the client-server API's ClientEvent format
// (eventgraph's), with the unsigned data shoal adds: age, membership,
// transaction_id for the sending device, prev_content for state and
// redacted_because for redacted events.
func (rd *roomReader) format(l *loadedEvent, o formatOpts) (json.RawMessage, error) {
	return rd.formatNested(l, o, true)
}

func (rd *roomReader) formatNested(l *loadedEvent, o formatOpts, nested bool) (json.RawMessage, error) {
	ev := l.ev
	u := map[string]any{}
	if age := rd.now - ev.OriginServerTS(); age >= 0 {
		u["age"] = age
	}
	if o.membership != "" {
		u["membership"] = o.membership
	}
	if l.rec.TxnID != "" && o.device != "" && l.rec.Device == o.device && ev.Sender() == o.user {
		u["transaction_id"] = l.rec.TxnID
	}
	if nested && l.rec.ReplacesState != "" {
		u["replaces_state"] = l.rec.ReplacesState
		p, err := rd.event(l.rec.ReplacesState)
		if err != nil {
			return nil, err
		}
		if p != nil {
			u["prev_content"] = json.RawMessage(p.ev.Content())
			u["prev_sender"] = p.ev.Sender()
		}
	}
	if nested && l.rec.RedactedBy != "" {
		red, err := rd.event(l.rec.RedactedBy)
		if err != nil {
			return nil, err
		}
		if red != nil {
			because, err := rd.formatNested(red, formatOpts{}, false)
			if err != nil {
				return nil, err
			}
			u["redacted_because"] = because
		}
	}
	if nested && !o.noAgg {
		agg, err := rd.aggregations(l, o)
		if err != nil {
			return nil, err
		}
		if len(agg) > 0 {
			u["m.relations"] = agg
		}
	}
	unsigned, err := json.Marshal(u)
	if err != nil {
		return nil, fmt.Errorf("room %s: encode unsigned of %s: %w", rd.r.roomID, ev.EventID(), err)
	}
	withU, err := ev.WithUnsigned(unsigned)
	if err != nil {
		return nil, fmt.Errorf("room %s: %w", rd.r.roomID, err)
	}
	out, err := withU.ToClientEvent()
	if err != nil {
		return nil, fmt.Errorf("room %s: %w", rd.r.roomID, err)
	}
	return out, nil
}

// strippedState renders the stripped state events shown to invitees and
// knockers (MSC4311: the create event is always among them).
func (r *roomActor) strippedState(extra *eventgraph.Event) []json.RawMessage {
	types := []string{eventgraph.TypeCreate, eventgraph.TypeJoinRules, "m.room.name", "m.room.avatar",
		"m.room.canonical_alias", "m.room.encryption", "m.room.topic"}
	var out []json.RawMessage
	add := func(ev *eventgraph.Event) {
		if ev == nil {
			return
		}
		raw, err := json.Marshal(struct {
			Content  json.RawMessage `json:"content"`
			Sender   string          `json:"sender"`
			StateKey *string         `json:"state_key"`
			Type     string          `json:"type"`
		}{ev.Content(), ev.Sender(), ev.StateKey(), ev.Type()})
		if err == nil {
			out = append(out, raw)
		}
	}
	for _, t := range types {
		add(r.stateEvent(t, ""))
	}
	add(extra)
	return out
}

// ---- filters ----

// roomEventFilter is the spec's RoomEventFilter as the room applies it.
type roomEventFilter struct {
	Limit           *int      `json:"limit"`
	Types           *[]string `json:"types"`
	NotTypes        []string  `json:"not_types"`
	Senders         *[]string `json:"senders"`
	NotSenders      []string  `json:"not_senders"`
	ContainsURL     *bool     `json:"contains_url"`
	LazyLoadMembers bool      `json:"lazy_load_members"`
}

func parseRoomEventFilter(raw []byte) (*roomEventFilter, error) {
	f := &roomEventFilter{}
	if len(raw) == 0 {
		return f, nil
	}
	if err := json.Unmarshal(raw, f); err != nil {
		return nil, ErrInvalidParam("invalid filter: %v", err)
	}
	return f, nil
}

// matches applies the filter's type, sender and contains_url conditions.
func (f *roomEventFilter) matches(ev *eventgraph.Event) bool {
	if f == nil {
		return true
	}
	for _, t := range f.NotTypes {
		if typeMatch(t, ev.Type()) {
			return false
		}
	}
	if f.Types != nil {
		ok := false
		for _, t := range *f.Types {
			if typeMatch(t, ev.Type()) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if containsStr(f.NotSenders, ev.Sender()) {
		return false
	}
	if f.Senders != nil && !containsStr(*f.Senders, ev.Sender()) {
		return false
	}
	if f.ContainsURL != nil {
		var c struct {
			URL json.RawMessage `json:"url"`
		}
		_ = json.Unmarshal(ev.Content(), &c)
		has := len(c.URL) > 0 && c.URL[0] == '"'
		if has != *f.ContainsURL {
			return false
		}
	}
	return true
}

// typeMatch matches a filter type pattern, where '*' matches any run.
func typeMatch(pattern, s string) bool {
	if !strings.Contains(pattern, "*") {
		return pattern == s
	}
	parts := strings.Split(pattern, "*")
	if !strings.HasPrefix(s, parts[0]) {
		return false
	}
	s = s[len(parts[0]):]
	last := len(parts) - 1
	for i := 1; i < last; i++ {
		idx := strings.Index(s, parts[i])
		if idx < 0 {
			return false
		}
		s = s[idx+len(parts[i]):]
	}
	return strings.HasSuffix(s, parts[last])
}
