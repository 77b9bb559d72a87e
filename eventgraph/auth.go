package eventgraph

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// The authorization rules of room versions 1–12 (content/rooms/v*.md,
// fragments v1-, v3- and v8-auth-rules). Receipt of a PDU runs them three
// times (server-server API, "Checks performed on receipt of a PDU"):
//
//   - against the event's own auth_events: AllowedByAuthEvents, which is
//     CheckAuthEvents (the rules about the auth_events list itself) followed
//     by Allowed;
//   - against the state before the event, and against the current state
//     (soft failure): AllowedByState, which is Allowed over a StateMap.
//
// State resolution's iterative auth checks call Allowed with a
// FallbackAuthEvents (the state being built, then the event's own
// non-rejected auth events from LoadAuthEvents).

// AuthRule identifies the authorization rule that rejected an event. The
// identifiers are stable across room versions, whose rule numbering shifts.
type AuthRule string

// Rules about m.room.create events (rule 1).
const (
	RuleCreateContent            AuthRule = "create.content"             // content is not an object (the Event constructors refuse it already)
	RuleCreatePrevEvents         AuthRule = "create.prev_events"         // has prev_events
	RuleCreateRoomIDDomain       AuthRule = "create.room_id_domain"      // v1–v11: room_id domain ≠ sender domain
	RuleCreateRoomID             AuthRule = "create.room_id"             // v12: has a room_id
	RuleCreateRoomVersion        AuthRule = "create.room_version"        // unrecognised content.room_version
	RuleCreateCreator            AuthRule = "create.creator"             // v1–v10: no content.creator
	RuleCreateAdditionalCreators AuthRule = "create.additional_creators" // v12: not an array of user IDs
)

// Rules about the room and the auth events (v12 rule 2; rule 2 in v1–v11,
// rule 3 in v12; MSC4307).
const (
	RuleRoomIDCreate          AuthRule = "room_id.create"           // v12: room_id is not an accepted create event's ID
	RuleAuthEventsDuplicate   AuthRule = "auth_events.duplicate"    // two entries for one (type, state_key)
	RuleAuthEventsUnexpected  AuthRule = "auth_events.unexpected"   // an entry the selection does not name
	RuleAuthEventsCreate      AuthRule = "auth_events.create"       // v12: the create event is listed
	RuleAuthEventsRejected    AuthRule = "auth_events.rejected"     // an entry was itself rejected
	RuleAuthEventsNoCreate    AuthRule = "auth_events.no_create"    // v1–v11: no create event
	RuleAuthEventsRoom        AuthRule = "auth_events.room_id"      // an auth event of another room (MSC4307)
	RuleFederate              AuthRule = "m.federate"               // m.federate false, sender of another server
	RuleAuthStateInvalid      AuthRule = "auth_state.invalid"       // a current auth event cannot be read
	RuleAliasesStateKey       AuthRule = "aliases.state_key"        // v1–v5: m.room.aliases without state_key
	RuleAliasesDomain         AuthRule = "aliases.domain"           // v1–v5: state_key ≠ sender's domain
	RuleSenderMembership      AuthRule = "sender.membership"        // sender not joined
	RuleThirdPartyInviteLevel AuthRule = "third_party_invite.level" // below the invite level
	RuleEventLevel            AuthRule = "event.level"              // below the event type's required level
	RuleStateKeyUser          AuthRule = "state_key.user"           // "@…" state_key of another user
	RuleRedactionLevel        AuthRule = "redaction.level"          // v1–v2: below redact level, other domain
)

// Rules about m.room.member events.
const (
	RuleMemberMalformed        AuthRule = "member.malformed"             // no state_key or no membership
	RuleMemberUnknown          AuthRule = "member.unknown"               // unknown membership
	RuleJoinSender             AuthRule = "member.join.sender"           // sender ≠ state_key
	RuleJoinBanned             AuthRule = "member.join.banned"           // sender banned
	RuleJoinAuthoriser         AuthRule = "member.join.authoriser"       // restricted: authorising user cannot
	RuleJoinRule               AuthRule = "member.join.join_rule"        // the join rule does not allow it
	RuleInviteThirdPartyBanned AuthRule = "member.invite.3pid.banned"    // target banned
	RuleInviteThirdPartySigned AuthRule = "member.invite.3pid.signed"    // no signed / mxid / token
	RuleInviteThirdPartyMXID   AuthRule = "member.invite.3pid.mxid"      // mxid ≠ state_key
	RuleInviteThirdPartyEvent  AuthRule = "member.invite.3pid.event"     // no m.room.third_party_invite for token
	RuleInviteThirdPartySender AuthRule = "member.invite.3pid.sender"    // sender ≠ third-party invite's sender
	RuleInviteThirdPartySig    AuthRule = "member.invite.3pid.signature" // no signature verifies
	RuleInviteSenderMembership AuthRule = "member.invite.sender"         // sender not joined
	RuleInviteTargetMembership AuthRule = "member.invite.target"         // target joined or banned
	RuleInviteLevel            AuthRule = "member.invite.level"          // below the invite level
	RuleLeaveSelf              AuthRule = "member.leave.self"            // leaving while not invited/joined/knocking
	RuleLeaveSenderMembership  AuthRule = "member.leave.sender"          // kicker not joined
	RuleLeaveUnbanLevel        AuthRule = "member.leave.unban_level"     // unban below the ban level
	RuleLeaveKickLevel         AuthRule = "member.leave.kick_level"      // below kick level or target's level
	RuleBanSenderMembership    AuthRule = "member.ban.sender"            // banner not joined
	RuleBanLevel               AuthRule = "member.ban.level"             // below ban level or target's level
	RuleKnockJoinRule          AuthRule = "member.knock.join_rule"       // join rule is not knock(_restricted)
	RuleKnockSender            AuthRule = "member.knock.sender"          // sender ≠ state_key
	RuleKnockMembership        AuthRule = "member.knock.membership"      // sender banned, invited or joined
)

// Rules about m.room.power_levels events.
const (
	RulePowerLevelsIntegers AuthRule = "power_levels.integers" // a level property is not a (legal) integer
	RulePowerLevelsObjects  AuthRule = "power_levels.objects"  // events/notifications not objects of integers
	RulePowerLevelsUsers    AuthRule = "power_levels.users"    // users not an object of user ID → integer
	RulePowerLevelsCreators AuthRule = "power_levels.creators" // v12: users lists a creator
	RulePowerLevelsChange   AuthRule = "power_levels.change"   // changes a level property beyond the sender
	RulePowerLevelsEvents   AuthRule = "power_levels.events"   // changes events/notifications beyond the sender
	RulePowerLevelsUserRank AuthRule = "power_levels.user"     // changes a user at or above the sender
)

// AuthError is an event failing the authorization rules. Other errors of the
// functions here (a failing lookup, a missing event) are not *AuthError: they
// say nothing about the event itself.
type AuthError struct {
	EventID string
	Version RoomVersionID
	Rule    AuthRule
	Reason  string
}

func (e *AuthError) Error() string {
	return fmt.Sprintf("eventgraph: event %s not authorised (room version %s, rule %s): %s", e.EventID, e.Version, e.Rule, e.Reason)
}

// ErrMissingAuthEvent is wrapped by the error of CheckAuthEvents and
// AllowedByAuthEvents when an auth event (or, in v12, the create event) is
// unknown to the lookup: fetch it and check again.
var ErrMissingAuthEvent = errors.New("eventgraph: auth event is missing")

// AuthEvents gives the authorization rules the state they read. It is
// implemented by AuthEventMap (an event's own auth events), StateAuthEvents
// (a room state) and FallbackAuthEvents (one, then the other).
type AuthEvents interface {
	// AuthEvent returns the event that holds key, or nil if there is none.
	AuthEvent(key StateKey) (*Event, error)
}

// AuthEventMap is a small set of auth events keyed by (type, state_key).
type AuthEventMap map[StateKey]*Event

// AuthEvent implements AuthEvents.
func (m AuthEventMap) AuthEvent(key StateKey) (*Event, error) { return m[key], nil }

// StateAuthEvents reads auth events from a room state; Lookup fetches the
// events the state names and must find them all.
type StateAuthEvents struct {
	State  StateMap
	Lookup func(eventID string) (*Event, error)
}

// AuthEvent implements AuthEvents.
func (s StateAuthEvents) AuthEvent(key StateKey) (*Event, error) {
	id, ok := s.State[key]
	if !ok {
		return nil, nil
	}
	ev, err := s.Lookup(id)
	if err != nil {
		return nil, fmt.Errorf("look up state event %s for %s: %w", id, key, err)
	}
	if ev == nil {
		return nil, fmt.Errorf("%w: state event %s for %s", ErrMissingAuthEvent, id, key)
	}
	return ev, nil
}

// FallbackAuthEvents answers from Primary, and from Fallback for keys that
// Primary lacks: the iterative auth checks of state resolution use the state
// being built, then the event's own (non-rejected) auth events.
type FallbackAuthEvents struct {
	Primary, Fallback AuthEvents
}

// AuthEvent implements AuthEvents.
func (f FallbackAuthEvents) AuthEvent(key StateKey) (*Event, error) {
	ev, err := f.Primary.AuthEvent(key)
	if err != nil || ev != nil {
		return ev, err
	}
	return f.Fallback.AuthEvent(key)
}

// AllowedByState checks ev against a room state (the state before the event,
// or the current state for soft failure): the auth events are the state's
// events for the keys the selection rules name, which are exactly the keys
// Allowed reads.
func AllowedByState(ev *Event, state StateMap, lookup func(eventID string) (*Event, error)) error {
	return Allowed(ev, StateAuthEvents{State: state, Lookup: lookup})
}

// AllowedByAuthEvents checks ev against its own auth_events: the checks of
// CheckAuthEvents, then Allowed. rejected reports events this server
// rejected; nil means none.
func AllowedByAuthEvents(ev *Event, lookup func(eventID string) (*Event, error), rejected func(eventID string) bool) error {
	auth, err := CheckAuthEvents(ev, lookup, rejected)
	if err != nil {
		return err
	}
	return Allowed(ev, auth)
}

// CheckAuthEvents applies the rules about an event's auth_events list (rule
// 2 in v1–v11; rules 2 and 3 in v12): no two entries for one (type,
// state_key); only entries the auth events selection names (in v12 never the
// create event); none rejected; a create event among them (v1–v11); all in
// the event's room (MSC4307); and in v12 the room ID naming an accepted create
// event. It returns the auth events (plus, in v12, the create event) for
// Allowed. A create event has no auth events to check.
func CheckAuthEvents(ev *Event, lookup func(eventID string) (*Event, error), rejected func(eventID string) bool) (AuthEventMap, error) {
	if ev == nil {
		return nil, errors.New("eventgraph: check auth events: nil event")
	}
	if rejected == nil {
		rejected = func(string) bool { return false }
	}
	rv := ev.Version()
	deny := func(rule AuthRule, format string, args ...any) error {
		return &AuthError{EventID: ev.EventID(), Version: rv.ID, Rule: rule, Reason: fmt.Sprintf(format, args...)}
	}
	if ev.Type() == TypeCreate {
		return AuthEventMap{}, nil
	}
	ids := ev.AuthEventIDs()
	m := make(AuthEventMap, len(ids)+1)

	var create *Event
	if rv.RoomIDFromCreateEvent {
		createID, ok := createEventIDFromRoomID(ev.RoomID())
		if !ok {
			return nil, deny(RuleRoomIDCreate, "room_id %q is not a create event ID with sigil !", ev.RoomID())
		}
		c, err := lookup(createID)
		if err != nil {
			return nil, fmt.Errorf("eventgraph: auth events of %s: look up create event %s: %w", ev.EventID(), createID, err)
		}
		if c == nil {
			return nil, fmt.Errorf("%w: create event %s of %s", ErrMissingAuthEvent, createID, ev.EventID())
		}
		if c.Type() != TypeCreate || !c.StateKeyEquals("") {
			return nil, deny(RuleRoomIDCreate, "room_id names event %s of type %s, not a create event", createID, c.Type())
		}
		if rejected(createID) {
			return nil, deny(RuleRoomIDCreate, "create event %s was rejected", createID)
		}
		create = c
	}

	events := make([]*Event, len(ids))
	for i, id := range ids {
		a, err := lookup(id)
		if err != nil {
			return nil, fmt.Errorf("eventgraph: auth events of %s: look up %s: %w", ev.EventID(), id, err)
		}
		if a == nil {
			return nil, fmt.Errorf("%w: %s, auth event of %s", ErrMissingAuthEvent, id, ev.EventID())
		}
		events[i] = a
	}

	// Duplicates: two entries with one (type, state_key), including the same
	// event listed twice.
	for _, a := range events {
		if !a.IsState() {
			continue // refused below as unexpected
		}
		k := a.StateTuple()
		if prev, dup := m[k]; dup {
			return nil, deny(RuleAuthEventsDuplicate, "auth events %s and %s are both %s", prev.EventID(), a.EventID(), k)
		}
		m[k] = a
	}
	// Entries the auth events selection does not name.
	needed := AuthEventsNeededFor(ev)
	for _, a := range events {
		if !a.IsState() {
			return nil, deny(RuleAuthEventsUnexpected, "auth event %s (%s) is not a state event", a.EventID(), a.Type())
		}
		k := a.StateTuple()
		if rv.RoomIDFromCreateEvent && k.Type == TypeCreate {
			return nil, deny(RuleAuthEventsCreate, "auth event %s is the create event, which this room version leaves out", a.EventID())
		}
		if !containsKey(needed, k) {
			return nil, deny(RuleAuthEventsUnexpected, "auth event %s is %s, which the auth events selection does not name", a.EventID(), k)
		}
	}
	for _, a := range events {
		if rejected(a.EventID()) {
			return nil, deny(RuleAuthEventsRejected, "auth event %s was rejected", a.EventID())
		}
	}
	if !rv.RoomIDFromCreateEvent {
		if _, ok := m[StateKey{Type: TypeCreate}]; !ok {
			return nil, deny(RuleAuthEventsNoCreate, "auth events hold no create event")
		}
	}
	for _, a := range events {
		if a.RoomID() != ev.RoomID() {
			return nil, deny(RuleAuthEventsRoom, "auth event %s is in room %q, not %q", a.EventID(), a.RoomID(), ev.RoomID())
		}
	}
	if create != nil {
		m[StateKey{Type: TypeCreate}] = create
	}
	return m, nil
}

func containsKey(keys []StateKey, k StateKey) bool {
	for _, x := range keys {
		if x == k {
			return true
		}
	}
	return false
}

// LoadAuthEvents returns ev's own auth events (and, in v12, its create event)
// without checking them, leaving out events the lookup lacks and those skip
// reports (nil skips none). State resolution uses it as the fallback of its
// iterative auth checks, with skip reporting rejected events.
func LoadAuthEvents(ev *Event, lookup func(eventID string) (*Event, error), skip func(eventID string) bool) (AuthEventMap, error) {
	ids := ev.AuthEventIDs()
	m := make(AuthEventMap, len(ids)+1)
	add := func(id string) error {
		if skip != nil && skip(id) {
			return nil
		}
		a, err := lookup(id)
		if err != nil {
			return fmt.Errorf("eventgraph: auth events of %s: look up %s: %w", ev.EventID(), id, err)
		}
		if a != nil && a.IsState() {
			m[a.StateTuple()] = a
		}
		return nil
	}
	for _, id := range ids {
		if err := add(id); err != nil {
			return nil, err
		}
	}
	if ev.Version().RoomIDFromCreateEvent && ev.Type() != TypeCreate {
		if id, ok := createEventIDFromRoomID(ev.RoomID()); ok {
			if err := add(id); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// Allowed applies the authorization rules of ev's room version to ev, given
// the auth events to read (its own, or a room state's). It returns nil if the
// event is allowed, an *AuthError naming the rule if it is not, and another
// error if reading the auth events failed.
//
// The rules about the auth_events list itself are CheckAuthEvents'; Allowed
// still refuses any auth event it reads from another room (MSC4307) and, in
// v12, a create event whose ID does not match the room ID.
//
// Signature checks are not auth rules here: the v8+ rule that an event with
// join_authorised_via_users_server be signed by that user's server is
// enforced by the signature layer, which has the server keys, before these
// rules run.
func Allowed(ev *Event, authEvents AuthEvents) error {
	if ev == nil {
		return errors.New("eventgraph: auth: nil event")
	}
	if authEvents == nil {
		authEvents = AuthEventMap(nil)
	}
	c := &authCheck{ev: ev, rv: ev.Version(), auth: authEvents}
	return c.run()
}

// authCheck is one run of the rules over one event.
type authCheck struct {
	ev   *Event
	rv   *RoomVersion
	auth AuthEvents

	create   *Event
	cc       *createContent
	levels   *PowerLevels
	plEvent  *Event
	plLoaded bool
}

func (c *authCheck) deny(rule AuthRule, format string, args ...any) error {
	return &AuthError{EventID: c.ev.EventID(), Version: c.rv.ID, Rule: rule, Reason: fmt.Sprintf(format, args...)}
}

// get reads the auth event for key and checks that it is what was asked for
// and in the event's room.
func (c *authCheck) get(key StateKey) (*Event, error) {
	a, err := c.auth.AuthEvent(key)
	if err != nil {
		return nil, fmt.Errorf("eventgraph: auth of %s: %w", c.ev.EventID(), err)
	}
	if a == nil {
		return nil, nil
	}
	if a.Type() != key.Type || !a.StateKeyEquals(key.StateKey) {
		return nil, fmt.Errorf("eventgraph: auth of %s: auth event for %s is %s (%s)", c.ev.EventID(), key, a.EventID(), a.StateTuple())
	}
	if a.RoomID() != c.ev.RoomID() {
		return nil, c.deny(RuleAuthEventsRoom, "auth event %s is in room %q, not %q", a.EventID(), a.RoomID(), c.ev.RoomID())
	}
	return a, nil
}

func (c *authCheck) member(userID string) (*Event, error) {
	return c.get(StateKey{Type: TypeMember, StateKey: userID})
}

func (c *authCheck) membership(userID string) (string, error) {
	m, err := c.member(userID)
	if err != nil {
		return "", err
	}
	return membershipOf(m), nil
}

// powerLevels returns the current power levels (read once).
func (c *authCheck) powerLevels() (*PowerLevels, error) {
	if c.plLoaded {
		return c.levels, nil
	}
	pe, err := c.get(StateKey{Type: TypePowerLevels})
	if err != nil {
		return nil, err
	}
	levels, err := newPowerLevels(c.rv, c.cc.creators(c.create), pe)
	if err != nil {
		return nil, c.deny(RuleAuthStateInvalid, "current power levels: %v", err)
	}
	c.levels, c.plEvent, c.plLoaded = levels, pe, true
	return levels, nil
}

func (c *authCheck) userLevel(userID string) (PowerLevel, error) {
	pl, err := c.powerLevels()
	if err != nil {
		return PowerLevel{}, err
	}
	return pl.UserLevel(userID), nil
}

func (c *authCheck) run() error {
	ev, rv := c.ev, c.rv
	if ev.Type() == TypeCreate {
		return c.checkCreate()
	}

	// The create event: v12 rule 2 (room_id is its ID), v1–v11 rule 2.4.
	create, err := c.get(StateKey{Type: TypeCreate})
	if err != nil {
		return err
	}
	if rv.RoomIDFromCreateEvent {
		want, ok := createEventIDFromRoomID(ev.RoomID())
		if !ok {
			return c.deny(RuleRoomIDCreate, "room_id %q is not a create event ID with sigil !", ev.RoomID())
		}
		if create == nil {
			return c.deny(RuleRoomIDCreate, "no create event %s", want)
		}
		if create.EventID() != want {
			return c.deny(RuleRoomIDCreate, "room_id %q does not name create event %s", ev.RoomID(), create.EventID())
		}
	} else if create == nil {
		return c.deny(RuleAuthEventsNoCreate, "no create event")
	}
	c.create = create
	if c.cc, err = parseCreateContent(create); err != nil {
		return c.deny(RuleAuthStateInvalid, "%v", err)
	}

	// m.federate (rule 3; rule 4 in v12).
	if !c.cc.federates() && domainOf(ev.Sender()) != domainOf(create.Sender()) {
		return c.deny(RuleFederate, "room does not federate and sender %s is not on %s", ev.Sender(), domainOf(create.Sender()))
	}

	// m.room.aliases (v1–v5 rule 4), decided before membership is asked.
	if rv.AliasesAuthRule && ev.Type() == TypeAliases {
		sk := ev.StateKey()
		if sk == nil {
			return c.deny(RuleAliasesStateKey, "m.room.aliases has no state_key")
		}
		if *sk != domainOf(ev.Sender()) {
			return c.deny(RuleAliasesDomain, "state_key %q is not the sender's domain %q", *sk, domainOf(ev.Sender()))
		}
		return nil
	}

	if ev.Type() == TypeMember {
		return c.checkMember()
	}

	senderMembership, err := c.membership(ev.Sender())
	if err != nil {
		return err
	}
	if senderMembership != MembershipJoin {
		return c.deny(RuleSenderMembership, "sender %s is not joined (membership %q)", ev.Sender(), senderMembership)
	}
	pl, err := c.powerLevels()
	if err != nil {
		return err
	}
	senderLevel := pl.UserLevel(ev.Sender())

	if ev.Type() == TypeThirdPartyInvite {
		if !senderLevel.AtLeast(pl.Invite()) {
			return c.deny(RuleThirdPartyInviteLevel, "sender level %s is below the invite level %d", senderLevel, pl.Invite())
		}
		return nil
	}
	if need := pl.EventLevel(ev.Type(), ev.IsState()); !senderLevel.AtLeast(need) {
		return c.deny(RuleEventLevel, "sender level %s is below the %d required for %s", senderLevel, need, ev.Type())
	}
	if sk := ev.StateKey(); sk != nil && strings.HasPrefix(*sk, "@") && *sk != ev.Sender() {
		return c.deny(RuleStateKeyUser, "state_key %q names a user other than the sender", *sk)
	}
	if ev.Type() == TypePowerLevels {
		return c.checkPowerLevels(pl, senderLevel)
	}
	if rv.RedactionAuthRule && ev.Type() == TypeRedaction {
		if senderLevel.AtLeast(pl.Redact()) {
			return nil
		}
		if d := domainOf(ev.Redacts()); d != "" && d == domainOf(ev.EventID()) {
			return nil
		}
		return c.deny(RuleRedactionLevel, "sender level %s is below the redact level %d and %s is not from this event's domain", senderLevel, pl.Redact(), ev.Redacts())
	}
	return nil
}

// checkCreate is rule 1.
func (c *authCheck) checkCreate() error {
	ev, rv := c.ev, c.rv
	if len(ev.PrevEventIDs()) > 0 {
		return c.deny(RuleCreatePrevEvents, "create event has prev_events")
	}
	cc, err := parseCreateContent(ev)
	if err != nil {
		return c.deny(RuleCreateContent, "%v", err)
	}
	if rv.RoomIDFromCreateEvent {
		if hasTopLevelKeyAuth(ev.JSON(), "room_id") {
			return c.deny(RuleCreateRoomID, "create event has a room_id")
		}
	} else if d := domainOf(ev.RoomID()); d == "" || d != domainOf(ev.Sender()) {
		return c.deny(RuleCreateRoomIDDomain, "room_id %q is not on the sender's server %q", ev.RoomID(), domainOf(ev.Sender()))
	}
	if cc.RoomVersion != nil {
		v, ok := authDecodeString(cc.RoomVersion)
		if !ok {
			return c.deny(RuleCreateRoomVersion, "content.room_version %s is not a string", cc.RoomVersion)
		}
		if _, ok := GetRoomVersion(RoomVersionID(v)); !ok {
			return c.deny(RuleCreateRoomVersion, "content.room_version %q is not a recognised room version", v)
		}
	}
	if !rv.ImplicitCreator && cc.Creator == nil {
		return c.deny(RuleCreateCreator, "content has no creator")
	}
	if rv.PrivilegedCreators && cc.AdditionalCreators != nil {
		var list []json.RawMessage
		if !decodeAuthArray(cc.AdditionalCreators, &list) {
			return c.deny(RuleCreateAdditionalCreators, "additional_creators is not an array")
		}
		for i, raw := range list {
			if u, ok := authDecodeString(raw); !ok || !validUserIDForAuth(u) {
				return c.deny(RuleCreateAdditionalCreators, "additional_creators[%d] %s is not a valid user ID", i, raw)
			}
		}
	}
	return nil
}

// checkMember is the m.room.member rule (rule 5 in v1–v5 and v12, 4 in v6–v11).
func (c *authCheck) checkMember() error {
	ev, rv := c.ev, c.rv
	sk := ev.StateKey()
	if sk == nil {
		return c.deny(RuleMemberMalformed, "m.room.member has no state_key")
	}
	mc, err := parseMemberContent(ev.Content())
	if err != nil || !mc.HasMembership {
		return c.deny(RuleMemberMalformed, "content has no membership")
	}
	target := *sk
	// v8+: a join_authorised_via_users_server key must be signed for by that
	// user's server; the signature layer checks it (see Allowed).
	switch mc.Membership {
	case MembershipJoin:
		return c.checkJoin(target, mc)
	case MembershipInvite:
		return c.checkInvite(target, mc)
	case MembershipLeave:
		return c.checkLeave(target)
	case MembershipBan:
		return c.checkBan(target)
	case MembershipKnock:
		if rv.Knock {
			return c.checkKnock(target)
		}
	}
	return c.deny(RuleMemberUnknown, "membership %q is not known in room version %s", mc.Membership, rv.ID)
}

func (c *authCheck) joinRule() (string, error) {
	jr, err := c.get(StateKey{Type: TypeJoinRules})
	if err != nil {
		return "", err
	}
	return JoinRule(jr), nil
}

func (c *authCheck) checkJoin(target string, mc *memberContent) error {
	ev, rv := c.ev, c.rv
	// The creator's first join, straight after the create event. Before v11
	// the creator is content.creator, from v11 the create event's sender.
	if prev := ev.PrevEventIDs(); len(prev) == 1 && prev[0] == c.create.EventID() {
		creator := c.create.Sender()
		if !rv.ImplicitCreator {
			creator, _ = authDecodeString(c.cc.Creator)
		}
		if creator != "" && target == creator {
			return nil
		}
	}
	if ev.Sender() != target {
		return c.deny(RuleJoinSender, "sender %s cannot join for %s", ev.Sender(), target)
	}
	m, err := c.membership(target)
	if err != nil {
		return err
	}
	if m == MembershipBan {
		return c.deny(RuleJoinBanned, "%s is banned", target)
	}
	rule, err := c.joinRule()
	if err != nil {
		return err
	}
	if rule == JoinRuleInvite || (rv.Knock && rule == JoinRuleKnock) {
		if m == MembershipInvite || m == MembershipJoin {
			return nil
		}
	}
	if (rv.Restricted && rule == JoinRuleRestricted) || (rv.KnockRestricted && rule == JoinRuleKnockRestricted) {
		if m == MembershipInvite || m == MembershipJoin {
			return nil
		}
		via := mc.AuthorisedVia
		if !mc.HasAuthorisedVia || via == "" {
			return c.deny(RuleJoinAuthoriser, "join rule %s needs join_authorised_via_users_server", rule)
		}
		vm, err := c.membership(via)
		if err != nil {
			return err
		}
		if vm != MembershipJoin {
			return c.deny(RuleJoinAuthoriser, "authorising user %s is not joined", via)
		}
		pl, err := c.powerLevels()
		if err != nil {
			return err
		}
		if lvl := pl.UserLevel(via); !lvl.AtLeast(pl.Invite()) {
			return c.deny(RuleJoinAuthoriser, "authorising user %s has level %s, below the invite level %d", via, lvl, pl.Invite())
		}
		return nil
	}
	if rule == JoinRulePublic {
		return nil
	}
	return c.deny(RuleJoinRule, "join rule %q does not let %s (membership %q) join", rule, target, m)
}

func (c *authCheck) checkInvite(target string, mc *memberContent) error {
	ev := c.ev
	targetM, err := c.membership(target)
	if err != nil {
		return err
	}
	if mc.ThirdPartyInvite != nil {
		return c.checkThirdPartyInvite(target, targetM, mc)
	}
	senderM, err := c.membership(ev.Sender())
	if err != nil {
		return err
	}
	if senderM != MembershipJoin {
		return c.deny(RuleInviteSenderMembership, "inviter %s is not joined (membership %q)", ev.Sender(), senderM)
	}
	if targetM == MembershipJoin || targetM == MembershipBan {
		return c.deny(RuleInviteTargetMembership, "%s cannot be invited with membership %q", target, targetM)
	}
	pl, err := c.powerLevels()
	if err != nil {
		return err
	}
	if lvl := pl.UserLevel(ev.Sender()); !lvl.AtLeast(pl.Invite()) {
		return c.deny(RuleInviteLevel, "inviter level %s is below the invite level %d", lvl, pl.Invite())
	}
	return nil
}

func (c *authCheck) checkThirdPartyInvite(target, targetM string, mc *memberContent) error {
	ev := c.ev
	if targetM == MembershipBan {
		return c.deny(RuleInviteThirdPartyBanned, "%s is banned", target)
	}
	signed, ok := mc.thirdPartySigned()
	if !ok {
		return c.deny(RuleInviteThirdPartySigned, "third_party_invite has no signed object")
	}
	rawMXID, _ := authField(signed, "mxid")
	rawToken, _ := authField(signed, "token")
	mxid, okMXID := authDecodeString(rawMXID)
	token, okToken := authDecodeString(rawToken)
	if !okMXID || !okToken {
		return c.deny(RuleInviteThirdPartySigned, "third_party_invite.signed lacks string mxid and token")
	}
	if mxid != target {
		return c.deny(RuleInviteThirdPartyMXID, "signed mxid %s is not the state_key %s", mxid, target)
	}
	inv, err := c.get(StateKey{Type: TypeThirdPartyInvite, StateKey: token})
	if err != nil {
		return err
	}
	if inv == nil {
		return c.deny(RuleInviteThirdPartyEvent, "no m.room.third_party_invite for token %q", token)
	}
	if inv.Sender() != ev.Sender() {
		return c.deny(RuleInviteThirdPartySender, "sender %s did not send third-party invite %s (%s did)", ev.Sender(), inv.EventID(), inv.Sender())
	}
	if !verifyThirdPartySigned(signed, thirdPartyInviteKeys(inv)) {
		return c.deny(RuleInviteThirdPartySig, "no signature in signed verifies with a public key of %s", inv.EventID())
	}
	return nil
}

func (c *authCheck) checkLeave(target string) error {
	ev, rv := c.ev, c.rv
	if ev.Sender() == target {
		m, err := c.membership(target)
		if err != nil {
			return err
		}
		if m == MembershipInvite || m == MembershipJoin || (rv.Knock && m == MembershipKnock) {
			return nil
		}
		return c.deny(RuleLeaveSelf, "%s cannot leave with membership %q", target, m)
	}
	senderM, err := c.membership(ev.Sender())
	if err != nil {
		return err
	}
	if senderM != MembershipJoin {
		return c.deny(RuleLeaveSenderMembership, "sender %s is not joined (membership %q)", ev.Sender(), senderM)
	}
	targetM, err := c.membership(target)
	if err != nil {
		return err
	}
	pl, err := c.powerLevels()
	if err != nil {
		return err
	}
	senderLevel, targetLevel := pl.UserLevel(ev.Sender()), pl.UserLevel(target)
	if targetM == MembershipBan && !senderLevel.AtLeast(pl.Ban()) {
		return c.deny(RuleLeaveUnbanLevel, "sender level %s is below the ban level %d needed to unban", senderLevel, pl.Ban())
	}
	if senderLevel.AtLeast(pl.Kick()) && targetLevel.Compare(senderLevel) < 0 {
		return nil
	}
	return c.deny(RuleLeaveKickLevel, "sender level %s does not reach the kick level %d or exceed the target's %s", senderLevel, pl.Kick(), targetLevel)
}

func (c *authCheck) checkBan(target string) error {
	ev := c.ev
	senderM, err := c.membership(ev.Sender())
	if err != nil {
		return err
	}
	if senderM != MembershipJoin {
		return c.deny(RuleBanSenderMembership, "sender %s is not joined (membership %q)", ev.Sender(), senderM)
	}
	pl, err := c.powerLevels()
	if err != nil {
		return err
	}
	senderLevel, targetLevel := pl.UserLevel(ev.Sender()), pl.UserLevel(target)
	if senderLevel.AtLeast(pl.Ban()) && targetLevel.Compare(senderLevel) < 0 {
		return nil
	}
	return c.deny(RuleBanLevel, "sender level %s does not reach the ban level %d or exceed the target's %s", senderLevel, pl.Ban(), targetLevel)
}

func (c *authCheck) checkKnock(target string) error {
	ev, rv := c.ev, c.rv
	rule, err := c.joinRule()
	if err != nil {
		return err
	}
	if rule != JoinRuleKnock && !(rv.KnockRestricted && rule == JoinRuleKnockRestricted) {
		return c.deny(RuleKnockJoinRule, "join rule %q does not allow knocking", rule)
	}
	if ev.Sender() != target {
		return c.deny(RuleKnockSender, "sender %s cannot knock for %s", ev.Sender(), target)
	}
	m, err := c.membership(target)
	if err != nil {
		return err
	}
	if m != MembershipBan && m != MembershipInvite && m != MembershipJoin {
		return nil
	}
	return c.deny(RuleKnockMembership, "%s cannot knock with membership %q", target, m)
}

// checkPowerLevels is the m.room.power_levels rule (10 in v1–v5 and v12, 9
// in v6–v11). cur holds the current levels, sender the sender's level in them.
func (c *authCheck) checkPowerLevels(cur *PowerLevels, sender PowerLevel) error {
	ev, rv := c.ev, c.rv
	next, err := ParsePowerLevelsContent(ev.Content(), rv)
	if err != nil {
		var pe *PowerLevelsError
		rule := RulePowerLevelsIntegers
		if errors.As(err, &pe) {
			switch pe.Field {
			case "users":
				rule = RulePowerLevelsUsers
			case "events", "notifications":
				rule = RulePowerLevelsObjects
			}
		}
		return c.deny(rule, "%v", err)
	}
	if rv.PrivilegedCreators {
		for _, u := range cur.creators {
			if _, ok := next.users[u]; ok {
				return c.deny(RulePowerLevelsCreators, "users lists room creator %s", u)
			}
		}
	}
	if !cur.exists {
		return nil // the room's first power levels
	}
	for f := plField(0); f < numPLFields; f++ {
		was, is := cur.topSet[f], next.topSet[f]
		if !was && !is || was && is && cur.top[f] == next.top[f] {
			continue
		}
		if was && sender.Compare(FinitePowerLevel(cur.top[f])) < 0 {
			return c.deny(RulePowerLevelsChange, "%s is %d, above the sender's level %s", f.name(), cur.top[f], sender)
		}
		if is && sender.Compare(FinitePowerLevel(next.top[f])) < 0 {
			return c.deny(RulePowerLevelsChange, "new %s %d is above the sender's level %s", f.name(), next.top[f], sender)
		}
	}
	if err := c.checkLevelMap("events", cur.events, next.events, sender); err != nil {
		return err
	}
	if rv.NotificationsPowerLevels {
		if err := c.checkLevelMap("notifications", cur.notifs, next.notifs, sender); err != nil {
			return err
		}
	}
	// users: changing or removing someone else needs a level above theirs;
	// anything set must not exceed the sender's own level.
	for _, u := range sortedKeys(cur.users) {
		old := cur.users[u]
		if nv, ok := next.users[u]; (ok && nv == old) || u == ev.Sender() {
			continue
		}
		if !sender.Exceeds(old) {
			return c.deny(RulePowerLevelsUserRank, "%s has level %d, not below the sender's %s", u, old, sender)
		}
	}
	for _, u := range sortedKeys(next.users) {
		nv := next.users[u]
		if old, ok := cur.users[u]; ok && old == nv {
			continue
		}
		if sender.Compare(FinitePowerLevel(nv)) < 0 {
			return c.deny(RulePowerLevelsUserRank, "new level %d for %s is above the sender's %s", nv, u, sender)
		}
	}
	return nil
}

// checkLevelMap applies the events/notifications rules: entries changed or
// removed must have been at most the sender's level, entries added or
// changed must be at most the sender's level.
func (c *authCheck) checkLevelMap(field string, cur, next map[string]int64, sender PowerLevel) error {
	for _, k := range sortedKeys(cur) {
		old := cur[k]
		if nv, ok := next[k]; ok && nv == old {
			continue
		}
		if sender.Compare(FinitePowerLevel(old)) < 0 {
			return c.deny(RulePowerLevelsEvents, "%s[%q] is %d, above the sender's level %s", field, k, old, sender)
		}
	}
	for _, k := range sortedKeys(next) {
		nv := next[k]
		if old, ok := cur[k]; ok && old == nv {
			continue
		}
		if sender.Compare(FinitePowerLevel(nv)) < 0 {
			return c.deny(RulePowerLevelsEvents, "new %s[%q] %d is above the sender's level %s", field, k, nv, sender)
		}
	}
	return nil
}

func sortedKeys(m map[string]int64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
