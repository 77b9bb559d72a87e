package eventgraph

import (
	"fmt"
	"strconv"
	"testing"
)

// srBigRoom is a room with 30,000 state events (29,996 members) and two
// forks off it that disagree on 1,000 keys:
//
//   - fork A: alice changes the power levels; 500 members change their
//     display name (10 of them twice, so that the intermediate events are in
//     the auth difference and the unconflicted state's auth chain must be
//     walked); 20 moderators kick 20 members;
//   - fork B: 449 members leave; alice bans 20 members; the 20 kicked in A
//     change their display name; alice sets topic and name; 8 new users join.
//
// Events are built as the auth events selection would pick them, but not
// auth-checked while building (a sanity check on the result stands in).
type srBigRoom struct {
	rv     *RoomVersion
	events map[string]*Event
	a, b   StateMap
}

const srBigMembers = 29996

// newSRBigRoom builds the room; the power levels list plUsers users (the 20
// moderators among them).
func newSRBigRoom(tb testing.TB, rv *RoomVersion, plUsers int) *srBigRoom {
	tb.Helper()
	g := &srBigRoom{rv: rv, events: make(map[string]*Event, 32000)}
	const createID = "$bigcreate"
	roomID := "!bigroom:a.test"
	if rv.RoomIDFromCreateEvent {
		roomID = "!" + createID[1:]
	}
	ts := int64(1_000_000)
	add := func(state StateMap, id, typ, sk, sender, content string, auth ...string) {
		ts++
		if !rv.RoomIDFromCreateEvent && typ != TypeCreate {
			auth = append([]string{createID}, auth...)
		}
		raw := []byte(`{"auth_events":[`)
		for i, a := range auth {
			if i > 0 {
				raw = append(raw, ',')
			}
			if rv.EventIDs == EventIDFormatV1 {
				raw = fmt.Appendf(raw, `[%q,{"sha256":"aGFzaA"}]`, a)
			} else {
				raw = strconv.AppendQuote(raw, a)
			}
		}
		raw = fmt.Appendf(raw, `],"content":%s,"depth":%d,"origin_server_ts":%d,"prev_events":[]`, content, ts-1_000_000, ts)
		if rv.EventIDs == EventIDFormatV1 {
			raw = fmt.Appendf(raw, `,"event_id":%q`, id)
		}
		if !(rv.RoomIDFromCreateEvent && typ == TypeCreate) {
			raw = fmt.Appendf(raw, `,"room_id":%q`, roomID)
		}
		raw = fmt.Appendf(raw, `,"sender":%q,"state_key":%q,"type":%q}`, sender, sk, typ)
		ev, err := NewEventFromTrustedJSON(raw, rv, id)
		if err != nil {
			tb.Fatal(err)
		}
		g.events[id] = ev
		state[StateKey{Type: typ, StateKey: sk}] = id
	}
	user := func(i int) string { return "@u" + strconv.Itoa(i) + ":big.test" }
	memberID := func(i int) string { return "$m" + strconv.Itoa(i) }
	mkey := func(u string) StateKey { return StateKey{Type: TypeMember, StateKey: u} }
	plContent := func(extra string) string {
		c := `{"users":{`
		if !rv.PrivilegedCreators {
			c += `"` + srAlice + `":100,`
		}
		for i := 0; i < plUsers; i++ {
			lvl := "50"
			if i >= 20 {
				lvl = "1"
			}
			c += `"` + user(i) + `":` + lvl + `,`
		}
		return c + `"@extra:big.test":` + extra + `}}`
	}

	base := StateMap{}
	add(base, createID, TypeCreate, "", srAlice, `{"creator":"`+srAlice+`","room_version":"`+string(rv.ID)+`"}`)
	add(base, "$alice", TypeMember, srAlice, srAlice, `{"membership":"join"}`)
	add(base, "$pl0", TypePowerLevels, "", srAlice, plContent("10"), "$alice")
	add(base, "$jr", TypeJoinRules, "", srAlice, `{"join_rule":"public"}`, "$pl0", "$alice")
	for i := 0; i < srBigMembers; i++ {
		add(base, memberID(i), TypeMember, user(i), user(i), `{"membership":"join"}`, "$pl0", "$jr")
	}

	a, b := base.Clone(), base.Clone()
	add(a, "$plA", TypePowerLevels, "", srAlice, plContent("25"), "$pl0", "$alice")
	for i := 1000; i < 1500; i++ {
		prev := memberID(i)
		if i < 1010 {
			id := "$dA1_" + strconv.Itoa(i)
			add(a, id, TypeMember, user(i), user(i), `{"membership":"join","displayname":"first"}`, "$plA", prev, "$jr")
			prev = id
		}
		add(a, "$dA_"+strconv.Itoa(i), TypeMember, user(i), user(i), `{"membership":"join","displayname":"a"}`, "$plA", prev, "$jr")
	}
	for k := 0; k < 20; k++ {
		mod, target := k, 2000+k
		add(a, "$kA_"+strconv.Itoa(target), TypeMember, user(target), user(mod), `{"membership":"leave"}`, "$plA", memberID(mod), memberID(target))
	}
	for i := 3000; i < 3449; i++ {
		add(b, "$lB_"+strconv.Itoa(i), TypeMember, user(i), user(i), `{"membership":"leave"}`, "$pl0", memberID(i))
	}
	for i := 4000; i < 4020; i++ {
		add(b, "$bB_"+strconv.Itoa(i), TypeMember, user(i), srAlice, `{"membership":"ban"}`, "$pl0", "$alice", memberID(i))
	}
	for i := 2000; i < 2020; i++ {
		add(b, "$dB_"+strconv.Itoa(i), TypeMember, user(i), user(i), `{"membership":"join","displayname":"b"}`, "$pl0", memberID(i), "$jr")
	}
	add(b, "$topicB", "m.room.topic", "", srAlice, `{"topic":"b"}`, "$pl0", "$alice")
	add(b, "$nameB", "m.room.name", "", srAlice, `{"name":"b"}`, "$pl0", "$alice")
	for i := 0; i < 8; i++ {
		u := "@new" + strconv.Itoa(i) + ":big.test"
		add(b, "$jB_"+strconv.Itoa(i), TypeMember, u, u, `{"membership":"join"}`, "$pl0", "$jr")
	}
	g.a, g.b = a, b

	if len(base) != 30000 {
		tb.Fatalf("base state has %d events, want 30000", len(base))
	}
	_, conflicted := splitStates([]StateMap{a, b})
	if len(conflicted) != 1000 {
		tb.Fatalf("%d conflicted keys, want 1000", len(conflicted))
	}
	// The outcome the rules give: fork A's power levels, B's leaves, bans,
	// topic and joins, A's display names (the kicked members rejoin with
	// B's display name after the kick, the join rule being public).
	res, err := g.resolve()
	if err != nil {
		tb.Fatal(err)
	}
	want := map[StateKey]string{
		srPLKey:                "$plA",
		srTopicKey:             "$topicB",
		mkey(user(3000)):       "$lB_3000",
		mkey(user(4000)):       "$bB_4000",
		mkey(user(1000)):       "$dA_1000",
		mkey(user(1499)):       "$dA_1499",
		mkey(user(2000)):       "$dB_2000",
		mkey("@new7:big.test"): "$jB_7",
	}
	for k, id := range want {
		if res[k] != id {
			tb.Fatalf("resolved %s = %s, want %s", k, res[k], id)
		}
	}
	if len(res) != 30010 {
		tb.Fatalf("resolved state has %d keys, want 30010", len(res))
	}
	return g
}

func (g *srBigRoom) resolve() (StateMap, error) {
	return ResolveState(g.rv, []StateMap{g.a, g.b}, func(id string) (*Event, error) { return g.events[id], nil })
}

func (g *srBigRoom) bench(b *testing.B) {
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := g.resolve(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkResolveV2_30kState_1kConflicts(b *testing.B) {
	newSRBigRoom(b, MustRoomVersion("10"), 20).bench(b)
}

func BenchmarkResolveV21_30kState_1kConflicts(b *testing.B) {
	newSRBigRoom(b, MustRoomVersion("12"), 20).bench(b)
}

// BenchmarkStateRes groups the state resolution benchmarks under one name
// (go test -bench StateRes). The BigPL variants list 1,000 users in the
// power levels, which the auth rules parse on every check.
func BenchmarkStateRes(b *testing.B) {
	for _, c := range []struct {
		name    string
		version RoomVersionID
		plUsers int
	}{
		{"V1_30kState_1kConflicts", "1", 20},
		{"V2_30kState_1kConflicts", "10", 20},
		{"V21_30kState_1kConflicts", "12", 20},
		{"V2_30kState_1kConflicts_BigPL", "10", 1000},
		{"V21_30kState_1kConflicts_BigPL", "12", 1000},
	} {
		b.Run(c.name, func(b *testing.B) { newSRBigRoom(b, MustRoomVersion(c.version), c.plUsers).bench(b) })
	}
}
