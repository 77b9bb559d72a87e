package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
)

// The federation reads of a room's events (server-server API, "Retrieving
// events", "Backfilling and retrieving missing events", "Retrieving event
// authorisation information"): each turns into a pb.RoomFedRead for the
// room actor, which checks that the asking server may see what it asks
// for (membership, history visibility, server ACLs). And the outbound half
// of backfill: a local client paging /messages back past the oldest event
// this server has makes it ask a server in the room for older history.

// Caps on what one read may ask for.
const (
	// maxBackfillLimit caps /backfill's limit (as Synapse does).
	maxBackfillLimit = 100
	// maxMissingEventsLimit caps /get_missing_events' limit (the spec's
	// default is 10; Synapse caps at 20).
	maxMissingEventsLimit = 20
	// maxReadEventIDs bounds the event ID lists of /backfill's v and of
	// /get_missing_events' latest_events (what the room actor takes);
	// earliest_events may be longer (a room's forward extremities) and is
	// cut at maxReadEarliest.
	maxReadEventIDs = 20
	maxReadEarliest = 500
)

func (s *Server) registerFederationEvents() {
	fed := "/_matrix/federation/v1"
	s.handle("GET "+fed+"/event/{eventId}", s.fedAuthed(s.handleFedEvent))
	s.handle("GET "+fed+"/state/{roomId}", s.fedAuthed(s.handleFedState))
	s.handle("GET "+fed+"/state_ids/{roomId}", s.fedAuthed(s.handleFedStateIDs))
	s.handle("GET "+fed+"/event_auth/{roomId}/{eventId}", s.fedAuthed(s.handleFedEventAuth))
	s.handle("POST "+fed+"/get_missing_events/{roomId}", s.fedAuthed(s.handleFedMissingEvents))
	s.handle("GET "+fed+"/backfill/{roomId}", s.fedAuthed(s.handleFedBackfill))
}

func (s *Server) fedRead(ctx context.Context, m *pb.RoomFedRead) (*pb.RoomFedReadReply, error) {
	return roomRequest[*pb.RoomFedReadReply](ctx, s, m)
}

// rawPDUs lists stored PDUs as JSON values (never null).
func rawPDUs(pdus [][]byte) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(pdus))
	for _, p := range pdus {
		out = append(out, p)
	}
	return out
}

func orNoStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// pduTransaction is the single_pdu_transaction / unlimited_pdu_transaction
// answer of /event and /backfill.
func (s *Server) pduTransaction(pdus [][]byte) map[string]any {
	return map[string]any{"origin": s.server.ServerName, "origin_server_ts": s.cfg.Now().UnixMilli(), "pdus": rawPDUs(pdus)}
}

// queryEventID reads the required event_id query parameter.
func queryEventID(r *http.Request) (string, error) {
	q := r.URL.Query()
	if !q.Has("event_id") {
		return "", errMissingParam("event_id is required")
	}
	id := q.Get("event_id")
	if !validEventID(id) {
		return "", actors.ErrInvalidParam("%q is not a valid event ID", id)
	}
	return id, nil
}

// lookupEventRoom asks the event index which room holds eventID.
func (s *Server) lookupEventRoom(ctx context.Context, eventID string) (string, error) {
	rep, err := roomRequest[*pb.EventIndexReply](ctx, s, &pb.EventIndexLookup{Shard: pb.EventIndexShard(eventID), EventId: eventID})
	if err != nil {
		return "", err
	}
	return rep.RoomId, nil
}

func (s *Server) handleFedEvent(w http.ResponseWriter, r *http.Request, origin string, _ []byte) {
	eventID, err := pathEventID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	roomID, err := s.lookupEventRoom(r.Context(), eventID)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if roomID == "" {
		writeError(w, r, actors.ErrNotFound("event %s not found", eventID))
		return
	}
	rep, err := s.fedRead(r.Context(), &pb.RoomFedRead{RoomId: roomID, Origin: origin, Kind: "event", EventIds: []string{eventID}})
	if err != nil {
		writeError(w, r, err)
		return
	}
	if len(rep.Pdus) != 1 {
		writeError(w, r, actors.ErrNotFound("event %s not found", eventID))
		return
	}
	writeJSON(w, http.StatusOK, s.pduTransaction(rep.Pdus))
}

func (s *Server) handleFedState(w http.ResponseWriter, r *http.Request, origin string, _ []byte) {
	s.handleFedStateRead(w, r, origin, "state")
}

func (s *Server) handleFedStateIDs(w http.ResponseWriter, r *http.Request, origin string, _ []byte) {
	s.handleFedStateRead(w, r, origin, "state_ids")
}

// handleFedStateRead answers /state and /state_ids: the state before
// event_id and its auth chain.
func (s *Server) handleFedStateRead(w http.ResponseWriter, r *http.Request, origin, kind string) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	eventID, err := queryEventID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	rep, err := s.fedRead(r.Context(), &pb.RoomFedRead{RoomId: roomID, Origin: origin, Kind: kind, EventIds: []string{eventID}})
	if err != nil {
		writeError(w, r, err)
		return
	}
	if kind == "state_ids" {
		writeJSON(w, http.StatusOK, map[string]any{"pdu_ids": orNoStrings(rep.PduIds), "auth_chain_ids": orNoStrings(rep.AuthChainIds)})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"pdus": rawPDUs(rep.Pdus), "auth_chain": rawPDUs(rep.AuthChain)})
}

func (s *Server) handleFedEventAuth(w http.ResponseWriter, r *http.Request, origin string, _ []byte) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	eventID, err := pathEventID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	rep, err := s.fedRead(r.Context(), &pb.RoomFedRead{RoomId: roomID, Origin: origin, Kind: "event_auth", EventIds: []string{eventID}})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"auth_chain": rawPDUs(rep.AuthChain)})
}

func (s *Server) handleFedMissingEvents(w http.ResponseWriter, r *http.Request, origin string, body []byte) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	var req struct {
		Limit          *int64    `json:"limit"`
		MinDepth       *int64    `json:"min_depth"`
		EarliestEvents *[]string `json:"earliest_events"`
		LatestEvents   *[]string `json:"latest_events"`
	}
	if err := unmarshalBody(body, &req); err != nil {
		writeError(w, r, err)
		return
	}
	if req.EarliestEvents == nil || req.LatestEvents == nil {
		writeError(w, r, errMissingParam("earliest_events and latest_events are required"))
		return
	}
	limit := int64(10)
	if req.Limit != nil {
		if *req.Limit < 0 {
			writeError(w, r, actors.ErrInvalidParam("limit must not be negative"))
			return
		}
		limit = min(*req.Limit, maxMissingEventsLimit)
	}
	var minDepth int64
	if req.MinDepth != nil {
		minDepth = max(*req.MinDepth, 0)
	}
	latest := *req.LatestEvents
	if len(latest) == 0 || len(latest) > maxReadEventIDs {
		writeError(w, r, actors.ErrInvalidParam("latest_events must list 1 to %d event IDs", maxReadEventIDs))
		return
	}
	earliest := *req.EarliestEvents
	if len(earliest) > maxReadEarliest {
		// Fewer events to skip only means a longer answer, cut at limit.
		earliest = earliest[:maxReadEarliest]
	}
	for _, list := range [][]string{latest, earliest} {
		for _, id := range list {
			if !validEventID(id) {
				writeError(w, r, actors.ErrInvalidParam("%q is not a valid event ID", id))
				return
			}
		}
	}
	if limit == 0 {
		writeJSON(w, http.StatusOK, map[string]any{"events": []json.RawMessage{}})
		return
	}
	rep, err := s.fedRead(r.Context(), &pb.RoomFedRead{RoomId: roomID, Origin: origin, Kind: "missing",
		EventIds: latest, Earliest: earliest, Limit: int32(limit), MinDepth: minDepth})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"events": rawPDUs(rep.Pdus)})
}

func (s *Server) handleFedBackfill(w http.ResponseWriter, r *http.Request, origin string, _ []byte) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	q := r.URL.Query()
	from := q["v"]
	if len(from) == 0 {
		writeError(w, r, errMissingParam("v is required"))
		return
	}
	if len(from) > maxReadEventIDs {
		writeError(w, r, actors.ErrInvalidParam("at most %d event IDs in v", maxReadEventIDs))
		return
	}
	for _, id := range from {
		if !validEventID(id) {
			writeError(w, r, actors.ErrInvalidParam("%q is not a valid event ID", id))
			return
		}
	}
	if !q.Has("limit") {
		writeError(w, r, errMissingParam("limit is required"))
		return
	}
	limit, err := strconv.ParseInt(q.Get("limit"), 10, 64)
	if err != nil || limit < 0 {
		writeError(w, r, actors.ErrInvalidParam("limit must be a non-negative integer"))
		return
	}
	limit = min(limit, maxBackfillLimit)
	if limit == 0 {
		writeJSON(w, http.StatusOK, s.pduTransaction(nil))
		return
	}
	rep, err := s.fedRead(r.Context(), &pb.RoomFedRead{RoomId: roomID, Origin: origin, Kind: "backfill",
		EventIds: from, Limit: int32(limit)})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, s.pduTransaction(rep.Pdus))
}

// ---- backfill for local clients ----

// Bounds on backfilling for a client's /messages.
const (
	// backfillTimeout bounds the whole backfill a /messages request waits
	// for (every server tried, the room's ingest included).
	backfillTimeout = 20 * time.Second
	// backfillServers is how many servers of the room are tried.
	backfillServers = 3
	// backfillExtra is asked beyond the client's limit: the page also
	// loses events the client may not see or its filter drops.
	backfillExtra = 10
	// maxBackfillFrom bounds the backward extremities sent as v.
	maxBackfillFrom = 20
	// backfillResponseBytes bounds a /backfill answer.
	backfillResponseBytes = 16 << 20
)

// backfills coalesces concurrent backfills of one room: clients paging the
// same room back at once wait for one fetch instead of each starting one.
var backfills = struct {
	sync.Mutex
	m map[backfillKey]*backfillCall
}{m: map[backfillKey]*backfillCall{}}

// backfillIdle remembers, for a while, the rooms whose last backfill
// brought nothing new: a client paging at the start of such a room does not
// make this server ask the room's servers again at every request.
var backfillIdle = struct {
	sync.Mutex
	m map[backfillKey]time.Time
}{m: map[backfillKey]time.Time{}}

const (
	backfillCooldown = 30 * time.Second
	maxBackfillIdle  = 10000
)

func backfillResting(key backfillKey, now time.Time) bool {
	backfillIdle.Lock()
	defer backfillIdle.Unlock()
	until, ok := backfillIdle.m[key]
	if ok && now.After(until) {
		delete(backfillIdle.m, key)
		return false
	}
	return ok
}

func backfillRest(key backfillKey, now time.Time) {
	backfillIdle.Lock()
	defer backfillIdle.Unlock()
	if len(backfillIdle.m) >= maxBackfillIdle {
		for k, until := range backfillIdle.m {
			if now.After(until) {
				delete(backfillIdle.m, k)
			}
		}
		if len(backfillIdle.m) >= maxBackfillIdle {
			clear(backfillIdle.m)
		}
	}
	backfillIdle.m[key] = now.Add(backfillCooldown)
}

type backfillKey struct {
	s    *Server
	room string
}

type backfillCall struct {
	done chan struct{}
	ok   bool
}

// messagesBackfilled answers /messages (RoomQuery kind "messages"), and
// when a backwards page reaches the oldest event the room has (no "end")
// while the room knows of older history elsewhere (backward extremities),
// backfills from a server in the room and answers again.
func (s *Server) messagesBackfilled(ctx context.Context, q *pb.RoomQuery) (json.RawMessage, error) {
	raw, err := s.roomQuery(ctx, q)
	if err != nil || q.Dir != "b" {
		return raw, err
	}
	var page struct {
		End *string `json:"end"`
	}
	if json.Unmarshal(raw, &page) != nil || page.End != nil {
		return raw, nil
	}
	limit := int(q.Limit)
	if limit <= 0 {
		limit = 10
	}
	if !s.backfillRoom(ctx, q.RoomId, limit+backfillExtra) {
		return raw, nil
	}
	again, err := s.roomQuery(ctx, q)
	if err != nil {
		return raw, nil // the first answer stands
	}
	return again, nil
}

// backfillRoom fetches older history of roomID from a server in it and
// reports whether the room took anything new. Concurrent calls for one room
// share one fetch; after a fetch that brought nothing, the room rests for
// backfillCooldown.
func (s *Server) backfillRoom(ctx context.Context, roomID string, limit int) bool {
	key := backfillKey{s: s, room: roomID}
	if backfillResting(key, time.Now()) {
		return false
	}
	backfills.Lock()
	call, running := backfills.m[key]
	if !running {
		call = &backfillCall{done: make(chan struct{})}
		backfills.m[key] = call
	}
	backfills.Unlock()
	if running {
		select {
		case <-call.done:
			return call.ok
		case <-ctx.Done():
			return false
		}
	}
	defer func() {
		backfills.Lock()
		delete(backfills.m, key)
		backfills.Unlock()
		close(call.done)
	}()
	// The fetch outlives a client that gave up: others may be waiting.
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), backfillTimeout)
	defer cancel()
	call.ok = s.backfillOnce(bctx, roomID, min(limit, maxBackfillLimit))
	if !call.ok {
		backfillRest(key, time.Now())
	}
	return call.ok
}

func (s *Server) backfillOnce(ctx context.Context, roomID string, limit int) bool {
	info, err := s.roomFedInfo(ctx, roomID, nil)
	if err != nil || !info.Exists || len(info.BackwardExtremities) == 0 {
		return false
	}
	rv, ok := eventgraph.GetRoomVersion(eventgraph.RoomVersionID(info.RoomVersion))
	if !ok {
		return false
	}
	from := info.BackwardExtremities
	if len(from) > maxBackfillFrom {
		from = from[:maxBackfillFrom]
	}
	v := url.Values{"limit": {strconv.Itoa(limit)}}
	for _, id := range from {
		v.Add("v", id)
	}
	uri := "/_matrix/federation/v1/backfill/" + url.PathEscape(roomID) + "?" + v.Encode()
	tried := 0
	for _, server := range info.Servers {
		if server == s.server.ServerName {
			continue
		}
		if tried == backfillServers || ctx.Err() != nil {
			break
		}
		tried++
		var resp struct {
			PDUs []json.RawMessage `json:"pdus"`
		}
		if err := s.fedCall(ctx, server, http.MethodGet, uri, nil, backfillResponseBytes, &resp); err != nil {
			s.log.Info("gateway: backfill", "room", roomID, "server", server, "err", err)
			continue
		}
		if s.ingestBackfill(ctx, server, roomID, rv, resp.PDUs, limit) {
			return true
		}
	}
	return false
}

// ingestBackfill verifies a /backfill answer of server and hands the room
// what verifies, as history (RoomFedIngest backfill). It reports whether
// the room accepted at least one event it did not have.
func (s *Server) ingestBackfill(ctx context.Context, server, roomID string, rv *eventgraph.RoomVersion, pdus []json.RawMessage, limit int) bool {
	raws := make([][]byte, 0, min(len(pdus), limit))
	for _, p := range pdus {
		if len(raws) == limit {
			break // more than asked for
		}
		raws = append(raws, p)
	}
	rf := &roomFed{s: s, origin: server, roomID: roomID, rv: rv, budget: newFetchBudget(), log: s.log.With("room", roomID, "origin", server)}
	var cands []candidate
	seen := map[string]bool{}
	for _, v := range s.verifyPDUs(ctx, rv, raws) {
		if v.err != nil {
			rf.log.Info("gateway: dropping a backfilled event", "event_id", v.id, "err", v.err)
			continue
		}
		if v.ev.RoomID() != roomID || seen[v.id] {
			continue
		}
		seen[v.id] = true
		cands = append(cands, candidate{ev: v.ev, mine: true})
	}
	if len(cands) == 0 {
		return false
	}
	in := &pb.RoomFedIngest{RoomId: roomID, Origin: server, Backfill: true}
	for _, c := range cands {
		in.Pdus = append(in.Pdus, c.ev.JSON())
	}
	// The oldest events of the answer follow events the room does not
	// have: the state before them comes from the same server.
	outliers := map[string]*eventgraph.Event{}
	known, err := rf.known(ctx, idsAndPrevs(cands))
	if err != nil {
		rf.log.Warn("gateway: backfill: room info", "err", err)
		return false
	}
	rf.statesFor(ctx, gapRoots(cands, known), outliers, in)
	rep, err := rf.ingest(ctx, in, cands, outliers)
	if err != nil {
		var me *actors.MatrixError
		if !errors.As(err, &me) {
			rf.log.Warn("gateway: backfill ingest", "err", err)
		}
		return false
	}
	// Progress is an event the room did not have in its graph before.
	for _, c := range cands {
		id := c.ev.EventID()
		if r, ok := rep.Results[id]; ok && r == "" && known[id] != knownInGraph && known[id] != knownRejected {
			return true
		}
	}
	return false
}
