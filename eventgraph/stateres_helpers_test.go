package eventgraph

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// Test helpers for state resolution: a room whose events are built by hand,
// with chosen event IDs, timestamps and (optionally) auth events, on forks
// that each keep their own state.

const (
	srAlice   = "@alice:a.test" // creates the room
	srBob     = "@bob:b.test"
	srCharlie = "@charlie:c.test"
	srEve     = "@eve:e.test"
	srZara    = "@zara:z.test"
	srX       = "@x:x.test"
)

// srWithAlgo returns a copy of the room version id whose state resolution
// algorithm is algo: the same events and auth rules resolved with another
// algorithm isolate what the algorithm changes.
func srWithAlgo(id RoomVersionID, algo StateResAlgorithm) *RoomVersion {
	rv := *MustRoomVersion(id)
	rv.StateRes = algo
	return &rv
}

type srRoom struct {
	t        testing.TB
	rv       *RoomVersion
	roomID   string
	createID string
	events   map[string]*Event
	rejected map[string]bool
	ts       int64
	// lookups counts lookup calls per ID, to check that resolution asks once.
	lookups map[string]int
}

// srFork is one branch of the room: its state and its newest event.
type srFork struct {
	r     *srRoom
	state StateMap
	last  string
	depth int64
}

// srSpec describes an event. Zero fields take defaults: ts from the room's
// clock, auth events selected from the fork's state, depth one more than the
// fork's.
type srSpec struct {
	id        string
	typ       string
	sk        *string
	sender    string
	content   any
	ts        int64
	depth     int64
	auth      []string // nil: selected from the fork's state
	unchecked bool     // do not require the event to pass auth against the fork
	noApply   bool     // store the event but leave the fork's state alone
}

func srSK(s string) *string { return &s }

// newSRRoom creates a room of version rv with create event createID sent by
// alice, on a fork that has only that event.
func newSRRoom(t testing.TB, rv *RoomVersion, createID string) (*srRoom, *srFork) {
	t.Helper()
	r := &srRoom{t: t, rv: rv, createID: createID, events: map[string]*Event{}, rejected: map[string]bool{}, ts: 1000, lookups: map[string]int{}}
	if rv.RoomIDFromCreateEvent {
		r.roomID = "!" + createID[1:]
	} else {
		r.roomID = "!room:a.test"
	}
	f := &srFork{r: r, state: StateMap{}}
	content := map[string]any{"room_version": string(rv.ID)}
	if !rv.ImplicitCreator {
		content["creator"] = srAlice
	}
	f.send(srSpec{id: createID, typ: TypeCreate, sk: srSK(""), sender: srAlice, content: content, auth: []string{}})
	return r, f
}

func (r *srRoom) lookup(id string) (*Event, error) {
	r.lookups[id]++
	return r.events[id], nil
}

func (r *srRoom) isRejected(id string) bool { return r.rejected[id] }

// clone starts a new fork from f's current point.
func (f *srFork) clone() *srFork {
	return &srFork{r: f.r, state: f.state.Clone(), last: f.last, depth: f.depth}
}

func (r *srRoom) refs(ids []string) any {
	if r.rv.EventIDs != EventIDFormatV1 {
		if ids == nil {
			return []string{}
		}
		return ids
	}
	pairs := make([]any, 0, len(ids))
	for _, id := range ids {
		pairs = append(pairs, []any{id, map[string]string{"sha256": "aGFzaA"}})
	}
	return pairs
}

// send builds the event on fork f, stores it in the room, checks it against
// f's state (unless s.unchecked) and applies it to f (unless s.noApply).
func (f *srFork) send(s srSpec) *Event {
	r := f.r
	r.t.Helper()
	ev := f.build(&s)
	if _, dup := r.events[s.id]; dup {
		r.t.Fatalf("event ID %s used twice", s.id)
	}
	r.events[s.id] = ev
	if !s.unchecked {
		if err := AllowedByState(ev, f.state, r.events2lookup()); err != nil {
			r.t.Fatalf("setup event %s (%s by %s) refused: %v", s.id, s.typ, s.sender, err)
		}
	}
	if !s.noApply {
		f.apply(ev)
	}
	return ev
}

// trySend is send for generated events: an event the auth rules refuse
// against f's state is dropped, and trySend reports false.
func (f *srFork) trySend(s srSpec) bool {
	r := f.r
	r.t.Helper()
	ev := f.build(&s)
	if err := AllowedByState(ev, f.state, r.events2lookup()); err != nil {
		var ae *AuthError
		if !errors.As(err, &ae) {
			r.t.Fatalf("checking %s: %v", s.id, err)
		}
		return false
	}
	r.events[s.id] = ev
	f.apply(ev)
	return true
}

func (f *srFork) apply(ev *Event) {
	if ev.IsState() {
		f.state[ev.StateTuple()] = ev.EventID()
	}
	f.last, f.depth = ev.EventID(), ev.Depth()
}

// build makes the PDU s describes on top of f, filling s's defaults.
func (f *srFork) build(s *srSpec) *Event {
	r := f.r
	r.t.Helper()
	if s.content == nil {
		s.content = map[string]any{}
	}
	contentJSON, err := json.Marshal(s.content)
	if err != nil {
		r.t.Fatal(err)
	}
	if s.auth == nil {
		s.auth = SelectAuthEvents(s.typ, s.sk, s.sender, contentJSON, r.rv, f.state)
	}
	if s.ts == 0 {
		r.ts++
		s.ts = r.ts
	}
	if s.depth == 0 {
		s.depth = f.depth + 1
	}
	var prev []string
	if f.last != "" {
		prev = []string{f.last}
	}
	pdu := map[string]any{
		"type":             s.typ,
		"sender":           s.sender,
		"content":          json.RawMessage(contentJSON),
		"prev_events":      r.refs(prev),
		"auth_events":      r.refs(s.auth),
		"depth":            s.depth,
		"origin_server_ts": s.ts,
	}
	if r.rv.EventIDs == EventIDFormatV1 {
		pdu["event_id"] = s.id
	}
	if !(r.rv.RoomIDFromCreateEvent && s.typ == TypeCreate) {
		pdu["room_id"] = r.roomID
	}
	if s.sk != nil {
		pdu["state_key"] = *s.sk
	}
	raw, err := json.Marshal(pdu)
	if err != nil {
		r.t.Fatal(err)
	}
	ev, err := NewEventFromTrustedJSON(raw, r.rv, s.id)
	if err != nil {
		r.t.Fatal(err)
	}
	return ev
}

// events2lookup is a lookup that does not count (for setup checks).
func (r *srRoom) events2lookup() func(string) (*Event, error) {
	return func(id string) (*Event, error) { return r.events[id], nil }
}

func (f *srFork) member(id, sender, target, membership string) *Event {
	f.r.t.Helper()
	return f.send(srSpec{id: id, typ: TypeMember, sk: srSK(target), sender: sender, content: map[string]any{"membership": membership}})
}

func (f *srFork) join(id, user string) *Event {
	f.r.t.Helper()
	return f.member(id, user, user, MembershipJoin)
}

// powerLevels sends m.room.power_levels from sender with the given users
// levels (creators are left out in v12, where they may not be listed) and
// other top-level properties.
func (f *srFork) powerLevels(id, sender string, users map[string]int, extra map[string]any) *Event {
	f.r.t.Helper()
	return f.send(srSpec{id: id, typ: TypePowerLevels, sk: srSK(""), sender: sender, content: srPLContent(f.r.rv, users, extra)})
}

func srPLContent(rv *RoomVersion, users map[string]int, extra map[string]any) map[string]any {
	u := map[string]any{}
	for k, v := range users {
		if rv.PrivilegedCreators && k == srAlice {
			continue
		}
		u[k] = v
	}
	c := map[string]any{"users": u}
	for k, v := range extra {
		c[k] = v
	}
	return c
}

func (f *srFork) joinRules(id, sender, rule string) *Event {
	f.r.t.Helper()
	return f.send(srSpec{id: id, typ: TypeJoinRules, sk: srSK(""), sender: sender, content: map[string]any{"join_rule": rule}})
}

func (f *srFork) topic(id, sender, topic string) *Event {
	f.r.t.Helper()
	return f.send(srSpec{id: id, typ: "m.room.topic", sk: srSK(""), sender: sender, content: map[string]any{"topic": topic}})
}

// base builds the usual start of a room on f: alice joins ($IMA), sets power
// levels ($IPOWER: alice 100 plus users) and a public join rule ($IJR).
func (f *srFork) base(users map[string]int) {
	f.r.t.Helper()
	f.join("$IMA", srAlice)
	all := map[string]int{srAlice: 100}
	for k, v := range users {
		all[k] = v
	}
	f.powerLevels("$IPOWER", srAlice, all, nil)
	f.joinRules("$IJR", srAlice, JoinRulePublic)
}

// resolve resolves the states and fails the test on error. It also checks
// that every event was looked up at most once.
func (r *srRoom) resolve(states ...StateMap) StateMap {
	r.t.Helper()
	for k := range r.lookups {
		delete(r.lookups, k)
	}
	res, err := ResolveState(r.rv, states, r.lookup, WithRejected(r.isRejected))
	if err != nil {
		r.t.Fatalf("ResolveState: %v", err)
	}
	for id, n := range r.lookups {
		if n > 1 {
			r.t.Errorf("event %s looked up %d times", id, n)
		}
	}
	return res
}

// srStateOf builds the state map holding the given events.
func (r *srRoom) stateOf(ids ...string) StateMap {
	r.t.Helper()
	m := StateMap{}
	for _, id := range ids {
		ev := r.events[id]
		if ev == nil {
			r.t.Fatalf("no event %s", id)
		}
		m[ev.StateTuple()] = id
	}
	return m
}

// srExpectState fails the test unless got equals want, listing differences.
func srExpectState(t testing.TB, got, want StateMap) {
	t.Helper()
	if reflect.DeepEqual(got, want) {
		return
	}
	var diffs []string
	for k, w := range want {
		if g, ok := got[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: missing, want %s", k, w))
		} else if g != w {
			diffs = append(diffs, fmt.Sprintf("%s: got %s, want %s", k, g, w))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: got %s, want nothing", k, g))
		}
	}
	sort.Strings(diffs)
	t.Errorf("resolved state differs:\n  %s", strings.Join(diffs, "\n  "))
}

// srWith returns a copy of m with the given keys set (id "" deletes).
func srWith(m StateMap, kv ...any) StateMap {
	c := m.Clone()
	for i := 0; i+1 < len(kv); i += 2 {
		k := kv[i].(StateKey)
		if id := kv[i+1].(string); id == "" {
			delete(c, k)
		} else {
			c[k] = id
		}
	}
	return c
}

func srMemberKey(user string) StateKey { return StateKey{Type: TypeMember, StateKey: user} }

var (
	srPLKey    = StateKey{Type: TypePowerLevels}
	srJRKey    = StateKey{Type: TypeJoinRules}
	srTopicKey = StateKey{Type: "m.room.topic"}
	srNameKey  = StateKey{Type: "m.room.name"}
)
