package eventgraph

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"testing"
)

// atCase is one authorization scenario, run in every room version it
// applies to: the room is built by room (default: newBaseRoom, public), the
// candidate event by event, and want gives the rule that must reject it in
// that version ("" for allowed).
type atCase struct {
	name    string
	applies func(rv *RoomVersion) bool
	room    func(t testing.TB, rv *RoomVersion) *atRoom
	event   func(r *atRoom) *Event
	want    func(rv *RoomVersion) AuthRule
	// authEventsOnly: the case tampers with auth_events, so only the check
	// against the event's own auth events is meaningful.
	authEventsOnly bool
}

func always(rule AuthRule) func(*RoomVersion) AuthRule {
	return func(*RoomVersion) AuthRule { return rule }
}

func when(cond func(*RoomVersion) bool, yes, no AuthRule) func(*RoomVersion) AuthRule {
	return func(rv *RoomVersion) AuthRule {
		if cond(rv) {
			return yes
		}
		return no
	}
}

func runATCases(t *testing.T, cases []atCase) {
	t.Helper()
	for _, tc := range cases {
		for _, rv := range atVersions(t) {
			if tc.applies != nil && !tc.applies(rv) {
				continue
			}
			t.Run(tc.name+"/v"+string(rv.ID), func(t *testing.T) {
				var r *atRoom
				if tc.room != nil {
					r = tc.room(t, rv)
				} else {
					r = newBaseRoom(t, rv, JoinRulePublic)
				}
				ev := tc.event(r)
				want := tc.want(rv)
				if got := r.check(ev); got != want {
					err := AllowedByAuthEvents(ev, r.lookup, r.isRejected)
					t.Fatalf("by auth events: rule %q, want %q (err: %v)", got, want, err)
				}
				if tc.authEventsOnly || ev.Type() == TypeCreate {
					return
				}
				if got := ruleOf(t, AllowedByState(ev, r.state, r.lookup)); got != want {
					t.Fatalf("by state: rule %q, want %q", got, want)
				}
			})
		}
	}
}

func atMessage(r *atRoom, sender string) *Event {
	return r.build(atEv{typ: "m.room.message", sender: sender, content: map[string]any{"body": "hi"}})
}

func atMemberEv(r *atRoom, sender, target, membership string, extra map[string]any) *Event {
	return r.build(atEv{typ: TypeMember, sk: atSK(target), sender: sender, content: atMember(membership, extra)})
}

func atPLEv(r *atRoom, sender string, content map[string]any) *Event {
	return r.build(atEv{typ: TypePowerLevels, sk: atSK(""), sender: sender, content: content})
}

// atCreateEv builds a second create event for the room's version.
func atCreateEv(r *atRoom, content map[string]any, edit func(*atEv)) *Event {
	if content == nil {
		content = map[string]any{}
		if !r.rv.ImplicitCreator {
			content["creator"] = atAlice
		}
	}
	o := atEv{typ: TypeCreate, sk: atSK(""), sender: atAlice, content: content, auth: []string{}, prev: []string{}}
	if r.rv.RoomIDFromCreateEvent {
		o.noRoomID = true
	}
	if edit != nil {
		edit(&o)
	}
	return r.build(o)
}

func v12(rv *RoomVersion) bool        { return rv.RoomIDFromCreateEvent }
func preV12(rv *RoomVersion) bool     { return !rv.RoomIDFromCreateEvent }
func knocks(rv *RoomVersion) bool     { return rv.Knock }
func creatorKey(rv *RoomVersion) bool { return !rv.ImplicitCreator }

func TestAuthCreateRules(t *testing.T) {
	runATCases(t, []atCase{
		{name: "valid", room: newBareRoom, event: func(r *atRoom) *Event { return atCreateEv(r, nil, nil) }, want: always("")},
		{name: "prev_events", room: newBareRoom, event: func(r *atRoom) *Event {
			return atCreateEv(r, nil, func(o *atEv) { o.prev = []string{r.create.EventID()} })
		}, want: always(RuleCreatePrevEvents)},
		{name: "room_id domain", applies: preV12, room: newBareRoom, event: func(r *atRoom) *Event {
			return atCreateEv(r, nil, func(o *atEv) { o.roomID = "!room:elsewhere.test" })
		}, want: always(RuleCreateRoomIDDomain)},
		{name: "room_id present", applies: v12, room: newBareRoom, event: func(r *atRoom) *Event {
			return atCreateEv(r, nil, func(o *atEv) { o.noRoomID = false; o.roomID = "!x:a.test" })
		}, want: always(RuleCreateRoomID)},
		{name: "room_id null", applies: v12, room: newBareRoom, event: func(r *atRoom) *Event {
			return atCreateEv(r, nil, func(o *atEv) { o.extra = map[string]any{"room_id": nil} })
		}, want: always(RuleCreateRoomID)},
		{name: "unknown room_version", room: newBareRoom, event: func(r *atRoom) *Event {
			return atCreateEv(r, map[string]any{"creator": atAlice, "room_version": "99-nope"}, nil)
		}, want: always(RuleCreateRoomVersion)},
		{name: "room_version not a string", room: newBareRoom, event: func(r *atRoom) *Event {
			return atCreateEv(r, map[string]any{"creator": atAlice, "room_version": 5}, nil)
		}, want: always(RuleCreateRoomVersion)},
		{name: "known room_version", room: newBareRoom, event: func(r *atRoom) *Event {
			return atCreateEv(r, map[string]any{"creator": atAlice, "room_version": "5"}, nil)
		}, want: always("")},
		{name: "no creator", room: newBareRoom, event: func(r *atRoom) *Event {
			return atCreateEv(r, map[string]any{"room_version": string(r.rv.ID)}, nil)
		}, want: when(creatorKey, RuleCreateCreator, "")},
		{name: "additional_creators invalid", room: newBareRoom, event: func(r *atRoom) *Event {
			return atCreateEv(r, map[string]any{"creator": atAlice, "additional_creators": []any{atCarol, "carol"}}, nil)
		}, want: when(v12, RuleCreateAdditionalCreators, "")},
		{name: "additional_creators not strings", room: newBareRoom, event: func(r *atRoom) *Event {
			return atCreateEv(r, map[string]any{"creator": atAlice, "additional_creators": []any{7}}, nil)
		}, want: when(v12, RuleCreateAdditionalCreators, "")},
		{name: "additional_creators not an array", room: newBareRoom, event: func(r *atRoom) *Event {
			return atCreateEv(r, map[string]any{"creator": atAlice, "additional_creators": atCarol}, nil)
		}, want: when(v12, RuleCreateAdditionalCreators, "")},
		{name: "additional_creators valid", room: newBareRoom, event: func(r *atRoom) *Event {
			return atCreateEv(r, map[string]any{"creator": atAlice, "additional_creators": []any{atCarol, "@old:[::1]:8448"}}, nil)
		}, want: always("")},
	})
}

// newBareRoom is a room with only its create event.
func newBareRoom(t testing.TB, rv *RoomVersion) *atRoom { return newATRoom(t, rv, nil) }

func TestAuthEventsRules(t *testing.T) {
	runATCases(t, []atCase{
		{name: "selected", event: func(r *atRoom) *Event { return atMessage(r, atBob) }, want: always("")},
		{name: "same event twice", authEventsOnly: true, event: func(r *atRoom) *Event {
			ids := SelectAuthEvents("m.room.message", nil, atBob, nil, r.rv, r.state)
			return r.build(atEv{typ: "m.room.message", sender: atBob, auth: append(ids, r.state[StateKey{Type: TypePowerLevels}])})
		}, want: always(RuleAuthEventsDuplicate)},
		{name: "two power levels", authEventsOnly: true, event: func(r *atRoom) *Event {
			old := r.state[StateKey{Type: TypePowerLevels}]
			r.setPL(map[string]any{"ban": 60})
			ids := SelectAuthEvents("m.room.message", nil, atBob, nil, r.rv, r.state)
			return r.build(atEv{typ: "m.room.message", sender: atBob, auth: append(ids, old)})
		}, want: always(RuleAuthEventsDuplicate)},
		{name: "join rules for a message", authEventsOnly: true, event: func(r *atRoom) *Event {
			ids := SelectAuthEvents("m.room.message", nil, atBob, nil, r.rv, r.state)
			return r.build(atEv{typ: "m.room.message", sender: atBob, auth: append(ids, r.state[StateKey{Type: TypeJoinRules}])})
		}, want: always(RuleAuthEventsUnexpected)},
		{name: "someone else's membership", authEventsOnly: true, event: func(r *atRoom) *Event {
			ids := SelectAuthEvents("m.room.message", nil, atBob, nil, r.rv, r.state)
			return r.build(atEv{typ: "m.room.message", sender: atBob, auth: append(ids, r.state[StateKey{Type: TypeMember, StateKey: atMod}])})
		}, want: always(RuleAuthEventsUnexpected)},
		{name: "non-state auth event", authEventsOnly: true, event: func(r *atRoom) *Event {
			msg := r.store(atMessage(r, atAlice))
			ids := SelectAuthEvents("m.room.message", nil, atBob, nil, r.rv, r.state)
			return r.build(atEv{typ: "m.room.message", sender: atBob, auth: append(ids, msg.EventID())})
		}, want: always(RuleAuthEventsUnexpected)},
		{name: "create listed", applies: v12, authEventsOnly: true, event: func(r *atRoom) *Event {
			ids := SelectAuthEvents("m.room.message", nil, atBob, nil, r.rv, r.state)
			return r.build(atEv{typ: "m.room.message", sender: atBob, auth: append(ids, r.create.EventID())})
		}, want: always(RuleAuthEventsCreate)},
		{name: "rejected auth event", authEventsOnly: true, event: func(r *atRoom) *Event {
			pl := r.setPL(map[string]any{"ban": 60})
			r.rejected[pl.EventID()] = true
			return atMessage(r, atBob)
		}, want: always(RuleAuthEventsRejected)},
		{name: "no create", applies: preV12, authEventsOnly: true, event: func(r *atRoom) *Event {
			return r.build(atEv{typ: "m.room.message", sender: atBob, auth: []string{
				r.state[StateKey{Type: TypePowerLevels}], r.state[StateKey{Type: TypeMember, StateKey: atBob}],
			}})
		}, want: always(RuleAuthEventsNoCreate)},
	})
}

// TestAuthEventsSameRoom is MSC4307 (rule 2.5, in v12 3.5), which holds in
// every room version: through the event's own auth events and through state.
func TestAuthEventsSameRoom(t *testing.T) {
	for _, rv := range atVersions(t) {
		t.Run("v"+string(rv.ID), func(t *testing.T) {
			r := newBaseRoom(t, rv, JoinRulePublic)
			other := newATRoomTagged(t, rv, nil, "other")
			other.member(atAlice, atAlice, MembershipJoin, nil)
			foreignPL := other.setPL(nil)
			r.store(foreignPL)

			ids := []string{}
			for _, id := range SelectAuthEvents("m.room.message", nil, atBob, nil, rv, r.state) {
				if id == r.state[StateKey{Type: TypePowerLevels}] {
					id = foreignPL.EventID()
				}
				ids = append(ids, id)
			}
			ev := r.build(atEv{typ: "m.room.message", sender: atBob, content: map[string]any{"body": "x"}, auth: ids})
			if got := r.check(ev); got != RuleAuthEventsRoom {
				t.Fatalf("own auth events: rule %q, want %q", got, RuleAuthEventsRoom)
			}
			state := r.state.Clone()
			state[StateKey{Type: TypePowerLevels}] = foreignPL.EventID()
			if got := ruleOf(t, AllowedByState(atMessage(r, atBob), state, r.lookup)); got != RuleAuthEventsRoom {
				t.Fatalf("state: rule %q, want %q", got, RuleAuthEventsRoom)
			}
		})
	}
}

func TestAuthRoomIDIsCreateEvent(t *testing.T) {
	rv := MustRoomVersion("12")
	t.Run("room_id names a member event", func(t *testing.T) {
		r := newBaseRoom(t, rv, JoinRulePublic)
		join := r.state[StateKey{Type: TypeMember, StateKey: atBob}]
		ev := r.build(atEv{typ: "m.room.message", sender: atBob, roomID: "!" + join[1:]})
		if got := r.check(ev); got != RuleRoomIDCreate {
			t.Fatalf("rule %q, want %q", got, RuleRoomIDCreate)
		}
	})
	t.Run("room_id without sigil", func(t *testing.T) {
		r := newBaseRoom(t, rv, JoinRulePublic)
		ev := r.build(atEv{typ: "m.room.message", sender: atBob, roomID: r.create.EventID()})
		if got := r.check(ev); got != RuleRoomIDCreate {
			t.Fatalf("rule %q, want %q", got, RuleRoomIDCreate)
		}
	})
	t.Run("rejected create event", func(t *testing.T) {
		r := newBaseRoom(t, rv, JoinRulePublic)
		r.rejected[r.create.EventID()] = true
		if got := r.check(atMessage(r, atBob)); got != RuleRoomIDCreate {
			t.Fatalf("rule %q, want %q", got, RuleRoomIDCreate)
		}
	})
	t.Run("unknown create event", func(t *testing.T) {
		r := newBaseRoom(t, rv, JoinRulePublic)
		ev := r.build(atEv{typ: "m.room.message", sender: atBob, roomID: "!unknown"})
		err := AllowedByAuthEvents(ev, r.lookup, nil)
		if !errors.Is(err, ErrMissingAuthEvent) {
			t.Fatalf("err = %v, want ErrMissingAuthEvent", err)
		}
		var ae *AuthError
		if errors.As(err, &ae) {
			t.Fatalf("a missing create event is not an auth failure: %v", err)
		}
	})
	t.Run("state holds another create event", func(t *testing.T) {
		r := newBaseRoom(t, rv, JoinRulePublic)
		ev := atMessage(r, atBob)
		other := newATRoomTagged(t, rv, nil, "other")
		r.store(other.create)
		state := r.state.Clone()
		state[StateKey{Type: TypeCreate}] = other.create.EventID()
		// The other create event is in another room, which MSC4307 refuses first.
		if got := ruleOf(t, AllowedByState(ev, state, r.lookup)); got != RuleAuthEventsRoom {
			t.Fatalf("rule %q, want %q", got, RuleAuthEventsRoom)
		}
		if got := ruleOf(t, Allowed(ev, AuthEventMap{{Type: TypeMember, StateKey: atBob}: r.events[r.state[StateKey{Type: TypeMember, StateKey: atBob}]]})); got != RuleRoomIDCreate {
			t.Fatalf("no create: rule %q, want %q", got, RuleRoomIDCreate)
		}
	})
}

func TestAuthFederate(t *testing.T) {
	noFed := func(t testing.TB, rv *RoomVersion) *atRoom {
		r := newATRoom(t, rv, map[string]any{"m.federate": false})
		r.member(atAlice, atAlice, MembershipJoin, nil)
		r.setJoinRule(JoinRulePublic, nil)
		return r
	}
	fedString := func(t testing.TB, rv *RoomVersion) *atRoom {
		r := newATRoom(t, rv, map[string]any{"m.federate": "false"})
		r.member(atAlice, atAlice, MembershipJoin, nil)
		r.setJoinRule(JoinRulePublic, nil)
		return r
	}
	runATCases(t, []atCase{
		{name: "other server", room: noFed, event: func(r *atRoom) *Event {
			return atMemberEv(r, atBob, atBob, MembershipJoin, nil)
		}, want: always(RuleFederate)},
		{name: "same server", room: noFed, event: func(r *atRoom) *Event {
			return atMemberEv(r, "@alice2:a.test", "@alice2:a.test", MembershipJoin, nil)
		}, want: always("")},
		{name: "only false forbids", room: fedString, event: func(r *atRoom) *Event {
			return atMemberEv(r, atBob, atBob, MembershipJoin, nil)
		}, want: always("")},
	})
}

func TestAuthAliases(t *testing.T) {
	aliases := func(sender string, sk *string) func(r *atRoom) *Event {
		return func(r *atRoom) *Event {
			return r.build(atEv{typ: TypeAliases, sk: sk, sender: sender, content: map[string]any{"aliases": []string{"#x:b.test"}}})
		}
	}
	aliasRule := func(rv *RoomVersion) bool { return rv.AliasesAuthRule }
	runATCases(t, []atCase{
		{name: "own domain", event: aliases(atBob, atSK("b.test")), want: when(aliasRule, "", RuleEventLevel)},
		{name: "other domain", event: aliases(atBob, atSK("a.test")), want: when(aliasRule, RuleAliasesDomain, RuleEventLevel)},
		{name: "non-member", event: aliases(atCarol, atSK("c.test")), want: when(aliasRule, "", RuleSenderMembership)},
		{name: "no state_key", event: aliases(atBob, nil), want: when(aliasRule, RuleAliasesStateKey, "")},
	})
}

func TestAuthMemberJoin(t *testing.T) {
	creatorCarol := func(t testing.TB, rv *RoomVersion) *atRoom {
		return newATRoom(t, rv, map[string]any{"creator": atCarol})
	}
	withRule := func(rule string, extra map[string]any) func(t testing.TB, rv *RoomVersion) *atRoom {
		return func(t testing.TB, rv *RoomVersion) *atRoom {
			r := newBaseRoom(t, rv, JoinRulePublic)
			r.setJoinRule(rule, extra)
			return r
		}
	}
	invitedUnder := func(rule string) func(t testing.TB, rv *RoomVersion) *atRoom {
		return func(t testing.TB, rv *RoomVersion) *atRoom {
			r := withRule(rule, nil)(t, rv)
			r.member(atAlice, atCarol, MembershipInvite, nil)
			return r
		}
	}
	join := func(sender, target string, extra map[string]any) func(r *atRoom) *Event {
		return func(r *atRoom) *Event { return atMemberEv(r, sender, target, MembershipJoin, extra) }
	}
	restricted := func(rv *RoomVersion) bool { return rv.Restricted }
	knockRestricted := func(rv *RoomVersion) bool { return rv.KnockRestricted }
	allow := map[string]any{"allow": []any{map[string]any{"type": "m.room_membership", "room_id": "!space:a.test"}}}
	runATCases(t, []atCase{
		{name: "creator joins first", room: newBareRoom, event: join(atAlice, atAlice, nil), want: always("")},
		{name: "content.creator joins first", room: creatorCarol, event: join(atCarol, atCarol, nil),
			want: when(creatorKey, "", RuleJoinRule)},
		{name: "create sender joins first", room: creatorCarol, event: join(atAlice, atAlice, nil),
			want: when(creatorKey, RuleJoinRule, "")},
		{name: "creator join needs create as only prev", room: newBareRoom, event: func(r *atRoom) *Event {
			other := r.store(atMessage(r, atAlice))
			return r.build(atEv{typ: TypeMember, sk: atSK(atAlice), sender: atAlice, content: atMember(MembershipJoin, nil),
				prev: []string{r.create.EventID(), other.EventID()}})
		}, want: always(RuleJoinRule)},
		{name: "other user after create", room: newBareRoom, event: join(atBob, atBob, nil), want: always(RuleJoinRule)},
		{name: "sender is not target", event: join(atBob, atCarol, nil), want: always(RuleJoinSender)},
		{name: "banned", event: func(r *atRoom) *Event {
			r.member(atAlice, atCarol, MembershipBan, nil)
			return atMemberEv(r, atCarol, atCarol, MembershipJoin, nil)
		}, want: always(RuleJoinBanned)},
		{name: "public", event: join(atCarol, atCarol, nil), want: always("")},
		{name: "public rejoin", event: join(atBob, atBob, map[string]any{"displayname": "B"}), want: always("")},
		{name: "invite not invited", room: withRule(JoinRuleInvite, nil), event: join(atCarol, atCarol, nil), want: always(RuleJoinRule)},
		{name: "invite invited", room: invitedUnder(JoinRuleInvite), event: join(atCarol, atCarol, nil), want: always("")},
		{name: "invite already joined", room: withRule(JoinRuleInvite, nil), event: join(atBob, atBob, nil), want: always("")},
		{name: "no join rules event acts as invite", room: func(t testing.TB, rv *RoomVersion) *atRoom {
			r := newATRoom(t, rv, nil)
			r.member(atAlice, atAlice, MembershipJoin, nil)
			r.member(atAlice, atCarol, MembershipInvite, nil)
			return r
		}, event: join(atCarol, atCarol, nil), want: always("")},
		{name: "knock invited", room: invitedUnder(JoinRuleKnock), event: join(atCarol, atCarol, nil), want: when(knocks, "", RuleJoinRule)},
		{name: "knock not invited", room: withRule(JoinRuleKnock, nil), event: join(atCarol, atCarol, nil), want: always(RuleJoinRule)},
		{name: "private", room: withRule(JoinRulePrivate, nil), event: join(atCarol, atCarol, nil), want: always(RuleJoinRule)},
		{name: "restricted via member", room: withRule(JoinRuleRestricted, allow),
			event: join(atCarol, atCarol, map[string]any{"join_authorised_via_users_server": atMod}), want: when(restricted, "", RuleJoinRule)},
		{name: "restricted invited", room: invitedUnder(JoinRuleRestricted), event: join(atCarol, atCarol, nil), want: when(restricted, "", RuleJoinRule)},
		{name: "restricted without authoriser", room: withRule(JoinRuleRestricted, allow), event: join(atCarol, atCarol, nil),
			want: when(restricted, RuleJoinAuthoriser, RuleJoinRule)},
		{name: "restricted authoriser not joined", room: withRule(JoinRuleRestricted, allow),
			event: join(atCarol, atCarol, map[string]any{"join_authorised_via_users_server": "@dave:d.test"}),
			want:  when(restricted, RuleJoinAuthoriser, RuleJoinRule)},
		{name: "restricted authoriser below invite level", room: func(t testing.TB, rv *RoomVersion) *atRoom {
			r := withRule(JoinRuleRestricted, allow)(t, rv)
			r.setPL(map[string]any{"invite": 10})
			return r
		}, event: join(atCarol, atCarol, map[string]any{"join_authorised_via_users_server": atBob}),
			want: when(restricted, RuleJoinAuthoriser, RuleJoinRule)},
		{name: "knock_restricted via member", room: withRule(JoinRuleKnockRestricted, allow),
			event: join(atCarol, atCarol, map[string]any{"join_authorised_via_users_server": atMod}), want: when(knockRestricted, "", RuleJoinRule)},
		{name: "knock_restricted invited", room: invitedUnder(JoinRuleKnockRestricted), event: join(atCarol, atCarol, nil),
			want: when(knockRestricted, "", RuleJoinRule)},
		{name: "knock_restricted without authoriser", room: withRule(JoinRuleKnockRestricted, allow), event: join(atCarol, atCarol, nil),
			want: when(knockRestricted, RuleJoinAuthoriser, RuleJoinRule)},
	})
}

func TestAuthMemberMalformed(t *testing.T) {
	runATCases(t, []atCase{
		{name: "no membership", event: func(r *atRoom) *Event {
			return r.build(atEv{typ: TypeMember, sk: atSK(atBob), sender: atBob, content: map[string]any{"displayname": "b"}})
		}, want: always(RuleMemberMalformed)},
		{name: "no state_key", event: func(r *atRoom) *Event {
			return r.build(atEv{typ: TypeMember, sender: atBob, content: atMember(MembershipJoin, nil)})
		}, want: always(RuleMemberMalformed)},
		{name: "membership key is case-sensitive", event: func(r *atRoom) *Event {
			return r.build(atEv{typ: TypeMember, sk: atSK(atBob), sender: atBob, content: map[string]any{"Membership": MembershipJoin}})
		}, want: always(RuleMemberMalformed)},
		{name: "unknown membership", event: func(r *atRoom) *Event {
			return atMemberEv(r, atBob, atBob, "wander", nil)
		}, want: always(RuleMemberUnknown)},
		{name: "membership not a string", event: func(r *atRoom) *Event {
			return r.build(atEv{typ: TypeMember, sk: atSK(atBob), sender: atBob, content: map[string]any{"membership": 1}})
		}, want: always(RuleMemberUnknown)},
	})
}

func TestAuthMemberInvite(t *testing.T) {
	invite := func(sender, target string) func(r *atRoom) *Event {
		return func(r *atRoom) *Event { return atMemberEv(r, sender, target, MembershipInvite, nil) }
	}
	runATCases(t, []atCase{
		{name: "joined inviter", event: invite(atBob, atCarol), want: always("")},
		{name: "inviter not joined", event: invite("@dave:d.test", atCarol), want: always(RuleInviteSenderMembership)},
		{name: "target joined", event: invite(atAlice, atBob), want: always(RuleInviteTargetMembership)},
		{name: "target banned", event: func(r *atRoom) *Event {
			r.member(atAlice, atCarol, MembershipBan, nil)
			return atMemberEv(r, atAlice, atCarol, MembershipInvite, nil)
		}, want: always(RuleInviteTargetMembership)},
		{name: "re-invite", event: func(r *atRoom) *Event {
			r.member(atAlice, atCarol, MembershipInvite, nil)
			return atMemberEv(r, atAlice, atCarol, MembershipInvite, nil)
		}, want: always("")},
		{name: "below invite level", event: func(r *atRoom) *Event {
			r.setPL(map[string]any{"invite": 10})
			return atMemberEv(r, atBob, atCarol, MembershipInvite, nil)
		}, want: always(RuleInviteLevel)},
		{name: "at invite level", event: func(r *atRoom) *Event {
			r.setPL(map[string]any{"invite": 50})
			return atMemberEv(r, atMod, atCarol, MembershipInvite, nil)
		}, want: always("")},
	})
}

// at3PID holds the identity server key of the third-party invite tests.
type at3PID struct {
	priv  ed25519.PrivateKey
	pub   string // unpadded standard base64
	token string
}

func newAT3PID(seed byte) *at3PID {
	s := make([]byte, ed25519.SeedSize)
	for i := range s {
		s[i] = seed
	}
	priv := ed25519.NewKeyFromSeed(s)
	return &at3PID{priv: priv, pub: base64.RawStdEncoding.EncodeToString(priv.Public().(ed25519.PublicKey)), token: "tok" + string('a'+seed%26)}
}

// signed returns a third_party_invite.signed block for mxid and token.
func (k *at3PID) signed(t testing.TB, mxid, token string) map[string]any {
	t.Helper()
	body, err := json.Marshal(map[string]any{"mxid": mxid, "token": token})
	if err != nil {
		t.Fatal(err)
	}
	canon, err := CanonicalJSON(body)
	if err != nil {
		t.Fatal(err)
	}
	sig := base64.RawStdEncoding.EncodeToString(ed25519.Sign(k.priv, canon))
	return map[string]any{"mxid": mxid, "token": token, "signatures": map[string]any{"id.test": map[string]any{"ed25519:0": sig}}}
}

func TestAuthMemberThirdPartyInvite(t *testing.T) {
	key, other := newAT3PID(1), newAT3PID(2)
	// room: alice has sent an m.room.third_party_invite for key's token.
	room := func(content func(*at3PID) map[string]any) func(t testing.TB, rv *RoomVersion) *atRoom {
		return func(t testing.TB, rv *RoomVersion) *atRoom {
			r := newBaseRoom(t, rv, JoinRuleInvite)
			r.add(atEv{typ: TypeThirdPartyInvite, sk: atSK(key.token), sender: atAlice, content: content(key)})
			return r
		}
	}
	single := room(func(k *at3PID) map[string]any {
		return map[string]any{"display_name": "c…", "key_validity_url": "https://id.test/v", "public_key": k.pub}
	})
	listed := room(func(k *at3PID) map[string]any {
		return map[string]any{"display_name": "c…", "key_validity_url": "https://id.test/v", "public_key": other.pub,
			"public_keys": []any{map[string]any{"public_key": base64.RawURLEncoding.EncodeToString(k.priv.Public().(ed25519.PublicKey))}}}
	})
	invite := func(sender string, tpi func(t testing.TB) any) func(r *atRoom) *Event {
		return func(r *atRoom) *Event {
			return atMemberEv(r, sender, atCarol, MembershipInvite, map[string]any{"third_party_invite": tpi(r.t)})
		}
	}
	good := func(t testing.TB) any {
		return map[string]any{"display_name": "c…", "signed": key.signed(t, atCarol, key.token)}
	}
	runATCases(t, []atCase{
		{name: "valid public_key", room: single, event: invite(atAlice, good), want: always("")},
		{name: "valid public_keys entry", room: listed, event: invite(atAlice, good), want: always("")},
		{name: "target banned", room: func(t testing.TB, rv *RoomVersion) *atRoom {
			r := single(t, rv)
			r.member(atAlice, atCarol, MembershipBan, nil)
			return r
		}, event: invite(atAlice, good), want: always(RuleInviteThirdPartyBanned)},
		{name: "no signed", room: single, event: invite(atAlice, func(testing.TB) any {
			return map[string]any{"display_name": "c…"}
		}), want: always(RuleInviteThirdPartySigned)},
		{name: "signed without token", room: single, event: invite(atAlice, func(t testing.TB) any {
			s := key.signed(t, atCarol, key.token)
			delete(s, "token")
			return map[string]any{"signed": s}
		}), want: always(RuleInviteThirdPartySigned)},
		{name: "mxid is not the target", room: single, event: invite(atAlice, func(t testing.TB) any {
			return map[string]any{"signed": key.signed(t, "@dave:d.test", key.token)}
		}), want: always(RuleInviteThirdPartyMXID)},
		{name: "no third party invite event", room: single, event: invite(atAlice, func(t testing.TB) any {
			return map[string]any{"signed": key.signed(t, atCarol, "unknown-token")}
		}), want: always(RuleInviteThirdPartyEvent)},
		{name: "sender did not send the third party invite", room: single, event: invite(atMod, good),
			want: always(RuleInviteThirdPartySender)},
		{name: "signature by another key", room: single, event: invite(atAlice, func(t testing.TB) any {
			return map[string]any{"signed": other.signed(t, atCarol, key.token)}
		}), want: always(RuleInviteThirdPartySig)},
		{name: "tampered signed", room: single, event: invite(atAlice, func(t testing.TB) any {
			s := key.signed(t, atCarol, key.token)
			s["extra"] = "x"
			return map[string]any{"signed": s}
		}), want: always(RuleInviteThirdPartySig)},
	})
}

func TestAuthMemberLeave(t *testing.T) {
	leave := func(sender, target string) func(r *atRoom) *Event {
		return func(r *atRoom) *Event { return atMemberEv(r, sender, target, MembershipLeave, nil) }
	}
	withKnocker := func(t testing.TB, rv *RoomVersion) *atRoom {
		r := newBaseRoom(t, rv, JoinRuleKnock)
		r.member(atCarol, atCarol, MembershipKnock, nil)
		return r
	}
	runATCases(t, []atCase{
		{name: "joined leaves", event: leave(atBob, atBob), want: always("")},
		{name: "invited rejects", event: func(r *atRoom) *Event {
			r.member(atAlice, atCarol, MembershipInvite, nil)
			return atMemberEv(r, atCarol, atCarol, MembershipLeave, nil)
		}, want: always("")},
		{name: "knocker withdraws", applies: knocks, room: withKnocker, event: leave(atCarol, atCarol), want: always("")},
		{name: "stranger leaves", event: leave(atCarol, atCarol), want: always(RuleLeaveSelf)},
		{name: "banned leaves", event: func(r *atRoom) *Event {
			r.member(atAlice, atCarol, MembershipBan, nil)
			return atMemberEv(r, atCarol, atCarol, MembershipLeave, nil)
		}, want: always(RuleLeaveSelf)},
		{name: "kicker not joined", event: leave("@dave:d.test", atBob), want: always(RuleLeaveSenderMembership)},
		{name: "kick by admin", event: leave(atAlice, atBob), want: always("")},
		{name: "kick by mod", event: leave(atMod, atBob), want: always("")},
		{name: "kick below kick level", event: leave(atBob, atMod), want: always(RuleLeaveKickLevel)},
		{name: "kick an equal", event: leave(atMod, atPeer), want: always(RuleLeaveKickLevel)},
		{name: "kick a superior", event: leave(atMod, atAlice), want: always(RuleLeaveKickLevel)},
		{name: "unban below ban level", event: func(r *atRoom) *Event {
			r.setPL(map[string]any{"ban": 75})
			r.member(atAlice, atCarol, MembershipBan, nil)
			return atMemberEv(r, atMod, atCarol, MembershipLeave, nil)
		}, want: always(RuleLeaveUnbanLevel)},
		{name: "unban", event: func(r *atRoom) *Event {
			r.member(atAlice, atCarol, MembershipBan, nil)
			return atMemberEv(r, atMod, atCarol, MembershipLeave, nil)
		}, want: always("")},
	})
}

func TestAuthMemberBan(t *testing.T) {
	ban := func(sender, target string) func(r *atRoom) *Event {
		return func(r *atRoom) *Event { return atMemberEv(r, sender, target, MembershipBan, nil) }
	}
	runATCases(t, []atCase{
		{name: "by admin", event: ban(atAlice, atBob), want: always("")},
		{name: "stranger by mod", event: ban(atMod, atCarol), want: always("")},
		{name: "banner not joined", event: ban("@dave:d.test", atBob), want: always(RuleBanSenderMembership)},
		{name: "below ban level", event: ban(atBob, atCarol), want: always(RuleBanLevel)},
		{name: "an equal", event: ban(atMod, atPeer), want: always(RuleBanLevel)},
		{name: "a superior", event: ban(atMod, atAlice), want: always(RuleBanLevel)},
	})
}

func TestAuthMemberKnock(t *testing.T) {
	withRule := func(rule string) func(t testing.TB, rv *RoomVersion) *atRoom {
		return func(t testing.TB, rv *RoomVersion) *atRoom { return newBaseRoom(t, rv, rule) }
	}
	knock := func(sender, target string) func(r *atRoom) *Event {
		return func(r *atRoom) *Event { return atMemberEv(r, sender, target, MembershipKnock, nil) }
	}
	knockRestricted := func(rv *RoomVersion) bool { return rv.KnockRestricted }
	runATCases(t, []atCase{
		{name: "knock room", room: withRule(JoinRuleKnock), event: knock(atCarol, atCarol), want: when(knocks, "", RuleMemberUnknown)},
		{name: "knock_restricted room", room: withRule(JoinRuleKnockRestricted), event: knock(atCarol, atCarol),
			want: func(rv *RoomVersion) AuthRule {
				switch {
				case rv.KnockRestricted:
					return ""
				case rv.Knock:
					return RuleKnockJoinRule
				}
				return RuleMemberUnknown
			}},
		{name: "public room", applies: knocks, event: knock(atCarol, atCarol), want: always(RuleKnockJoinRule)},
		{name: "for someone else", applies: knocks, room: withRule(JoinRuleKnock), event: knock(atBob, atCarol), want: always(RuleKnockSender)},
		{name: "banned", applies: knocks, room: withRule(JoinRuleKnock), event: func(r *atRoom) *Event {
			r.member(atAlice, atCarol, MembershipBan, nil)
			return atMemberEv(r, atCarol, atCarol, MembershipKnock, nil)
		}, want: always(RuleKnockMembership)},
		{name: "joined", applies: knocks, room: withRule(JoinRuleKnock), event: knock(atBob, atBob), want: always(RuleKnockMembership)},
		{name: "left knocks again", applies: knocks, room: withRule(JoinRuleKnock), event: func(r *atRoom) *Event {
			r.member(atBob, atBob, MembershipLeave, nil)
			return atMemberEv(r, atBob, atBob, MembershipKnock, nil)
		}, want: always("")},
		{name: "knock_restricted unknown before v10", applies: func(rv *RoomVersion) bool { return rv.Knock && !knockRestricted(rv) },
			room: withRule(JoinRuleKnockRestricted), event: knock(atCarol, atCarol), want: always(RuleKnockJoinRule)},
	})
}

func TestAuthOtherEvents(t *testing.T) {
	state := func(evType, sender, sk string) func(r *atRoom) *Event {
		return func(r *atRoom) *Event {
			return r.build(atEv{typ: evType, sk: atSK(sk), sender: sender, content: map[string]any{"x": 1}})
		}
	}
	runATCases(t, []atCase{
		{name: "message by member", event: func(r *atRoom) *Event { return atMessage(r, atBob) }, want: always("")},
		{name: "message by stranger", event: func(r *atRoom) *Event { return atMessage(r, atCarol) }, want: always(RuleSenderMembership)},
		{name: "message by invitee", event: func(r *atRoom) *Event {
			r.member(atAlice, atCarol, MembershipInvite, nil)
			return atMessage(r, atCarol)
		}, want: always(RuleSenderMembership)},
		{name: "message after leaving", event: func(r *atRoom) *Event {
			r.member(atBob, atBob, MembershipLeave, nil)
			return atMessage(r, atBob)
		}, want: always(RuleSenderMembership)},
		{name: "third party invite by admin", event: state(TypeThirdPartyInvite, atAlice, "t1"), want: always("")},
		{name: "third party invite below invite level", event: func(r *atRoom) *Event {
			r.setPL(map[string]any{"invite": 10, "events": map[string]any{TypeThirdPartyInvite: 0}})
			return state(TypeThirdPartyInvite, atBob, "t1")(r)
		}, want: always(RuleThirdPartyInviteLevel)},
		{name: "third party invite ignores event level", event: func(r *atRoom) *Event {
			r.setPL(map[string]any{"events": map[string]any{TypeThirdPartyInvite: 100}})
			return state(TypeThirdPartyInvite, atBob, "t1")(r)
		}, want: always("")},
		{name: "state below state_default", event: state("m.room.topic", atBob, ""), want: always(RuleEventLevel)},
		{name: "state at state_default", event: state("m.room.topic", atMod, ""), want: always("")},
		{name: "events override", event: func(r *atRoom) *Event {
			r.setPL(map[string]any{"events": map[string]any{"m.room.topic": 0}})
			return state("m.room.topic", atBob, "")(r)
		}, want: always("")},
		{name: "message above events_default", event: func(r *atRoom) *Event {
			r.setPL(map[string]any{"events_default": 10})
			return atMessage(r, atBob)
		}, want: always(RuleEventLevel)},
		{name: "state_key of another user", event: func(r *atRoom) *Event {
			r.setPL(map[string]any{"state_default": 0})
			return state("m.custom", atBob, atAlice)(r)
		}, want: always(RuleStateKeyUser)},
		{name: "state_key of the sender", event: func(r *atRoom) *Event {
			r.setPL(map[string]any{"state_default": 0})
			return state("m.custom", atBob, atBob)(r)
		}, want: always("")},
		{name: "state_key with @ but not a user", event: state("m.custom", atMod, "@"), want: always(RuleStateKeyUser)},
	})
}

func TestAuthNoPowerLevelsEvent(t *testing.T) {
	room := func(t testing.TB, rv *RoomVersion) *atRoom {
		r := newATRoom(t, rv, nil)
		r.member(atAlice, atAlice, MembershipJoin, nil)
		r.setJoinRule(JoinRulePublic, nil) // the creator may: 100 (v12: infinite) ≥ state_default 50
		r.member(atBob, atBob, MembershipJoin, nil)
		return r
	}
	runATCases(t, []atCase{
		{name: "creator sends state", room: room, event: func(r *atRoom) *Event {
			return r.build(atEv{typ: "m.room.name", sk: atSK(""), sender: atAlice, content: map[string]any{"name": "n"}})
		}, want: always("")},
		{name: "member sends state", room: room, event: func(r *atRoom) *Event {
			return r.build(atEv{typ: "m.room.name", sk: atSK(""), sender: atBob, content: map[string]any{"name": "n"}})
		}, want: always(RuleEventLevel)},
		{name: "member sends message", room: room, event: func(r *atRoom) *Event { return atMessage(r, atBob) }, want: always("")},
		{name: "member kicks creator", room: room, event: func(r *atRoom) *Event {
			return atMemberEv(r, atBob, atAlice, MembershipLeave, nil)
		}, want: always(RuleLeaveKickLevel)},
		{name: "creator kicks member", room: room, event: func(r *atRoom) *Event {
			return atMemberEv(r, atAlice, atBob, MembershipLeave, nil)
		}, want: always("")},
		{name: "first power levels by member", room: room, event: func(r *atRoom) *Event {
			return atPLEv(r, atBob, map[string]any{"users": map[string]any{atBob: 100}})
		}, want: always(RuleEventLevel)},
	})
}

func TestAuthPowerLevelsContent(t *testing.T) {
	pl := func(content map[string]any) func(r *atRoom) *Event {
		return func(r *atRoom) *Event { return atPLEv(r, atAlice, atBasePL(r.rv, content)) }
	}
	legacyStrings := func(rv *RoomVersion) bool { return rv.LegacyStringPowerLevels }
	floats := func(rv *RoomVersion) bool { return rv.LegacyStringPowerLevels && !rv.StrictCanonicalJSON }
	runATCases(t, []atCase{
		{name: "integers", event: pl(map[string]any{"ban": 50, "events": map[string]any{"m.room.name": 50}, "notifications": map[string]any{"room": 20}}), want: always("")},
		{name: "string level", event: pl(map[string]any{"ban": "50"}), want: when(legacyStrings, "", RulePowerLevelsIntegers)},
		{name: "padded string level", event: pl(map[string]any{"kick": " +050 "}), want: when(legacyStrings, "", RulePowerLevelsIntegers)},
		{name: "non-integer string", event: pl(map[string]any{"ban": "5x"}), want: always(RulePowerLevelsIntegers)},
		{name: "float level", event: pl(map[string]any{"ban": 50.5}), want: when(floats, "", RulePowerLevelsIntegers)},
		{name: "boolean level", event: pl(map[string]any{"invite": true}), want: always(RulePowerLevelsIntegers)},
		{name: "null level", event: pl(map[string]any{"invite": nil, "kick": json.RawMessage("null")}), want: always(RulePowerLevelsIntegers)},
		{name: "string in events", event: pl(map[string]any{"events": map[string]any{"m.room.name": "50"}}), want: when(legacyStrings, "", RulePowerLevelsObjects)},
		{name: "events not an object", event: pl(map[string]any{"events": []any{}}), want: always(RulePowerLevelsObjects)},
		{name: "string in notifications", event: pl(map[string]any{"notifications": map[string]any{"room": "20"}}), want: when(legacyStrings, "", RulePowerLevelsObjects)},
		{name: "garbage in notifications", event: pl(map[string]any{"notifications": map[string]any{"room": "x"}}),
			want: when(func(rv *RoomVersion) bool { return rv.NotificationsPowerLevels }, RulePowerLevelsObjects, "")},
		{name: "users key not a user ID", event: pl(map[string]any{"users": map[string]any{"bob": 10}}), want: always(RulePowerLevelsUsers)},
		{name: "string in users", event: pl(map[string]any{"users": map[string]any{atBob: "10"}}), want: when(legacyStrings, "", RulePowerLevelsUsers)},
		{name: "float in users", event: pl(map[string]any{"users": map[string]any{atBob: 10.7}}), want: when(floats, "", RulePowerLevelsUsers)},
		{name: "users not an object", event: pl(map[string]any{"users": []any{atBob}}), want: always(RulePowerLevelsUsers)},
		{name: "creator in users", event: pl(map[string]any{"users": map[string]any{atAlice: 100}}),
			want: when(func(rv *RoomVersion) bool { return rv.PrivilegedCreators }, RulePowerLevelsCreators, "")},
	})
}

func TestAuthPowerLevelsChanges(t *testing.T) {
	// Each case: the room's power levels are atBasePL(rv, before) (sent by
	// alice), then sender sends atBasePL(rv, after).
	// keepAdmin puts alice's 100 back into a users override before v12, so
	// that cases about other users do not also remove her.
	keepAdmin := func(rv *RoomVersion, over map[string]any) map[string]any {
		u, ok := over["users"].(map[string]any)
		if !ok || rv.PrivilegedCreators {
			return over
		}
		c := map[string]any{}
		for k, v := range over {
			c[k] = v
		}
		withAdmin := map[string]any{atAlice: 100}
		for k, v := range u {
			withAdmin[k] = v
		}
		c["users"] = withAdmin
		return c
	}
	change := func(before map[string]any, sender string, after map[string]any) (func(t testing.TB, rv *RoomVersion) *atRoom, func(r *atRoom) *Event) {
		return func(t testing.TB, rv *RoomVersion) *atRoom {
				r := newBaseRoom(t, rv, JoinRulePublic)
				if before != nil {
					r.setPL(keepAdmin(rv, before))
				}
				return r
			}, func(r *atRoom) *Event {
				return atPLEv(r, sender, atBasePL(r.rv, keepAdmin(r.rv, after)))
			}
	}
	c := func(name string, before map[string]any, sender string, after map[string]any, want func(*RoomVersion) AuthRule) atCase {
		room, ev := change(before, sender, after)
		return atCase{name: name, room: room, event: ev, want: want}
	}
	users := func(kv ...any) map[string]any {
		u := map[string]any{}
		for i := 0; i < len(kv); i += 2 {
			u[kv[i].(string)] = kv[i+1]
		}
		return map[string]any{"users": u}
	}
	notifs := func(rv *RoomVersion) bool { return rv.NotificationsPowerLevels }
	privileged := func(rv *RoomVersion) bool { return rv.PrivilegedCreators }
	runATCases(t, []atCase{
		c("unchanged", nil, atMod, nil, always("")),
		c("add level within own", nil, atMod, map[string]any{"kick": 40}, always("")),
		c("add level above own", nil, atMod, map[string]any{"ban": 60}, always(RulePowerLevelsChange)),
		c("same value", map[string]any{"ban": 40}, atMod, map[string]any{"ban": 40}, always("")),
		c("change level from above own", map[string]any{"kick": 75}, atMod, map[string]any{"kick": 40}, always(RulePowerLevelsChange)),
		c("remove level above own", map[string]any{"kick": 75}, atMod, nil, always(RulePowerLevelsChange)),
		c("remove level within own", map[string]any{"kick": 30}, atMod, nil, always("")),
		c("add event level above own", nil, atMod, map[string]any{"events": map[string]any{"m.room.name": 60}}, always(RulePowerLevelsEvents)),
		c("add event level at own", nil, atMod, map[string]any{"events": map[string]any{"m.room.name": 50}}, always("")),
		c("remove event level above own", map[string]any{"events": map[string]any{"m.room.topic": 80}}, atMod, nil, always(RulePowerLevelsEvents)),
		c("keep event level above own", map[string]any{"events": map[string]any{"m.room.topic": 80}}, atMod,
			map[string]any{"events": map[string]any{"m.room.topic": 80}, "kick": 20}, always("")),
		c("add notification level above own", nil, atMod, map[string]any{"notifications": map[string]any{"room": 60}}, when(notifs, RulePowerLevelsEvents, "")),
		c("remove notification level above own", map[string]any{"notifications": map[string]any{"room": 90}}, atMod, nil, when(notifs, RulePowerLevelsEvents, "")),
		c("demote an equal", nil, atMod, users(atMod, 50, atPeer, 10), always(RulePowerLevelsUserRank)),
		c("remove an equal", nil, atMod, users(atMod, 50), always(RulePowerLevelsUserRank)),
		c("demote self", nil, atMod, users(atMod, 10, atPeer, 50), always("")),
		c("promote above self", nil, atMod, users(atMod, 50, atPeer, 50, atBob, 60), always(RulePowerLevelsUserRank)),
		c("promote self", nil, atMod, users(atMod, 60, atPeer, 50), always(RulePowerLevelsUserRank)),
		c("promote to own level", nil, atMod, users(atMod, 50, atPeer, 50, atBob, 50), always("")),
		c("demote an inferior", map[string]any{"users": map[string]any{atMod: 50, atPeer: 50, atBob: 20}}, atMod, users(atMod, 50, atPeer, 50, atBob, 0), always("")),
		c("admin promotes above 100", nil, atAlice, users(atMod, 50, atPeer, 50, atBob, 101), when(privileged, "", RulePowerLevelsUserRank)),
		c("admin raises ban above 100", nil, atAlice, map[string]any{"ban": 9007199254740991}, when(privileged, "", RulePowerLevelsChange)),
	})
}

func TestAuthRedaction(t *testing.T) {
	redact := func(sender, target string) func(r *atRoom) *Event {
		return func(r *atRoom) *Event {
			return r.build(atEv{typ: TypeRedaction, sender: sender, redacts: target})
		}
	}
	ruled := func(rv *RoomVersion) bool { return rv.RedactionAuthRule }
	runATCases(t, []atCase{
		{name: "other server's event below redact level", event: redact(atBob, "$x:a.test"), want: when(ruled, RuleRedactionLevel, "")},
		{name: "own server's event", event: redact(atBob, "$x:b.test"), want: always("")},
		{name: "at redact level", event: redact(atMod, "$x:a.test"), want: always("")},
		{name: "redaction level via events", event: func(r *atRoom) *Event {
			r.setPL(map[string]any{"events": map[string]any{TypeRedaction: 60}})
			return redact(atMod, "$x:b.test")(r)
		}, want: always(RuleEventLevel)},
	})
}

func TestAuthPrivilegedCreators(t *testing.T) {
	rv := MustRoomVersion("12")
	room := func(t testing.TB) *atRoom {
		r := newATRoom(t, rv, map[string]any{"additional_creators": []any{atCarol}})
		r.member(atAlice, atAlice, MembershipJoin, nil)
		r.setJoinRule(JoinRulePublic, nil)
		r.member(atCarol, atCarol, MembershipJoin, nil)
		r.member(atBob, atBob, MembershipJoin, nil)
		return r
	}
	t.Run("additional creator is infinite without power levels", func(t *testing.T) {
		r := room(t)
		ev := r.build(atEv{typ: "m.room.tombstone", sk: atSK(""), sender: atCarol, content: map[string]any{}})
		if got := r.check(ev); got != "" {
			t.Fatalf("rule %q", got)
		}
		levels, err := NewPowerLevels(rv, r.create, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range []string{atAlice, atCarol} {
			if l := levels.UserLevel(u); !l.Infinite {
				t.Fatalf("%s level %v, want infinite", u, l)
			}
		}
		if l := levels.UserLevel(atBob); l != FinitePowerLevel(0) {
			t.Fatalf("bob level %v", l)
		}
	})
	t.Run("creators in users refused", func(t *testing.T) {
		for _, u := range []string{atAlice, atCarol} {
			r := room(t)
			ev := atPLEv(r, atAlice, map[string]any{"users": map[string]any{u: 100}})
			if got := r.check(ev); got != RulePowerLevelsCreators {
				t.Fatalf("%s: rule %q", u, got)
			}
		}
	})
	t.Run("creators cannot be outranked", func(t *testing.T) {
		r := room(t)
		r.add(atEv{typ: TypePowerLevels, sk: atSK(""), sender: atCarol, content: map[string]any{"users": map[string]any{atBob: 9007199254740991}}})
		for _, target := range []string{atAlice, atCarol} {
			if got := r.check(atMemberEv(r, atBob, target, MembershipBan, nil)); got != RuleBanLevel {
				t.Fatalf("bob bans %s: rule %q", target, got)
			}
		}
		// Two creators are equal: neither can kick the other.
		if got := r.check(atMemberEv(r, atCarol, atAlice, MembershipLeave, nil)); got != RuleLeaveKickLevel {
			t.Fatalf("creator kicks creator: rule %q", got)
		}
		if got := r.check(atMemberEv(r, atCarol, atBob, MembershipBan, nil)); got != "" {
			t.Fatalf("creator bans top user: rule %q", got)
		}
		// And a user cannot undo what the creators set above him.
		r.add(atEv{typ: TypePowerLevels, sk: atSK(""), sender: atAlice, content: map[string]any{
			"users": map[string]any{atBob: 100}, "events": map[string]any{"m.room.tombstone": 150},
		}})
		if got := r.check(atPLEv(r, atBob, map[string]any{"users": map[string]any{atBob: 100}})); got != RulePowerLevelsEvents {
			t.Fatalf("top user removes tombstone level: rule %q", got)
		}
	})
	t.Run("pre-v12 additional_creators means nothing", func(t *testing.T) {
		rv11 := MustRoomVersion("11")
		r := newATRoom(t, rv11, map[string]any{"additional_creators": []any{atCarol}})
		r.member(atAlice, atAlice, MembershipJoin, nil)
		r.setJoinRule(JoinRulePublic, nil)
		r.member(atCarol, atCarol, MembershipJoin, nil)
		ev := r.build(atEv{typ: "m.room.name", sk: atSK(""), sender: atCarol, content: map[string]any{}})
		if got := r.check(ev); got != RuleEventLevel {
			t.Fatalf("rule %q", got)
		}
	})
}

// TestAuthSoftFail: an event allowed by its auth events (the state it was
// sent in) but not by the current state, as after a ban.
func TestAuthSoftFail(t *testing.T) {
	for _, rv := range atVersions(t) {
		t.Run("v"+string(rv.ID), func(t *testing.T) {
			r := newBaseRoom(t, rv, JoinRulePublic)
			msg := r.store(atMessage(r, atBob))
			r.member(atAlice, atBob, MembershipBan, nil)
			if err := AllowedByAuthEvents(msg, r.lookup, r.isRejected); err != nil {
				t.Fatalf("by auth events: %v", err)
			}
			if got := ruleOf(t, AllowedByState(msg, r.state, r.lookup)); got != RuleSenderMembership {
				t.Fatalf("by current state: rule %q, want %q", got, RuleSenderMembership)
			}
		})
	}
}

func TestAuthFallbackAuthEvents(t *testing.T) {
	rv := MustRoomVersion("10")
	r := newBaseRoom(t, rv, JoinRulePublic)
	msg := atMessage(r, atBob)
	own, err := LoadAuthEvents(msg, r.lookup, nil)
	if err != nil {
		t.Fatal(err)
	}
	// An empty state falls back to the event's own auth events.
	if err := Allowed(msg, FallbackAuthEvents{Primary: AuthEventMap{}, Fallback: own}); err != nil {
		t.Fatal(err)
	}
	// The state wins where it has the key.
	banned := r.member(atAlice, atBob, MembershipBan, nil)
	state := AuthEventMap{{Type: TypeMember, StateKey: atBob}: banned}
	if got := ruleOf(t, Allowed(msg, FallbackAuthEvents{Primary: state, Fallback: own})); got != RuleSenderMembership {
		t.Fatalf("rule %q", got)
	}
	// Skipped (rejected) auth events are left out.
	pl := r.state[StateKey{Type: TypePowerLevels}]
	skipped, err := LoadAuthEvents(msg, r.lookup, func(id string) bool { return id == pl })
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := skipped[StateKey{Type: TypePowerLevels}]; ok || len(skipped) != len(own)-1 {
		t.Fatalf("skip ignored: %v", skipped)
	}
}

func TestAuthErrorMessage(t *testing.T) {
	r := newBaseRoom(t, MustRoomVersion("9"), JoinRulePublic)
	ev := atMessage(r, atCarol)
	err := AllowedByState(ev, r.state, r.lookup)
	var ae *AuthError
	if !errors.As(err, &ae) {
		t.Fatalf("err %v", err)
	}
	if ae.EventID != ev.EventID() || ae.Version != "9" || ae.Rule != RuleSenderMembership || ae.Reason == "" {
		t.Fatalf("error fields: %+v", ae)
	}
	if msg := err.Error(); msg == "" || !containsAll(msg, ev.EventID(), string(RuleSenderMembership), atCarol) {
		t.Fatalf("message %q", msg)
	}
}

// TestAuthLookupErrors: a failing or incomplete store is an error, never an
// *AuthError (the event itself may be fine).
func TestAuthLookupErrors(t *testing.T) {
	r := newBaseRoom(t, MustRoomVersion("11"), JoinRulePublic)
	msg := r.store(atMessage(r, atBob))
	boom := errors.New("store down")
	failing := func(string) (*Event, error) { return nil, boom }
	for name, err := range map[string]error{
		"state":       AllowedByState(msg, r.state, failing),
		"auth events": AllowedByAuthEvents(msg, failing, nil),
	} {
		var ae *AuthError
		if !errors.Is(err, boom) || errors.As(err, &ae) {
			t.Errorf("%s: %v", name, err)
		}
	}
	missing := func(string) (*Event, error) { return nil, nil }
	for name, err := range map[string]error{
		"state":       AllowedByState(msg, r.state, missing),
		"auth events": AllowedByAuthEvents(msg, missing, nil),
	} {
		var ae *AuthError
		if !errors.Is(err, ErrMissingAuthEvent) || errors.As(err, &ae) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// An AuthEvents that answers with the wrong event is a caller bug.
	bobKey := StateKey{Type: TypeMember, StateKey: atBob}
	wrong := AuthEventMap{{Type: TypeCreate}: r.create, bobKey: r.events[r.state[bobKey]], {Type: TypePowerLevels}: r.create}
	if err := Allowed(msg, wrong); err == nil || errors.As(err, new(*AuthError)) {
		t.Errorf("wrong event for key: %v", err)
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		found := false
		for i := 0; i+len(sub) <= len(s); i++ {
			if s[i:i+len(sub)] == sub {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
