package eventgraph

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
)

// Test helpers for the authorization rule tests: a room built event by
// event, whose events carry auth_events chosen by SelectAuthEvents from the
// room's state, exactly as a homeserver would build them.

const (
	atAlice = "@alice:a.test" // creates the room
	atBob   = "@bob:b.test"   // a plain member (level 0)
	atMod   = "@mod:b.test"   // level 50
	atPeer  = "@peer:c.test"  // level 50
	atCarol = "@carol:c.test" // not in the room
)

func atSK(s string) *string { return &s }

// atVersions returns every supported room version.
func atVersions(t testing.TB) []*RoomVersion {
	t.Helper()
	var out []*RoomVersion
	for _, id := range SupportedRoomVersions() {
		out = append(out, MustRoomVersion(id))
	}
	if len(out) != 12 {
		t.Fatalf("expected 12 room versions, got %d", len(out))
	}
	return out
}

type atRoom struct {
	t        testing.TB
	rv       *RoomVersion
	roomID   string
	events   map[string]*Event
	state    StateMap
	last     string
	n        int
	rejected map[string]bool
	create   *Event
	tag      string // keeps event and room IDs of several test rooms apart
}

// atEv describes an event to build. Zero fields take the room's defaults.
type atEv struct {
	typ      string
	sk       *string
	sender   string
	content  any
	auth     []string // nil: selected from the room's state
	prev     []string // nil: the room's last event
	roomID   string   // "": the room's ID
	noRoomID bool     // leave room_id out (v12 create events)
	id       string   // "": generated
	redacts  string
	extra    map[string]any // other top-level keys
}

func (r *atRoom) lookup(id string) (*Event, error) { return r.events[id], nil }

func (r *atRoom) isRejected(id string) bool { return r.rejected[id] }

// newEventID names events "$<n>:<sender's server>" so that the v1–v2
// redaction rule, which compares event ID domains, can be exercised.
func (r *atRoom) newEventID(sender string) string {
	r.n++
	return fmt.Sprintf("$%s%d_%s:%s", r.tag, r.n, r.rv.ID, domainOf(sender))
}

func (r *atRoom) refs(ids []string) any {
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

// build makes an event (not added to the room).
func (r *atRoom) build(o atEv) *Event {
	r.t.Helper()
	if o.content == nil {
		o.content = map[string]any{}
	}
	contentJSON, err := json.Marshal(o.content)
	if err != nil {
		r.t.Fatal(err)
	}
	if o.auth == nil {
		o.auth = SelectAuthEvents(o.typ, o.sk, o.sender, contentJSON, r.rv, r.state)
	}
	if o.prev == nil && r.last != "" {
		o.prev = []string{r.last}
	}
	if o.id == "" {
		o.id = r.newEventID(o.sender)
	}
	pdu := map[string]any{
		"type":             o.typ,
		"sender":           o.sender,
		"content":          json.RawMessage(contentJSON),
		"prev_events":      r.refs(o.prev),
		"auth_events":      r.refs(o.auth),
		"depth":            r.n,
		"origin_server_ts": 1700000000000 + int64(r.n),
	}
	if !o.noRoomID {
		if o.roomID == "" {
			o.roomID = r.roomID
		}
		pdu["room_id"] = o.roomID
	}
	if o.sk != nil {
		pdu["state_key"] = *o.sk
	}
	if o.redacts != "" {
		if r.rv.RedactsInContent {
			var c map[string]any
			_ = json.Unmarshal(contentJSON, &c)
			c["redacts"] = o.redacts
			b, _ := json.Marshal(c)
			pdu["content"] = json.RawMessage(b)
		} else {
			pdu["redacts"] = o.redacts
		}
	}
	for k, v := range o.extra {
		pdu[k] = v
	}
	raw, err := json.Marshal(pdu)
	if err != nil {
		r.t.Fatal(err)
	}
	ev, err := NewEventFromTrustedJSON(raw, r.rv, o.id)
	if err != nil {
		r.t.Fatal(err)
	}
	return ev
}

// store records ev as known (so it can be an auth event) without applying it.
func (r *atRoom) store(ev *Event) *Event {
	r.events[ev.EventID()] = ev
	return ev
}

// add checks ev against its auth events and the current state, fails the
// test if it is not allowed, and applies it.
func (r *atRoom) add(o atEv) *Event {
	r.t.Helper()
	ev := r.build(o)
	r.store(ev)
	if err := AllowedByAuthEvents(ev, r.lookup, r.isRejected); err != nil {
		r.t.Fatalf("setup event %s (%s %v by %s) refused: %v", ev.EventID(), o.typ, o.content, o.sender, err)
	}
	if err := AllowedByState(ev, r.state, r.lookup); err != nil {
		r.t.Fatalf("setup event %s refused by current state: %v", ev.EventID(), err)
	}
	if ev.IsState() {
		r.state[ev.StateTuple()] = ev.EventID()
	}
	r.last = ev.EventID()
	return ev
}

func (r *atRoom) member(sender, target, membership string, extra map[string]any) *Event {
	r.t.Helper()
	return r.add(atEv{typ: TypeMember, sk: atSK(target), sender: sender, content: atMember(membership, extra)})
}

func atMember(membership string, extra map[string]any) map[string]any {
	c := map[string]any{"membership": membership}
	for k, v := range extra {
		c[k] = v
	}
	return c
}

// newATRoom creates a room: the create event (creator alice) only.
func newATRoom(t testing.TB, rv *RoomVersion, createContent map[string]any) *atRoom {
	t.Helper()
	return newATRoomTagged(t, rv, createContent, "r")
}

// newATRoomTagged is newATRoom with IDs distinct from rooms of other tags.
func newATRoomTagged(t testing.TB, rv *RoomVersion, createContent map[string]any, tag string) *atRoom {
	t.Helper()
	r := &atRoom{t: t, rv: rv, events: map[string]*Event{}, state: StateMap{}, rejected: map[string]bool{}, tag: tag}
	content := map[string]any{"room_version": string(rv.ID)}
	if !rv.ImplicitCreator {
		content["creator"] = atAlice
	}
	for k, v := range createContent {
		if v == nil {
			delete(content, k)
			continue
		}
		content[k] = v
	}
	o := atEv{typ: TypeCreate, sk: atSK(""), sender: atAlice, content: content, auth: []string{}, prev: []string{}}
	if rv.RoomIDFromCreateEvent {
		o.noRoomID = true
		o.id = "$create_" + string(rv.ID) + "_" + tag
		r.roomID = "!" + o.id[1:]
	} else {
		r.roomID = "!" + tag + string(rv.ID) + ":a.test"
	}
	r.create = r.add(o)
	return r
}

// atBasePL is the standard power levels content: mod and peer at 50 and, in
// versions without privileged creators, alice at 100.
func atBasePL(rv *RoomVersion, over map[string]any) map[string]any {
	users := map[string]any{atMod: 50, atPeer: 50}
	if !rv.PrivilegedCreators {
		users[atAlice] = 100
	}
	c := map[string]any{"users": users}
	for k, v := range over {
		if v == nil {
			delete(c, k)
			continue
		}
		c[k] = v
	}
	return c
}

// newBaseRoom is a typical room: alice creates and joins, sets the standard
// power levels and the given join rule, and bob, mod and peer join (they are
// invited first unless the room is public).
func newBaseRoom(t testing.TB, rv *RoomVersion, joinRule string) *atRoom {
	t.Helper()
	r := newATRoom(t, rv, nil)
	r.member(atAlice, atAlice, MembershipJoin, nil)
	r.setPL(nil)
	r.add(atEv{typ: TypeJoinRules, sk: atSK(""), sender: atAlice, content: map[string]any{"join_rule": JoinRulePublic}})
	for _, u := range []string{atBob, atMod, atPeer} {
		r.member(u, u, MembershipJoin, nil)
	}
	if joinRule != JoinRulePublic {
		r.add(atEv{typ: TypeJoinRules, sk: atSK(""), sender: atAlice, content: map[string]any{"join_rule": joinRule}})
	}
	return r
}

// setPL has alice send the standard power levels with overrides.
func (r *atRoom) setPL(over map[string]any) *Event {
	r.t.Helper()
	return r.add(atEv{typ: TypePowerLevels, sk: atSK(""), sender: atAlice, content: atBasePL(r.rv, over)})
}

func (r *atRoom) setJoinRule(rule string, extra map[string]any) *Event {
	r.t.Helper()
	c := map[string]any{"join_rule": rule}
	for k, v := range extra {
		c[k] = v
	}
	return r.add(atEv{typ: TypeJoinRules, sk: atSK(""), sender: atAlice, content: c})
}

// ruleOf returns the rule an *AuthError names, "" for nil, and fails the
// test on any other error.
func ruleOf(t testing.TB, err error) AuthRule {
	t.Helper()
	if err == nil {
		return ""
	}
	var ae *AuthError
	if !errors.As(err, &ae) {
		t.Fatalf("not an *AuthError: %v", err)
	}
	return ae.Rule
}

// check runs ev through AllowedByAuthEvents and returns the rule.
func (r *atRoom) check(ev *Event) AuthRule {
	r.t.Helper()
	r.store(ev)
	return ruleOf(r.t, AllowedByAuthEvents(ev, r.lookup, r.isRejected))
}
