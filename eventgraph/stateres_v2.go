package eventgraph

import (
	"fmt"
	"sort"
)

// Node flags used by the v2 algorithm.
const (
	srConflicted uint8 = 1 << iota // in the conflicted state set
	srFull                         // in the full conflicted set
	srPicked                       // in X, the power events and their auth ancestors in the full set
	srInU                          // in the auth chain of the unconflicted state
	srCandidate                    // auth difference: in some states' chains, not all
	srVisiting                     // subgraph DFS: on the stack
	srDone                         // subgraph DFS: finished
	srReaches                      // subgraph DFS: an auth_events path leads to a conflicted event
)

// srState is a partially resolved state: an overlay of changes on a base
// that is never written (the unconflicted map in v2, nothing in v2.1), so
// that a 30,000-entry state is neither copied nor restored.
type srState struct {
	base StateMap
	over StateMap
}

func (s *srState) get(k StateKey) (string, bool) {
	if id, ok := s.over[k]; ok {
		return id, true
	}
	id, ok := s.base[k]
	return id, ok
}

// resolveV2 implements state resolution v2 and, for StateResV21, v2.1.
func (r *resolver) resolveV2(states []StateMap, unconflicted StateMap, conflicted map[StateKey][]string) (StateMap, error) {
	v21 := r.rv.StateRes == StateResV21
	full, err := r.fullConflictedSet(states, unconflicted, conflicted)
	if err != nil {
		return nil, err
	}

	// Step 1: power events of the full conflicted set and their auth
	// ancestors inside it, in reverse topological power order.
	var power []int32
	for _, i := range full {
		if r.isPowerEvent(i) {
			r.nodes[i].flags |= srPicked
			power = append(power, i)
		}
	}
	picked := append([]int32(nil), power...)
	err = r.walkAuthChains(power, func(i int32) bool {
		if n := &r.nodes[i]; n.flags&srFull != 0 && n.flags&srPicked == 0 {
			n.flags |= srPicked
			picked = append(picked, i)
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("power events' auth chains: %w", err)
	}
	ordered, err := r.reverseTopologicalPowerOrder(picked)
	if err != nil {
		return nil, err
	}

	// Step 2: iterative auth checks from the unconflicted state (v2) or
	// from nothing (v2.1, MSC4297), so that unconflicted events the forks
	// agree on cannot veto older power events they postdate.
	st := &srState{over: make(StateMap, len(full))}
	if !v21 {
		st.base = unconflicted
	}
	if err := r.iterativeAuthChecks(ordered, st); err != nil {
		return nil, fmt.Errorf("power events: %w", err)
	}

	// Steps 3 and 4: everything else, in mainline order based on the
	// partially resolved power levels.
	rest := make([]int32, 0, len(full)-len(picked))
	for _, i := range full {
		if r.nodes[i].flags&srPicked == 0 {
			rest = append(rest, i)
		}
	}
	plID, _ := st.get(StateKey{Type: TypePowerLevels})
	if err := r.mainlineSort(rest, plID); err != nil {
		return nil, err
	}
	if err := r.iterativeAuthChecks(rest, st); err != nil {
		return nil, fmt.Errorf("other events: %w", err)
	}

	// Step 5: the unconflicted state map wins over anything resolved. We
	// own unconflicted (splitStates made it), so it becomes the result.
	for k, id := range st.over {
		if _, ok := unconflicted[k]; !ok {
			unconflicted[k] = id
		}
	}
	return unconflicted, nil
}

// fullConflictedSet returns the full conflicted set: the conflicted state
// set, the auth difference and, in v2.1, the conflicted state subgraph. Its
// events are flagged srFull, the conflicted state set's also srConflicted.
func (r *resolver) fullConflictedSet(states []StateMap, unconflicted StateMap, conflicted map[StateKey][]string) ([]int32, error) {
	// Sorted keys make lookups and walks happen in the same order on every
	// run; the set itself does not depend on it.
	conflictedKeys := make([]StateKey, 0, len(conflicted))
	for k := range conflicted {
		conflictedKeys = append(conflictedKeys, k)
	}
	sortStateKeys(conflictedKeys)
	var conf []int32
	for _, k := range conflictedKeys {
		for _, id := range conflicted[k] {
			i, err := r.stateNode(id)
			if err != nil {
				return nil, err
			}
			if r.nodes[i].flags&srConflicted == 0 {
				r.nodes[i].flags |= srConflicted | srFull
				conf = append(conf, i)
			}
		}
	}
	diff, err := r.authDifference(states, conflictedKeys, unconflicted)
	if err != nil {
		return nil, fmt.Errorf("auth difference: %w", err)
	}
	full := make([]int32, 0, len(conf)+len(diff))
	full = append(append(full, conf...), diff...)
	for _, i := range diff {
		r.nodes[i].flags |= srFull
	}
	if r.rv.StateRes == StateResV21 {
		sub, err := r.conflictedSubgraph(conf)
		if err != nil {
			return nil, fmt.Errorf("conflicted state subgraph: %w", err)
		}
		for _, i := range sub {
			if r.nodes[i].flags&srFull == 0 {
				r.nodes[i].flags |= srFull
				full = append(full, i)
			}
		}
	}
	return full, nil
}

// authDifference returns the events outside the conflicted state set that
// are in the full auth chains of some but not all states.
//
// A state's full auth chain is taken to include the state's own events
// (everything reachable from the state). Read literally, the spec's wording
// (the union of the auth chains of the state's events) leaves them out; the
// two readings differ only on unconflicted events that the conflicted events
// of some states cite and those of others do not. Those are state every
// fork agrees on: putting them in the full conflicted set would replay them
// for nothing in v2 and, in v2.1, carry them into the partial state that
// MSC4297 deliberately starts empty. So unconflicted events are never in the
// difference.
//
// Unconflicted events are in every state, so their auth chain U is in every
// state's chain; the chain of state i is then U ∪ Dᵢ, where Dᵢ is the auth
// chain of the conflicted events of state i, and the difference is
// (∪Dᵢ − ∩Dᵢ) − U. This walks the (small) Dᵢ always and the (large) U only
// when the first part is not empty, stopping once it is accounted for.
func (r *resolver) authDifference(states []StateMap, conflictedKeys []StateKey, unconflicted StateMap) ([]int32, error) {
	var starts []int32
	for _, s := range states {
		starts = starts[:0]
		for _, k := range conflictedKeys {
			if id, ok := s[k]; ok {
				starts = append(starts, r.ids[id])
			}
		}
		if err := r.walkAuthChains(starts, func(i int32) bool {
			r.nodes[i].chains++
			return true
		}); err != nil {
			return nil, err
		}
	}
	n := int32(len(states))
	var cand []int32
	for i := range r.nodes {
		nd := &r.nodes[i]
		if nd.ev == nil || nd.chains == 0 || nd.chains == n || nd.flags&srConflicted != 0 {
			continue
		}
		if nd.ev.IsState() && unconflicted[nd.ev.StateTuple()] == nd.id {
			continue // an unconflicted event: in every state
		}
		cand = append(cand, int32(i))
	}
	if len(cand) == 0 {
		return nil, nil
	}

	// Candidates reached from the unconflicted state are in every chain.
	// Walk it one unconflicted event at a time, to stop as soon as every
	// candidate is found.
	left := len(cand)
	for _, i := range cand {
		r.nodes[i].flags |= srCandidate
	}
	r.reserve(len(unconflicted))
	stamp := r.newStamp()
	var stack []int32
	push := func(i int32) error {
		ps, err := r.parents(i)
		if err != nil {
			return err
		}
		for _, p := range ps {
			if n := &r.nodes[p]; n.mark != stamp {
				n.mark = stamp
				if n.flags&srCandidate != 0 {
					n.flags |= srInU
					left--
				}
				stack = append(stack, p)
			}
		}
		return nil
	}
	for _, id := range unconflicted {
		if left == 0 {
			break
		}
		u, err := r.stateNode(id)
		if err != nil {
			return nil, err
		}
		if r.nodes[u].mark == stamp {
			continue // reached from another event: its auth events are done
		}
		if err := push(u); err != nil {
			return nil, err
		}
		for len(stack) > 0 && left > 0 {
			p := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if err := push(p); err != nil {
				return nil, err
			}
		}
	}
	diff := cand[:0]
	for _, i := range cand {
		if r.nodes[i].flags&srInU == 0 {
			diff = append(diff, i)
		}
	}
	return diff, nil
}

// conflictedSubgraph returns the events on auth_events paths from one
// conflicted event to another (v2.1). A depth-first walk from the conflicted
// events marks, in post-order, every event from which such a path leads on
// to a conflicted event; those are exactly the subgraph's inner events.
func (r *resolver) conflictedSubgraph(conf []int32) ([]int32, error) {
	var sub []int32
	type frame struct {
		n    int32
		next int
	}
	var stack []frame
	for _, c := range conf {
		if r.nodes[c].flags&(srVisiting|srDone) != 0 {
			continue
		}
		r.nodes[c].flags |= srVisiting
		stack = append(stack[:0], frame{n: c})
		for len(stack) > 0 {
			top := &stack[len(stack)-1]
			ps, err := r.parents(top.n)
			if err != nil {
				return nil, err
			}
			if top.next < len(ps) {
				p := ps[top.next]
				top.next++
				pf := r.nodes[p].flags
				if pf&(srVisiting|srDone) == 0 {
					r.nodes[p].flags |= srVisiting
					stack = append(stack, frame{n: p})
					continue
				}
				// Done, or on the stack (a cycle, which only v1–v2 event
				// IDs allow): what it is known to reach so far counts.
				if pf&(srConflicted|srReaches) != 0 {
					r.nodes[top.n].flags |= srReaches
				}
				continue
			}
			n := top.n
			stack = stack[:len(stack)-1]
			nf := &r.nodes[n].flags
			*nf = *nf&^srVisiting | srDone
			if *nf&srReaches != 0 && *nf&srConflicted == 0 {
				sub = append(sub, n)
			}
			if len(stack) > 0 && *nf&(srConflicted|srReaches) != 0 {
				r.nodes[stack[len(stack)-1].n].flags |= srReaches
			}
		}
	}
	return sub, nil
}

// reverseTopologicalPowerOrder sorts events by Kahn's algorithm over their
// auth_events edges within the set, taking at each step the candidate whose
// sender has the highest power level (as of its own auth events), then the
// earliest origin_server_ts, then the smallest event ID.
func (r *resolver) reverseTopologicalPowerOrder(set []int32) ([]int32, error) {
	if len(set) == 0 {
		return nil, nil
	}
	pos := make(map[int32]int32, len(set))
	for k, i := range set {
		pos[i] = int32(k)
	}
	keys := make([]srSortKey, len(set))
	indeg := make([]int32, len(set))
	children := make([][]int32, len(set))
	for k, i := range set {
		lvl, err := r.senderPower(i)
		if err != nil {
			return nil, err
		}
		ev := r.nodes[i].ev
		keys[k] = srSortKey{inf: lvl.Infinite, rank: lvl.Value, ts: ev.OriginServerTS(), id: r.nodes[i].id}
		ps, err := r.parents(i)
		if err != nil {
			return nil, err
		}
		for _, p := range ps {
			if pk, ok := pos[p]; ok {
				indeg[k]++
				children[pk] = append(children[pk], int32(k))
			}
		}
	}
	h := srHeap{keys: keys}
	for k := range set {
		if indeg[k] == 0 {
			h.push(int32(k))
		}
	}
	out := make([]int32, 0, len(set))
	for h.len() > 0 {
		k := h.pop()
		out = append(out, set[k])
		for _, c := range children[k] {
			if indeg[c]--; indeg[c] == 0 {
				h.push(c)
			}
		}
	}
	if len(out) != len(set) {
		return nil, fmt.Errorf("reverse topological power ordering: %w", ErrAuthCycle)
	}
	return out, nil
}

// mainlineSort sorts events by mainline ordering based on the power levels
// event plID (none when empty): an event whose power levels chain meets the
// mainline further from plID comes first, then earlier origin_server_ts,
// then smaller event ID.
func (r *resolver) mainlineSort(events []int32, plID string) error {
	if len(events) == 0 {
		return nil
	}
	// mainline[node] = i for Pᵢ; positions of non-mainline power levels
	// events are memoised in the same map once computed.
	mainline := map[int32]int64{}
	if plID != "" {
		p, err := r.stateNode(plID)
		if err != nil {
			return err
		}
		stamp := r.newStamp()
		for idx := int64(0); p >= 0 && r.nodes[p].mark != stamp; idx++ {
			r.nodes[p].mark = stamp
			mainline[p] = idx
			if p, err = r.authPowerLevels(p); err != nil {
				return err
			}
		}
	}
	keys := make([]srSortKey, len(events))
	for k, e := range events {
		mp, err := r.mainlinePosition(e, mainline)
		if err != nil {
			return err
		}
		keys[k] = srSortKey{inf: mp < 0, rank: mp, ts: r.nodes[e].ev.OriginServerTS(), id: r.nodes[e].id}
	}
	sort.Sort(srKeyedNodes{nodes: events, keys: keys})
	return nil
}

// mainlinePosition follows the power levels events in the auth events of e
// (e itself excluded) until one is on the mainline, and returns its index
// there, or -1 (the spec's ∞) when none is.
func (r *resolver) mainlinePosition(e int32, memo map[int32]int64) (int64, error) {
	var path []int32
	stamp := r.newStamp()
	pos := int64(-1)
	cur := e
	for {
		p, err := r.authPowerLevels(cur)
		if err != nil {
			return 0, err
		}
		if p < 0 || r.nodes[p].mark == stamp {
			break
		}
		if mp, ok := memo[p]; ok {
			pos = mp
			break
		}
		r.nodes[p].mark = stamp
		path = append(path, p)
		cur = p
	}
	for _, p := range path {
		memo[p] = pos
	}
	return pos, nil
}

// authPowerLevels returns the m.room.power_levels event among the auth
// events of i, or -1.
func (r *resolver) authPowerLevels(i int32) (int32, error) {
	ps, err := r.parents(i)
	if err != nil {
		return -1, err
	}
	for _, p := range ps {
		if ev := r.nodes[p].ev; ev.Type() == TypePowerLevels && ev.StateKeyEquals("") {
			return p, nil
		}
	}
	return -1, nil
}

// iterativeAuthChecks applies, in order, every state event that the auth
// rules allow against the partially resolved state st.
func (r *resolver) iterativeAuthChecks(events []int32, st *srState) error {
	for _, i := range events {
		ev := r.nodes[i].ev
		if !ev.IsState() {
			continue
		}
		ok, err := r.allowedIn(i, st, true)
		if err != nil {
			return err
		}
		if r.checked != nil {
			r.checked(ev, ok)
		}
		if ok {
			st.over[ev.StateTuple()] = r.nodes[i].id
		}
	}
	return nil
}

// sortStateKeys sorts keys by type, then state key.
func sortStateKeys(keys []StateKey) {
	sort.Slice(keys, func(a, b int) bool {
		if keys[a].Type != keys[b].Type {
			return keys[a].Type < keys[b].Type
		}
		return keys[a].StateKey < keys[b].StateKey
	})
}

// srSortKey orders events by rank, highest first (an infinite rank above
// every finite one), then origin_server_ts, then event ID, both ascending.
// Both orderings of v2 put the larger rank first: the sender's power level
// (reverse topological power ordering) and the mainline position (mainline
// ordering).
type srSortKey struct {
	inf  bool
	rank int64
	ts   int64
	id   string
}

func (a *srSortKey) less(b *srSortKey) bool {
	if a.inf != b.inf {
		return a.inf
	}
	if a.rank != b.rank {
		return a.rank > b.rank
	}
	if a.ts != b.ts {
		return a.ts < b.ts
	}
	return a.id < b.id
}

// srKeyedNodes sorts nodes and their keys together.
type srKeyedNodes struct {
	nodes []int32
	keys  []srSortKey
}

func (s srKeyedNodes) Len() int           { return len(s.nodes) }
func (s srKeyedNodes) Less(a, b int) bool { return s.keys[a].less(&s.keys[b]) }
func (s srKeyedNodes) Swap(a, b int) {
	s.nodes[a], s.nodes[b] = s.nodes[b], s.nodes[a]
	s.keys[a], s.keys[b] = s.keys[b], s.keys[a]
}

// srHeap is a binary min-heap of indices into keys.
type srHeap struct {
	keys []srSortKey
	h    []int32
}

func (h *srHeap) len() int { return len(h.h) }

func (h *srHeap) push(k int32) {
	h.h = append(h.h, k)
	for c := len(h.h) - 1; c > 0; {
		p := (c - 1) / 2
		if !h.keys[h.h[c]].less(&h.keys[h.h[p]]) {
			break
		}
		h.h[c], h.h[p] = h.h[p], h.h[c]
		c = p
	}
}

func (h *srHeap) pop() int32 {
	top := h.h[0]
	last := len(h.h) - 1
	h.h[0] = h.h[last]
	h.h = h.h[:last]
	for p := 0; ; {
		l, m := 2*p+1, p
		if l < last && h.keys[h.h[l]].less(&h.keys[h.h[m]]) {
			m = l
		}
		if l+1 < last && h.keys[h.h[l+1]].less(&h.keys[h.h[m]]) {
			m = l + 1
		}
		if m == p {
			break
		}
		h.h[p], h.h[m] = h.h[m], h.h[p]
		p = m
	}
	return top
}
