package eventgraph

import (
	"fmt"
	"reflect"
	"sort"
	"testing"
)

// Tests of the pieces of the v2 algorithm on hand-made graphs.

func TestStateRes_SplitStates(t *testing.T) {
	a, b, c, d := StateKey{Type: "a"}, StateKey{Type: "b"}, StateKey{Type: "c"}, StateKey{Type: "d"}
	s1 := StateMap{a: "$a", b: "$b1", c: "$c"}
	s2 := StateMap{a: "$a", b: "$b2", c: "$c", d: "$d"}
	s3 := StateMap{a: "$a", b: "$b1"}
	unconflicted, conflicted := splitStates([]StateMap{s1, s2, s3})
	if want := (StateMap{a: "$a"}); !reflect.DeepEqual(unconflicted, want) {
		t.Errorf("unconflicted = %v, want %v", unconflicted, want)
	}
	want := map[StateKey][]string{b: {"$b1", "$b2"}, c: {"$c"}, d: {"$d"}}
	if !reflect.DeepEqual(conflicted, want) {
		t.Errorf("conflicted = %v, want %v", conflicted, want)
	}
}

// srNames maps node numbers to event IDs, sorted unless keepOrder.
func srNames(r *resolver, nodes []int32, keepOrder bool) []string {
	out := make([]string, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, r.nodes[n].id)
	}
	if !keepOrder {
		sort.Strings(out)
	}
	return out
}

// srFullSet computes the full conflicted set of the states.
func srFullSet(t *testing.T, rv *RoomVersion, lookup EventLookup, states ...StateMap) []string {
	t.Helper()
	unconflicted, conflicted := splitStates(states)
	res := newResolver(rv, lookup, nil)
	full, err := res.fullConflictedSet(states, unconflicted, conflicted)
	if err != nil {
		t.Fatal(err)
	}
	return srNames(res, full, false)
}

// TestStateRes_AuthDifference: the full conflicted set of v2 is the conflicted state
// set plus the auth difference.
//
// "kick" and "ban" are the graphs of TestResolveState_DemotedUserKicks and
// TestResolveState_BanVersusJoin: there the only events in some states'
// auth chains but not all are unconflicted state (IMB, IJR), which the
// difference leaves out.
//
// "displayname": bob changes his display name twice on one fork (D1, then
// D2 citing D1) and once on the other (E1). D1 is in no state and only in
// fork one's auth chain: it is in the difference. Bob's join IMB is in both
// chains and so is not.
//
// "cited": as "displayname", but fork two's topic T also cites D1, so D1
// is in every state's chain (through unconflicted T) and not in the
// difference.
func TestStateRes_AuthDifference(t *testing.T) {
	t.Run("kick", func(t *testing.T) {
		r, f := newSRRoom(t, MustRoomVersion("10"), "$create")
		f.base(map[string]int{srBob: 50})
		f.join("$IMB", srBob)
		f.join("$IMZ", srZara)
		demote, kick := f.clone(), f.clone()
		demote.powerLevels("$PA", srAlice, map[string]int{srAlice: 100, srBob: 0}, nil)
		kick.member("$KICK", srBob, srZara, MembershipLeave)
		got := srFullSet(t, r.rv, r.lookup, demote.state, kick.state)
		if want := []string{"$IMZ", "$IPOWER", "$KICK", "$PA"}; !reflect.DeepEqual(got, want) {
			t.Errorf("full conflicted set = %v, want %v", got, want)
		}
	})
	t.Run("ban", func(t *testing.T) {
		r, f := newSRRoom(t, MustRoomVersion("12"), "$create")
		f.base(nil)
		banFork, joinFork := f.clone(), f.clone()
		banFork.member("$BAN", srAlice, srEve, MembershipBan)
		joinFork.join("$JOIN", srEve)
		got := srFullSet(t, r.rv, r.lookup, banFork.state, joinFork.state)
		if want := []string{"$BAN", "$JOIN"}; !reflect.DeepEqual(got, want) {
			t.Errorf("full conflicted set = %v, want %v", got, want)
		}
	})
	for _, cited := range []bool{false, true} {
		t.Run(fmt.Sprintf("displayname/cited=%v", cited), func(t *testing.T) {
			r, f := newSRRoom(t, MustRoomVersion("10"), "$create")
			f.base(nil)
			f.join("$IMB", srBob)
			one, two := f.clone(), f.clone()
			name := func(fk *srFork, id, name string) {
				fk.send(srSpec{id: id, typ: TypeMember, sk: srSK(srBob), sender: srBob, content: map[string]any{"membership": MembershipJoin, "displayname": name}})
			}
			name(one, "$D1", "one")
			name(one, "$D2", "two")
			name(two, "$E1", "other")
			if cited {
				two.send(srSpec{id: "$T", typ: "m.room.topic", sk: srSK(""), sender: srAlice, auth: []string{"$create", "$IPOWER", "$IMA", "$D1"}, unchecked: true})
				one.state[srTopicKey] = "$T"
			}
			got := srFullSet(t, r.rv, r.lookup, one.state, two.state)
			want := []string{"$D1", "$D2", "$E1"}
			if cited {
				want = []string{"$D2", "$E1"}
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("full conflicted set = %v, want %v", got, want)
			}
		})
	}
}

// TestStateRes_ConflictedSubgraph: conflicted events A, B and C (three values of one
// key) over the auth graph
//
//	A → x → y → B → w → C → q
//	A → z
//	A → y
//	w → v
//
// The subgraph is every event on a path between two conflicted events: x, y
// and w. z, v and q lead to no conflicted event. Nothing is in the auth
// difference (each chain from the states' other key reaches everything).
func TestStateRes_ConflictedSubgraph(t *testing.T) {
	r, f := newSRRoom(t, srWithAlgo("10", StateResV21), "$create")
	f.base(nil)
	top := func(id string, auth ...string) {
		f.send(srSpec{id: id, typ: "m.room.topic", sk: srSK(""), sender: srAlice, auth: append([]string{"$create", "$IPOWER", "$IMA"}, auth...), unchecked: true, noApply: true})
	}
	top("$q")
	top("$C", "$q")
	top("$v")
	top("$w", "$C", "$v")
	top("$B", "$w")
	top("$y", "$B")
	top("$x", "$y")
	top("$z")
	top("$A", "$x", "$z", "$y")
	// A second key whose event cites everything puts the whole graph in
	// every state's auth chain.
	f.send(srSpec{id: "$all", typ: "m.room.name", sk: srSK(""), sender: srAlice,
		auth: []string{"$create", "$IPOWER", "$IMA", "$A", "$B", "$C", "$x", "$y", "$z", "$w", "$v", "$q"}, unchecked: true})
	s := f.state
	got := srFullSet(t, r.rv, r.lookup, srWith(s, srTopicKey, "$A"), srWith(s, srTopicKey, "$B"), srWith(s, srTopicKey, "$C"))
	if want := []string{"$A", "$B", "$C", "$w", "$x", "$y"}; !reflect.DeepEqual(got, want) {
		t.Errorf("v2.1 full conflicted set = %v, want %v", got, want)
	}
	// v2 has no subgraph.
	got = srFullSet(t, MustRoomVersion("10"), r.lookup, srWith(s, srTopicKey, "$A"), srWith(s, srTopicKey, "$B"), srWith(s, srTopicKey, "$C"))
	if want := []string{"$A", "$B", "$C"}; !reflect.DeepEqual(got, want) {
		t.Errorf("v2 full conflicted set = %v, want %v", got, want)
	}
}

// TestStateRes_ConflictedSubgraphCycle: a cycle through conflicted events (possible
// with v1–v2 event IDs) must end the walk.
func TestStateRes_ConflictedSubgraphCycle(t *testing.T) {
	r, f := newSRRoom(t, srWithAlgo("2", StateResV21), "$create")
	f.base(nil)
	top := func(id string, auth ...string) {
		f.send(srSpec{id: id, typ: "m.room.topic", sk: srSK(""), sender: srAlice, auth: append([]string{"$create", "$IPOWER", "$IMA"}, auth...), unchecked: true, noApply: true})
	}
	top("$A", "$x")
	top("$x", "$B")
	top("$B", "$y")
	top("$y", "$A")
	got := srFullSet(t, r.rv, r.lookup, srWith(f.state, srTopicKey, "$A"), srWith(f.state, srTopicKey, "$B"))
	if want := []string{"$A", "$B", "$x", "$y"}; !reflect.DeepEqual(got, want) {
		t.Errorf("full conflicted set = %v, want %v", got, want)
	}
}

// TestStateRes_ReverseTopologicalPowerOrder: events with no auth links between them
// sort by their senders' power (alice 100; bob and charlie 50; zara 0),
// then timestamp, then event ID; k6 (alice's) cites k5 and must follow it:
//
//	k1 alice ts 50, k2 bob ts 20, k3 charlie ts 20, k4 charlie ts 10,
//	k5 zara ts 1, k6 alice ts 5 citing k5
//
// gives k1, k4, k2, k3, k5, k6.
func TestStateRes_ReverseTopologicalPowerOrder(t *testing.T) {
	for _, id := range []RoomVersionID{"10", "12"} {
		t.Run(string(id), func(t *testing.T) {
			r, f := newSRRoom(t, MustRoomVersion(id), "$create")
			f.base(map[string]int{srBob: 50, srCharlie: 50})
			f.join("$IMB", srBob)
			f.join("$IMC", srCharlie)
			f.join("$IMZ", srZara)
			ev := func(id, sender string, ts int64, extra ...string) {
				s := srSpec{id: id, typ: "m.test", sk: srSK(id), sender: sender, ts: ts, unchecked: true, noApply: true}
				ev := f.build(&s) // auth events as selected from f's state
				s.auth = append(ev.AuthEventIDs(), extra...)
				f.send(s)
			}
			ev("$k1", srAlice, 50)
			ev("$k2", srBob, 20)
			ev("$k3", srCharlie, 20)
			ev("$k4", srCharlie, 10)
			ev("$k5", srZara, 1)
			ev("$k6", srAlice, 5, "$k5")
			res := newResolver(r.rv, r.lookup, nil)
			var set []int32
			for _, id := range []string{"$k6", "$k5", "$k3", "$k1", "$k2", "$k4"} {
				n, err := res.stateNode(id)
				if err != nil {
					t.Fatal(err)
				}
				set = append(set, n)
			}
			order, err := res.reverseTopologicalPowerOrder(set)
			if err != nil {
				t.Fatal(err)
			}
			got := srNames(res, order, true)
			if want := []string{"$k1", "$k4", "$k2", "$k3", "$k5", "$k6"}; !reflect.DeepEqual(got, want) {
				t.Errorf("order = %v, want %v", got, want)
			}
		})
	}
}

// TestStateRes_MainlineOrder: power levels P0 ← P1 ← P2 (each citing the one
// before) and Q citing P0 off the mainline. Based on P2 the mainline is
// [P2, P1, P0]; the positions are
//
//	ea (cites P2) 0, eb (P1) 1, ec (P0) 2, ed (none) ∞, ee (Q → P0) 2,
//	P2 itself (its own auth events cite P1) 1
//
// and the order, larger position first, then timestamp, is
// ed, ec, ee, eb, P2, ea.
func TestStateRes_MainlineOrder(t *testing.T) {
	r, f := newSRRoom(t, MustRoomVersion("10"), "$create")
	f.join("$IMA", srAlice)
	pl := func(id string, ts int64, auth ...string) {
		f.send(srSpec{id: id, typ: TypePowerLevels, sk: srSK(""), sender: srAlice, content: srPLContent(r.rv, map[string]int{srAlice: 100}, nil),
			ts: ts, auth: append([]string{"$create", "$IMA"}, auth...), unchecked: true, noApply: true})
	}
	pl("$P0", 1)
	pl("$P1", 2, "$P0")
	pl("$P2", 30, "$P1")
	pl("$Q", 4, "$P0")
	top := func(id string, ts int64, auth ...string) {
		f.send(srSpec{id: id, typ: "m.room.topic", sk: srSK(""), sender: srAlice, ts: ts, auth: append([]string{"$create", "$IMA"}, auth...), unchecked: true, noApply: true})
	}
	top("$ea", 10, "$P2")
	top("$eb", 20, "$P1")
	top("$ec", 30, "$P0")
	top("$ed", 40)
	top("$ee", 50, "$Q")

	res := newResolver(r.rv, r.lookup, nil)
	var events []int32
	for _, id := range []string{"$ea", "$eb", "$ec", "$ed", "$ee", "$P2"} {
		n, err := res.stateNode(id)
		if err != nil {
			t.Fatal(err)
		}
		events = append(events, n)
	}
	if err := res.mainlineSort(events, "$P2"); err != nil {
		t.Fatal(err)
	}
	got := srNames(res, events, true)
	if want := []string{"$ed", "$ec", "$ee", "$eb", "$P2", "$ea"}; !reflect.DeepEqual(got, want) {
		t.Errorf("order = %v, want %v", got, want)
	}
	// Without power levels in the partial state every position is ∞ and
	// the order is by timestamp, then ID ("$P2" < "$ec").
	if err := res.mainlineSort(events, ""); err != nil {
		t.Fatal(err)
	}
	got = srNames(res, events, true)
	if want := []string{"$ea", "$eb", "$P2", "$ec", "$ed", "$ee"}; !reflect.DeepEqual(got, want) {
		t.Errorf("order without power levels = %v, want %v", got, want)
	}
}

// TestStateRes_PowerEvents checks which events count as power events.
func TestStateRes_PowerEvents(t *testing.T) {
	r, f := newSRRoom(t, MustRoomVersion("10"), "$create")
	f.base(map[string]int{srBob: 50})
	f.join("$IMB", srBob)
	f.join("$IMZ", srZara)
	cases := []struct {
		s    srSpec
		want bool
	}{
		{srSpec{id: "$pl", typ: TypePowerLevels, sk: srSK(""), sender: srAlice}, true},
		{srSpec{id: "$jr", typ: TypeJoinRules, sk: srSK(""), sender: srAlice}, true},
		{srSpec{id: "$kick", typ: TypeMember, sk: srSK(srZara), sender: srBob, content: map[string]any{"membership": "leave"}}, true},
		{srSpec{id: "$ban", typ: TypeMember, sk: srSK(srZara), sender: srBob, content: map[string]any{"membership": "ban"}}, true},
		{srSpec{id: "$leave", typ: TypeMember, sk: srSK(srZara), sender: srZara, content: map[string]any{"membership": "leave"}}, false},
		{srSpec{id: "$selfban", typ: TypeMember, sk: srSK(srZara), sender: srZara, content: map[string]any{"membership": "ban"}}, false},
		{srSpec{id: "$invite", typ: TypeMember, sk: srSK(srEve), sender: srBob, content: map[string]any{"membership": "invite"}}, false},
		{srSpec{id: "$topic", typ: "m.room.topic", sk: srSK(""), sender: srAlice}, false},
		{srSpec{id: "$msg", typ: TypePowerLevels, sender: srAlice}, false}, // not a state event
	}
	res := newResolver(r.rv, r.lookup, nil)
	for _, c := range cases {
		c.s.unchecked, c.s.noApply = true, true
		f.send(c.s)
		n, err := res.node(c.s.id)
		if err != nil {
			t.Fatal(err)
		}
		if got := res.isPowerEvent(n); got != c.want {
			t.Errorf("%s: power event = %v, want %v", c.s.id, got, c.want)
		}
	}
}

// TestResolveState_LookupsOnce: every event is looked up at most once, also
// across the passes that revisit events (checked by srRoom.resolve), and the
// unconflicted state of a large room is not looked up when the auth
// difference needs no walk of it.
func TestResolveState_LookupsOnce(t *testing.T) {
	r, f := newSRRoom(t, MustRoomVersion("10"), "$create")
	f.base(nil)
	for i := 0; i < 50; i++ {
		f.join(fmt.Sprintf("$m%d", i), fmt.Sprintf("@u%d:x.test", i))
	}
	f1, f2 := f.clone(), f.clone()
	f1.topic("$t1", srAlice, "one")
	f2.topic("$t2", srAlice, "two")
	r.resolve(f1.state, f2.state)
	for i := 0; i < 50; i++ {
		if n := r.lookups[fmt.Sprintf("$m%d", i)]; n != 0 {
			t.Fatalf("member event $m%d looked up %d times; the conflict does not involve it", i, n)
		}
	}
}
