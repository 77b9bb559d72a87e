package gateway

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
)

const (
	maxSyncTimeout     = 5 * time.Minute
	defaultTimeline    = 10
	maxTimeline        = 1000
	syncRoomFanout     = 16 // concurrent room reads per sync
	syncRequestHeadway = 10 * time.Second
	maxInboxPerSync    = 100 // to-device messages per sync
)

func (s *Server) registerSync() {
	s.handle("GET /_matrix/client/v3/sync", s.authed(s.handleSync))
}

// syncFilter is the part of a Filter (spec: "Filtering") that /sync applies.
type syncFilter struct {
	AccountData *eventFilter `json:"account_data,omitempty"`
	Presence    *eventFilter `json:"presence,omitempty"`
	Room        struct {
		Rooms        *[]string        `json:"rooms,omitempty"`
		NotRooms     []string         `json:"not_rooms,omitempty"`
		IncludeLeave bool             `json:"include_leave,omitempty"`
		Timeline     *json.RawMessage `json:"timeline,omitempty"`
		State        *roomEventFilter `json:"state,omitempty"`
		Ephemeral    *eventFilter     `json:"ephemeral,omitempty"`
		AccountData  *eventFilter     `json:"account_data,omitempty"`
	} `json:"room"`
}

type eventFilter struct {
	Limit    *int     `json:"limit,omitempty"`
	Types    []string `json:"types,omitempty"`
	NotTypes []string `json:"not_types,omitempty"`
}

type roomEventFilter struct {
	LazyLoadMembers bool `json:"lazy_load_members,omitempty"`
}

// allows applies an EventFilter's type lists (with '*' wildcards) to t.
func (f *eventFilter) allows(t string) bool {
	if f == nil {
		return true
	}
	for _, nt := range f.NotTypes {
		if globMatch(nt, t) {
			return false
		}
	}
	if f.Types == nil {
		return true
	}
	for _, ty := range f.Types {
		if globMatch(ty, t) {
			return true
		}
	}
	return false
}

// globMatch matches the spec's filter type patterns, where '*' matches any run.
func globMatch(pattern, s string) bool {
	if !strings.Contains(pattern, "*") {
		return pattern == s
	}
	parts := strings.Split(pattern, "*")
	if !strings.HasPrefix(s, parts[0]) {
		return false
	}
	s = s[len(parts[0]):]
	for i, p := range parts[1:] {
		if i == len(parts)-2 {
			return strings.HasSuffix(s, p)
		}
		idx := strings.Index(s, p)
		if idx < 0 {
			return false
		}
		s = s[idx+len(p):]
	}
	return true
}

func (s *Server) handleSync(w http.ResponseWriter, r *http.Request, sess *Session) {
	q := r.URL.Query()
	timeout := time.Duration(0)
	if t := q.Get("timeout"); t != "" {
		ms, err := strconv.ParseInt(t, 10, 64)
		if err != nil || ms < 0 {
			writeError(w, r, actors.ErrInvalidParam("timeout must be a non-negative integer"))
			return
		}
		timeout = min(time.Duration(ms)*time.Millisecond, maxSyncTimeout)
	}
	fullState := false
	if fs := q.Get("full_state"); fs != "" {
		if fs != "true" && fs != "false" {
			writeError(w, r, actors.ErrInvalidParam("full_state must be true or false"))
			return
		}
		fullState = fs == "true"
	}
	switch p := q.Get("set_presence"); p {
	case "", "online", "offline", "unavailable":
		if p != "offline" {
			if p == "" {
				p = "online"
			}
			body, _ := json.Marshal(map[string]any{"presence": p, "from_sync": true})
			s.router.Send(&pb.AccountUpdate{UserId: sess.UserID, Kind: "presence", Value: body})
		}
	default:
		writeError(w, r, actors.ErrInvalidParam("set_presence must be online, offline or unavailable"))
		return
	}
	filter, timelineFilter, err := s.loadSyncFilter(r.Context(), sess.UserID, q.Get("filter"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	resp, err := s.sync(r.Context(), sess, q.Get("since"), timeout, fullState, filter, timelineFilter)
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// loadSyncFilter resolves the filter parameter: inline JSON or a stored filter ID.
func (s *Server) loadSyncFilter(ctx context.Context, userID, param string) (*syncFilter, []byte, error) {
	f := &syncFilter{}
	if param == "" {
		return f, nil, nil
	}
	raw := []byte(param)
	if !strings.HasPrefix(strings.TrimSpace(param), "{") {
		res, err := s.router.Request(ctx, &pb.AccountQuery{UserId: userID, Kind: "filter", Key: param})
		if err != nil {
			return nil, nil, err
		}
		rep, ok := res.(*pb.AccountQueryReply)
		if !ok || !rep.Found {
			return nil, nil, actors.ErrInvalidParam("unknown filter")
		}
		raw = rep.Json
	}
	if err := json.Unmarshal(raw, f); err != nil {
		return nil, nil, actors.ErrInvalidParam("filter is not a valid filter: %s", jsonTypeError(err))
	}
	// The room actor applies the timeline filter; lazy loading is asked for
	// in the state filter, so carry it over.
	timeline := map[string]any{}
	if f.Room.Timeline != nil {
		if err := json.Unmarshal(*f.Room.Timeline, &timeline); err != nil {
			return nil, nil, actors.ErrInvalidParam("timeline filter must be an object")
		}
	}
	if f.Room.State != nil && f.Room.State.LazyLoadMembers {
		timeline["lazy_load_members"] = true
	}
	tf, _ := json.Marshal(timeline)
	return f, tf, nil
}

type syncResponse struct {
	NextBatch   string         `json:"next_batch"`
	Rooms       *syncRooms     `json:"rooms,omitempty"`
	AccountData *eventsWrapper `json:"account_data,omitempty"`
	Presence    *eventsWrapper `json:"presence,omitempty"`
	// End-to-end encryption (client_keys.go).
	ToDevice         *eventsWrapper  `json:"to_device,omitempty"`
	DeviceLists      json.RawMessage `json:"device_lists,omitempty"`
	OneTimeKeysCount map[string]int  `json:"device_one_time_keys_count,omitempty"`
	// A pointer so that an empty list is sent (clients read its absence
	// as "no fallback key support") yet nothing is sent when unread.
	UnusedFallbackKeyTypes *[]string `json:"device_unused_fallback_key_types,omitempty"`
}

type syncRooms struct {
	Join   map[string]json.RawMessage `json:"join,omitempty"`
	Invite map[string]json.RawMessage `json:"invite,omitempty"`
	Leave  map[string]json.RawMessage `json:"leave,omitempty"`
	Knock  map[string]json.RawMessage `json:"knock,omitempty"`
}

type eventsWrapper struct {
	Events []json.RawMessage `json:"events"`
}

type roomResult struct {
	room   *pb.PlannedRoom
	reply  *pb.SyncRoomReply
	err    error
	nonEmp bool
}

// sync answers one /sync: the user actor says which rooms moved since the
// token (waiting for something to move when nothing has), the rooms are
// read in parallel, and the positions reached become the next token.
func (s *Server) sync(ctx context.Context, sess *Session, since string, timeout time.Duration,
	fullState bool, filter *syncFilter, timelineFilter []byte) (*syncResponse, error) {
	deadline := time.Now().Add(timeout)
	if timeout > 0 {
		s.metrics.longPolls.Inc()
		defer s.metrics.longPolls.Dec()
	}
	// Shutdown ends the wait: answer what we have rather than hold it up.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.stopCtx, cancel)()
	limit := int32(defaultTimeline)
	if len(timelineFilter) > 0 {
		var tl struct {
			Limit *int `json:"limit"`
		}
		_ = json.Unmarshal(timelineFilter, &tl)
		if tl.Limit != nil {
			limit = int32(max(1, min(*tl.Limit, maxTimeline)))
		}
	}
	// The token's to-device part acknowledges the messages it covers.
	since, ack := splitSyncToken(since)
	for {
		remaining := time.Until(deadline)
		if remaining < 0 {
			remaining = 0
		}
		inbox, err := s.readInbox(ctx, sess, ack, maxInboxPerSync)
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			// The device's partition may be in flight: sync without its
			// part (the token keeps the acknowledged position).
			inbox = &deviceInbox{Latest: math.MaxUint64, unread: true}
		}
		if len(inbox.Events) > 0 {
			remaining = 0 // messages are waiting: answer now
		}
		planCtx, cancelPlan := context.WithTimeout(ctx, remaining+syncRequestHeadway)
		res, err := s.router.Request(planCtx, &pb.SyncPlan{UserId: sess.UserID, DeviceId: sess.DeviceID, Since: since,
			TimeoutMs: remaining.Milliseconds(), FullState: fullState, ToDeviceSeen: inbox.Latest})
		cancelPlan()
		if err != nil {
			if s.stopCtx.Err() != nil && since != "" {
				return &syncResponse{NextBatch: joinSyncToken(since, ack)}, nil
			}
			return nil, err
		}
		plan, ok := res.(*pb.SyncPlanReply)
		if !ok {
			return nil, actors.ErrUnknown("unexpected sync plan reply")
		}
		resp, positions, ephemeral, err := s.gatherRooms(ctx, sess, plan, fullState, filter, timelineFilter, limit)
		if err != nil {
			return nil, err
		}
		done, err := s.router.Request(ctx, &pb.SyncDone{UserId: sess.UserID, Token: plan.Next, Positions: positions, Ephemeral: ephemeral})
		if err != nil {
			return nil, err
		}
		dr, ok := done.(*pb.SyncDoneReply)
		if !ok {
			return nil, actors.ErrUnknown("unexpected sync reply")
		}
		if len(inbox.Events) == 0 && remaining > 0 {
			// The wait may have ended for new messages: read them.
			if again, err := s.readInbox(ctx, sess, ack, maxInboxPerSync); err == nil {
				inbox = again
			}
		}
		inbox.addTo(resp)
		if plan.Initial {
			s.addPeerPresence(ctx, sess.UserID, resp, filter)
		}
		resp.DeviceLists = plan.DeviceLists
		if since != "" {
			resp.DeviceLists = s.withLeftUsers(ctx, sess, resp, withJoinedUsers(resp, plan.DeviceLists, sess.UserID))
		}
		next := ack
		if len(inbox.Events) > 0 {
			next = inbox.Last
		}
		resp.NextBatch = joinSyncToken(dr.NextBatch, next)
		// Rooms the user actor could only guess at (after a restart) may all
		// have been unchanged: keep waiting rather than answer nothing early.
		if !resp.empty() || since == "" || fullState || time.Until(deadline) <= 0 || ctx.Err() != nil {
			return resp, nil
		}
		since = dr.NextBatch
	}
}

func (r *syncResponse) empty() bool {
	return r.Rooms == nil && r.AccountData == nil && r.Presence == nil && r.ToDevice == nil && len(r.DeviceLists) == 0
}

func (s *Server) gatherRooms(ctx context.Context, sess *Session, plan *pb.SyncPlanReply, fullState bool,
	filter *syncFilter, timelineFilter []byte, limit int32) (*syncResponse, map[string]uint64, map[string]uint64, error) {
	var roomAD map[string][]json.RawMessage
	if len(plan.RoomAccountData) > 0 {
		_ = json.Unmarshal(plan.RoomAccountData, &roomAD)
	}
	var planned []*pb.PlannedRoom
	for _, pr := range plan.Rooms {
		if filter.Room.Rooms != nil && !slices.Contains(*filter.Room.Rooms, pr.RoomId) {
			continue
		}
		if slices.Contains(filter.Room.NotRooms, pr.RoomId) {
			continue
		}
		if (pr.Membership == "leave" || pr.Membership == "ban") && !pr.Newly && !filter.Room.IncludeLeave {
			continue
		}
		planned = append(planned, pr)
	}
	rules := s.syncPushRules(ctx, sess.UserID, planned)
	results := make([]roomResult, len(planned))
	sem := make(chan struct{}, syncRoomFanout)
	var wg sync.WaitGroup
	for i, pr := range planned {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int, pr *pb.PlannedRoom) {
			defer func() { <-sem; wg.Done() }()
			res, err := s.router.Request(ctx, &pb.SyncRoom{RoomId: pr.RoomId, UserId: sess.UserID, DeviceId: sess.DeviceID,
				From: pr.From, Limit: limit, Filter: timelineFilter, FullState: fullState || pr.Newly,
				Membership: pr.Membership, MembershipPos: pr.MembershipPos, EphemeralFrom: pr.EphemeralFrom, PushRules: rules})
			results[i].room = pr
			if err != nil {
				results[i].err = err
				return
			}
			rep, ok := res.(*pb.SyncRoomReply)
			if !ok {
				results[i].err = actors.ErrUnknown("unexpected room sync reply")
				return
			}
			results[i].reply = rep
		}(i, pr)
	}
	wg.Wait()

	resp := &syncResponse{}
	rooms := &syncRooms{}
	positions := map[string]uint64{}
	ephemeral := map[string]uint64{}
	for _, res := range results {
		if res.err != nil {
			// A room whose partition is unavailable stays at its old position
			// and is retried by the next sync; the rest of the response stands.
			if me, ok := res.err.(*actors.MatrixError); ok && me.Status == http.StatusServiceUnavailable {
				continue
			}
			return nil, nil, nil, res.err
		}
		id := res.room.RoomId
		positions[id] = res.reply.Pos
		ephemeral[id] = res.reply.EphemeralPos
		ad := roomAD[id]
		if res.reply.Empty && len(ad) == 0 {
			continue
		}
		body := res.reply.Json
		if len(ad) > 0 && (res.room.Membership == "join") {
			body = withRoomAccountData(body, ad, filter.Room.AccountData)
		}
		switch res.room.Membership {
		case "join":
			setRoom(&rooms.Join, id, body)
		case "invite":
			setRoom(&rooms.Invite, id, body)
		case "knock":
			setRoom(&rooms.Knock, id, body)
		default:
			setRoom(&rooms.Leave, id, body)
		}
	}
	if rooms.Join != nil || rooms.Invite != nil || rooms.Leave != nil || rooms.Knock != nil {
		resp.Rooms = rooms
	}
	if evs := filterEvents(plan.AccountData, filter.AccountData); len(evs) > 0 {
		resp.AccountData = &eventsWrapper{Events: evs}
	}
	if evs := filterEvents(plan.Presence, filter.Presence); len(evs) > 0 {
		resp.Presence = &eventsWrapper{Events: evs}
	}
	return resp, positions, ephemeral, nil
}

func setRoom(m *map[string]json.RawMessage, id string, body json.RawMessage) {
	if *m == nil {
		*m = map[string]json.RawMessage{}
	}
	(*m)[id] = body
}

// withRoomAccountData adds the room's changed account data to its sync object.
func withRoomAccountData(body json.RawMessage, events []json.RawMessage, f *eventFilter) json.RawMessage {
	var obj map[string]json.RawMessage
	if len(body) == 0 || json.Unmarshal(body, &obj) != nil || obj == nil {
		obj = map[string]json.RawMessage{}
	}
	kept := filterRaw(events, f)
	if len(kept) == 0 {
		return body
	}
	ad, _ := json.Marshal(eventsWrapper{Events: kept})
	obj["account_data"] = ad
	out, _ := json.Marshal(obj)
	return out
}

func filterEvents(raw []byte, f *eventFilter) []json.RawMessage {
	if len(raw) == 0 {
		return nil
	}
	var evs []json.RawMessage
	if json.Unmarshal(raw, &evs) != nil {
		return nil
	}
	return filterRaw(evs, f)
}

func filterRaw(evs []json.RawMessage, f *eventFilter) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(evs))
	for _, e := range evs {
		var t struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(e, &t) == nil && f.allows(t.Type) {
			out = append(out, e)
		}
	}
	if f != nil && f.Limit != nil && *f.Limit >= 0 && len(out) > *f.Limit {
		out = out[len(out)-*f.Limit:]
	}
	return out
}
