package actors

import (
	"encoding/json"
	"fmt"
	"sort"

	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/storage"
)

// Relations (m.relates_to) and threads. The room indexes each relation when
// its event is committed (storage/rooms_relations.go) and drops it when the
// event is redacted; reads use the index for /relations, /threads and the
// bundled aggregations in unsigned["m.relations"] of every event it serves.

const (
	relThread    = "m.thread"
	relReplace   = "m.replace"
	relReference = "m.reference"

	// maxRelationsLimit bounds one page of /relations and /threads.
	maxRelationsLimit = 100
	// maxRecursionDepth is how deep /relations?recurse=true follows
	// relations of relations.
	maxRecursionDepth = 3
	// maxRecursiveRelations bounds the events one recursive walk gathers.
	maxRecursiveRelations = 2000
	// maxBundledReferences bounds the m.reference chunk of one event.
	maxBundledReferences = 50
	// maxEditCandidates bounds the replacements examined for m.replace.
	maxEditCandidates = 100
	// maxThreadLatestScan bounds the walk back to a visible latest event.
	maxThreadLatestScan = 50
)

// relationOf reads content's m.relates_to: the relation type and the
// parent event ("" when the event relates to nothing).
func relationOf(content []byte) (relType, parent string) {
	var c struct {
		RelatesTo *struct {
			RelType string `json:"rel_type"`
			EventID string `json:"event_id"`
		} `json:"m.relates_to"`
	}
	if json.Unmarshal(content, &c) != nil || c.RelatesTo == nil || c.RelatesTo.RelType == "" {
		return "", ""
	}
	if !validRelationTarget(c.RelatesTo.EventID) || len(c.RelatesTo.RelType) > maxIDBytes {
		return "", ""
	}
	return c.RelatesTo.RelType, c.RelatesTo.EventID
}

func validRelationTarget(id string) bool {
	return len(id) > 1 && len(id) <= maxIDBytes && id[0] == '$'
}

// indexRelations writes the relations of the batch's events and removes
// those of the events it redacts, inside the batch's transaction. It runs
// before the redacted copies are stored, so the originals are still there.
func (b *batch) indexRelations(rt storage.RoomTx) error {
	for _, pe := range b.events {
		ev := pe.ev
		rel, parent := relationOf(ev.Content())
		if parent == "" || parent == ev.EventID() {
			continue
		}
		err := rt.PutRelation(parent, storage.RoomRelation{Pos: pe.rec.Pos, EventID: ev.EventID(), RelType: rel,
			Type: ev.Type(), Sender: ev.Sender(), TS: ev.OriginServerTS()})
		if err != nil {
			return err
		}
		if rel != relThread {
			continue
		}
		t, err := rt.Thread(parent)
		if err != nil {
			return err
		}
		if t == nil {
			t = &storage.RoomThread{}
		}
		t.LatestPos, t.LatestID = pe.rec.Pos, ev.EventID()
		t.Count++
		if err := rt.PutThread(parent, t); err != nil {
			return err
		}
		if err := rt.PutThreadUser(parent, ev.Sender()); err != nil {
			return err
		}
	}
	for id := range b.redacted {
		orig, err := rt.Event(id)
		if err != nil || orig == nil || orig.RedactedBy != "" {
			if err != nil {
				return err
			}
			continue
		}
		ev, err := eventgraph.NewEventFromTrustedJSON(orig.PDU, b.r.rv, id)
		if err != nil {
			return fmt.Errorf("room %s: parse redacted %s: %w", b.r.roomID, id, err)
		}
		rel, parent := relationOf(ev.Content())
		if parent == "" {
			continue
		}
		if err := rt.DeleteRelation(parent, orig.Pos); err != nil {
			return err
		}
		if rel == relThread {
			if err := unthread(rt, parent, id); err != nil {
				return err
			}
		}
	}
	return nil
}

// unthread takes a redacted reply out of its thread's summary.
func unthread(rt storage.RoomTx, root, reply string) error {
	t, err := rt.Thread(root)
	if err != nil || t == nil {
		return err
	}
	t.Count--
	if t.LatestID == reply {
		t.LatestPos, t.LatestID = 0, ""
		err := rt.ScanRelations(root, 1, ^uint64(0), true, func(rel storage.RoomRelation) (bool, error) {
			if rel.RelType == relThread {
				t.LatestPos, t.LatestID = rel.Pos, rel.EventID
				return false, nil
			}
			return true, nil
		})
		if err != nil {
			return err
		}
	}
	if t.Count <= 0 || t.LatestID == "" {
		return rt.PutThread(root, nil)
	}
	return rt.PutThread(root, t)
}

// visibleTo applies history visibility to one loaded event for user.
func (rd *roomReader) visibleTo(l *loadedEvent, user string) (bool, error) {
	if l == nil || l.rec.Pos == 0 {
		return false, nil
	}
	after, err := rd.visAt(l.rec.Pos, user)
	if err != nil {
		return false, err
	}
	before, err := rd.before(l, user, after)
	if err != nil {
		return false, err
	}
	return rd.canSee(l, user, before, after)
}

// aggregations computes the bundled aggregations of l for the client of o:
// m.thread (latest visible reply, count, whether the user took part),
// m.reference (the referencing event IDs) and m.replace (the most recent
// valid replacement, in full). Redacted events get none.
func (rd *roomReader) aggregations(l *loadedEvent, o formatOpts) (map[string]any, error) {
	if l.rec.RedactedBy != "" || o.user == "" {
		return nil, nil
	}
	id := l.ev.EventID()
	has, err := rd.rt.HasRelations(id)
	if err != nil || !has {
		return nil, err
	}
	out := map[string]any{}
	if !o.noThread {
		th, err := rd.threadBundle(l, o.user)
		if err != nil {
			return nil, err
		}
		if th != nil {
			out[relThread] = th
		}
	}
	var refs []map[string]string
	var edits []storage.RoomRelation
	err = rd.rt.ScanRelations(id, 1, ^uint64(0), true, func(rel storage.RoomRelation) (bool, error) {
		switch rel.RelType {
		case relReference:
			if len(refs) < maxBundledReferences {
				c, err := rd.event(rel.EventID)
				if err != nil {
					return false, err
				}
				ok, err := rd.visibleTo(c, o.user)
				if err != nil {
					return false, err
				}
				if ok {
					refs = append(refs, map[string]string{"event_id": rel.EventID})
				}
			}
		case relReplace:
			if len(edits) < maxEditCandidates && rel.Sender == l.ev.Sender() && rel.Type == l.ev.Type() {
				edits = append(edits, rel)
			}
		}
		return len(refs) < maxBundledReferences || len(edits) < maxEditCandidates, nil
	})
	if err != nil {
		return nil, err
	}
	if len(refs) > 0 {
		// Oldest first, as they were sent.
		for i, j := 0, len(refs)-1; i < j; i, j = i+1, j-1 {
			refs[i], refs[j] = refs[j], refs[i]
		}
		out[relReference] = map[string]any{"chunk": refs}
	}
	if len(edits) > 0 && !l.ev.IsState() {
		if own, _ := relationOf(l.ev.Content()); own != relReplace {
			edit, err := rd.latestEdit(edits, o)
			if err != nil {
				return nil, err
			}
			if edit != nil {
				out[relReplace] = edit
			}
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// latestEdit picks the most recent valid replacement (by origin_server_ts,
// then event ID) among the candidates and renders it.
func (rd *roomReader) latestEdit(cands []storage.RoomRelation, o formatOpts) (json.RawMessage, error) {
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].TS != cands[j].TS {
			return cands[i].TS > cands[j].TS
		}
		return cands[i].EventID > cands[j].EventID
	})
	for _, c := range cands {
		l, err := rd.event(c.EventID)
		if err != nil {
			return nil, err
		}
		if l == nil || l.rec.RedactedBy != "" || l.ev.IsState() {
			continue
		}
		var body struct {
			NewContent map[string]json.RawMessage `json:"m.new_content"`
		}
		if json.Unmarshal(l.ev.Content(), &body) != nil || body.NewContent == nil {
			continue
		}
		ok, err := rd.visibleTo(l, o.user)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		return rd.formatNested(l, formatOpts{user: o.user, device: o.device, noAgg: true}, true)
	}
	return nil, nil
}

// threadBundle is the m.thread aggregation of a thread root, or nil.
func (rd *roomReader) threadBundle(root *loadedEvent, user string) (map[string]any, error) {
	id := root.ev.EventID()
	t, err := rd.rt.Thread(id)
	if err != nil || t == nil || t.Count <= 0 {
		return nil, err
	}
	var latest *loadedEvent
	scanned := 0
	err = rd.rt.ScanRelations(id, 1, t.LatestPos, true, func(rel storage.RoomRelation) (bool, error) {
		if rel.RelType != relThread {
			return true, nil
		}
		scanned++
		l, err := rd.event(rel.EventID)
		if err != nil {
			return false, err
		}
		ok, err := rd.visibleTo(l, user)
		if err != nil {
			return false, err
		}
		if ok {
			latest = l
			return false, nil
		}
		return scanned < maxThreadLatestScan, nil
	})
	if err != nil || latest == nil {
		return nil, err
	}
	raw, err := rd.formatNested(latest, formatOpts{user: user, noThread: true}, true)
	if err != nil {
		return nil, err
	}
	participated := root.ev.Sender() == user
	if !participated {
		if participated, err = rd.rt.ThreadUser(id, user); err != nil {
			return nil, err
		}
	}
	return map[string]any{"latest_event": raw, "count": t.Count, "current_user_participated": participated}, nil
}

// relationsPage answers GET /relations.
func (r *roomActor) relationsPage(m *pb.RoomRelations) (*pb.RoomQueryReply, error) {
	if !r.exists {
		return nil, ErrNotFound("event not found")
	}
	if m.Dir != "" && m.Dir != "b" && m.Dir != "f" {
		return nil, ErrInvalidParam("dir must be b or f")
	}
	backwards := m.Dir != "f"
	limit := uint64(defaultPageLimit)
	if m.Limit > 0 {
		limit = uint64(min(int(m.Limit), maxRelationsLimit))
	}
	lo, hi := uint64(1), r.meta.Pos
	if m.From != "" {
		p, err := r.parsePosToken(m.From)
		if err != nil {
			return nil, err
		}
		if backwards {
			hi = min(hi, p)
		} else {
			lo = p + 1
		}
	}
	if m.To != "" {
		p, err := r.parsePosToken(m.To)
		if err != nil {
			return nil, err
		}
		if backwards {
			lo = max(lo, p+1)
		} else {
			hi = min(hi, p)
		}
	}
	var out map[string]any
	err := r.env.Partition.View(func(tx *bbolt.Tx) error {
		rd := r.reader(storage.Room(tx, r.env.Identity))
		if _, _, err := r.visibleEvent(rd, m.UserId, m.EventId); err != nil {
			return err
		}
		var cands []storage.RoomRelation
		depth := 1
		if m.Recurse {
			var err error
			if cands, depth, err = r.relationTree(rd, m.EventId, lo, hi); err != nil {
				return err
			}
			if backwards {
				sort.Slice(cands, func(i, j int) bool { return cands[i].Pos > cands[j].Pos })
			} else {
				sort.Slice(cands, func(i, j int) bool { return cands[i].Pos < cands[j].Pos })
			}
		}
		budget := max(limit*scanFactor, minScan)
		var chunk []json.RawMessage
		var last uint64
		more := false
		visit := func(rel storage.RoomRelation) (bool, error) {
			if uint64(len(chunk)) == limit || budget == 0 {
				more = true
				return false, nil
			}
			budget--
			last = rel.Pos
			if (m.RelType != "" && rel.RelType != m.RelType) || (m.EventType != "" && rel.Type != m.EventType) {
				return true, nil
			}
			l, err := rd.event(rel.EventID)
			if err != nil {
				return false, err
			}
			ok, err := rd.visibleTo(l, m.UserId)
			if err != nil || !ok {
				return err == nil, err
			}
			raw, err := rd.format(l, formatOpts{user: m.UserId})
			if err != nil {
				return false, err
			}
			chunk = append(chunk, raw)
			return true, nil
		}
		if m.Recurse {
			for _, c := range cands {
				if ok, err := visit(c); err != nil {
					return err
				} else if !ok {
					break
				}
			}
		} else if err := rd.rt.ScanRelations(m.EventId, lo, hi, backwards, visit); err != nil {
			return err
		}
		out = map[string]any{"chunk": orEmpty(chunk)}
		if more {
			if backwards {
				out["next_batch"] = posToken(last - 1)
			} else {
				out["next_batch"] = posToken(last)
			}
		}
		if m.From != "" {
			out["prev_batch"] = m.From
		}
		if m.Recurse {
			out["recursion_depth"] = depth
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return r.queryReply("relations", out)
}

// relationTree gathers the events relating to root directly or through up
// to maxRecursionDepth levels, within positions [lo, hi], and the depth it
// reached.
func (r *roomActor) relationTree(rd *roomReader, root string, lo, hi uint64) ([]storage.RoomRelation, int, error) {
	var out []storage.RoomRelation
	seen := map[string]bool{root: true}
	level := []string{root}
	depth := 0
	for d := 1; d <= maxRecursionDepth && len(level) > 0; d++ {
		var next []string
		for _, parent := range level {
			err := rd.rt.ScanRelations(parent, 1, r.meta.Pos, false, func(rel storage.RoomRelation) (bool, error) {
				if seen[rel.EventID] {
					return true, nil
				}
				seen[rel.EventID] = true
				next = append(next, rel.EventID)
				if rel.Pos >= lo && rel.Pos <= hi {
					out = append(out, rel)
				}
				return len(seen) < maxRecursiveRelations, nil
			})
			if err != nil {
				return nil, 0, err
			}
		}
		if len(next) > 0 {
			depth = d
		}
		level = next
	}
	return out, max(depth, 1), nil
}

// threadsPage answers GET /threads.
func (r *roomActor) threadsPage(m *pb.RoomThreads) (*pb.RoomQueryReply, error) {
	if !r.exists {
		return nil, ErrForbidden("you are not in this room")
	}
	include := m.Include
	if include == "" {
		include = "all"
	}
	if include != "all" && include != "participated" {
		return nil, ErrInvalidParam("include must be all or participated")
	}
	cap, err := r.readCap(m.UserId)
	if err != nil {
		return nil, err
	}
	hi := cap
	if m.From != "" {
		p, err := r.parsePosToken(m.From)
		if err != nil {
			return nil, err
		}
		hi = min(hi, p)
	}
	limit := uint64(defaultPageLimit)
	if m.Limit > 0 {
		limit = uint64(min(int(m.Limit), maxRelationsLimit))
	}
	var out map[string]any
	err = r.env.Partition.View(func(tx *bbolt.Tx) error {
		rd := r.reader(storage.Room(tx, r.env.Identity))
		budget := max(limit*scanFactor, minScan)
		var chunk []json.RawMessage
		var last uint64
		more := false
		err := rd.rt.ScanThreads(hi, func(latest uint64, root string) (bool, error) {
			if uint64(len(chunk)) == limit || budget == 0 {
				more = true
				return false, nil
			}
			budget--
			last = latest
			if include == "participated" {
				l, err := rd.event(root)
				if err != nil {
					return false, err
				}
				took, err := rd.rt.ThreadUser(root, m.UserId)
				if err != nil {
					return false, err
				}
				if !took && (l == nil || l.ev.Sender() != m.UserId) {
					return true, nil
				}
			}
			l, err := rd.event(root)
			if err != nil {
				return false, err
			}
			ok, err := rd.visibleTo(l, m.UserId)
			if err != nil || !ok {
				return err == nil, err
			}
			raw, err := rd.format(l, formatOpts{user: m.UserId})
			if err != nil {
				return false, err
			}
			chunk = append(chunk, raw)
			return true, nil
		})
		if err != nil {
			return err
		}
		out = map[string]any{"chunk": orEmpty(chunk)}
		if more && last > 0 {
			out["next_batch"] = posToken(last - 1)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return r.queryReply("threads", out)
}

// queryReply encodes a read's answer.
func (r *roomActor) queryReply(kind string, v any) (*pb.RoomQueryReply, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("room %s: encode %s: %w", r.roomID, kind, err)
	}
	return &pb.RoomQueryReply{Json: raw}, nil
}
