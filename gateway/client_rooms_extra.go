package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"net/http"
	"sort"
	"strconv"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
)

// Rooms and spaces beyond the core room API: relations and threads,
// timestamp lookup, the space hierarchy, room summaries (MSC3266), room
// upgrades and the user directory.

const (
	// defaultHierarchyLimit and maxHierarchyLimit bound one /hierarchy page.
	defaultHierarchyLimit = 20
	maxHierarchyLimit     = 100
	// maxHierarchyDepth bounds max_depth; maxHierarchyVisit the rooms one
	// /hierarchy request asks about (pages already served included).
	maxHierarchyDepth = 10
	maxHierarchyVisit = 1000
	// maxAdditionalCreators bounds an upgrade's additional_creators.
	maxAdditionalCreators = 50
	// maxUserDirLimit bounds user directory results.
	maxUserDirLimit = 50
)

func (s *Server) registerRoomsExtra() {
	const v1, v3 = "/_matrix/client/v1", "/_matrix/client/v3"
	s.handle("GET "+v1+"/rooms/{roomId}/relations/{eventId}", s.authed(s.handleRelations))
	s.handle("GET "+v1+"/rooms/{roomId}/relations/{eventId}/{relType}", s.authed(s.handleRelations))
	s.handle("GET "+v1+"/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}", s.authed(s.handleRelations))
	s.handle("GET "+v1+"/rooms/{roomId}/threads", s.authed(s.handleThreads))
	s.handle("GET "+v1+"/rooms/{roomId}/timestamp_to_event", s.authed(s.handleTimestampToEvent))
	s.handle("GET "+v1+"/rooms/{roomId}/hierarchy", s.authed(s.handleHierarchy))
	s.handle("GET "+v1+"/room_summary/{roomIdOrAlias}", s.handleRoomSummary)
	// MSC3266's unstable path, for clients that predate spec v1.15.
	s.handle("GET /_matrix/client/unstable/im.nheko.summary/summary/{roomIdOrAlias}", s.handleRoomSummary)
	s.handle("POST "+v3+"/rooms/{roomId}/upgrade", s.authed(s.handleUpgrade))
	s.handle("POST "+v3+"/user_directory/search", s.authed(s.handleUserDirSearch))
	s.handle("POST "+v3+"/search", s.authed(s.handleSearch))
}

// ---- relations and threads ----

func (s *Server) handleRelations(w http.ResponseWriter, r *http.Request, sess *Session) {
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
	relType, eventType := r.PathValue("relType"), r.PathValue("eventType")
	if len(relType) > eventgraph.MaxEventTypeBytes {
		writeError(w, r, actors.ErrInvalidParam("relation type too long"))
		return
	}
	if eventType != "" {
		if err := validEventType(eventType); err != nil {
			writeError(w, r, err)
			return
		}
	}
	q := r.URL.Query()
	dir := q.Get("dir")
	if dir != "" && dir != "b" && dir != "f" {
		writeError(w, r, actors.ErrInvalidParam("dir must be b or f"))
		return
	}
	limit, err := queryLimit(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	recurse := false
	if v := q.Get("recurse"); v != "" {
		if recurse, err = strconv.ParseBool(v); err != nil {
			writeError(w, r, actors.ErrInvalidParam("recurse must be true or false"))
			return
		}
	}
	rep, err := roomRequest[*pb.RoomQueryReply](r.Context(), s, &pb.RoomRelations{RoomId: roomID, UserId: sess.UserID,
		EventId: eventID, RelType: relType, EventType: eventType, From: q.Get("from"), To: q.Get("to"), Dir: dir,
		Limit: limit, Recurse: recurse})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, json.RawMessage(rep.Json))
}

func (s *Server) handleThreads(w http.ResponseWriter, r *http.Request, sess *Session) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	q := r.URL.Query()
	include := q.Get("include")
	if include != "" && include != "all" && include != "participated" {
		writeError(w, r, actors.ErrInvalidParam("include must be all or participated"))
		return
	}
	limit, err := queryLimit(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	rep, err := roomRequest[*pb.RoomQueryReply](r.Context(), s, &pb.RoomThreads{RoomId: roomID, UserId: sess.UserID,
		Include: include, From: q.Get("from"), Limit: limit})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, json.RawMessage(rep.Json))
}

// hasCanonicalAlias reports whether an upgrade's source room has a
// canonical alias event: the room answers JSON null when it has none.
func hasCanonicalAlias(content json.RawMessage) bool {
	return len(content) > 0 && string(content) != "null"
}

// timestampQuery reads the ts and dir parameters of /timestamp_to_event.
func timestampQuery(r *http.Request) (int64, string, error) {
	q := r.URL.Query()
	ts, err := strconv.ParseInt(q.Get("ts"), 10, 64)
	if err != nil || ts < 0 {
		return 0, "", actors.ErrInvalidParam("ts must be a timestamp in milliseconds")
	}
	dir := q.Get("dir")
	if dir != "f" && dir != "b" {
		return 0, "", actors.ErrInvalidParam("dir must be f or b")
	}
	return ts, dir, nil
}

func (s *Server) handleTimestampToEvent(w http.ResponseWriter, r *http.Request, sess *Session) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	ts, dir, err := timestampQuery(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	rep, err := roomRequest[*pb.RoomQueryReply](r.Context(), s, &pb.RoomTimestamp{RoomId: roomID, UserId: sess.UserID,
		Ts: ts, Dir: dir})
	if err != nil && s.remoteTimestampToEvent(w, r, roomID, ts, dir, err) { // federation_directory.go
		return
	}
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, json.RawMessage(rep.Json))
}

// ---- spaces: hierarchy and room summaries ----

// spaceSummary is a room's RoomSpaceSummary reply.
type spaceSummary struct {
	Room          map[string]json.RawMessage `json:"room"`
	Accessible    bool                       `json:"accessible"`
	ChildrenState []spaceChild               `json:"children_state"`
}

type spaceChild struct {
	Content        json.RawMessage `json:"content"`
	OriginServerTS int64           `json:"origin_server_ts"`
	Sender         string          `json:"sender"`
	StateKey       string          `json:"state_key"`
	Type           string          `json:"type"`
}

// spaceRoom asks a local room for its summary as userID sees it and
// settles access to restricted rooms through their allow lists. ok is
// false for a room this server does not have or the user may not preview.
func (s *Server) spaceRoom(ctx context.Context, roomID, userID string) (*spaceSummary, bool, error) {
	rep, err := roomRequest[*pb.RoomQueryReply](ctx, s, &pb.RoomSpaceSummary{RoomId: roomID, UserId: userID})
	if err != nil {
		if me, ok := err.(*actors.MatrixError); ok && me.ErrCode == "M_NOT_FOUND" {
			return nil, false, nil
		}
		return nil, false, err
	}
	var sum spaceSummary
	if err := json.Unmarshal(rep.Json, &sum); err != nil {
		return nil, false, err
	}
	if !sum.Accessible && userID != "" {
		var allowed []string
		_ = json.Unmarshal(sum.Room["allowed_room_ids"], &allowed)
		for i, a := range allowed {
			if i == maxRestrictedAllow {
				break
			}
			if s.isJoined(ctx, a, userID) {
				sum.Accessible = true
				break
			}
		}
	}
	return &sum, sum.Accessible, nil
}

// isJoined reports whether userID is joined to the local room roomID.
func (s *Server) isJoined(ctx context.Context, roomID, userID string) bool {
	raw, err := s.roomQuery(ctx, &pb.RoomQuery{RoomId: roomID, UserId: userID, Kind: "membership"})
	if err != nil {
		return false
	}
	var m struct {
		Membership string `json:"membership"`
	}
	return json.Unmarshal(raw, &m) == nil && m.Membership == "join"
}

// hierarchyToken is the state of a /hierarchy walk a next_batch resumes:
// the rooms already served and the parameters they were served with.
type hierarchyToken struct {
	Skip      int  `json:"n"`
	Suggested bool `json:"s"`
	MaxDepth  int  `json:"d"`
}

func (t hierarchyToken) encode() string {
	b, _ := json.Marshal(t)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeHierarchyToken(s string) (hierarchyToken, bool) {
	var t hierarchyToken
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || json.Unmarshal(b, &t) != nil || t.Skip < 0 || t.Skip > maxHierarchyVisit {
		return t, false
	}
	return t, true
}

// handleHierarchy walks a space depth first from the room: each room the
// user may preview is listed with its m.space.child events, and its
// children (ordered by their order field, then timestamp, then room ID)
// come next. Rooms this server does not hold are asked of a server in the
// child's via over federation (federation_directory.go).
func (s *Server) handleHierarchy(w http.ResponseWriter, r *http.Request, sess *Session) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	q := r.URL.Query()
	limit := defaultHierarchyLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			writeError(w, r, actors.ErrInvalidParam("limit must be a positive integer"))
			return
		}
		limit = min(n, maxHierarchyLimit)
	}
	maxDepth := maxHierarchyDepth
	if v := q.Get("max_depth"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, r, actors.ErrInvalidParam("max_depth must be a non-negative integer"))
			return
		}
		maxDepth = min(n, maxHierarchyDepth)
	}
	suggested := false
	if v := q.Get("suggested_only"); v != "" {
		if suggested, err = strconv.ParseBool(v); err != nil {
			writeError(w, r, actors.ErrInvalidParam("suggested_only must be true or false"))
			return
		}
	}
	skip := 0
	if v := q.Get("from"); v != "" {
		t, ok := decodeHierarchyToken(v)
		if !ok || t.Suggested != suggested || t.MaxDepth != maxDepth {
			writeError(w, r, actors.ErrInvalidParam("invalid from token, or parameters changed since it was issued"))
			return
		}
		skip = t.Skip
	}
	ctx := r.Context()
	root, ok, err := s.spaceRoom(ctx, roomID, sess.UserID)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if !ok {
		writeError(w, r, actors.ErrForbidden("you may not preview this room"))
		return
	}
	type item struct {
		roomID string
		depth  int
		sum    *spaceSummary
		via    []string
	}
	remote := &remoteSpaces{}
	stack := []item{{roomID: roomID, depth: 0, sum: root}}
	seen := map[string]bool{roomID: true}
	var chunk []map[string]json.RawMessage
	served, visited := 0, 0
	more := false
	for len(stack) > 0 {
		it := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		sum := it.sum
		if sum == nil {
			if visited == maxHierarchyVisit {
				break
			}
			visited++
			var ok bool
			if sum, ok, err = s.spaceRoomVia(ctx, remote, it.roomID, sess.UserID, it.via); err != nil {
				writeError(w, r, err)
				return
			} else if !ok {
				continue
			}
		}
		if len(chunk) == limit {
			more = true
			break
		}
		children := sum.ChildrenState
		if suggested {
			children = filterSuggested(children)
		}
		if it.depth >= maxDepth {
			children = nil
		}
		if served >= skip {
			out := map[string]json.RawMessage{}
			for k, v := range sum.Room {
				out[k] = v
			}
			cs := children
			if cs == nil {
				cs = []spaceChild{}
			}
			out["children_state"], _ = json.Marshal(cs)
			chunk = append(chunk, out)
		}
		served++
		sortSpaceChildren(children)
		for i := len(children) - 1; i >= 0; i-- {
			c := children[i].StateKey
			if seen[c] || eventgraph.ValidateRoomID(c) != nil {
				continue
			}
			seen[c] = true
			stack = append(stack, item{roomID: c, depth: it.depth + 1, via: childVia(children[i])})
		}
	}
	out := map[string]any{"rooms": chunk}
	if chunk == nil {
		out["rooms"] = []any{}
	}
	if more && served < maxHierarchyVisit {
		out["next_batch"] = hierarchyToken{Skip: served, Suggested: suggested, MaxDepth: maxDepth}.encode()
	}
	writeJSON(w, http.StatusOK, out)
}

func filterSuggested(cs []spaceChild) []spaceChild {
	var out []spaceChild
	for _, c := range cs {
		var v struct {
			Suggested bool `json:"suggested"`
		}
		if json.Unmarshal(c.Content, &v) == nil && v.Suggested {
			out = append(out, c)
		}
	}
	return out
}

// spaceOrder is a child's order field when valid (at most 50 characters
// between 0x20 and 0x7E), else "".
func spaceOrder(c spaceChild) (string, bool) {
	var v struct {
		Order *string `json:"order"`
	}
	if json.Unmarshal(c.Content, &v) != nil || v.Order == nil || len(*v.Order) > 50 {
		return "", false
	}
	for _, ch := range []byte(*v.Order) {
		if ch < 0x20 || ch > 0x7e {
			return "", false
		}
	}
	return *v.Order, true
}

// sortSpaceChildren orders children as the spec says: those with an order
// first, by order; then by the child event's origin_server_ts; then room ID.
func sortSpaceChildren(cs []spaceChild) {
	sort.SliceStable(cs, func(i, j int) bool {
		oi, hi := spaceOrder(cs[i])
		oj, hj := spaceOrder(cs[j])
		if hi != hj {
			return hi
		}
		if hi && oi != oj {
			return oi < oj
		}
		if cs[i].OriginServerTS != cs[j].OriginServerTS {
			return cs[i].OriginServerTS < cs[j].OriginServerTS
		}
		return cs[i].StateKey < cs[j].StateKey
	})
}

// handleRoomSummary serves MSC3266's room summary, with or without an
// access token: anonymous callers see public, knockable and world-readable
// rooms; every other refusal is the same 404 as for an unknown room.
func (s *Server) handleRoomSummary(w http.ResponseWriter, r *http.Request) {
	userID := ""
	if _, ok := bearerToken(r); ok || r.Header.Get("Authorization") != "" {
		sess, err := s.authenticate(r)
		if err != nil {
			writeError(w, r, err)
			return
		}
		userID = sess.UserID
	}
	ctx := r.Context()
	notFound := actors.ErrNotFound("room not found")
	roomID, err := s.resolveRoom(ctx, r.PathValue("roomIdOrAlias"))
	if err != nil {
		if me, ok := err.(*actors.MatrixError); ok && me.ErrCode == "M_INVALID_PARAM" {
			writeError(w, r, err)
			return
		}
		writeError(w, r, notFound)
		return
	}
	sum, ok, err := s.spaceRoom(ctx, roomID, userID)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if sum == nil { // not here: ask over federation (federation_directory.go)
		if room, ok := s.remoteRoomSummary(ctx, roomID, userID, r.URL.Query()["via"]); ok {
			writeJSON(w, http.StatusOK, room)
			return
		}
	}
	if !ok {
		writeError(w, r, notFound)
		return
	}
	writeJSON(w, http.StatusOK, sum.Room)
}

// ---- upgrades ----

type upgradeRequest struct {
	NewVersion         *string  `json:"new_version"`
	AdditionalCreators []string `json:"additional_creators"`
}

// upgradeSource is what the old room's RoomUpgradeState returns.
type upgradeSource struct {
	CreateContent  map[string]json.RawMessage `json:"create_content"`
	State          []initialStateEvent        `json:"state"`
	PowerLevels    json.RawMessage            `json:"power_levels"`
	CanonicalAlias json.RawMessage            `json:"canonical_alias"`
	Aliases        []string                   `json:"aliases"`
	Creators       []string                   `json:"creators"`
	RoomVersion    string                     `json:"room_version"`
	LastEvent      []string                   `json:"last_event"`
	Bans           []string                   `json:"bans"`
}

// handleUpgrade upgrades a room: the gateway checks the user may send the
// old room's tombstone, creates the new room with the old one's important
// state, tombstones the old room, restricts who may speak or invite there,
// and moves the local aliases and the directory listing. Each step is one
// actor request; a failure after the new room exists leaves it in place
// and is reported.
func (s *Server) handleUpgrade(w http.ResponseWriter, r *http.Request, sess *Session) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	var req upgradeRequest
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	if req.NewVersion == nil {
		writeError(w, r, errMissingParam("new_version is required"))
		return
	}
	rv, ok := eventgraph.GetRoomVersion(eventgraph.RoomVersionID(*req.NewVersion))
	if !ok {
		writeError(w, r, errStatus(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "unsupported room version "+strconv.Quote(*req.NewVersion)))
		return
	}
	if len(req.AdditionalCreators) > maxAdditionalCreators {
		writeError(w, r, actors.ErrInvalidParam("at most %d additional creators", maxAdditionalCreators))
		return
	}
	for _, u := range req.AdditionalCreators {
		if eventgraph.ValidateUserID(u) != nil {
			writeError(w, r, actors.ErrInvalidParam("%q is not a valid user ID", u))
			return
		}
	}
	ctx := r.Context()
	rep, err := roomRequest[*pb.RoomQueryReply](ctx, s, &pb.RoomUpgradeState{RoomId: roomID, UserId: sess.UserID})
	if err != nil {
		writeError(w, r, err)
		return
	}
	var src upgradeSource
	if err := json.Unmarshal(rep.Json, &src); err != nil {
		writeError(w, r, err)
		return
	}
	newID, err := s.createUpgradedRoom(ctx, sess, roomID, rv, &src, req.AdditionalCreators)
	if err != nil {
		writeError(w, r, err)
		return
	}
	// From here on the new room exists: the old room is pointed at it.
	body, _ := json.Marshal(map[string]string{"body": "This room has been replaced", "replacement_room": newID})
	if _, err := roomRequest[*pb.SendEventReply](ctx, s, &pb.SendEvent{RoomId: roomID, Sender: sess.UserID,
		DeviceId: sess.DeviceID, Type: "m.room.tombstone", IsState: true, Content: body}); err != nil {
		writeError(w, r, err)
		return
	}
	s.finishUpgrade(ctx, sess, roomID, newID, &src)
	writeJSON(w, http.StatusOK, map[string]string{"replacement_room": newID})
}

// createUpgradedRoom creates the replacement room.
func (s *Server) createUpgradedRoom(ctx context.Context, sess *Session, oldID string, rv *eventgraph.RoomVersion,
	src *upgradeSource, additional []string) (string, error) {
	cc := map[string]json.RawMessage{}
	for k, v := range src.CreateContent {
		switch k {
		case "creator", "room_version", "predecessor", "additional_creators":
		default:
			cc[k] = v
		}
	}
	cc["room_version"], _ = json.Marshal(string(rv.ID))
	pred := map[string]string{"room_id": oldID}
	if len(src.LastEvent) > 0 {
		pred["event_id"] = src.LastEvent[len(src.LastEvent)-1]
	}
	cc["predecessor"], _ = json.Marshal(pred)
	if !rv.ImplicitCreator {
		cc["creator"], _ = json.Marshal(sess.UserID)
	}
	creators := []string{sess.UserID}
	if rv.PrivilegedCreators && len(additional) > 0 {
		var extra []string
		for _, u := range additional {
			if u != sess.UserID && !containsString(extra, u) {
				extra = append(extra, u)
			}
		}
		cc["additional_creators"], _ = json.Marshal(extra)
		creators = append(creators, extra...)
	}
	createContent, err := json.Marshal(cc)
	if err != nil {
		return "", actors.ErrBadJSON("create content: %v", err)
	}

	// Power levels: the old room's. Before v12 the upgrading user gets the
	// highest level the old room uses while the state is copied, and the
	// old levels (where the old room's privileged creators become 100s)
	// last; from v12 creators are implicit and must not be listed.
	plMap := map[string]json.RawMessage{}
	if len(src.PowerLevels) > 0 {
		_ = json.Unmarshal(src.PowerLevels, &plMap)
	}
	users := map[string]json.RawMessage{}
	_ = json.Unmarshal(plMap["users"], &users)
	oldPrivileged := false
	if old, ok := eventgraph.GetRoomVersion(eventgraph.RoomVersionID(src.RoomVersion)); ok {
		oldPrivileged = old.PrivilegedCreators
	}
	if rv.PrivilegedCreators {
		for _, c := range creators {
			delete(users, c)
		}
	} else if oldPrivileged {
		for _, c := range src.Creators {
			users[c] = json.RawMessage("100")
		}
	}
	plMap["users"], _ = json.Marshal(users)
	finalPL, _ := json.Marshal(plMap)
	var initial []*pb.StateEvent
	if !rv.PrivilegedCreators {
		top := int64(100)
		for _, k := range []string{"ban", "kick", "redact", "invite", "state_default", "events_default", "users_default"} {
			var n int64
			if json.Unmarshal(plMap[k], &n) == nil {
				top = max(top, n)
			}
		}
		for _, key := range []string{"events", "users"} {
			var m map[string]int64
			if json.Unmarshal(plMap[key], &m) == nil {
				for _, n := range m {
					top = max(top, n)
				}
			}
		}
		tmpUsers := map[string]json.RawMessage{}
		for k, v := range users {
			tmpUsers[k] = v
		}
		tmpUsers[sess.UserID], _ = json.Marshal(top)
		tmp := map[string]json.RawMessage{}
		for k, v := range plMap {
			tmp[k] = v
		}
		tmp["users"], _ = json.Marshal(tmpUsers)
		tmpPL, _ := json.Marshal(tmp)
		initial = append(initial, &pb.StateEvent{Type: "m.room.power_levels", Content: tmpPL})
	} else {
		initial = append(initial, &pb.StateEvent{Type: "m.room.power_levels", Content: finalPL})
	}
	for _, st := range src.State {
		initial = append(initial, &pb.StateEvent{Type: st.Type, StateKey: st.StateKey, Content: st.Content})
	}
	if hasCanonicalAlias(src.CanonicalAlias) {
		initial = append(initial, &pb.StateEvent{Type: "m.room.canonical_alias", Content: src.CanonicalAlias})
	}
	for _, u := range src.Bans {
		if u != sess.UserID && !containsString(creators, u) {
			initial = append(initial, &pb.StateEvent{Type: "m.room.member", StateKey: u, Content: json.RawMessage(`{"membership":"ban"}`)})
		}
	}
	if !rv.PrivilegedCreators && !sameJSONBytes(initial[0].Content, finalPL) {
		initial = append(initial, &pb.StateEvent{Type: "m.room.power_levels", Content: finalPL})
	}
	msg := &pb.CreateRoom{RoomVersion: string(rv.ID), Creator: sess.UserID, Initial: initial,
		CreatorProfile: s.memberProfile(ctx, sess.UserID)}
	if rv.RoomIDFromCreateEvent {
		pdu, evID, err := actors.BuildCreateEvent(s.server, rv, "", sess.UserID, createContent, s.createTS())
		if err != nil {
			return "", err
		}
		if msg.RoomId, err = actors.RoomIDForCreateEvent(evID); err != nil {
			return "", err
		}
		msg.CreatePdu = pdu
	} else {
		msg.RoomId = actors.NewRoomID(s.server.ServerName)
		msg.CreateContent = createContent
	}
	if _, err := roomRequest[*pb.CreateRoomReply](ctx, s, msg); err != nil {
		return "", err
	}
	return msg.RoomId, nil
}

func sameJSONBytes(a, b []byte) bool {
	ca, err1 := eventgraph.CanonicalJSONLenient(a)
	cb, err2 := eventgraph.CanonicalJSONLenient(b)
	return err1 == nil && err2 == nil && string(ca) == string(cb)
}

// finishUpgrade does what follows the tombstone: the old room's members
// may no longer speak or invite unless moderators, its local aliases and
// canonical alias move to the new room, and a directory listing moves too.
// These steps are best effort (each is logged when it fails), as in the
// spec's description of what servers should do.
func (s *Server) finishUpgrade(ctx context.Context, sess *Session, oldID, newID string, src *upgradeSource) {
	ctx = context.WithoutCancel(ctx)
	logFail := func(step string, err error) {
		if err != nil {
			s.log.Warn("room upgrade: step failed", slog.String("step", step), slog.String("room", oldID), slog.Any("err", err))
		}
	}
	if len(src.PowerLevels) > 0 {
		pl := map[string]json.RawMessage{}
		if json.Unmarshal(src.PowerLevels, &pl) == nil {
			var usersDefault int64
			_ = json.Unmarshal(pl["users_default"], &usersDefault)
			restricted := max(int64(50), usersDefault+1)
			changed := false
			for _, k := range []string{"events_default", "invite"} {
				var cur int64
				_ = json.Unmarshal(pl[k], &cur)
				if cur < restricted {
					pl[k], _ = json.Marshal(restricted)
					changed = true
				}
			}
			if changed {
				body, _ := json.Marshal(pl)
				_, err := roomRequest[*pb.SendEventReply](ctx, s, &pb.SendEvent{RoomId: oldID, Sender: sess.UserID,
					DeviceId: sess.DeviceID, Type: "m.room.power_levels", IsState: true, Content: body})
				logFail("restrict power levels", err)
			}
		}
	}
	for _, a := range src.Aliases {
		if _, err := roomRequest[*pb.AliasReply](ctx, s, &pb.AliasOp{Alias: a, Op: "delete", RoomId: oldID, Admin: true}); err != nil {
			logFail("release alias", err)
			continue
		}
		_, err := roomRequest[*pb.AliasReply](ctx, s, &pb.AliasOp{Alias: a, Op: "set", RoomId: newID, UserId: sess.UserID})
		logFail("move alias", err)
		_, err = roomRequest[*pb.Empty](ctx, s, &pb.RoomAliasUpdate{RoomId: oldID, Alias: a, Remove: true})
		logFail("drop alias from old room", err)
		_, err = roomRequest[*pb.Empty](ctx, s, &pb.RoomAliasUpdate{RoomId: newID, Alias: a})
		logFail("add alias to new room", err)
	}
	if hasCanonicalAlias(src.CanonicalAlias) && string(src.CanonicalAlias) != "{}" {
		_, err := roomRequest[*pb.SendEventReply](ctx, s, &pb.SendEvent{RoomId: oldID, Sender: sess.UserID,
			DeviceId: sess.DeviceID, Type: "m.room.canonical_alias", IsState: true, Content: json.RawMessage(`{}`)})
		logFail("clear old canonical alias", err)
	}
	pub, err := roomRequest[*pb.RoomPublishReply](ctx, s, &pb.RoomPublish{RoomId: oldID, UserId: sess.UserID})
	if err == nil && pub.Visibility == "public" {
		logFail("publish new room", s.setDirectoryVisibility(ctx, newID, sess.UserID, "public"))
		logFail("unpublish old room", s.setDirectoryVisibility(ctx, oldID, sess.UserID, "private"))
	}
}

// ---- user directory ----

func (s *Server) handleUserDirSearch(w http.ResponseWriter, r *http.Request, sess *Session) {
	var req struct {
		SearchTerm *string `json:"search_term"`
		Limit      *int    `json:"limit"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	if req.SearchTerm == nil {
		writeError(w, r, errMissingParam("search_term is required"))
		return
	}
	if len(*req.SearchTerm) > 256 {
		writeError(w, r, actors.ErrInvalidParam("search_term is too long"))
		return
	}
	limit := 10
	if req.Limit != nil {
		if *req.Limit < 0 {
			writeError(w, r, actors.ErrInvalidParam("limit must not be negative"))
			return
		}
		limit = min(*req.Limit, maxUserDirLimit)
	}
	rep, err := roomRequest[*pb.RoomQueryReply](r.Context(), s, &pb.UserDirSearch{Searcher: sess.UserID,
		Term: *req.SearchTerm, Limit: int32(limit)})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, json.RawMessage(rep.Json))
}
