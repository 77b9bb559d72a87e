package gateway

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/gateway/fedclient"
)

// The inbound PDU pipeline (server-server API, "Checks performed on receipt
// of a PDU", "Backfilling and retrieving missing events"): the gateway does
// every network step — fetching signing keys, checking signatures and
// content hashes, filling gaps with /get_missing_events, /state_ids,
// /event and /event_auth — and hands the room actor only verified PDUs
// (pb.RoomFedIngest). The room does the graph work: auth, state, soft-fail.

// Bounds on what one transaction (or one backfill) may make this server do.
// A peer controls every count here, so each is capped.
const (
	// maxRawPDUBytes bounds a PDU as received. ParseEvent applies the
	// 65,536-byte limit to the event without `unsigned` (relays may grow
	// it); this stops an unsigned blown up to megabytes before any parsing.
	maxRawPDUBytes = 4 * eventgraph.MaxPDUSize
	// fedFetchConcurrency bounds parallel requests (key fetches, /event).
	fedFetchConcurrency = 8
	// roomConcurrency bounds the rooms of one transaction handled at once.
	roomConcurrency = 4
	// maxFetchedPerTxn and maxFetchedBytesPerTxn bound the events (and
	// their bytes) fetched from peers on behalf of one transaction: the
	// room actor receives them all in one message.
	maxFetchedPerTxn      = 5000
	maxFetchedBytesPerTxn = 24 << 20
	// missingEventsLimit is the limit asked of /get_missing_events, and
	// missingEventsDepthMargin how far below the room's depth it may go.
	missingEventsLimit       = 10
	missingEventsDepthMargin = 20
	// maxStateFetchesPerRoom bounds the /state_ids calls for one room of a
	// transaction (one per PDU whose prev_events stay unknown).
	maxStateFetchesPerRoom = 3
	// stateByIDsThreshold: when more state/auth events than this are
	// missing, one GET /state replaces the GET /event calls.
	stateByIDsThreshold = 50
	// maxStateIDs bounds the IDs of a /state_ids answer (each list).
	maxStateIDs = 100000
	// maxEventAuthFetches bounds the /event_auth calls made after the room
	// reported missing auth events.
	maxEventAuthFetches = 5
	// maxSigKeyIDs bounds the key IDs of one server looked at per event.
	maxSigKeyIDs = 8
	// maxSignerServers bounds the distinct servers whose keys one batch of
	// events may make this server fetch.
	maxSignerServers = 1000
	// maxEarliestEvents bounds earliest_events sent in /get_missing_events.
	maxEarliestEvents = 100
)

// Bounds on the answers of the fetches above.
const (
	singleEventResponseBytes = 2 * maxRawPDUBytes
	stateIDsResponseBytes    = 16 << 20
	stateResponseBytes       = 32 << 20
	missingResponseBytes     = 4 << 20
)

// verifiedPDU is a PDU after verifyPDUs: the event (redacted when its
// content hash did not match) or why it was dropped. id is known whenever
// the PDU parsed.
type verifiedPDU struct {
	id  string
	ev  *eventgraph.Event
	err error
}

// verifyPDU runs the first three checks on a PDU received for a room of
// version rv: it must be a valid event (ParseEvent: format and the 65,536
// byte limit), carry valid signatures of every server that must sign
// (with keys valid at its origin_server_ts, fetched through the server
// actors), and match its content hash — failing that, the redacted event
// is returned, as the spec says, and processing goes on with it.
func (s *Server) verifyPDU(ctx context.Context, rv *eventgraph.RoomVersion, raw []byte) (*eventgraph.Event, error) {
	v := s.verifyPDUs(ctx, rv, [][]byte{raw})[0]
	return v.ev, v.err
}

// verifyPDUs is verifyPDU over a batch: the keys of every signing server
// are fetched once, concurrently (bounded).
func (s *Server) verifyPDUs(ctx context.Context, rv *eventgraph.RoomVersion, raws [][]byte) []verifiedPDU {
	out := make([]verifiedPDU, len(raws))
	var evs []*eventgraph.Event
	for i, raw := range raws {
		if len(raw) > maxRawPDUBytes {
			out[i].err = fmt.Errorf("PDU of %d bytes: %w", len(raw), eventgraph.ErrTooLarge)
			continue
		}
		ev, err := eventgraph.ParseEvent(raw, rv)
		if err != nil {
			out[i].err = fmt.Errorf("invalid PDU: %w", err)
			continue
		}
		out[i].id, out[i].ev = ev.EventID(), ev
		evs = append(evs, ev)
	}
	keys, keyErrs := s.signingKeys(ctx, evs)
	for i := range out {
		ev := out[i].ev
		if ev == nil {
			continue
		}
		out[i].ev = nil
		if err := eventgraph.VerifyEventSignatures(ev, keys); err != nil {
			// Why keys were missing goes to the log; the error (which
			// may reach the sender) only names the server.
			servers, _ := eventgraph.RequiredSignatures(ev)
			for _, srv := range servers {
				if kerr := keyErrs[srv]; kerr != nil {
					s.log.Info("gateway: no signing keys", "server", srv, "event_id", ev.EventID(), "err", kerr)
					err = fmt.Errorf("%w (the keys of %s could not be had)", err, srv)
				}
			}
			out[i].err = err
			continue
		}
		if err := ev.CheckContentHash(); err != nil {
			if !errors.Is(err, eventgraph.ErrContentHashMismatch) && !errors.Is(err, eventgraph.ErrMissingContentHash) {
				out[i].err = err
				continue
			}
			red, rerr := ev.Redact(nil)
			if rerr != nil {
				out[i].err = rerr
				continue
			}
			s.log.Info("gateway: PDU content hash mismatch, using the redacted event", "event_id", ev.EventID())
			ev = red
		}
		out[i].ev = ev
	}
	return out
}

// signingKeys fetches, through the server actors, the keys of the servers
// that must sign evs: the key IDs the events name (at most maxSigKeyIDs
// per server and event), valid until the latest origin_server_ts where the
// room version enforces validity. It returns the lookup and, per server,
// why its keys could not be had.
func (s *Server) signingKeys(ctx context.Context, evs []*eventgraph.Event) (eventgraph.KeyLookup, map[string]error) {
	type need struct {
		ids   map[string]bool
		minTS int64
	}
	needs := map[string]*need{}
	errs := map[string]error{}
	for _, ev := range evs {
		servers, err := eventgraph.RequiredSignatures(ev)
		if err != nil {
			continue // VerifyEventSignatures reports it
		}
		sigs, err := ev.Signatures()
		if err != nil {
			continue
		}
		for _, srv := range servers {
			n := needs[srv]
			if n == nil {
				if len(needs) >= maxSignerServers {
					errs[srv] = errors.New("too many signing servers in one batch")
					continue
				}
				n = &need{ids: map[string]bool{}}
				needs[srv] = n
			}
			count := 0
			for id := range sigs[srv] {
				if count == maxSigKeyIDs {
					break
				}
				if strings.HasPrefix(id, eventgraph.KeyAlgorithmEd25519+":") {
					n.ids[id] = true
					count++
				}
			}
			if ev.Version().EnforceKeyValidity {
				n.minTS = max(n.minTS, ev.OriginServerTS())
			}
		}
	}
	replies := map[string]*pb.ServerKeysReply{}
	var queries []*pb.ServerKeysQuery
	for srv, n := range needs {
		if srv == s.server.ServerName {
			replies[srv] = &pb.ServerKeysReply{Keys: []*pb.ServerKey{{KeyId: s.server.KeyID,
				Key: s.server.PrivateKey.Public().(ed25519.PublicKey), ValidUntilTs: math.MaxInt64}}}
			continue
		}
		if len(n.ids) == 0 {
			errs[srv] = errors.New("no ed25519 signature")
			continue
		}
		if _, _, err := eventgraph.ParseServerName(srv); err != nil {
			errs[srv] = err
			continue
		}
		queries = append(queries, &pb.ServerKeysQuery{ServerName: srv, KeyIds: slices.Sorted(maps.Keys(n.ids)), MinValidUntilTs: n.minTS})
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, fedFetchConcurrency)
	for _, q := range queries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				mu.Lock()
				errs[q.ServerName] = ctx.Err()
				mu.Unlock()
				return
			}
			defer func() { <-sem }()
			rep, err := s.serverKeys(ctx, q)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs[q.ServerName] = err
				return
			}
			replies[q.ServerName] = rep
		}()
	}
	wg.Wait()
	return actors.KeyLookupFrom(replies), errs
}

// fetchBudget is what one transaction may still fetch from peers, shared by
// its rooms.
type fetchBudget struct {
	mu     sync.Mutex
	events int
	bytes  int64
}

func newFetchBudget() *fetchBudget {
	return &fetchBudget{events: maxFetchedPerTxn, bytes: maxFetchedBytesPerTxn}
}

// take reserves n events of size bytes, or reports that the budget is
// spent (reserving nothing).
func (b *fetchBudget) take(n int, size int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n > b.events || size > b.bytes {
		b.events, b.bytes = 0, 0 // spent: stop every further fetch
		return false
	}
	b.events -= n
	b.bytes -= size
	return true
}

func (b *fetchBudget) spent() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.events <= 0 || b.bytes <= 0
}

var errBudget = errors.New("fetch budget of the transaction spent")

// What RoomFedInfoReply.known says of an event.
const (
	knownInGraph  = 1 // in the graph, with state
	knownOutlier  = 2 // stored without state
	knownRejected = 3 // rejected (still in the DAG)
)

// ingestPDUs handles the PDUs of a transaction from origin: grouped by room,
// verified, gaps filled from origin, handed to each room. It returns, for
// every PDU whose event ID could be known, "" when accepted or the reason
// it was not. PDUs that cannot be parsed, and PDUs for rooms this server
// has no state of, are dropped (left out), as the spec says.
func (s *Server) ingestPDUs(ctx context.Context, origin string, pdus []json.RawMessage) map[string]string {
	results := map[string]string{}
	byRoom := map[string][][]byte{}
	var order []string
	for _, raw := range pdus {
		var head struct {
			RoomID string `json:"room_id"`
		}
		if len(raw) > maxRawPDUBytes || json.Unmarshal(raw, &head) != nil || eventgraph.ValidateRoomID(head.RoomID) != nil {
			continue
		}
		if _, ok := byRoom[head.RoomID]; !ok {
			order = append(order, head.RoomID)
		}
		byRoom[head.RoomID] = append(byRoom[head.RoomID], raw)
	}
	budget := newFetchBudget()
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, roomConcurrency)
	for _, room := range order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			res := s.ingestRoom(ctx, origin, room, byRoom[room], budget)
			mu.Lock()
			defer mu.Unlock()
			for id, r := range res {
				results[id] = r
			}
		}()
	}
	wg.Wait()
	return results
}

// roomFed is one room's share of the inbound pipeline: the room's version
// and what this server fetched for it.
type roomFed struct {
	s      *Server
	origin string
	roomID string
	rv     *eventgraph.RoomVersion
	budget *fetchBudget
	log    *slog.Logger
}

func (s *Server) roomFedInfo(ctx context.Context, roomID string, ids []string) (*pb.RoomFedInfoReply, error) {
	return roomRequest[*pb.RoomFedInfoReply](ctx, s, &pb.RoomFedInfo{RoomId: roomID, EventIds: ids})
}

// newRoomFed asks the room for its version; the roomFed is nil when the
// room has no state here (its PDUs are then dropped).
func (s *Server) newRoomFed(ctx context.Context, origin, roomID string, budget *fetchBudget) (*roomFed, *pb.RoomFedInfoReply, error) {
	info, err := s.roomFedInfo(ctx, roomID, nil)
	if err != nil {
		return nil, nil, err
	}
	if !info.Exists {
		return nil, info, nil
	}
	rv, ok := eventgraph.GetRoomVersion(eventgraph.RoomVersionID(info.RoomVersion))
	if !ok {
		return nil, nil, fmt.Errorf("room %s has unsupported version %q", roomID, info.RoomVersion)
	}
	return &roomFed{s: s, origin: origin, roomID: roomID, rv: rv, budget: budget,
		log: s.log.With("room", roomID, "origin", origin)}, info, nil
}

// candidate is a PDU to hand the room: from the transaction (mine) or
// fetched to fill a gap before one.
type candidate struct {
	ev   *eventgraph.Event
	mine bool
}

func (s *Server) ingestRoom(ctx context.Context, origin, roomID string, raws [][]byte, budget *fetchBudget) map[string]string {
	results := map[string]string{}
	rf, info, err := s.newRoomFed(ctx, origin, roomID, budget)
	if err != nil {
		s.log.Warn("gateway: inbound PDUs: room info", "room", roomID, "err", err)
		return results
	}
	if rf == nil {
		s.log.Info("gateway: dropping PDUs for a room this server is not in", "room", roomID, "origin", origin, "count", len(raws))
		return results
	}
	var cands []candidate
	seen := map[string]bool{}
	for _, v := range s.verifyPDUs(ctx, rf.rv, raws) {
		switch {
		case v.err != nil:
			if v.id != "" {
				results[v.id] = v.err.Error()
			}
		case v.ev.RoomID() != roomID:
			results[v.id] = "the event is not in room " + roomID
		case !seen[v.id]:
			seen[v.id] = true
			cands = append(cands, candidate{ev: v.ev, mine: true})
		}
	}
	if len(cands) == 0 {
		return results
	}
	// What the room has already, of these PDUs and of what they follow.
	known, err := rf.known(ctx, idsAndPrevs(cands))
	if err != nil {
		rf.log.Warn("gateway: inbound PDUs: room info", "err", err)
		return results
	}
	kept := cands[:0]
	for _, c := range cands {
		switch known[c.ev.EventID()] {
		case knownInGraph:
			results[c.ev.EventID()] = ""
		case knownRejected:
			results[c.ev.EventID()] = "the event was rejected before"
		default:
			kept = append(kept, c)
		}
	}
	cands = kept
	if len(cands) == 0 {
		return results
	}
	in := &pb.RoomFedIngest{RoomId: roomID, Origin: origin}
	outliers := map[string]*eventgraph.Event{}
	if roots := gapRoots(cands, known); len(roots) > 0 {
		cands = rf.fillGap(ctx, info, cands, known, roots, outliers, in)
	}
	for _, c := range cands {
		in.Pdus = append(in.Pdus, c.ev.JSON())
	}
	rep, err := rf.ingest(ctx, in, cands, outliers)
	if err != nil {
		rf.log.Warn("gateway: inbound PDUs: ingest", "err", err)
	}
	for _, c := range cands {
		if !c.mine {
			continue
		}
		id := c.ev.EventID()
		switch {
		case err != nil:
			// The sender learns the event was not taken, not this
			// server's internals.
			var me *actors.MatrixError
			if errors.As(err, &me) {
				results[id] = "not processed: " + me.Message
			} else {
				results[id] = "not processed"
			}
		default:
			r, ok := rep.Results[id]
			if !ok {
				r = "not processed by the room"
			}
			results[id] = r
		}
	}
	return results
}

// idsAndPrevs lists the candidates' IDs and their prev_events.
func idsAndPrevs(cands []candidate) []string {
	set := map[string]bool{}
	var out []string
	add := func(id string) {
		if !set[id] {
			set[id] = true
			out = append(out, id)
		}
	}
	for _, c := range cands {
		add(c.ev.EventID())
		for _, p := range c.ev.PrevEventIDs() {
			add(p)
		}
	}
	return out
}

// known asks the room which of ids it has (RoomFedInfoReply.known).
func (rf *roomFed) known(ctx context.Context, ids []string) (map[string]int32, error) {
	out := map[string]int32{}
	for chunk := range slices.Chunk(ids, 5000) {
		rep, err := rf.s.roomFedInfo(ctx, rf.roomID, chunk)
		if err != nil {
			return nil, err
		}
		for k, v := range rep.Known {
			out[k] = v
		}
	}
	return out, nil
}

// gapRoots are the candidates with a prev_event that is neither in the
// room's graph (known 1, or 3: rejected events stay in the DAG) nor among
// the candidates: the room cannot place them without more.
func gapRoots(cands []candidate, known map[string]int32) []candidate {
	have := map[string]bool{}
	for _, c := range cands {
		have[c.ev.EventID()] = true
	}
	var roots []candidate
	for _, c := range cands {
		for _, p := range c.ev.PrevEventIDs() {
			if k := known[p]; k != knownInGraph && k != knownRejected && !have[p] {
				roots = append(roots, c)
				break
			}
		}
	}
	return roots
}

// fillGap fetches what the room lacks to place cands: the missing events
// themselves (/get_missing_events), then, for what is still unplaceable,
// the state before it (/state_ids and the events the room lacks of it,
// as outliers). It returns the candidates to hand the room.
func (rf *roomFed) fillGap(ctx context.Context, info *pb.RoomFedInfoReply, cands []candidate, known map[string]int32,
	roots []candidate, outliers map[string]*eventgraph.Event, in *pb.RoomFedIngest) []candidate {
	fetched, err := rf.missingEvents(ctx, info, roots, cands)
	if err != nil {
		rf.log.Info("gateway: get_missing_events", "err", err)
	}
	if len(fetched) > 0 {
		cands = append(cands, fetched...)
		more, err := rf.known(ctx, idsAndPrevs(fetched))
		if err != nil {
			rf.log.Warn("gateway: inbound PDUs: room info", "err", err)
		}
		for k, v := range more {
			known[k] = v
		}
		// What the room already has needs no second pass through it.
		kept := cands[:0]
		for _, c := range cands {
			if c.mine || known[c.ev.EventID()] != knownInGraph {
				kept = append(kept, c)
			}
		}
		cands = kept
	}
	roots = gapRoots(cands, known)
	if len(roots) > maxStateFetchesPerRoom {
		// Too many holes among what was fetched: go back to the
		// transaction's own PDUs and ask for the state before those.
		mine := cands[:0]
		for _, c := range cands {
			if c.mine {
				mine = append(mine, c)
			}
		}
		cands = mine
		roots = gapRoots(cands, known)
	}
	rf.statesFor(ctx, roots, outliers, in)
	return cands
}

// statesFor gets from origin the state before each root (at most
// maxStateFetchesPerRoom of them) into in.States, and the events of it the
// room lacks into outliers.
func (rf *roomFed) statesFor(ctx context.Context, roots []candidate, outliers map[string]*eventgraph.Event, in *pb.RoomFedIngest) {
	for i, root := range roots {
		if i == maxStateFetchesPerRoom || rf.budget.spent() {
			break
		}
		ids, err := rf.stateBefore(ctx, root.ev.EventID(), outliers)
		if err != nil {
			rf.log.Info("gateway: state before a PDU", "event_id", root.ev.EventID(), "err", err)
			continue
		}
		in.States = append(in.States, &pb.FedStateBefore{EventId: root.ev.EventID(), StateIds: ids})
	}
}

// missingEvents asks origin for the events between the room's forward
// extremities and roots (POST /get_missing_events), and returns those that
// verify and are new.
func (rf *roomFed) missingEvents(ctx context.Context, info *pb.RoomFedInfoReply, roots, cands []candidate) ([]candidate, error) {
	if rf.budget.spent() {
		return nil, errBudget
	}
	latest := make([]string, 0, len(roots))
	for _, r := range roots {
		if len(latest) == maxReadEventIDs {
			break // what a server takes at once
		}
		latest = append(latest, r.ev.EventID())
	}
	earliest := info.Extremities
	if len(earliest) > maxEarliestEvents {
		earliest = earliest[:maxEarliestEvents]
	}
	body, err := json.Marshal(map[string]any{
		"earliest_events": orNoIDs(earliest),
		"latest_events":   latest,
		"limit":           missingEventsLimit,
		"min_depth":       max(0, info.Depth-missingEventsDepthMargin),
	})
	if err != nil {
		return nil, err
	}
	var resp struct {
		Events []json.RawMessage `json:"events"`
	}
	if err := rf.s.fedCall(ctx, rf.origin, http.MethodPost, "/_matrix/federation/v1/get_missing_events/"+url.PathEscape(rf.roomID),
		body, missingResponseBytes, &resp); err != nil {
		return nil, err
	}
	raws := make([][]byte, 0, min(len(resp.Events), missingEventsLimit))
	var size int64
	for _, e := range resp.Events {
		if len(raws) == missingEventsLimit {
			break // more than asked for: the rest is ignored
		}
		raws = append(raws, e)
		size += int64(len(e))
	}
	if !rf.budget.take(len(raws), size) {
		return nil, errBudget
	}
	have := map[string]bool{}
	for _, c := range cands {
		have[c.ev.EventID()] = true
	}
	var out []candidate
	for _, v := range rf.s.verifyPDUs(ctx, rf.rv, raws) {
		if v.err != nil {
			rf.log.Info("gateway: dropping a missing event", "event_id", v.id, "err", v.err)
			continue
		}
		if v.ev.RoomID() != rf.roomID || have[v.id] {
			continue
		}
		have[v.id] = true
		out = append(out, candidate{ev: v.ev})
	}
	return out, nil
}

func orNoIDs(ids []string) []string {
	if ids == nil {
		return []string{}
	}
	return ids
}

// stateBefore gets from origin the state before eventID (GET /state_ids),
// fetches the state and auth chain events the room lacks into outliers,
// and returns the state's event IDs.
func (rf *roomFed) stateBefore(ctx context.Context, eventID string, outliers map[string]*eventgraph.Event) ([]string, error) {
	var resp struct {
		PDUIDs       []string `json:"pdu_ids"`
		AuthChainIDs []string `json:"auth_chain_ids"`
	}
	q := "?event_id=" + url.QueryEscape(eventID)
	if err := rf.s.fedCall(ctx, rf.origin, http.MethodGet, "/_matrix/federation/v1/state_ids/"+url.PathEscape(rf.roomID)+q,
		nil, stateIDsResponseBytes, &resp); err != nil {
		return nil, err
	}
	if len(resp.PDUIDs) > maxStateIDs || len(resp.AuthChainIDs) > maxStateIDs {
		return nil, fmt.Errorf("state_ids of %s: over %d IDs", eventID, maxStateIDs)
	}
	all := make([]string, 0, len(resp.PDUIDs)+len(resp.AuthChainIDs))
	for _, list := range [][]string{resp.PDUIDs, resp.AuthChainIDs} {
		for _, id := range list {
			if eventgraph.ValidateEventID(id, rf.rv) != nil {
				return nil, fmt.Errorf("state_ids of %s: invalid event ID %q", eventID, id)
			}
			all = append(all, id)
		}
	}
	known, err := rf.known(ctx, all)
	if err != nil {
		return nil, err
	}
	missing := map[string]bool{}
	for _, id := range all {
		if known[id] == 0 && outliers[id] == nil {
			missing[id] = true
		}
	}
	if len(missing) > 0 {
		var got []*eventgraph.Event
		if len(missing) > stateByIDsThreshold {
			got, err = rf.fetchState(ctx, eventID, missing)
		} else {
			got, err = rf.fetchEvents(ctx, slices.Collect(maps.Keys(missing)))
		}
		if err != nil {
			return nil, err
		}
		for _, ev := range got {
			outliers[ev.EventID()] = ev
		}
	}
	return resp.PDUIDs, nil
}

// fetchState gets the whole state before eventID and its auth chain (GET
// /state) and keeps the events of want that verify.
func (rf *roomFed) fetchState(ctx context.Context, eventID string, want map[string]bool) ([]*eventgraph.Event, error) {
	var resp struct {
		PDUs      []json.RawMessage `json:"pdus"`
		AuthChain []json.RawMessage `json:"auth_chain"`
	}
	if err := rf.s.fedCall(ctx, rf.origin, http.MethodGet, "/_matrix/federation/v1/state/"+url.PathEscape(rf.roomID)+
		"?event_id="+url.QueryEscape(eventID), nil, stateResponseBytes, &resp); err != nil {
		return nil, err
	}
	var raws [][]byte
	var size int64
	for _, raw := range append(resp.PDUs, resp.AuthChain...) {
		raws = append(raws, raw)
		size += int64(len(raw))
	}
	if !rf.budget.take(len(raws), size) {
		return nil, errBudget
	}
	var out []*eventgraph.Event
	for _, v := range rf.s.verifyPDUs(ctx, rf.rv, raws) {
		if v.err == nil && want[v.id] {
			delete(want, v.id) // duplicates count once
			out = append(out, v.ev)
		}
	}
	return out, nil
}

// fetchEvents gets each event of ids from origin (GET /event/{eventId}),
// fedFetchConcurrency at a time, and returns those that verify and are
// the event asked for. A failed fetch only loses its event.
func (rf *roomFed) fetchEvents(ctx context.Context, ids []string) ([]*eventgraph.Event, error) {
	raws := make([][]byte, len(ids))
	var wg sync.WaitGroup
	sem := make(chan struct{}, fedFetchConcurrency)
	for i, id := range ids {
		if !rf.budget.take(1, 0) {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-sem }()
			raw, err := rf.s.fetchEvent(ctx, rf.origin, id)
			if err != nil {
				rf.log.Info("gateway: fetch event", "event_id", id, "err", err)
				return
			}
			if !rf.budget.take(0, int64(len(raw))) {
				return
			}
			raws[i] = raw
		}()
	}
	wg.Wait()
	var out []*eventgraph.Event
	vs := rf.s.verifyPDUs(ctx, rf.rv, raws)
	for i, v := range vs {
		if raws[i] == nil {
			continue
		}
		if v.err != nil || v.id != ids[i] || v.ev.RoomID() != rf.roomID {
			rf.log.Info("gateway: dropping a fetched event", "event_id", ids[i], "got", v.id, "err", v.err)
			continue
		}
		out = append(out, v.ev)
	}
	return out, nil
}

// fetchEvent asks dest for one event (GET /event/{eventId}) and returns its
// PDU.
func (s *Server) fetchEvent(ctx context.Context, dest, eventID string) ([]byte, error) {
	var resp struct {
		PDUs []json.RawMessage `json:"pdus"`
	}
	if err := s.fedCall(ctx, dest, http.MethodGet, "/_matrix/federation/v1/event/"+url.PathEscape(eventID),
		nil, singleEventResponseBytes, &resp); err != nil {
		return nil, err
	}
	if len(resp.PDUs) != 1 {
		return nil, fmt.Errorf("event %s: %d PDUs in the answer of %s", eventID, len(resp.PDUs), dest)
	}
	return resp.PDUs[0], nil
}

// fedCall sends a signed federation request and decodes its JSON answer.
func (s *Server) fedCall(ctx context.Context, dest, method, uri string, body []byte, limit int64, out any) error {
	raw, err := s.fed.client.Do(ctx, fedclient.Request{Method: method, Destination: dest, URI: uri,
		Content: body, Signed: true, Limit: limit})
	if err != nil {
		return err
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s %s of %s: bad JSON: %w", method, uri, dest, err)
	}
	return nil
}

// ingest hands the room in with the outliers, and when the room names auth
// events it lacks, fetches the auth chains of the events referring to them
// (GET /event_auth) and tries once more.
func (rf *roomFed) ingest(ctx context.Context, in *pb.RoomFedIngest, cands []candidate, outliers map[string]*eventgraph.Event) (*pb.RoomFedIngestReply, error) {
	for attempt := 0; ; attempt++ {
		in.Outliers = in.Outliers[:0]
		for _, ev := range outliers {
			in.Outliers = append(in.Outliers, ev.JSON())
		}
		rep, err := roomRequest[*pb.RoomFedIngestReply](ctx, rf.s, in)
		if err != nil || len(rep.MissingAuth) == 0 || attempt == 1 || rf.budget.spent() {
			return rep, err
		}
		if !rf.fetchAuth(ctx, cands, rep.MissingAuth, outliers) {
			return rep, nil
		}
	}
}

// fetchAuth fetches the auth chains of the events (PDUs or outliers) that
// refer to the missing auth events, adding what verifies to outliers. It
// reports whether anything new came.
func (rf *roomFed) fetchAuth(ctx context.Context, cands []candidate, missingAuth []string, outliers map[string]*eventgraph.Event) bool {
	missing := map[string]bool{}
	for _, id := range missingAuth {
		missing[id] = true
	}
	var referrers []string
	consider := func(ev *eventgraph.Event) {
		if len(referrers) == maxEventAuthFetches || slices.Contains(referrers, ev.EventID()) {
			return
		}
		for _, a := range ev.AuthEventIDs() {
			if missing[a] {
				referrers = append(referrers, ev.EventID())
				return
			}
		}
	}
	for _, c := range cands {
		consider(c.ev)
	}
	for _, ev := range outliers {
		consider(ev)
	}
	added := false
	for _, ref := range referrers {
		var resp struct {
			AuthChain []json.RawMessage `json:"auth_chain"`
		}
		if err := rf.s.fedCall(ctx, rf.origin, http.MethodGet, "/_matrix/federation/v1/event_auth/"+url.PathEscape(rf.roomID)+
			"/"+url.PathEscape(ref), nil, stateResponseBytes, &resp); err != nil {
			rf.log.Info("gateway: event_auth", "event_id", ref, "err", err)
			continue
		}
		var raws [][]byte
		var size int64
		for _, raw := range resp.AuthChain {
			raws = append(raws, raw)
			size += int64(len(raw))
		}
		if !rf.budget.take(len(raws), size) {
			break
		}
		for _, v := range rf.s.verifyPDUs(ctx, rf.rv, raws) {
			if v.err == nil && v.ev.RoomID() == rf.roomID && outliers[v.id] == nil {
				outliers[v.id] = v.ev
				added = true
			}
		}
	}
	return added
}
