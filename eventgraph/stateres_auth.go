package eventgraph

import (
	"errors"
	"fmt"
)

// srAuthEvents is what the auth rules read while state resolution checks
// one event: the partially resolved state first, and for keys the state does
// not hold, the event's own auth events that were not rejected (the spec's
// iterative auth checks). In v12 the create event is not among auth events;
// the room ID names it. v1 reads the state only.
type srAuthEvents struct {
	r        *resolver
	st       *srState
	i        int32 // the event being checked
	fallback bool
}

// AuthEvent implements AuthEvents.
func (a *srAuthEvents) AuthEvent(key StateKey) (*Event, error) {
	r := a.r
	if id, ok := a.st.get(key); ok {
		n, err := r.stateNode(id)
		if err != nil {
			return nil, err
		}
		return r.nodes[n].ev, nil
	}
	if !a.fallback {
		return nil, nil
	}
	ps, err := r.parents(a.i)
	if err != nil {
		return nil, err
	}
	for _, p := range ps {
		n := &r.nodes[p]
		if !n.rej && n.ev.Type() == key.Type && n.ev.StateKeyEquals(key.StateKey) {
			return n.ev, nil
		}
	}
	if key.Type == TypeCreate && key.StateKey == "" {
		c, err := r.createFromRoomID(a.i)
		if err != nil || c < 0 || r.nodes[c].rej {
			return nil, err
		}
		return r.nodes[c].ev, nil
	}
	return nil, nil
}

// allowedIn reports whether the auth rules allow node i against the
// partially resolved state st, falling back on i's own non-rejected auth
// events for keys st lacks when fallback is set. A refusal by the rules is
// (false, nil); any other failure is an error.
func (r *resolver) allowedIn(i int32, st *srState, fallback bool) (bool, error) {
	r.authView = srAuthEvents{r: r, st: st, i: i, fallback: fallback}
	err := Allowed(r.nodes[i].ev, &r.authView)
	if err == nil {
		return true, nil
	}
	var ae *AuthError
	if errors.As(err, &ae) {
		return false, nil
	}
	return false, fmt.Errorf("auth check of %s: %w", r.nodes[i].id, err)
}

// createFromRoomID returns the create event node a v12 room ID names for
// node i's room, or -1 (before v12, or when the lookup lacks it).
func (r *resolver) createFromRoomID(i int32) (int32, error) {
	if !r.rv.RoomIDFromCreateEvent {
		return -1, nil
	}
	roomID := r.nodes[i].ev.RoomID()
	if len(roomID) < 2 || roomID[0] != '!' {
		return -1, nil
	}
	c, err := r.node("$" + roomID[1:])
	if err != nil {
		return -1, err
	}
	if ev := r.nodes[c].ev; ev == nil || ev.Type() != TypeCreate || !ev.StateKeyEquals("") {
		return -1, nil
	}
	return c, nil
}

// senderPower is the power level of node i's sender as i's own auth events
// define it: their power levels and create events (a create event is its own;
// in v12 the room ID names it). Levels are parsed once per (create, power
// levels) pair. Levels that do not parse, which the auth rules would have
// refused on receipt, count as level 0.
func (r *resolver) senderPower(i int32) (PowerLevel, error) {
	ev := r.nodes[i].ev
	create, pl := int32(-1), int32(-1)
	if ev.Type() == TypeCreate && ev.StateKeyEquals("") {
		create = i
	}
	ps, err := r.parents(i)
	if err != nil {
		return PowerLevel{}, err
	}
	for _, p := range ps {
		a := r.nodes[p].ev
		if !a.StateKeyEquals("") {
			continue
		}
		switch a.Type() {
		case TypeCreate:
			if create < 0 {
				create = p
			}
		case TypePowerLevels:
			if pl < 0 {
				pl = p
			}
		}
	}
	if create < 0 {
		if create, err = r.createFromRoomID(i); err != nil {
			return PowerLevel{}, err
		}
	}
	key := [2]int32{create, pl}
	levels, ok := r.levels[key]
	if !ok {
		var createEv, plEv *Event
		if create >= 0 {
			createEv = r.nodes[create].ev
		}
		if pl >= 0 {
			plEv = r.nodes[pl].ev
		}
		levels, err = NewPowerLevels(r.rv, createEv, plEv)
		if err != nil {
			levels = nil
		}
		r.levels[key] = levels
	}
	if levels == nil {
		return FinitePowerLevel(0), nil
	}
	return levels.UserLevel(ev.Sender()), nil
}
