package eventgraph

import (
	"errors"
	"fmt"
	"testing"
)

// Scenario tests. Each one builds a small room by hand and states the
// expected resolution, derived from the spec's rules in the comments.

func TestResolveState_Trivial(t *testing.T) {
	for _, id := range []RoomVersionID{"1", "10", "12"} {
		t.Run(string(id), func(t *testing.T) {
			r, f := newSRRoom(t, MustRoomVersion(id), "$create")
			f.base(nil)
			s := f.state

			got, err := ResolveState(r.rv, nil, r.lookup)
			if err != nil || len(got) != 0 {
				t.Fatalf("no states: got %v, %v; want empty state", got, err)
			}
			srExpectState(t, r.resolve(s), s)
			srExpectState(t, r.resolve(s, s.Clone(), s.Clone()), s)
			if len(r.lookups) != 0 {
				t.Errorf("identical states needed lookups: %v", r.lookups)
			}
			// The result is a new map: changing it leaves the input alone.
			got = r.resolve(s, s)
			got[srTopicKey] = "$other"
			if _, ok := s[srTopicKey]; ok {
				t.Error("result shares its map with an input state")
			}
		})
	}
}

func TestResolveState_BadArguments(t *testing.T) {
	lookup := func(string) (*Event, error) { return nil, nil }
	if _, err := ResolveState(nil, []StateMap{{}, {}}, lookup); err == nil {
		t.Error("nil room version accepted")
	}
	if _, err := ResolveState(MustRoomVersion("10"), []StateMap{{}, {}}, nil); err == nil {
		t.Error("nil lookup accepted")
	}
	rv := srWithAlgo("10", 0)
	a := StateMap{srTopicKey: "$a"}
	b := StateMap{srTopicKey: "$b"}
	if _, err := ResolveState(rv, []StateMap{a, b}, lookup); err == nil {
		t.Error("unknown algorithm accepted")
	}
}

// TestResolveState_SpecNameExample works the example of the server-server
// API's "Room State Resolution" section:
//
//	  E0
//	  |
//	  E1
//	 /  \
//	E2  E4
//	|    |
//	E3   |
//	 \  /
//	  E5
//
// E0 creates the room, E1 is alice's join, E2 her power levels, and E3 and
// E4 are m.room.name events by alice; E4 is sent last. The state at E5 is
// the resolution of S′(E3) = {E0, E1, E2, E3} and S′(E4) = {E0, E1, E4}.
//
// v1: only the name conflicts (E2 is in one state only, so R has it). The
// candidate with the highest depth that R allows wins: E3 (depth 4, alice at
// 100 ≥ state_default 50) over E4 (depth 3).
//
// v2 and v2.1: the power levels key (E2 against nothing) and the name
// conflict. E2 is the only power event; replayed first, it is allowed and
// becomes the partial state's power levels. The mainline of E2 is [E2]. E3
// cites E2 (mainline position 0); E4 cites no power levels (position ∞),
// and a larger position sorts first, so E4 is applied, then E3 over it:
// the name is E3 although E4 is newer.
func TestResolveState_SpecNameExample(t *testing.T) {
	for _, id := range []RoomVersionID{"1", "2", "10", "11", "12"} {
		t.Run(string(id), func(t *testing.T) {
			r, f := newSRRoom(t, MustRoomVersion(id), "$E0")
			f.join("$E1", srAlice)
			left, right := f.clone(), f.clone()
			left.powerLevels("$E2", srAlice, map[string]int{srAlice: 100}, nil)
			left.send(srSpec{id: "$E3", typ: "m.room.name", sk: srSK(""), sender: srAlice, content: map[string]any{"name": "three"}})
			right.send(srSpec{id: "$E4", typ: "m.room.name", sk: srSK(""), sender: srAlice, content: map[string]any{"name": "four"}})

			want := r.stateOf("$E0", "$E1", "$E2", "$E3")
			srExpectState(t, r.resolve(left.state, right.state), want)
			srExpectState(t, r.resolve(right.state, left.state), want)
		})
	}
}

// TestResolveState_SpecSoftFailExample works the soft-failure example of the
// server-server API: B bans X, C is a topic X sets on a fork that has not
// seen B, D merges both.
//
//	  A
//	 / \
//	B   C
//	 \ /
//	  D
//
// v1: X's membership conflicts (join in C's state, ban in B's); the topic is
// in C's state only, which v1 does not count as a conflict, so R keeps C. The
// membership pass adds the older join, then allows the ban: X is banned and
// C stays. This is the spec's "in the original version of the algorithm C
// would be in the resolved state".
//
// v2 and v2.1: the topic is conflicted (absent from B's state). The ban is a
// power event; with X's join (in its auth chain and conflicted) it is
// replayed first and allowed. C is then checked against a state where X is
// banned and refused: the ban wins and the room has no topic.
func TestResolveState_SpecSoftFailExample(t *testing.T) {
	for _, id := range []RoomVersionID{"1", "2", "10", "12"} {
		t.Run(string(id), func(t *testing.T) {
			rv := MustRoomVersion(id)
			r, a := newSRRoom(t, rv, "$create")
			a.join("$IMA", srAlice)
			a.powerLevels("$IPOWER", srAlice, map[string]int{srAlice: 100}, map[string]any{"events": map[string]any{"m.room.topic": 0}})
			a.joinRules("$IJR", srAlice, JoinRulePublic)
			a.join("$JX", srX)
			b, c := a.clone(), a.clone()
			b.member("$B", srAlice, srX, MembershipBan)
			c.topic("$C", srX, "evading the ban")

			want := srWith(a.state, srMemberKey(srX), "$B")
			if rv.StateRes == StateResV1 {
				want[srTopicKey] = "$C"
			}
			srExpectState(t, r.resolve(b.state, c.state), want)
			srExpectState(t, r.resolve(c.state, b.state), want)
		})
	}
}

// TestResolveState_BanVersusJoin: alice bans eve on one fork while eve joins
// the public room on another, with eve's join either older or newer.
//
// v2/v2.1: conflicted set {BAN, JOIN}. The join rules event is in JOIN's
// auth chain but not BAN's; it is unconflicted state, so it is not in the
// auth difference (see authDifference), which is empty. BAN, the only power
// event, is replayed first and allowed; JOIN comes in the mainline pass and
// is refused, eve being banned. The timestamps do not matter: the ban is a
// power event and always goes first.
//
// v1: eve's key conflicts; both candidates have depth 5, so sha1(event_id)
// picks which goes in unchecked. If BAN is first, JOIN is refused (eve
// banned); if JOIN is first, BAN is allowed after it. Either way: BAN.
func TestResolveState_BanVersusJoin(t *testing.T) {
	for _, id := range []RoomVersionID{"1", "2", "10", "12"} {
		for _, joinFirst := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/joinFirst=%v", id, joinFirst), func(t *testing.T) {
				r, f := newSRRoom(t, MustRoomVersion(id), "$create")
				f.base(nil)
				banFork, joinFork := f.clone(), f.clone()
				banTS, joinTS := int64(5000), int64(6000)
				if joinFirst {
					banTS, joinTS = joinTS, banTS
				}
				banFork.send(srSpec{id: "$BAN", typ: TypeMember, sk: srSK(srEve), sender: srAlice, content: map[string]any{"membership": MembershipBan}, ts: banTS})
				joinFork.send(srSpec{id: "$JOIN", typ: TypeMember, sk: srSK(srEve), sender: srEve, content: map[string]any{"membership": MembershipJoin}, ts: joinTS})

				want := srWith(f.state, srMemberKey(srEve), "$BAN")
				srExpectState(t, r.resolve(banFork.state, joinFork.state), want)
				srExpectState(t, r.resolve(joinFork.state, banFork.state), want)
			})
		}
	}
}

// TestResolveState_DemotedUserKicks: bob (50) kicks zara on one fork while
// alice demotes bob to 0 on another.
//
// v2/v2.1: conflicted {PA, IPOWER} (power levels) and {IMZ, KICK} (zara).
// The auth difference is empty: bob's join IMB is in KICK's chain only, but
// it is unconflicted state. Power events PA, IPOWER and KICK, plus IMZ from
// KICK's auth chain, in reverse topological power order: IPOWER (everyone's
// ancestor), then PA (alice 100) and IMZ (zara 0), then KICK once its auth
// events are out. Replaying: IPOWER, PA and IMZ allowed; KICK refused since
// under PA bob has 0 < the kick level 50. Result: PA and zara still joined.
// In v2.1 the conflicted state subgraph adds IJR and IMB (KICK → IMB → IJR →
// IPOWER): the replay is IPOWER, IJR, PA, IMB, IMZ, KICK, to the same end.
// The kick is older than the demotion; that does not matter.
//
// v1: the power levels pass takes IPOWER (depth 3) then allows PA; the
// membership pass takes IMZ (depth 6) then refuses KICK for the same reason.
func TestResolveState_DemotedUserKicks(t *testing.T) {
	for _, id := range []RoomVersionID{"1", "2", "10", "11", "12"} {
		t.Run(string(id), func(t *testing.T) {
			r, f := newSRRoom(t, MustRoomVersion(id), "$create")
			f.base(map[string]int{srBob: 50})
			f.join("$IMB", srBob)
			f.join("$IMZ", srZara)
			demote, kick := f.clone(), f.clone()
			demote.send(srSpec{id: "$PA", typ: TypePowerLevels, sk: srSK(""), sender: srAlice, content: srPLContent(r.rv, map[string]int{srAlice: 100, srBob: 0}, nil), ts: 6000})
			kick.send(srSpec{id: "$KICK", typ: TypeMember, sk: srSK(srZara), sender: srBob, content: map[string]any{"membership": MembershipLeave}, ts: 5000})

			want := srWith(f.state, srPLKey, "$PA")
			srExpectState(t, r.resolve(demote.state, kick.state), want)
			srExpectState(t, r.resolve(kick.state, demote.state), want)
		})
	}
}

// TestResolveState_TopicByMainline: bob (50) sets topics on two forks; on
// one of them alice changed the power levels first.
//
// Part 1. Fork 1: P2 (alice, new power levels), then T2 (bob, cites P2,
// timestamp 100). Fork 2: T1 (bob, cites IPOWER, timestamp 200, depth 9).
// v2/v2.1: power events IPOWER and P2 resolve to P2, whose mainline is
// [P2, IPOWER]. T1 has mainline position 1, T2 position 0; the larger
// position sorts first, so T1 is applied, then T2: the topic is T2 although
// T1 is newer. v1 picks the allowed topic with the highest depth: T1.
//
// Part 2. Both forks after P2: T3 (timestamp 300) and T4 (timestamp 200),
// both at mainline position 0: origin_server_ts decides, T3 is applied last.
// With equal timestamps the larger event ID is applied last.
func TestResolveState_TopicByMainline(t *testing.T) {
	for _, id := range []RoomVersionID{"1", "2", "10", "12"} {
		t.Run(string(id), func(t *testing.T) {
			rv := MustRoomVersion(id)
			r, f := newSRRoom(t, rv, "$create")
			f.base(map[string]int{srBob: 50})
			f.join("$IMB", srBob)
			f1, f2 := f.clone(), f.clone()
			f1.powerLevels("$P2", srAlice, map[string]int{srAlice: 100, srBob: 50, srCharlie: 10}, nil)
			after := f1.clone()
			f1.send(srSpec{id: "$T2", typ: "m.room.topic", sk: srSK(""), sender: srBob, content: map[string]any{"topic": "two"}, ts: 100})
			f2.send(srSpec{id: "$T1", typ: "m.room.topic", sk: srSK(""), sender: srBob, content: map[string]any{"topic": "one"}, ts: 200, depth: 9})

			want := srWith(f1.state, srTopicKey, "$T2")
			if rv.StateRes == StateResV1 {
				want[srTopicKey] = "$T1"
			}
			srExpectState(t, r.resolve(f1.state, f2.state), want)
			srExpectState(t, r.resolve(f2.state, f1.state), want)

			if rv.StateRes == StateResV1 {
				return
			}
			g1, g2, g3 := after.clone(), after.clone(), after.clone()
			g1.send(srSpec{id: "$T3", typ: "m.room.topic", sk: srSK(""), sender: srBob, content: map[string]any{"topic": "three"}, ts: 300})
			g2.send(srSpec{id: "$T4", typ: "m.room.topic", sk: srSK(""), sender: srBob, content: map[string]any{"topic": "four"}, ts: 200})
			g3.send(srSpec{id: "$T5", typ: "m.room.topic", sk: srSK(""), sender: srBob, content: map[string]any{"topic": "five"}, ts: 300})
			srExpectState(t, r.resolve(g1.state, g2.state), g1.state)
			srExpectState(t, r.resolve(g2.state, g1.state), g1.state)
			// T3 and T5 tie on position and timestamp: "$T5" > "$T3".
			srExpectState(t, r.resolve(g1.state, g3.state, g2.state), g3.state)
		})
	}
}

// TestResolveState_JoinRulesFlip: alice makes the public room invite-only
// (JR2) on one fork; eve joins it through the public rule on another.
//
// v2/v2.1: power events IJR and JR2 (no auth link between them; both
// alice's) go by timestamp: IJR, then JR2, both allowed. Eve's join is then
// checked against join rule "invite" without an invite and refused.
//
// v1: only the join rules conflict (eve's membership is in one state, so it
// is no conflict and R keeps it): the pass takes IJR (older) then allows
// JR2. Eve stays joined: the reset v2 was made to prevent.
func TestResolveState_JoinRulesFlip(t *testing.T) {
	for _, id := range []RoomVersionID{"1", "2", "10", "12"} {
		t.Run(string(id), func(t *testing.T) {
			rv := MustRoomVersion(id)
			r, f := newSRRoom(t, rv, "$create")
			f.base(nil)
			flip, join := f.clone(), f.clone()
			flip.joinRules("$JR2", srAlice, JoinRuleInvite)
			join.join("$JE", srEve)

			want := srWith(f.state, srJRKey, "$JR2")
			if rv.StateRes == StateResV1 {
				want[srMemberKey(srEve)] = "$JE"
			}
			srExpectState(t, r.resolve(flip.state, join.state), want)
			srExpectState(t, r.resolve(join.state, flip.state), want)
		})
	}
}

// TestResolveStateV1_Passes covers the v1 passes on their own.
//
// Power levels: bob (50) lowers state_default to 40 (PB, depth 7) on one
// fork; alice demotes bob (PA, depth 6) on the other. Sorted by depth: PA
// goes in unchecked, then PB is checked against R with PA: bob has 0 and
// state_default was 50 above that, so PB is refused and the pass stops: PA.
//
// Other conflicts: under PA, topics TB (bob, depth 9, sent on a fork that
// had not seen PA) and TA (alice, depth 8): the highest depth R allows wins;
// TB is refused (bob 0 < 50), so TA.
func TestResolveStateV1_Passes(t *testing.T) {
	r, f := newSRRoom(t, MustRoomVersion("1"), "$create")
	f.base(map[string]int{srBob: 50})
	f.join("$IMB", srBob)
	fa, fb := f.clone(), f.clone()
	fa.powerLevels("$PA", srAlice, map[string]int{srAlice: 100, srBob: 0}, nil)
	fb.send(srSpec{id: "$PB", typ: TypePowerLevels, sk: srSK(""), sender: srBob, content: srPLContent(r.rv, map[string]int{srAlice: 100, srBob: 50}, map[string]any{"state_default": 40}), depth: 7})
	srExpectState(t, r.resolve(fa.state, fb.state), fa.state)
	srExpectState(t, r.resolve(fb.state, fa.state), fa.state)

	// Topic conflict: both states have PA; TB cites IPOWER, under which bob
	// could set it.
	ta, tb := fa.clone(), fa.clone()
	ta.send(srSpec{id: "$TA", typ: "m.room.topic", sk: srSK(""), sender: srAlice, content: map[string]any{"topic": "a"}, depth: 8})
	tb.send(srSpec{id: "$TB", typ: "m.room.topic", sk: srSK(""), sender: srBob, content: map[string]any{"topic": "b"}, depth: 9,
		auth: []string{"$create", "$IPOWER", "$IMB"}, unchecked: true})
	srExpectState(t, r.resolve(ta.state, tb.state), ta.state)
	srExpectState(t, r.resolve(tb.state, ta.state), ta.state)

	// Without a refusal the highest depth wins, whatever the timestamps.
	tc := fa.clone()
	tc.send(srSpec{id: "$TC", typ: "m.room.topic", sk: srSK(""), sender: srAlice, content: map[string]any{"topic": "c"}, depth: 20, ts: 1})
	srExpectState(t, r.resolve(ta.state, tc.state), tc.state)
}

// TestResolveStateV1_CandidateOrder checks the v1 sort against hand-computed
// hashes: sha1("$a") = c1cb…, sha1("$b") = 773e…, sha1("$c") = 2b45…. For
// the passes (ascending depth, then descending hash) three events at one
// depth go $a, $b, $c; for other conflicts (descending depth, then
// ascending hash) they go $c, $b, $a; depth comes first in both.
func TestResolveStateV1_CandidateOrder(t *testing.T) {
	r, f := newSRRoom(t, MustRoomVersion("1"), "$create")
	for _, s := range []struct {
		id    string
		depth int64
	}{{"$a", 5}, {"$b", 5}, {"$c", 5}, {"$d", 4}, {"$e", 6}} {
		f.send(srSpec{id: s.id, typ: "m.room.topic", sk: srSK(""), sender: srAlice, depth: s.depth, unchecked: true, noApply: true})
	}
	res := newResolver(r.rv, r.lookup, nil)
	ids := []string{"$c", "$e", "$a", "$d", "$b"}
	for _, tc := range []struct {
		oldestFirst bool
		want        []string
	}{
		{true, []string{"$d", "$a", "$b", "$c", "$e"}},
		{false, []string{"$e", "$c", "$b", "$a", "$d"}},
	} {
		order, err := res.v1Candidates(ids, tc.oldestFirst)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, n := range order {
			got = append(got, res.nodes[n].id)
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("oldestFirst=%v: got %v, want %v", tc.oldestFirst, got, tc.want)
		}
	}
}

// TestResolveStateV21_EmptyStartStopsReset is the state reset MSC4297 fixes
// by starting the first pass from an empty map. Alice raised bob with P2
// and then left the room. One state has P2; the other (a fork reset to
// older state) has IPOWER; both agree that alice has left.
//
// v2: the full conflicted set is {P2, IPOWER}. Both are replayed on top of
// the unconflicted state, where alice's membership is "leave", and both are
// refused: the room ends with no power levels event at all.
//
// v2.1: replayed from an empty state, alice's membership comes from each
// event's own auth events (her join): IPOWER and then P2 are allowed.
func TestResolveStateV21_EmptyStartStopsReset(t *testing.T) {
	for _, tc := range []struct {
		name string
		rv   *RoomVersion
	}{
		{"v2", MustRoomVersion("10")},
		{"v2.1-rules10", srWithAlgo("10", StateResV21)},
		{"v2.1", MustRoomVersion("12")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, f := newSRRoom(t, tc.rv, "$create")
			f.base(map[string]int{srBob: 50})
			f.join("$IMB", srBob)
			f.powerLevels("$P2", srAlice, map[string]int{srAlice: 100, srBob: 75}, nil)
			f.member("$LA", srAlice, srAlice, MembershipLeave)
			reset := srWith(f.state, srPLKey, "$IPOWER")

			want := f.state
			if tc.rv.StateRes == StateResV2 {
				want = srWith(f.state, srPLKey, "")
			}
			srExpectState(t, r.resolve(f.state, reset), want)
			srExpectState(t, r.resolve(reset, f.state), want)
		})
	}
}

// TestResolveStateV21_ConflictedSubgraph: alice gives bob 50 (P2); bob sets
// a topic T citing P2 and then power levels P3 (giving charlie 40) that only
// P2 allows. One state has P3; the other was reset to IPOWER but still has
// T, so P2 is in every state's auth chain (T cites it) and in no auth
// difference. It lies on the path P3 → P2 → IPOWER between two conflicted
// events, so it is in v2.1's conflicted state subgraph.
//
// v2: full conflicted set {P3, IPOWER}: IPOWER (alice 100) goes before P3
// (bob 50 under P2, P3's own auth event); against IPOWER bob has 0, and P3
// is refused: the reset sticks.
//
// v2.1: the subgraph also holds bob's join IMB and the join rules IJR
// (P3 → IMB → IJR → IPOWER). The power events and IMB replay as IPOWER,
// IJR (alice, older than P2), P2, IMB (bob 0 under IPOWER, its own auth
// event), P3; each is allowed (P3 against P2) and P3 wins.
func TestResolveStateV21_ConflictedSubgraph(t *testing.T) {
	for _, tc := range []struct {
		name string
		rv   *RoomVersion
	}{
		{"v2", MustRoomVersion("10")},
		{"v2.1-rules10", srWithAlgo("10", StateResV21)},
		{"v2.1", MustRoomVersion("12")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, f := newSRRoom(t, tc.rv, "$create")
			f.base(nil)
			f.join("$IMB", srBob)
			f.powerLevels("$P2", srAlice, map[string]int{srAlice: 100, srBob: 50}, nil)
			f.topic("$T", srBob, "bob's")
			f.powerLevels("$P3", srBob, map[string]int{srAlice: 100, srBob: 50, srCharlie: 40}, nil)
			reset := srWith(f.state, srPLKey, "$IPOWER")

			want := f.state
			if tc.rv.StateRes == StateResV2 {
				want = reset
			}
			srExpectState(t, r.resolve(f.state, reset), want)
			srExpectState(t, r.resolve(reset, f.state), want)
		})
	}
}

// TestResolveState_RejectedAuthEvents: the iterative auth checks must not
// take a key from an auth event the server rejected. Bob joins on one fork
// and eve on the other, both through the public join rule IJR, which this
// test marks as rejected.
//
// v2.1 replays the joins from an empty state: the join rules can only come
// from the joins' own auth events, IJR is skipped, the room then counts as
// invite-only and both joins are refused. Without the rejection both pass.
// v2 starts from the unconflicted state, which holds IJR as state (the
// rejection of an event in the state is no reason to ignore it), so both
// joins pass either way.
func TestResolveState_RejectedAuthEvents(t *testing.T) {
	for _, tc := range []struct {
		name string
		rv   *RoomVersion
	}{
		{"v2", MustRoomVersion("10")},
		{"v2.1", MustRoomVersion("12")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, f := newSRRoom(t, tc.rv, "$create")
			f.base(nil)
			fb, fe := f.clone(), f.clone()
			fb.join("$JB", srBob)
			fe.join("$JE", srEve)
			both := srWith(f.state, srMemberKey(srBob), "$JB", srMemberKey(srEve), "$JE")

			srExpectState(t, r.resolve(fb.state, fe.state), both)
			r.rejected["$IJR"] = true
			want := both
			if tc.rv.StateRes == StateResV21 {
				want = f.state
			}
			srExpectState(t, r.resolve(fb.state, fe.state), want)
			srExpectState(t, r.resolve(fe.state, fb.state), want)
		})
	}
}

func TestResolveState_Errors(t *testing.T) {
	for _, id := range []RoomVersionID{"1", "10", "12"} {
		t.Run(string(id), func(t *testing.T) {
			r, f := newSRRoom(t, MustRoomVersion(id), "$create")
			f.base(nil)
			fb, fe := f.clone(), f.clone()
			fb.join("$JB", srBob)
			fe.send(srSpec{id: "$JE", typ: TypeMember, sk: srSK(srEve), sender: srEve, content: map[string]any{"membership": MembershipJoin},
				auth: []string{"$IPOWER", "$IJR", "$gone"}, unchecked: true})

			// A state naming an unknown event, in conflict with a known one.
			missing := srWith(fb.state, srJRKey, "$nowhere")
			if _, err := ResolveState(r.rv, []StateMap{missing, fe.state}, r.lookup); !errors.Is(err, ErrMissingStateEvent) {
				t.Errorf("unknown state event: got %v, want ErrMissingStateEvent", err)
			}
			// An unknown auth event (v1 never walks auth chains).
			if r.rv.StateRes != StateResV1 {
				if _, err := ResolveState(r.rv, []StateMap{fb.state, fe.state}, r.lookup); !errors.Is(err, ErrMissingAuthEvent) {
					t.Errorf("unknown auth event: got %v, want ErrMissingAuthEvent", err)
				}
			}
			// A failing lookup is passed on.
			fj := f.clone()
			fj.joinRules("$JR2", srAlice, JoinRuleInvite)
			boom := errors.New("disk on fire")
			failing := func(id string) (*Event, error) {
				if id == "$JR2" {
					return nil, boom
				}
				return r.events[id], nil
			}
			if _, err := ResolveState(r.rv, []StateMap{fj.state, f.state}, failing); !errors.Is(err, boom) {
				t.Errorf("failing lookup: got %v, want it wrapped", err)
			}
		})
	}
}

// TestResolveState_AuthCycle: v1–v2 event IDs are not hashes, so a peer can
// make two events cite each other; resolution must fail rather than loop.
func TestResolveState_AuthCycle(t *testing.T) {
	r, f := newSRRoom(t, MustRoomVersion("2"), "$create")
	f.base(nil)
	f1, f2 := f.clone(), f.clone()
	f1.send(srSpec{id: "$P1", typ: TypePowerLevels, sk: srSK(""), sender: srAlice, content: srPLContent(r.rv, map[string]int{srAlice: 100}, nil),
		auth: []string{"$create", "$IMA", "$P2"}, unchecked: true})
	f2.send(srSpec{id: "$P2", typ: TypePowerLevels, sk: srSK(""), sender: srAlice, content: srPLContent(r.rv, map[string]int{srAlice: 100}, nil),
		auth: []string{"$create", "$IMA", "$P1"}, unchecked: true})
	if _, err := ResolveState(r.rv, []StateMap{f1.state, f2.state}, r.lookup); !errors.Is(err, ErrAuthCycle) {
		t.Errorf("got %v, want ErrAuthCycle", err)
	}
}
