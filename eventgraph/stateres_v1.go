package eventgraph

import (
	"bytes"
	"crypto/sha1"
	"fmt"
	"sort"
)

// resolveV1 implements the room version 1 algorithm: start from the union of
// the states without their conflicting keys (R), resolve the power levels,
// then the join rules, then each conflicted membership by replaying the
// candidates from the oldest and stopping at the first the auth rules refuse
// in R, and settle every other conflict with the newest candidate R allows.
//
// A v1 conflict is a key with different event IDs in different states; a key
// that only some states have is not one (R is their union). Membership keys
// are resolved one after the other in (type, state key) order, each against
// R as the earlier ones left it, since the spec fixes no order between them.
// Auth checks read R only: unlike v2, v1 does not fall back on the event's
// own auth events.
func (r *resolver) resolveV1(unconflicted StateMap, conflicted map[StateKey][]string) (StateMap, error) {
	R := unconflicted // owned: splitStates made it
	st := &srState{over: R}
	var members, others []StateKey
	for k, ids := range conflicted {
		switch {
		case len(ids) == 1:
			R[k] = ids[0]
		case k.Type == TypeMember:
			members = append(members, k)
		case k == StateKey{Type: TypePowerLevels}, k == StateKey{Type: TypeJoinRules}:
		default:
			others = append(others, k)
		}
	}
	sortStateKeys(members)
	sortStateKeys(others)

	passes := make([]StateKey, 0, 2+len(members))
	for _, k := range []StateKey{{Type: TypePowerLevels}, {Type: TypeJoinRules}} {
		if len(conflicted[k]) > 1 {
			passes = append(passes, k)
		}
	}
	passes = append(passes, members...)
	for _, k := range passes {
		evs, err := r.v1Candidates(conflicted[k], true)
		if err != nil {
			return nil, err
		}
		R[k] = r.nodes[evs[0]].id
		for _, i := range evs[1:] {
			ok, err := r.allowedIn(i, st, false)
			if err != nil {
				return nil, err
			}
			if !ok {
				break
			}
			R[k] = r.nodes[i].id
		}
	}
	for _, k := range others {
		evs, err := r.v1Candidates(conflicted[k], false)
		if err != nil {
			return nil, err
		}
		for _, i := range evs {
			ok, err := r.allowedIn(i, st, false)
			if err != nil {
				return nil, err
			}
			if ok {
				R[k] = r.nodes[i].id
				break
			}
		}
	}
	return R, nil
}

// v1Candidates looks up the conflicting events of one key and sorts them by
// ascending depth then descending sha1(event_id) (oldest first), or, when
// oldestFirst is false, by descending depth then ascending sha1(event_id).
func (r *resolver) v1Candidates(ids []string, oldestFirst bool) ([]int32, error) {
	type cand struct {
		n     int32
		depth int64
		hash  [sha1.Size]byte
	}
	cs := make([]cand, 0, len(ids))
	for _, id := range ids {
		i, err := r.stateNode(id)
		if err != nil {
			return nil, fmt.Errorf("v1: %w", err)
		}
		cs = append(cs, cand{n: i, depth: r.nodes[i].ev.Depth(), hash: sha1.Sum([]byte(id))})
	}
	sort.Slice(cs, func(a, b int) bool {
		x, y := &cs[a], &cs[b]
		if !oldestFirst {
			x, y = y, x
		}
		if x.depth != y.depth {
			return x.depth < y.depth
		}
		return bytes.Compare(x.hash[:], y.hash[:]) > 0
	})
	out := make([]int32, len(cs))
	for k := range cs {
		out[k] = cs[k].n
	}
	return out, nil
}
