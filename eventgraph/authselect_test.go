package eventgraph

import (
	"encoding/json"
	"reflect"
	"testing"
)

func TestAuthEventsNeeded(t *testing.T) {
	create, pl, jr := StateKey{Type: TypeCreate}, StateKey{Type: TypePowerLevels}, StateKey{Type: TypeJoinRules}
	mem := func(u string) StateKey { return StateKey{Type: TypeMember, StateKey: u} }
	tpi := func(tok string) StateKey { return StateKey{Type: TypeThirdPartyInvite, StateKey: tok} }
	withCreate := func(rv *RoomVersion, keys ...StateKey) []StateKey {
		if rv.RoomIDFromCreateEvent {
			return keys
		}
		return append([]StateKey{create}, keys...)
	}
	member := func(m string, extra string) json.RawMessage {
		return json.RawMessage(`{"membership":"` + m + `"` + extra + `}`)
	}
	type tc struct {
		name     string
		typ      string
		sk       *string
		sender   string
		content  json.RawMessage
		want     func(rv *RoomVersion) []StateKey
		versions func(rv *RoomVersion) bool
	}
	cases := []tc{
		{name: "create", typ: TypeCreate, sk: atSK(""), sender: atAlice, want: func(*RoomVersion) []StateKey { return nil }},
		{name: "message", typ: "m.room.message", sender: atBob, content: json.RawMessage(`{"body":"x"}`),
			want: func(rv *RoomVersion) []StateKey { return withCreate(rv, pl, mem(atBob)) }},
		{name: "state", typ: "m.room.name", sk: atSK(""), sender: atBob, content: json.RawMessage(`{}`),
			want: func(rv *RoomVersion) []StateKey { return withCreate(rv, pl, mem(atBob)) }},
		{name: "member without state_key", typ: TypeMember, sender: atBob, content: member("join", ""),
			want: func(rv *RoomVersion) []StateKey { return withCreate(rv, pl, mem(atBob)) }},
		{name: "self join", typ: TypeMember, sk: atSK(atBob), sender: atBob, content: member("join", ""),
			want: func(rv *RoomVersion) []StateKey { return withCreate(rv, pl, mem(atBob), jr) }},
		{name: "restricted join", typ: TypeMember, sk: atSK(atBob), sender: atBob,
			content: member("join", `,"join_authorised_via_users_server":"`+atMod+`"`),
			want: func(rv *RoomVersion) []StateKey {
				if rv.Restricted {
					return withCreate(rv, pl, mem(atBob), jr, mem(atMod))
				}
				return withCreate(rv, pl, mem(atBob), jr)
			}},
		{name: "restricted join via self", typ: TypeMember, sk: atSK(atBob), sender: atBob,
			content: member("join", `,"join_authorised_via_users_server":"`+atBob+`"`),
			want:    func(rv *RoomVersion) []StateKey { return withCreate(rv, pl, mem(atBob), jr) }},
		{name: "invite", typ: TypeMember, sk: atSK(atCarol), sender: atBob, content: member("invite", ""),
			want: func(rv *RoomVersion) []StateKey { return withCreate(rv, pl, mem(atBob), mem(atCarol), jr) }},
		{name: "third party invite", typ: TypeMember, sk: atSK(atCarol), sender: atBob,
			content: member("invite", `,"third_party_invite":{"signed":{"mxid":"`+atCarol+`","token":"tok"}}`),
			want:    func(rv *RoomVersion) []StateKey { return withCreate(rv, pl, mem(atBob), mem(atCarol), jr, tpi("tok")) }},
		{name: "third party invite without token", typ: TypeMember, sk: atSK(atCarol), sender: atBob,
			content: member("invite", `,"third_party_invite":{"signed":{"mxid":"`+atCarol+`","token":7}}`),
			want:    func(rv *RoomVersion) []StateKey { return withCreate(rv, pl, mem(atBob), mem(atCarol), jr) }},
		{name: "knock", typ: TypeMember, sk: atSK(atCarol), sender: atCarol, content: member("knock", ""),
			want: func(rv *RoomVersion) []StateKey { return withCreate(rv, pl, mem(atCarol), jr) }},
		{name: "kick", typ: TypeMember, sk: atSK(atCarol), sender: atBob, content: member("leave", ""),
			want: func(rv *RoomVersion) []StateKey { return withCreate(rv, pl, mem(atBob), mem(atCarol)) }},
		{name: "ban", typ: TypeMember, sk: atSK(atCarol), sender: atBob, content: member("ban", ""),
			want: func(rv *RoomVersion) []StateKey { return withCreate(rv, pl, mem(atBob), mem(atCarol)) }},
		{name: "malformed content", typ: TypeMember, sk: atSK(atCarol), sender: atBob, content: json.RawMessage(`[]`),
			want: func(rv *RoomVersion) []StateKey { return withCreate(rv, pl, mem(atBob), mem(atCarol)) }},
	}
	for _, c := range cases {
		for _, rv := range atVersions(t) {
			got := AuthEventsNeeded(c.typ, c.sk, c.sender, c.content, rv)
			if want := c.want(rv); !reflect.DeepEqual(got, want) && !(len(got) == 0 && len(want) == 0) {
				t.Errorf("%s v%s: %v, want %v", c.name, rv.ID, got, want)
			}
		}
	}
}

func TestSelectAuthEvents(t *testing.T) {
	for _, rv := range atVersions(t) {
		r := newBaseRoom(t, rv, JoinRuleInvite)
		id := func(k StateKey) string { return r.state[k] }
		content := json.RawMessage(`{"membership":"invite"}`)
		got := SelectAuthEvents(TypeMember, atSK(atCarol), atBob, content, rv, r.state)
		want := []string{id(StateKey{Type: TypePowerLevels}), id(StateKey{Type: TypeMember, StateKey: atBob}), id(StateKey{Type: TypeJoinRules})}
		if !rv.RoomIDFromCreateEvent {
			want = append([]string{r.create.EventID()}, want...)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("v%s: %v, want %v", rv.ID, got, want)
		}
		if got := SelectAuthEvents(TypeCreate, atSK(""), atAlice, nil, rv, r.state); len(got) != 0 {
			t.Errorf("v%s: create: %v", rv.ID, got)
		}
	}
}
