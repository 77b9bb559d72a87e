package eventgraph

import "fmt"

// AuthChain returns the union of the auth chains of the events named by ids:
// every event reachable from them by following auth_events, keyed by event
// ID. A starting event is in the result only if it is in the auth chain of
// another starting event.
//
// The walk is iterative (an explicit stack, so a chain of any length is
// fine) and shares one visited set across all starting events: the events
// most chains have in common (create, power levels, join rules) are looked up
// and expanded once, which makes the chain of a whole room state cost about
// as much as the chain of its largest member. lookup is called at most once
// per event; an event it does not have (nil, nil) is an error wrapping
// ErrMissingAuthEvent.
func AuthChain(ids []string, lookup func(eventID string) (*Event, error)) (map[string]*Event, error) {
	chain := make(map[string]*Event, max(16, len(ids)))
	// Starting events are looked up once here; they enter chain only when
	// reached as someone's auth event.
	starts := make(map[string]*Event, len(ids))
	var stack []string
	for _, id := range ids {
		if _, dup := starts[id]; dup {
			continue
		}
		ev, err := lookupAuthChainEvent(id, lookup)
		if err != nil {
			return nil, err
		}
		starts[id] = ev
		stack = append(stack, ev.AuthEventIDs()...)
	}
	for len(stack) > 0 {
		id := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if _, seen := chain[id]; seen {
			continue
		}
		ev, ok := starts[id]
		if !ok {
			var err error
			if ev, err = lookupAuthChainEvent(id, lookup); err != nil {
				return nil, err
			}
		}
		chain[id] = ev
		for _, a := range ev.AuthEventIDs() {
			if _, seen := chain[a]; !seen {
				stack = append(stack, a)
			}
		}
	}
	return chain, nil
}

func lookupAuthChainEvent(id string, lookup func(string) (*Event, error)) (*Event, error) {
	ev, err := lookup(id)
	if err != nil {
		return nil, fmt.Errorf("eventgraph: auth chain: look up %s: %w", id, err)
	}
	if ev == nil {
		return nil, fmt.Errorf("%w: %s (auth chain)", ErrMissingAuthEvent, id)
	}
	return ev, nil
}

// AuthChainOf is the auth chain of one event that the caller already has.
func AuthChainOf(ev *Event, lookup func(eventID string) (*Event, error)) (map[string]*Event, error) {
	self := ev.EventID()
	return AuthChain([]string{self}, func(id string) (*Event, error) {
		if id == self {
			return ev, nil
		}
		return lookup(id)
	})
}
