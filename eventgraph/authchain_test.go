package eventgraph

import (
	"errors"
	"fmt"
	"sort"
	"testing"
)

func chainIDs(chain map[string]*Event) []string {
	ids := make([]string, 0, len(chain))
	for id, ev := range chain {
		if ev == nil || ev.EventID() != id {
			panic("chain entry does not match its key: " + id)
		}
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

func TestAuthChain(t *testing.T) {
	for _, rv := range atVersions(t) {
		r := newBaseRoom(t, rv, JoinRulePublic)
		id := func(k StateKey) string { return r.state[k] }
		pl, jr := id(StateKey{Type: TypePowerLevels}), id(StateKey{Type: TypeJoinRules})
		aliceJoin, bobJoin := id(StateKey{Type: TypeMember, StateKey: atAlice}), id(StateKey{Type: TypeMember, StateKey: atBob})

		// bob's join: power levels, join rules, and their ancestors (alice's
		// join, the create event – which v12 events do not reference).
		want := []string{aliceJoin, pl, jr}
		if !rv.RoomIDFromCreateEvent {
			want = append(want, r.create.EventID())
		}
		sort.Strings(want)
		chain, err := AuthChain([]string{bobJoin}, r.lookup)
		if err != nil {
			t.Fatal(err)
		}
		if got := chainIDs(chain); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("v%s: chain %v, want %v", rv.ID, got, want)
		}
		of, err := AuthChainOf(r.events[bobJoin], r.lookup)
		if err != nil || fmt.Sprint(chainIDs(of)) != fmt.Sprint(want) {
			t.Fatalf("v%s: AuthChainOf %v, %v", rv.ID, chainIDs(of), err)
		}

		// Several starts: a start is in the result only as another's ancestor.
		chain, err = AuthChain([]string{bobJoin, pl, bobJoin}, r.lookup)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := chain[pl]; !ok {
			t.Fatalf("v%s: power levels (ancestor of bob's join) missing", rv.ID)
		}
		if _, ok := chain[bobJoin]; ok {
			t.Fatalf("v%s: bob's join is in its own chain", rv.ID)
		}

		empty, err := AuthChain(nil, r.lookup)
		if err != nil || len(empty) != 0 {
			t.Fatalf("v%s: empty: %v %v", rv.ID, empty, err)
		}
	}
}

func TestAuthChainErrors(t *testing.T) {
	r := newBaseRoom(t, MustRoomVersion("10"), JoinRulePublic)
	bobJoin := r.state[StateKey{Type: TypeMember, StateKey: atBob}]
	pl := r.state[StateKey{Type: TypePowerLevels}]
	missing := func(id string) (*Event, error) {
		if id == pl {
			return nil, nil
		}
		return r.lookup(id)
	}
	if _, err := AuthChain([]string{bobJoin}, missing); !errors.Is(err, ErrMissingAuthEvent) {
		t.Fatalf("missing ancestor: %v", err)
	}
	if _, err := AuthChain([]string{"$nope"}, r.lookup); !errors.Is(err, ErrMissingAuthEvent) {
		t.Fatalf("missing start: %v", err)
	}
	boom := errors.New("store down")
	failing := func(id string) (*Event, error) {
		if id == pl {
			return nil, boom
		}
		return r.lookup(id)
	}
	if _, err := AuthChain([]string{bobJoin}, failing); !errors.Is(err, boom) {
		t.Fatalf("lookup error: %v", err)
	}
}

// atLinearChain builds n events, each naming the previous one as its only
// auth event (plus, if cycle, the first naming the last).
func atLinearChain(t testing.TB, n int, cycle bool) (map[string]*Event, string) {
	t.Helper()
	rv := MustRoomVersion("10")
	events := make(map[string]*Event, n)
	prev := ""
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("$e%d", i)
		auth := "[]"
		switch {
		case prev != "":
			auth = `["` + prev + `"]`
		case cycle:
			auth = fmt.Sprintf(`["$e%d"]`, n-1)
		}
		raw := `{"type":"m.x","sender":"@a:x","room_id":"!r:x","content":{},"depth":1,"origin_server_ts":1,"prev_events":[],"auth_events":` + auth + `}`
		ev, err := NewEventFromTrustedJSON([]byte(raw), rv, id)
		if err != nil {
			t.Fatal(err)
		}
		events[id] = ev
		prev = id
	}
	return events, prev
}

// TestAuthChainDeep: a chain far deeper than any recursion would survive.
func TestAuthChainDeep(t *testing.T) {
	const n = 200_000
	events, last := atLinearChain(t, n, false)
	calls := 0
	chain, err := AuthChain([]string{last}, func(id string) (*Event, error) { calls++; return events[id], nil })
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != n-1 || calls != n {
		t.Fatalf("chain %d events with %d lookups, want %d and %d", len(chain), calls, n-1, n)
	}
}

func TestAuthChainCycle(t *testing.T) {
	events, last := atLinearChain(t, 5, true)
	calls := map[string]int{}
	chain, err := AuthChain([]string{last}, func(id string) (*Event, error) { calls[id]++; return events[id], nil })
	if err != nil {
		t.Fatal(err)
	}
	// The start is reachable from itself through the cycle.
	if len(chain) != 5 {
		t.Fatalf("chain %v", chainIDs(chain))
	}
	for id, n := range calls {
		if n != 1 {
			t.Fatalf("%s looked up %d times", id, n)
		}
	}
}

// atBigRoom builds a v12 room with members joined members (public join
// rule). Every 500 joins the creator updates the power levels, so the power
// levels events form a chain too, as they do in long-lived rooms. Events are
// built with auth events selected from the state but not auth-checked.
func atBigRoom(b testing.TB, members int) *atRoom {
	b.Helper()
	rv := MustRoomVersion("12")
	r := newATRoom(b, rv, nil)
	r.member(atAlice, atAlice, MembershipJoin, nil)
	r.setPL(nil)
	r.setJoinRule(JoinRulePublic, nil)
	apply := func(o atEv) *Event {
		ev := r.store(r.build(o))
		r.state[ev.StateTuple()] = ev.EventID()
		r.last = ev.EventID()
		return ev
	}
	for i := 0; i < members; i++ {
		u := fmt.Sprintf("@u%d:s%d.test", i, i%50)
		apply(atEv{typ: TypeMember, sk: atSK(u), sender: u, content: atMember(MembershipJoin, nil)})
		if i%500 == 499 {
			apply(atEv{typ: TypePowerLevels, sk: atSK(""), sender: atAlice, content: atBasePL(rv, map[string]any{"kick": 50 + i%7})})
		}
	}
	return r
}

// BenchmarkAuthChain10kMembers: the auth chain of a member event (a profile
// change of the last joiner, whose auth events include its join) in a room
// of 10,000 members.
func BenchmarkAuthChain10kMembers(b *testing.B) {
	r := atBigRoom(b, 10_000)
	u := "@u9999:s49.test"
	ev := r.store(r.build(atEv{typ: TypeMember, sk: atSK(u), sender: u, content: atMember(MembershipJoin, map[string]any{"displayname": "x"})}))
	ids := []string{ev.EventID()}
	want := -1
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		chain, err := AuthChain(ids, r.lookup)
		if err != nil {
			b.Fatal(err)
		}
		if want < 0 {
			want = len(chain)
		} else if len(chain) != want {
			b.Fatal("chain size changed")
		}
	}
	b.ReportMetric(float64(want), "events/chain")
}

// BenchmarkAuthChain10kMembersFullState: the auth chain of the whole state of
// that room (what state resolution and /state responses need).
func BenchmarkAuthChain10kMembersFullState(b *testing.B) {
	r := atBigRoom(b, 10_000)
	ids := make([]string, 0, len(r.state))
	for _, id := range r.state {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := AuthChain(ids, r.lookup); err != nil {
			b.Fatal(err)
		}
	}
}
