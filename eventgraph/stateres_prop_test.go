package eventgraph

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"reflect"
	"testing"
)

// Property tests over randomly grown rooms: a trunk of events, then forks
// that branch off the trunk or off each other, each event built by the
// auth events selection from its fork's state and kept only if the auth
// rules allow it there, as a homeserver would. Timestamps are drawn from a
// narrow range so that ties (broken by event ID) happen.

const srPropSeeds = 40

type srGen struct {
	rng   *rand.Rand
	r     *srRoom
	users []string
	n     int
}

// srGenerate grows a room of version rv from seed and returns it with the
// states of its forks (two to four).
func srGenerate(t *testing.T, rv *RoomVersion, seed int64) (*srRoom, []StateMap) {
	t.Helper()
	rng := rand.New(rand.NewSource(seed))
	r, f := newSRRoom(t, rv, "$create")
	const mod = "@mod:m.test"
	f.base(map[string]int{srBob: 50, mod: 75})
	g := &srGen{rng: rng, r: r, users: []string{srAlice, srBob, srCharlie, srEve, srZara, srX, mod}}
	for i, u := range []string{srBob, srCharlie, srZara, mod} {
		f.join(fmt.Sprintf("$j%d", i), u)
	}
	snapshots := []*srFork{f.clone()}
	for i := 0; i < 6; i++ {
		g.step(f)
		snapshots = append(snapshots, f.clone())
	}
	forks := 2 + rng.Intn(3)
	states := make([]StateMap, 0, forks)
	for k := 0; k < forks; k++ {
		fk := snapshots[rng.Intn(len(snapshots))].clone()
		for i, steps := 0, 1+rng.Intn(8); i < steps; i++ {
			g.step(fk)
			if rng.Intn(3) == 0 {
				snapshots = append(snapshots, fk.clone())
			}
		}
		states = append(states, fk.state)
	}
	return r, states
}

// step adds one random event that the auth rules allow on f (giving up
// after a few refused tries).
func (g *srGen) step(f *srFork) {
	for try := 0; try < 20; try++ {
		if f.trySend(g.randomEvent(f)) {
			return
		}
	}
}

func (g *srGen) randomEvent(f *srFork) srSpec {
	rng := g.rng
	g.n++
	id := fmt.Sprintf("$g%03d", g.n)
	sender := g.users[rng.Intn(len(g.users))]
	target := g.users[rng.Intn(len(g.users))]
	s := srSpec{id: id, sender: sender, ts: 2000 + rng.Int63n(60)}
	member := func(target, membership string) srSpec {
		s.typ, s.sk, s.content = TypeMember, srSK(target), map[string]any{"membership": membership}
		return s
	}
	switch rng.Intn(10) {
	case 0:
		s.typ, s.sk, s.content = "m.room.topic", srSK(""), map[string]any{"topic": id}
	case 1:
		s.typ, s.sk, s.content = "m.room.name", srSK(""), map[string]any{"name": id}
	case 2, 3:
		return member(sender, MembershipJoin)
	case 4:
		return member(sender, MembershipLeave)
	case 5:
		return member(target, MembershipLeave)
	case 6:
		return member(target, MembershipBan)
	case 7:
		return member(target, MembershipInvite)
	case 8:
		rule := JoinRulePublic
		if rng.Intn(2) == 0 {
			rule = JoinRuleInvite
		}
		s.typ, s.sk, s.content = TypeJoinRules, srSK(""), map[string]any{"join_rule": rule}
	default:
		s.typ, s.sk, s.content = TypePowerLevels, srSK(""), g.changedPowerLevels(f)
	}
	return s
}

// changedPowerLevels is f's power levels content with one level changed.
func (g *srGen) changedPowerLevels(f *srFork) map[string]any {
	c := map[string]any{}
	if id, ok := f.state[srPLKey]; ok {
		if err := json.Unmarshal(g.r.events[id].Content(), &c); err != nil {
			g.r.t.Fatal(err)
		}
	}
	users, _ := c["users"].(map[string]any)
	if users == nil {
		users = map[string]any{}
	}
	levels := []int{0, 25, 50, 75, 100}
	lvl := levels[g.rng.Intn(len(levels))]
	switch g.rng.Intn(3) {
	case 0:
		c[[]string{"kick", "ban", "state_default"}[g.rng.Intn(3)]] = lvl
	default:
		u := g.users[g.rng.Intn(len(g.users))]
		if !(g.r.rv.PrivilegedCreators && u == srAlice) {
			users[u] = lvl
		}
	}
	c["users"] = users
	return c
}

// srUnconflicted is the unconflicted state map, computed here on its own.
func srUnconflicted(states []StateMap) StateMap {
	out := StateMap{}
	for k, id := range states[0] {
		same := true
		for _, s := range states[1:] {
			if s[k] != id {
				same = false
				break
			}
		}
		if same {
			out[k] = id
		}
	}
	return out
}

type srVerdict struct {
	ev      *Event
	allowed bool
}

// TestResolveStateProperties checks, on random rooms of every algorithm:
//
//   - the result does not depend on the order of the states;
//   - resolving a state alone or with itself gives that state;
//   - unconflicted keys keep their event;
//   - each key holds an event of that (type, state_key);
//   - v2/v2.1: replaying the verdicts of the iterative auth checks against
//     the auth rules, with auth events taken as the spec says (the partially
//     resolved state, rebuilt here from the verdicts and starting from the
//     unconflicted state in v2 and from nothing in v2.1, then the event's own
//     non-rejected auth events), gives the same verdicts; and the result is
//     exactly the allowed events overlaid by the unconflicted state. So every
//     event in the result either is unconflicted or passed the auth rules
//     against the state it was applied to.
//
// (Every event of the result passing the auth rules against the result
// itself is not a property of any version: a user who left after setting a
// topic, or an admin who lowered their own level, makes a legitimate state
// whose older events the rules refuse against it.)
func TestResolveStateProperties(t *testing.T) {
	for _, vid := range []RoomVersionID{"1", "2", "6", "10", "11", "12"} {
		rv := MustRoomVersion(vid)
		t.Run(string(vid), func(t *testing.T) {
			conflicts := 0
			for seed := int64(0); seed < srPropSeeds; seed++ {
				r, states := srGenerate(t, rv, seed)
				if len(srUnconflicted(states)) != len(states[0]) {
					conflicts++
				}
				srCheckProperties(t, r, states, seed)
			}
			if conflicts < srPropSeeds/2 {
				t.Errorf("only %d of %d random rooms had conflicts", conflicts, srPropSeeds)
			}
		})
	}
}

func srCheckProperties(t *testing.T, r *srRoom, states []StateMap, seed int64) {
	t.Helper()
	rv := r.rv
	var trace []srVerdict
	res, err := ResolveState(rv, states, r.lookup, WithRejected(r.isRejected), withCheckTrace(func(ev *Event, ok bool) {
		trace = append(trace, srVerdict{ev, ok})
	}))
	if err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}

	rng := rand.New(rand.NewSource(seed))
	for p := 0; p < 3; p++ {
		perm := append([]StateMap(nil), states...)
		if p == 0 {
			for i, j := 0, len(perm)-1; i < j; i, j = i+1, j-1 {
				perm[i], perm[j] = perm[j], perm[i]
			}
		} else {
			rng.Shuffle(len(perm), func(i, j int) { perm[i], perm[j] = perm[j], perm[i] })
		}
		got, err := ResolveState(rv, perm, r.lookup, WithRejected(r.isRejected))
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		if !reflect.DeepEqual(got, res) {
			t.Fatalf("seed %d: order of the states changes the result", seed)
		}
	}

	for _, s := range states {
		for _, in := range [][]StateMap{{s}, {s, s}, {s, s.Clone(), s}} {
			got, err := ResolveState(rv, in, r.lookup)
			if err != nil {
				t.Fatalf("seed %d: %v", seed, err)
			}
			if !reflect.DeepEqual(got, s) {
				t.Fatalf("seed %d: resolving a state with itself changed it", seed)
			}
		}
	}

	unconflicted := srUnconflicted(states)
	for k, id := range unconflicted {
		if res[k] != id {
			t.Fatalf("seed %d: unconflicted %s is %s in the result, want %s", seed, k, res[k], id)
		}
	}
	for k, id := range res {
		if ev := r.events[id]; ev == nil || !ev.IsState() || ev.StateTuple() != k {
			t.Fatalf("seed %d: result key %s holds %s, which is not an event for it", seed, k, id)
		}
	}

	if rv.StateRes == StateResV1 {
		return
	}
	replica := StateMap{}
	if rv.StateRes == StateResV2 {
		replica = unconflicted.Clone()
	}
	lookup := r.events2lookup()
	for _, v := range trace {
		own, err := LoadAuthEvents(v.ev, lookup, r.isRejected)
		if err != nil {
			t.Fatal(err)
		}
		err = Allowed(v.ev, FallbackAuthEvents{Primary: StateAuthEvents{State: replica, Lookup: lookup}, Fallback: own})
		var ae *AuthError
		if err != nil && !errors.As(err, &ae) {
			t.Fatalf("seed %d: replaying %s: %v", seed, v.ev.EventID(), err)
		}
		if (err == nil) != v.allowed {
			t.Fatalf("seed %d: %s: resolution said allowed=%v, the auth rules say %v", seed, v.ev.EventID(), v.allowed, err)
		}
		if v.allowed {
			replica[v.ev.StateTuple()] = v.ev.EventID()
		}
	}
	for k, id := range unconflicted {
		replica[k] = id
	}
	if !reflect.DeepEqual(replica, res) {
		t.Fatalf("seed %d: result is not the allowed events overlaid by the unconflicted state", seed)
	}
}
