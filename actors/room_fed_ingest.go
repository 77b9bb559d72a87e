package actors

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"

	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/storage"
)

// Receiving events from other servers (server-server API, "Checks performed
// on receipt of a PDU"). The gateway has verified signatures and hashes and
// fetched what it could; here each event is
//
//  1. checked against its own auth events — failing, it is stored rejected;
//  2. placed: the state before it is the state after its prev_events
//     (resolved when there are several), or the state the gateway fetched
//     from the sender when the room lacks some prev_events;
//  3. checked against that state — failing, it is stored rejected;
//  4. checked against the room's current state — failing, it is stored
//     soft-failed: kept in the graph but never shown or built upon;
//  5. otherwise appended to the timeline, made a forward extremity, and the
//     current state becomes the resolution of the extremities' states.
//
// All of one RoomFedIngest is committed in one transaction.

// Bounds on what one message may ask of the room.
const (
	maxIngestEvents = 5000
	// maxExtremities bounds the forward extremities: beyond it the
	// shallowest are dropped (they stay in the graph), so a peer cannot make
	// every later resolution wider.
	maxExtremities = 20
)

// Known-event kinds in RoomFedInfoReply.known.
const (
	knownInGraph  = 1
	knownOutlier  = 2
	knownRejected = 3
)

// fedInfo answers what the gateway needs to know before fetching.
func (r *roomActor) fedInfo(m *pb.RoomFedInfo) (*pb.RoomFedInfoReply, error) {
	rep := &pb.RoomFedInfoReply{Exists: r.exists, Outsider: r.meta.Outsider, Known: map[string]int32{}}
	if r.rv != nil {
		rep.RoomVersion = string(r.rv.ID)
	}
	if !r.exists {
		return rep, nil
	}
	rep.Extremities = append(rep.Extremities, r.meta.Extremities...)
	rep.Servers = r.joinedServers()
	rep.Depth = r.meta.Depth
	if len(m.EventIds) > maxIngestEvents {
		return nil, ErrInvalidParam("too many event IDs")
	}
	err := r.env.Partition.View(func(tx *bbolt.Tx) error {
		rt := storage.Room(tx, r.env.Identity)
		for _, id := range m.EventIds {
			rec, err := rt.Event(id)
			if err != nil {
				return err
			}
			if rec != nil {
				rep.Known[id] = knownKind(rec)
			}
		}
		if r.meta.BackfillNext > 0 {
			ids, err := r.backwardExtremities(rt)
			if err != nil {
				return err
			}
			rep.BackwardExtremities = ids
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("room %s: fed info: %w", r.roomID, err)
	}
	return rep, nil
}

// backwardExtremities lists the prev_events of the room's oldest timeline
// events that the graph lacks: where /backfill continues history.
func (r *roomActor) backwardExtremities(rt storage.RoomTx) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	n := 0
	err := rt.ScanTimeline(1, r.meta.Pos, false, func(_ uint64, id string) (bool, error) {
		n++
		ev, _, err := r.readEvent(rt, id)
		if err != nil || ev == nil {
			return err == nil && n < maxExtremities, err
		}
		for _, p := range ev.PrevEventIDs() {
			if seen[p] {
				continue
			}
			seen[p] = true
			rec, err := rt.Event(p)
			if err != nil {
				return false, err
			}
			if rec == nil || rec.Outlier {
				out = append(out, p)
			}
		}
		return n < maxExtremities, nil
	})
	sort.Strings(out)
	return out, err
}

func knownKind(rec *storage.RoomEvent) int32 {
	switch {
	case rec.Rejected != "":
		return knownRejected
	case rec.Outlier:
		return knownOutlier
	}
	return knownInGraph
}

// ingestOptions say how placed events are treated.
type ingestOptions struct {
	origin string
	// noSoftFail: the event must be accepted if it passes auth at its place
	// (send_join, send_leave, send_knock and invites counter-signed for us).
	noSoftFail bool
	backfill   bool
}

// fedIngest handles RoomFedIngest.
func (r *roomActor) fedIngest(m *pb.RoomFedIngest) (*pb.RoomFedIngestReply, error) {
	if !r.exists {
		return nil, ErrNotFound("room not known to this server")
	}
	if len(m.Pdus)+len(m.Outliers) > maxIngestEvents {
		return nil, ErrInvalidParam("too many events")
	}
	rep := &pb.RoomFedIngestReply{Results: map[string]string{}, RoomVersion: string(r.rv.ID)}
	if !r.aclAllows(m.Origin) {
		for _, raw := range m.Pdus {
			if id, err := eventgraph.ComputeEventID(raw, r.rv); err == nil {
				rep.Results[id] = "server denied by the room's server ACL"
			}
		}
		return rep, nil
	}
	b := r.newBatch()
	states := map[string][]string{}
	for _, s := range m.States {
		states[s.EventId] = s.StateIds
	}
	err := r.env.Partition.View(func(tx *bbolt.Tx) error {
		rt := storage.Room(tx, r.env.Identity)
		b.rt = &rt
		defer func() { b.rt = nil }()
		outliers := r.parseForRoom(m.Outliers, nil)
		missingAuth := map[string]bool{}
		if err := b.storeOutliers(outliers, missingAuth); err != nil {
			return err
		}
		pdus := r.parseForRoom(m.Pdus, rep.Results)
		missingPrev := map[string]bool{}
		opts := ingestOptions{origin: m.Origin, backfill: m.Backfill}
		for _, ev := range sortByPrevEvents(pdus) {
			res, err := b.place(ev, states[ev.EventID()], opts, missingPrev, missingAuth)
			if err != nil {
				return err
			}
			rep.Results[ev.EventID()] = res
		}
		rep.MissingPrev = sortedKeys(missingPrev)
		rep.MissingAuth = sortedKeys(missingAuth)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("room %s: ingest: %w", r.roomID, err)
	}
	if err := b.commit(); err != nil {
		return nil, err
	}
	return rep, nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// parseForRoom parses PDUs of this room; others are refused in results
// (when given) or dropped.
func (r *roomActor) parseForRoom(raws [][]byte, results map[string]string) []*eventgraph.Event {
	var out []*eventgraph.Event
	for _, raw := range raws {
		ev, err := eventgraph.ParseEvent(raw, r.rv)
		if err != nil {
			if results != nil {
				if id, err2 := eventgraph.ComputeEventID(raw, r.rv); err2 == nil {
					results[id] = "invalid event: " + err.Error()
				}
			}
			continue
		}
		if ev.RoomID() != r.roomID {
			if results != nil {
				results[ev.EventID()] = "event is for another room"
			}
			continue
		}
		out = append(out, ev)
	}
	return out
}

// sortByPrevEvents orders events so that each comes after those of its
// prev_events that are in the list (ties by depth, then ID).
func sortByPrevEvents(evs []*eventgraph.Event) []*eventgraph.Event {
	return topoSort(evs, (*eventgraph.Event).PrevEventIDs)
}

// sortByAuthEvents orders events so each comes after its auth events in the list.
func sortByAuthEvents(evs []*eventgraph.Event) []*eventgraph.Event {
	return topoSort(evs, (*eventgraph.Event).AuthEventIDs)
}

func topoSort(evs []*eventgraph.Event, edges func(*eventgraph.Event) []string) []*eventgraph.Event {
	byID := make(map[string]*eventgraph.Event, len(evs))
	for _, ev := range evs {
		byID[ev.EventID()] = ev
	}
	sorted := make([]*eventgraph.Event, 0, len(byID))
	for _, ev := range byID {
		sorted = append(sorted, ev)
	}
	sort.Slice(sorted, func(i, j int) bool {
		if sorted[i].Depth() != sorted[j].Depth() {
			return sorted[i].Depth() < sorted[j].Depth()
		}
		return sorted[i].EventID() < sorted[j].EventID()
	})
	done := make(map[string]bool, len(sorted))
	visiting := map[string]bool{}
	out := make([]*eventgraph.Event, 0, len(sorted))
	var visit func(ev *eventgraph.Event)
	visit = func(ev *eventgraph.Event) {
		id := ev.EventID()
		if done[id] || visiting[id] {
			return // a cycle cannot be ordered; auth checks refuse it
		}
		visiting[id] = true
		for _, p := range edges(ev) {
			if pe, ok := byID[p]; ok {
				visit(pe)
			}
		}
		visiting[id] = false
		done[id] = true
		out = append(out, ev)
	}
	for _, ev := range sorted {
		visit(ev)
	}
	return out
}

// record returns the stored form of an event the batch or the partition has.
func (b *batch) record(id string) (*storage.RoomEvent, error) {
	if rec, ok := b.stored[id]; ok {
		return rec, nil
	}
	for _, pe := range b.events {
		if pe.ev.EventID() == id {
			return &pe.rec, nil
		}
	}
	if b.rt == nil {
		return nil, nil
	}
	return b.rt.Event(id)
}

func (b *batch) rejected(id string) bool {
	rec, err := b.record(id)
	return err == nil && rec != nil && rec.Rejected != ""
}

// storeOutliers stores events fetched as auth or state of others, each
// checked against its own auth events. Missing auth events are collected.
func (b *batch) storeOutliers(evs []*eventgraph.Event, missingAuth map[string]bool) error {
	for _, ev := range sortByAuthEvents(evs) {
		id := ev.EventID()
		rec, err := b.record(id)
		if err != nil {
			return err
		}
		if rec != nil {
			continue
		}
		reason, missing, err := b.checkOwnAuth(ev)
		if err != nil {
			return err
		}
		if len(missing) > 0 {
			for _, a := range missing {
				missingAuth[a] = true
			}
			continue
		}
		b.store(id, &storage.RoomEvent{PDU: ev.CanonicalPDU(), Outlier: true, Rejected: reason}, ev)
	}
	return nil
}

// checkOwnAuth checks ev against its own auth events: the reason it is
// rejected ("" if it is not), or the auth events that are missing.
func (b *batch) checkOwnAuth(ev *eventgraph.Event) (reason string, missing []string, err error) {
	if ev.Type() == eventgraph.TypeCreate && ev.IsState() && ev.EventID() != b.r.meta.CreateID && b.r.meta.CreateID != "" {
		return "not this room's create event", nil, nil
	}
	for _, a := range ev.AuthEventIDs() {
		aev, err := b.lookup(a)
		if err != nil {
			return "", nil, err
		}
		if aev == nil {
			missing = append(missing, a)
		}
	}
	if len(missing) > 0 {
		return "", missing, nil
	}
	err = eventgraph.AllowedByAuthEvents(ev, b.lookup, b.rejected)
	if err == nil {
		return "", nil, nil
	}
	var ae *eventgraph.AuthError
	if errors.As(err, &ae) {
		return "rejected by the auth rules: " + ae.Error(), nil, nil
	}
	if errors.Is(err, eventgraph.ErrMissingAuthEvent) {
		return "missing auth events", nil, nil
	}
	return "", nil, fmt.Errorf("room %s: auth check of %s: %w", b.r.roomID, ev.EventID(), err)
}

// stateAfter is the state after an event in the graph, and its group.
func (b *batch) stateAfter(id string) (eventgraph.StateMap, uint64, bool, error) {
	rec, err := b.record(id)
	if err != nil || rec == nil || rec.Rejected != "" || rec.Outlier {
		return nil, 0, false, err
	}
	g := rec.StateGroup
	if g == 0 {
		// An event stored before state groups existed: only the forward
		// extremities' state is known (the current state, given its own group
		// when the room was loaded).
		if _, ok := b.r.extremities[id]; !ok {
			return nil, 0, false, nil
		}
		g = b.r.meta.StateGroup
	}
	st, err := b.groupState(g)
	if err != nil {
		return nil, 0, false, err
	}
	return st, g, true, nil
}

// stateBefore computes the state before ev from its prev_events, or from the
// state the gateway fetched. ok is false when neither is possible.
//
// parent is a group the state is close to; exact says the state is exactly
// that group's (one known prev event).
func (b *batch) stateBefore(ev *eventgraph.Event, given []string) (st eventgraph.StateMap, parent uint64, exact, ok bool, missing []string, err error) {
	var states []eventgraph.StateMap
	var groups []uint64
	for _, p := range ev.PrevEventIDs() {
		s, g, known, err := b.stateAfter(p)
		if err != nil {
			return nil, 0, false, false, nil, err
		}
		if !known {
			missing = append(missing, p)
			continue
		}
		states, groups = append(states, s), append(groups, g)
	}
	if len(missing) > 0 {
		if given == nil {
			return nil, 0, false, false, missing, nil
		}
		st := eventgraph.StateMap{}
		for _, id := range given {
			sev, err := b.lookup(id)
			if err != nil {
				return nil, 0, false, false, nil, err
			}
			if sev == nil || !sev.IsState() || b.rejected(id) {
				continue
			}
			st[sev.StateTuple()] = id
		}
		// The state the sender gave stands for the missing prev events;
		// resolving it with the known ones keeps what this server knows.
		states = append(states, st)
		groups = append(groups, 0)
	}
	switch len(states) {
	case 0:
		return nil, 0, false, false, nil, nil
	case 1:
		return states[0], groups[0], groups[0] != 0, true, nil, nil
	}
	res, err := eventgraph.ResolveState(b.r.rv, states, b.lookup, eventgraph.WithRejected(b.rejected))
	if err != nil {
		return nil, 0, false, false, nil, fmt.Errorf("room %s: resolve state before %s: %w", b.r.roomID, ev.EventID(), err)
	}
	return res, groups[0], false, true, nil, nil
}

// place runs the receipt checks on one event and adds it to the batch. The
// result is "" when it was accepted (or was known), otherwise the reason.
func (b *batch) place(ev *eventgraph.Event, given []string, opts ingestOptions, missingPrev, missingAuth map[string]bool) (string, error) {
	id := ev.EventID()
	rec, err := b.record(id)
	if err != nil {
		return "", err
	}
	if rec != nil && rec.Rejected != "" {
		return rec.Rejected, nil
	}
	if rec != nil && !rec.Outlier {
		return "", nil
	}
	if ev.Type() == eventgraph.TypeCreate {
		if id != b.r.meta.CreateID {
			return "a room has one create event", nil
		}
		if opts.backfill && rec != nil {
			// The room's own create event, reached by backfill: shown as
			// the start of history.
			b.store(id, &storage.RoomEvent{PDU: rec.PDU}, ev)
			b.backfilled = append(b.backfilled, id)
		}
		return "", nil
	}
	reason, missing, err := b.checkOwnAuth(ev)
	if err != nil {
		return "", err
	}
	if len(missing) > 0 {
		for _, a := range missing {
			missingAuth[a] = true
		}
		return "missing auth events", nil
	}
	if reason != "" {
		b.store(id, &storage.RoomEvent{PDU: ev.CanonicalPDU(), Rejected: reason}, ev)
		return reason, nil
	}
	before, parent, exact, ok, missingP, err := b.stateBefore(ev, given)
	if err != nil {
		return "", err
	}
	if !ok {
		if opts.backfill {
			// History whose prev events are beyond what was fetched: it
			// passed its own auth events; with no state known it is shown,
			// never built upon.
			b.store(id, &storage.RoomEvent{PDU: ev.CanonicalPDU()}, ev)
			b.backfilled = append(b.backfilled, id)
			return "", b.applyPendingRedaction(id, b.stored[id])
		}
		for _, p := range missingP {
			missingPrev[p] = true
		}
		return "missing prev events", nil
	}
	if err := eventgraph.AllowedByState(ev, before, b.lookup); err != nil {
		var ae *eventgraph.AuthError
		if !errors.As(err, &ae) {
			return "", fmt.Errorf("room %s: auth of %s against its state: %w", b.r.roomID, id, err)
		}
		reason := "rejected by the state before it: " + ae.Error()
		b.store(id, &storage.RoomEvent{PDU: ev.CanonicalPDU(), Rejected: reason}, ev)
		return reason, nil
	}
	replaces := ""
	group := parent
	switch {
	case ev.IsState() && exact:
		// The common case: one more state event on a known state.
		replaces = before[ev.StateTuple()]
		k := ev.StateTuple()
		if group, err = b.newGroupDelta(parent, []storage.RoomStateEntry{{Type: k.Type, StateKey: k.StateKey, EventID: id}}); err != nil {
			return "", err
		}
	case ev.IsState() || !exact:
		after := make(eventgraph.StateMap, len(before)+1)
		for k, v := range before {
			after[k] = v
		}
		if ev.IsState() {
			replaces = before[ev.StateTuple()]
			after[ev.StateTuple()] = id
		}
		if group, err = b.newGroupFrom(parent, after); err != nil {
			return "", err
		}
	}
	stored := storage.RoomEvent{PDU: ev.CanonicalPDU(), StateGroup: group, ReplacesState: replaces}
	if opts.backfill {
		// History older than the timeline: kept in the graph and, while the
		// room has positions left below its first event, in the timeline.
		b.store(id, &stored, ev)
		b.backfilled = append(b.backfilled, id)
		return "", b.applyPendingRedaction(id, b.stored[id])
	}
	if !opts.noSoftFail {
		// The batch answers auth lookups from the current state.
		if err := eventgraph.Allowed(ev, b); err != nil {
			var ae *eventgraph.AuthError
			if !errors.As(err, &ae) {
				return "", fmt.Errorf("room %s: soft-fail check of %s: %w", b.r.roomID, id, err)
			}
			b.r.env.Log.Info("room: soft-failed event", slog.String("event_id", id), slog.String("reason", ae.Error()))
			stored.SoftFailed = true
			b.store(id, &stored, ev)
			return "", b.applyPendingRedaction(id, b.stored[id])
		}
	}
	if err := b.appendRemote(ev, stored); err != nil {
		return "", err
	}
	return "", b.applyPendingRedaction(id, &b.events[len(b.events)-1].rec)
}

// appendRemote adds an accepted event to the timeline, makes it a forward
// extremity and moves the current state to the resolution of the
// extremities' states.
func (b *batch) appendRemote(ev *eventgraph.Event, rec storage.RoomEvent) error {
	id := ev.EventID()
	delete(b.stored, id) // an outlier now placed
	b.pos++
	rec.Pos = b.pos
	rec.Outlier = false
	pe := &pendingEvent{ev: ev, rec: rec}
	b.added[id] = ev
	b.events = append(b.events, pe)
	b.depth = max(b.depth, ev.Depth())

	prevs := map[string]bool{}
	for _, p := range ev.PrevEventIDs() {
		prevs[p] = true
	}
	linear := len(b.extrem) == 1 && prevs[b.extrem[0]] && len(prevs) == 1
	var ext []string
	for _, x := range b.extrem {
		if !prevs[x] {
			ext = append(ext, x)
		}
	}
	ext = append(ext, id)
	if len(ext) > maxExtremities {
		sort.Slice(ext, func(i, j int) bool {
			di, dj := b.depthOf(ext[i]), b.depthOf(ext[j])
			if di != dj {
				return di > dj
			}
			return ext[i] < ext[j]
		})
		ext = ext[:maxExtremities]
	}
	b.extrem = ext

	var next eventgraph.StateMap
	if linear {
		// next is not needed: the change is the event itself.
	} else if len(ext) == 1 {
		st, _, _, err := b.stateAfter(id)
		if err != nil {
			return err
		}
		next = st
	} else {
		var states []eventgraph.StateMap
		for _, x := range ext {
			st, _, ok, err := b.stateAfter(x)
			if err != nil {
				return err
			}
			if ok {
				states = append(states, st)
			}
		}
		res, err := eventgraph.ResolveState(b.r.rv, states, b.lookup, eventgraph.WithRejected(b.rejected))
		if err != nil {
			return fmt.Errorf("room %s: resolve forward extremities: %w", b.r.roomID, err)
		}
		next = res
	}
	var changes []storage.RoomStateEntry
	newGroup := rec.StateGroup
	if linear {
		if ev.IsState() {
			k := ev.StateTuple()
			changes = []storage.RoomStateEntry{{Type: k.Type, StateKey: k.StateKey, EventID: id}}
		}
	} else {
		changes = stateDiff(b.current(), next)
		if len(changes) > 0 {
			// Before the overlay moves: the new group is a delta on the
			// current one.
			g, err := b.newGroupFrom(b.group, next)
			if err != nil {
				return err
			}
			newGroup = g
		} else {
			newGroup = b.group
		}
	}
	for _, c := range changes {
		k := eventgraph.StateKey{Type: c.Type, StateKey: c.StateKey}
		prev, _ := b.stateID(k)
		pe.deltas = append(pe.deltas, storage.RoomStateDelta{Type: c.Type, StateKey: c.StateKey, Prev: prev, New: c.EventID})
		b.setState(k, c.EventID, b.pos)
		if c.EventID != "" {
			if _, err := b.lookup(c.EventID); err != nil {
				return err
			}
		}
	}
	b.group, b.groupChain = newGroup, b.groupChainOf(newGroup)
	return b.applyRemoteRedaction(ev)
}

// applyRemoteRedaction redacts the stored target of an accepted redaction
// from another server when the redaction may take effect: its sender is of
// the target's sender's server, or has the redact power (room versions 3+
// leave this check to the receiving server). A redaction whose target is
// not here yet is kept; the target stays as it is (named in the notes).
func (b *batch) applyRemoteRedaction(ev *eventgraph.Event) error {
	target := ev.Redacts()
	if ev.Type() != eventgraph.TypeRedaction || target == "" {
		return nil
	}
	rec, err := b.record(target)
	if err != nil {
		return err
	}
	if rec == nil {
		// The target comes later (a gap, /backfill): it is redacted when
		// it is stored.
		if len(target) <= maxIDBytes {
			b.pendingRedactions[target] = ev.EventID()
		}
		return nil
	}
	return b.redactIfAllowed(target, rec, ev, false)
}

// redactIfAllowed redacts the stored target of redaction ev when ev may take
// effect: its sender is of the target's sender's server or has the redact
// power. inBatch says rec is the batch's own record of an event it is
// adding, redacted where it is.
func (b *batch) redactIfAllowed(target string, rec *storage.RoomEvent, ev *eventgraph.Event, inBatch bool) error {
	if rec.Rejected != "" {
		return nil
	}
	tev, err := b.lookup(target)
	if err != nil || tev == nil {
		return err
	}
	if tev.RoomID() != b.r.roomID {
		return nil
	}
	if serverOf(tev.Sender()) != serverOf(ev.Sender()) {
		pl, err := eventgraph.NewPowerLevels(b.r.rv, b.r.create, b.stateEventOf(eventgraph.TypePowerLevels))
		if err != nil {
			return nil
		}
		if !pl.UserLevel(ev.Sender()).AtLeast(pl.Redact()) {
			return nil
		}
	}
	if inBatch {
		red, err := eventgraph.Redact(rec.PDU, b.r.rv)
		if err != nil {
			return fmt.Errorf("room %s: redact %s: %w", b.r.roomID, target, err)
		}
		rec.PDU, rec.RedactedBy = red, ev.EventID()
		// What the batch hands on (state, notices) is the redacted event.
		rev, err := eventgraph.NewEventFromTrustedJSON(red, b.r.rv, target)
		if err != nil {
			return fmt.Errorf("room %s: parse redacted %s: %w", b.r.roomID, target, err)
		}
		if _, ok := b.added[target]; ok {
			b.added[target] = rev
		}
		if _, ok := b.loaded[target]; ok {
			b.loaded[target] = rev
		}
		for _, pe := range b.events {
			if pe.ev.EventID() == target {
				pe.ev = rev
			}
		}
		return nil
	}
	return b.redact(target, rec, ev.EventID())
}

// applyPendingRedaction redacts a newly stored event that a redaction
// received earlier was waiting for.
func (b *batch) applyPendingRedaction(id string, rec *storage.RoomEvent) error {
	if b.rt == nil {
		return nil
	}
	rid, err := b.rt.PendingRedaction(id)
	if err != nil || rid == "" {
		return err
	}
	red, err := b.lookup(rid)
	if err != nil || red == nil {
		return err
	}
	b.donePending = append(b.donePending, id)
	return b.redactIfAllowed(id, rec, red, true)
}

// stateEventOf is the batch's current state event of (typ, "").
func (b *batch) stateEventOf(typ string) *eventgraph.Event {
	id, ok := b.stateID(eventgraph.StateKey{Type: typ})
	if !ok {
		return nil
	}
	ev, _ := b.lookup(id)
	return ev
}

func (b *batch) depthOf(id string) int64 {
	if ev, _ := b.lookup(id); ev != nil {
		return ev.Depth()
	}
	return 0
}
