package actors

import (
	"fmt"
	"sort"

	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/storage"
)

// What other servers read of a room: single events, the state at an event,
// auth chains, the events between two points (/get_missing_events) and
// history (/backfill).

// Bounds of the reads.
const (
	maxMissingEvents  = 20
	maxBackfillEvents = 100
	// maxReadWalk bounds the events one walk of the graph visits.
	maxReadWalk = 2000
)

// fedRead handles RoomFedRead.
func (r *roomActor) fedRead(m *pb.RoomFedRead) (*pb.RoomFedReadReply, error) {
	if err := r.fedCheckOrigin(m.Origin); err != nil {
		return nil, err
	}
	if len(m.EventIds) == 0 || len(m.EventIds) > maxMissingEvents || len(m.Earliest) > maxReadWalk {
		return nil, ErrInvalidParam("bad event_ids")
	}
	// Only servers in the room read it, unless it is world-readable.
	if m.Origin != r.env.Server.ServerName && !r.serverInRoom(m.Origin) &&
		historyVisibility(r.stateEvent("m.room.history_visibility", "")) != hvWorldReadable {
		return nil, ErrForbidden("server %s is not in the room", m.Origin)
	}
	rep := &pb.RoomFedReadReply{}
	err := r.env.Partition.View(func(tx *bbolt.Tx) error {
		rt := storage.Room(tx, r.env.Identity)
		b := r.newBatch()
		b.rt = &rt
		switch m.Kind {
		case "event":
			rec, err := rt.Event(m.EventIds[0])
			if err != nil {
				return err
			}
			if rec == nil || rec.Rejected != "" {
				return ErrNotFound("event not found")
			}
			rep.Pdus = [][]byte{rec.PDU}
			return nil
		case "state", "state_ids":
			return r.readStateAt(b, m.EventIds[0], m.Kind == "state_ids", rep)
		case "event_auth":
			ev, err := b.lookup(m.EventIds[0])
			if err != nil {
				return err
			}
			if ev == nil {
				return ErrNotFound("event not found")
			}
			chain, err := eventgraph.AuthChainOf(ev, b.lookup)
			if err != nil {
				return fmt.Errorf("auth chain: %w", err)
			}
			rep.AuthChain = pdusOf(chain)
			return nil
		case "missing":
			evs, err := r.walkBack(b, m.EventIds, m.Earliest, int(m.Limit), m.MinDepth, false)
			if err != nil {
				return err
			}
			sort.Slice(evs, func(i, j int) bool { return lessDepth(evs[i], evs[j]) })
			for _, ev := range evs {
				rep.Pdus = append(rep.Pdus, ev.CanonicalPDU())
			}
			return nil
		case "backfill":
			evs, err := r.walkBack(b, m.EventIds, nil, int(m.Limit), 0, true)
			if err != nil {
				return err
			}
			sort.Slice(evs, func(i, j int) bool { return lessDepth(evs[j], evs[i]) })
			for _, ev := range evs {
				rep.Pdus = append(rep.Pdus, ev.CanonicalPDU())
			}
			return nil
		}
		return ErrInvalidParam("unknown read %q", m.Kind)
	})
	if err != nil {
		return nil, err
	}
	return rep, nil
}

func lessDepth(a, b *eventgraph.Event) bool {
	if a.Depth() != b.Depth() {
		return a.Depth() < b.Depth()
	}
	return a.EventID() < b.EventID()
}

func pdusOf(evs map[string]*eventgraph.Event) [][]byte {
	list := make([]*eventgraph.Event, 0, len(evs))
	for _, ev := range evs {
		list = append(list, ev)
	}
	sort.Slice(list, func(i, j int) bool { return lessDepth(list[i], list[j]) })
	out := make([][]byte, len(list))
	for i, ev := range list {
		out[i] = ev.CanonicalPDU()
	}
	return out
}

// stateBeforeStored is the state before a stored event of the graph.
func (r *roomActor) stateBeforeStored(b *batch, id string) (eventgraph.StateMap, error) {
	rec, err := b.record(id)
	if err != nil {
		return nil, err
	}
	if rec == nil || rec.Rejected != "" {
		return nil, ErrNotFound("event not found")
	}
	if rec.Outlier {
		return nil, ErrNotFound("the state at that event is not known here")
	}
	var after eventgraph.StateMap
	if rec.StateGroup != 0 {
		if after, err = b.groupState(rec.StateGroup); err != nil {
			return nil, err
		}
	} else {
		// Stored before state groups: the timeline's deltas give it.
		rd := r.reader(*b.rt)
		if after, err = rd.stateAt(rec.Pos, nil); err != nil {
			return nil, err
		}
	}
	ev, err := b.lookup(id)
	if err != nil || ev == nil {
		return nil, fmt.Errorf("room %s: event %s unreadable: %v", r.roomID, id, err)
	}
	if !ev.IsState() {
		return after, nil
	}
	st := make(eventgraph.StateMap, len(after))
	for k, v := range after {
		st[k] = v
	}
	if rec.ReplacesState != "" {
		st[ev.StateTuple()] = rec.ReplacesState
	} else {
		delete(st, ev.StateTuple())
	}
	return st, nil
}

// readStateAt answers /state and /state_ids: the state before the event and
// the auth chain of that state.
func (r *roomActor) readStateAt(b *batch, id string, idsOnly bool, rep *pb.RoomFedReadReply) error {
	st, err := r.stateBeforeStored(b, id)
	if err != nil {
		return err
	}
	ids := make([]string, 0, len(st))
	for _, v := range st {
		ids = append(ids, v)
	}
	sort.Strings(ids)
	chain, err := eventgraph.AuthChain(ids, b.lookup)
	if err != nil {
		return fmt.Errorf("room %s: auth chain of the state at %s: %w", r.roomID, id, err)
	}
	if idsOnly {
		rep.PduIds = ids
		for cid := range chain {
			rep.AuthChainIds = append(rep.AuthChainIds, cid)
		}
		sort.Strings(rep.AuthChainIds)
		return nil
	}
	for _, sid := range ids {
		ev, err := b.lookup(sid)
		if err != nil {
			return err
		}
		if ev == nil {
			return fmt.Errorf("room %s: state event %s missing", r.roomID, sid)
		}
		rep.Pdus = append(rep.Pdus, ev.CanonicalPDU())
	}
	rep.AuthChain = pdusOf(chain)
	return nil
}

// walkBack walks prev_events back from the given events, breadth first,
// stopping at earliest and below minDepth, and returns up to limit events
// (the starting events themselves only when include is set, as /backfill
// wants). Rejected and soft-failed events are never given out.
func (r *roomActor) walkBack(b *batch, from, earliest []string, limit int, minDepth int64, include bool) ([]*eventgraph.Event, error) {
	maxN := maxMissingEvents
	if include {
		maxN = maxBackfillEvents
	}
	if limit <= 0 || limit > maxN {
		limit = maxN
	}
	stop := map[string]bool{}
	for _, e := range earliest {
		stop[e] = true
	}
	seen := map[string]bool{}
	var queue []string
	for _, id := range from {
		if include {
			queue = append(queue, id)
			continue
		}
		ev, err := b.lookup(id)
		if err != nil {
			return nil, err
		}
		if ev != nil {
			seen[id] = true
			queue = append(queue, ev.PrevEventIDs()...)
		}
	}
	var out []*eventgraph.Event
	for visits := 0; len(queue) > 0 && len(out) < limit && visits < maxReadWalk; visits++ {
		id := queue[0]
		queue = queue[1:]
		if seen[id] || stop[id] {
			continue
		}
		seen[id] = true
		rec, err := b.record(id)
		if err != nil {
			return nil, err
		}
		if rec == nil || rec.Rejected != "" || rec.SoftFailed || rec.Outlier {
			continue
		}
		ev, err := b.lookup(id)
		if err != nil || ev == nil {
			return nil, fmt.Errorf("room %s: event %s unreadable: %v", r.roomID, id, err)
		}
		if ev.Depth() < minDepth {
			continue
		}
		out = append(out, ev)
		queue = append(queue, ev.PrevEventIDs()...)
	}
	return out, nil
}
