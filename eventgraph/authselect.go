package eventgraph

import "encoding/json"

// AuthEventsNeeded returns the state keys whose current events make up the
// auth_events of an event with these fields (server-server API, "Auth events
// selection"): the create event (not from v12, where the room ID stands for
// it), the power levels, the sender's membership and, for m.room.member
// events, the target's membership, the join rules (for join, invite and
// knock), the third-party invite whose token the content signs (for invites)
// and, in versions with restricted rooms, the membership of the user named by
// join_authorised_via_users_server (for joins). A create event has none.
//
// The keys are distinct and in that order. Content that does not parse only
// leaves out the keys that depend on it.
func AuthEventsNeeded(evType string, stateKey *string, sender string, content json.RawMessage, rv *RoomVersion) []StateKey {
	if evType == TypeCreate {
		return nil
	}
	keys := make([]StateKey, 0, 7)
	if !rv.RoomIDFromCreateEvent {
		keys = append(keys, StateKey{Type: TypeCreate})
	}
	keys = append(keys,
		StateKey{Type: TypePowerLevels},
		StateKey{Type: TypeMember, StateKey: sender},
	)
	if evType != TypeMember || stateKey == nil {
		return keys
	}
	add := func(k StateKey) {
		if !containsKey(keys, k) {
			keys = append(keys, k)
		}
	}
	add(StateKey{Type: TypeMember, StateKey: *stateKey})
	mc, err := parseMemberContent(content)
	if err != nil {
		return keys
	}
	switch mc.Membership {
	case MembershipJoin, MembershipInvite, MembershipKnock:
		add(StateKey{Type: TypeJoinRules})
	}
	if mc.Membership == MembershipInvite {
		if token, ok := mc.thirdPartyToken(); ok {
			add(StateKey{Type: TypeThirdPartyInvite, StateKey: token})
		}
	}
	if mc.Membership == MembershipJoin && rv.Restricted && mc.AuthorisedVia != "" {
		add(StateKey{Type: TypeMember, StateKey: mc.AuthorisedVia})
	}
	return keys
}

// AuthEventsNeededFor is AuthEventsNeeded for an existing event.
func AuthEventsNeededFor(ev *Event) []StateKey {
	return AuthEventsNeeded(ev.Type(), ev.StateKey(), ev.Sender(), ev.Content(), ev.Version())
}

// SelectAuthEvents returns the auth_events for a new event with these fields
// in a room whose current state is state: the IDs of the state events for the
// keys of AuthEventsNeeded that the state has, in that order.
func SelectAuthEvents(evType string, stateKey *string, sender string, content json.RawMessage, rv *RoomVersion, state StateMap) []string {
	keys := AuthEventsNeeded(evType, stateKey, sender, content, rv)
	ids := make([]string, 0, len(keys))
	for _, k := range keys {
		if id, ok := state[k]; ok {
			ids = append(ids, id)
		}
	}
	return ids
}
