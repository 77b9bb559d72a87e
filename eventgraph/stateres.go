package eventgraph

import (
	"errors"
	"fmt"
	"maps"
	"slices"
)

// EventLookup fetches an event that state resolution needs: an event of one
// of the states being resolved or of their auth chains. It returns (nil, nil)
// when the caller does not have the event, which fails the resolution with
// an error wrapping ErrMissingStateEvent or ErrMissingAuthEvent (fetch the
// event and resolve again); any other error aborts the resolution too.
type EventLookup func(eventID string) (*Event, error)

// ResolveOption adjusts one call of ResolveState.
type ResolveOption func(*resolveConfig)

type resolveConfig struct {
	rejected func(eventID string) bool
	// checked, if set, sees every verdict of the v2 iterative auth checks,
	// in order (tests replay them to check the algorithm independently).
	checked func(ev *Event, allowed bool)
}

// WithRejected tells state resolution which events this server rejected.
// Rejected events still take part in the algorithm as the spec says, but are
// never used as auth events during the iterative auth checks. Without this
// option no event is considered rejected.
func WithRejected(rejected func(eventID string) bool) ResolveOption {
	return func(c *resolveConfig) { c.rejected = rejected }
}

// withCheckTrace makes the v2 iterative auth checks report every verdict,
// in order; tests replay them against the auth rules on their own.
func withCheckTrace(f func(ev *Event, allowed bool)) ResolveOption {
	return func(c *resolveConfig) { c.checked = f }
}

// ErrMissingStateEvent is wrapped by ResolveState's error when an event that
// one of the states names cannot be looked up. (A missing auth chain event
// gives ErrMissingAuthEvent.)
var ErrMissingStateEvent = errors.New("eventgraph: state event is missing")

// ErrAuthCycle is wrapped by ResolveState's error when auth_events links form
// a cycle, which no accepted event can (its auth events must be accepted first).
var ErrAuthCycle = errors.New("eventgraph: auth events form a cycle")

// ResolveState returns the resolution of the given room states (for example
// the states after each prev_event of a new event) using the state resolution
// algorithm of rv: v1 for room version 1, v2 for versions 2–11, v2.1 for 12.
//
// The input maps are not modified. The result is a new map; resolving zero
// states gives the empty state and resolving one state gives a copy of it.
// lookup is called at most once per event ID.
func ResolveState(rv *RoomVersion, states []StateMap, lookup EventLookup, opts ...ResolveOption) (StateMap, error) {
	if rv == nil {
		return nil, errors.New("eventgraph: state resolution: nil room version")
	}
	if lookup == nil {
		return nil, errors.New("eventgraph: state resolution: nil event lookup")
	}
	switch rv.StateRes {
	case StateResV1, StateResV2, StateResV21:
	default:
		return nil, fmt.Errorf("eventgraph: state resolution: room version %s has unknown algorithm %d", rv.ID, rv.StateRes)
	}
	var cfg resolveConfig
	for _, o := range opts {
		o(&cfg)
	}
	switch len(states) {
	case 0:
		return StateMap{}, nil
	case 1:
		return states[0].Clone(), nil
	}
	unconflicted, conflicted := splitStates(states)
	if len(conflicted) == 0 {
		return unconflicted, nil
	}
	r := newResolver(rv, lookup, cfg.rejected)
	r.checked = cfg.checked
	var (
		res StateMap
		err error
	)
	if rv.StateRes == StateResV1 {
		res, err = r.resolveV1(unconflicted, conflicted)
	} else {
		res, err = r.resolveV2(states, unconflicted, conflicted)
	}
	if err != nil {
		return nil, fmt.Errorf("eventgraph: resolve state (room version %s): %w", rv.ID, err)
	}
	return res, nil
}

// splitStates divides the states into the unconflicted state map (keys
// present in every state with the same event) and, for every other key, the
// distinct event IDs found under it, in the order the states give them.
//
// On large rooms map operations dominate, so it makes as few as it can:
// the result starts as a clone of the smallest state (a table copy), the
// largest state is walked once looking its keys up in the others, and the
// others are walked only if they hold keys the largest lacks (forks mostly
// add keys: members are never removed from state).
func splitStates(states []StateMap) (StateMap, map[StateKey][]string) {
	largest, smallest := 0, 0
	for i, s := range states {
		if len(s) > len(states[largest]) {
			largest = i
		}
		if len(s) < len(states[smallest]) {
			smallest = i
		}
	}
	if largest == smallest && len(states) > 1 { // all the same size
		smallest = (largest + 1) % len(states)
	}
	unconflicted := maps.Clone(states[smallest])
	conflicted := map[StateKey][]string{}
	conflict := func(k StateKey) {
		var ids []string
		for _, s := range states {
			if id, ok := s[k]; ok && !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
		conflicted[k] = ids
		delete(unconflicted, k)
	}
	found := make([]int, len(states)) // keys of each state seen in the largest
	for k, id := range states[largest] {
		same := true
		for j, s := range states {
			if j == largest {
				continue
			}
			if oid, ok := s[k]; ok {
				found[j]++
				if oid != id {
					same = false
				}
			} else {
				same = false
			}
		}
		if !same {
			conflict(k)
		}
	}
	for j, s := range states {
		if j == largest || found[j] == len(s) {
			continue
		}
		for k := range s {
			if _, ok := states[largest][k]; ok {
				continue
			}
			if _, done := conflicted[k]; !done {
				conflict(k)
			}
		}
	}
	return unconflicted, conflicted
}

// resolver holds one resolution's view of the event graph. Events are
// numbered on first sight so that walks, marks and caches are slices indexed
// by number rather than maps keyed by event ID.
type resolver struct {
	rv       *RoomVersion
	lookup   EventLookup
	rejected func(string) bool
	checked  func(*Event, bool)

	ids   map[string]int32
	nodes []srNode
	// recent remembers the last events numbered or found, so that the IDs
	// most events cite (create, power levels, join rules) skip the map.
	recent     [8]srRecent
	recentNext int
	// arena holds every node's auth events (as node numbers) back to back.
	arena []int32
	stamp uint32 // current walk's mark; see newStamp

	// levels caches effective power levels per (create, power levels)
	// node pair, so each power levels event is parsed once.
	levels map[[2]int32]*PowerLevels

	authView srAuthEvents // reused by allowedIn so that checks do not allocate it
}

type srRecent struct {
	id string
	i  int32
}

// srNode is one event as state resolution sees it. It is kept small: a
// resolution over a large room holds tens of thousands.
type srNode struct {
	id string
	ev *Event // nil when the lookup did not have the event

	authOff, authLen int32 // its auth events: arena[authOff:authOff+authLen]; authLen -1 until known

	mark   uint32 // walk stamp
	chains int32  // auth difference: how many states' conflicted chains reach it
	flags  uint8  // srConflicted, srFull, … (stateres_v2.go)
	rej    bool
	memb   srMembership
}

// srMembership is what state resolution needs of an m.room.member event's
// membership: whether it is a leave or a ban (power events are kicks and bans).
type srMembership uint8

const (
	srMembUnparsed srMembership = iota
	srMembLeave
	srMembBan
	srMembOther
)

func newResolver(rv *RoomVersion, lookup EventLookup, rejected func(string) bool) *resolver {
	return &resolver{
		rv:       rv,
		lookup:   lookup,
		rejected: rejected,
		ids:      make(map[string]int32, 64),
		levels:   map[[2]int32]*PowerLevels{},
	}
}

// reserve makes room for n more events, so that numbering a whole room
// state does not grow the tables step by step.
func (r *resolver) reserve(n int) {
	if n <= 0 {
		return
	}
	r.nodes = slices.Grow(r.nodes, n)
	ids := make(map[string]int32, len(r.ids)+n)
	for id, i := range r.ids {
		ids[id] = i
	}
	r.ids = ids
	r.arena = slices.Grow(r.arena, 4*n)
}

// node returns the number of the event with the given ID, looking it up on
// first sight. The node's ev is nil if the lookup did not have it; missing
// events get a node too so that they are looked up only once.
func (r *resolver) node(id string) (int32, error) {
	for k := range r.recent {
		if r.recent[k].id == id && id != "" {
			return r.recent[k].i, nil
		}
	}
	if i, ok := r.ids[id]; ok {
		r.remember(id, i)
		return i, nil
	}
	ev, err := r.lookup(id)
	if err != nil {
		return -1, fmt.Errorf("look up event %s: %w", id, err)
	}
	i := int32(len(r.nodes))
	n := srNode{id: id, ev: ev, authLen: -1}
	if ev != nil && r.rejected != nil {
		n.rej = r.rejected(id)
	}
	r.nodes = append(r.nodes, n)
	r.ids[id] = i
	return i, nil
}

func (r *resolver) remember(id string, i int32) {
	r.recent[r.recentNext] = srRecent{id: id, i: i}
	r.recentNext = (r.recentNext + 1) % len(r.recent)
}

// stateNode is node for an event that a state names: it must exist.
func (r *resolver) stateNode(id string) (int32, error) {
	i, err := r.node(id)
	if err != nil {
		return -1, err
	}
	if r.nodes[i].ev == nil {
		return -1, fmt.Errorf("%w: %s", ErrMissingStateEvent, id)
	}
	return i, nil
}

// parents returns the auth events of node i; all must be known. The
// slice is shared: callers must not modify it.
func (r *resolver) parents(i int32) ([]int32, error) {
	if n := &r.nodes[i]; n.authLen >= 0 {
		return r.arena[n.authOff : n.authOff+n.authLen : n.authOff+n.authLen], nil
	}
	ids := r.nodes[i].ev.AuthEventIDs()
	start := len(r.arena)
	for _, id := range ids {
		p, err := r.node(id)
		if err != nil {
			r.arena = r.arena[:start]
			return nil, err
		}
		if r.nodes[p].ev == nil {
			r.arena = r.arena[:start]
			return nil, fmt.Errorf("%w: %s, auth event of %s", ErrMissingAuthEvent, id, r.nodes[i].id)
		}
		if p != i { // an event cannot authorise itself; ignore such a link
			r.arena = append(r.arena, p)
		}
	}
	end := len(r.arena)
	r.nodes[i].authOff, r.nodes[i].authLen = int32(start), int32(end-start)
	return r.arena[start:end:end], nil
}

// newStamp starts a walk: nodes whose mark equals the returned stamp have
// been visited by it.
func (r *resolver) newStamp() uint32 {
	r.stamp++
	if r.stamp == 0 { // wrapped: clear old marks so none can collide
		for i := range r.nodes {
			r.nodes[i].mark = 0
		}
		r.stamp = 1
	}
	return r.stamp
}

// walkAuthChains visits every event in the auth chains of starts (not the
// starts themselves, unless they are reached through auth_events) once,
// calling visit on each. It follows auth events of visited events only if
// visit returns true.
func (r *resolver) walkAuthChains(starts []int32, visit func(i int32) bool) error {
	stamp := r.newStamp()
	stack := make([]int32, 0, 64)
	push := func(i int32) error {
		ps, err := r.parents(i)
		if err != nil {
			return err
		}
		for _, p := range ps {
			if r.nodes[p].mark != stamp {
				r.nodes[p].mark = stamp
				stack = append(stack, p)
			}
		}
		return nil
	}
	for _, s := range starts {
		if err := push(s); err != nil {
			return err
		}
	}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if !visit(i) {
			continue
		}
		if err := push(i); err != nil {
			return err
		}
	}
	return nil
}

// membership classifies the membership of an m.room.member node, parsing
// its content once.
func (r *resolver) membership(i int32) srMembership {
	n := &r.nodes[i]
	if n.memb == srMembUnparsed {
		switch membershipOf(n.ev) {
		case MembershipLeave:
			n.memb = srMembLeave
		case MembershipBan:
			n.memb = srMembBan
		default:
			n.memb = srMembOther
		}
	}
	return n.memb
}

// isPowerEvent reports whether node i is a power event: power levels, join
// rules, or a membership leave/ban of someone else (a kick or a ban).
func (r *resolver) isPowerEvent(i int32) bool {
	ev := r.nodes[i].ev
	if ev == nil || !ev.IsState() {
		return false
	}
	switch ev.Type() {
	case TypePowerLevels, TypeJoinRules:
		return true
	case TypeMember:
		m := r.membership(i)
		return (m == srMembLeave || m == srMembBan) && !ev.StateKeyEquals(ev.Sender())
	}
	return false
}
