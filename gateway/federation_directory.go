package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/gateway/fedclient"
)

// Room discovery over federation, both ways: the public room directory
// (/publicRooms), the space hierarchy (/hierarchy, which also answers
// MSC3266 room summaries of rooms this server is not in) and
// /timestamp_to_event.

const (
	// maxRemoteDirectoryBytes bounds a remote server's /publicRooms and
	// /hierarchy answers.
	maxRemoteDirectoryBytes = 4 << 20
	// maxFedHierarchyChildren bounds the children one federation
	// /hierarchy answer describes (Synapse's bound too).
	maxFedHierarchyChildren = 50
	// maxRemoteHierarchyFetches bounds the federation /hierarchy requests
	// one client /hierarchy or summary request makes.
	maxRemoteHierarchyFetches = 10
	// maxViaTried bounds the servers asked for one remote room.
	maxViaTried = 3
)

func (s *Server) registerFederationDirectory() {
	s.handle("GET /_matrix/federation/v1/publicRooms", s.fedAuthed(s.handleFedPublicRoomsGet))
	s.handle("POST /_matrix/federation/v1/publicRooms", s.fedAuthed(s.handleFedPublicRoomsPost))
	s.handle("GET /_matrix/federation/v1/hierarchy/{roomId}", s.fedAuthed(s.handleFedHierarchy))
	s.handle("GET /_matrix/federation/v1/timestamp_to_event/{roomId}", s.fedAuthed(s.handleFedTimestampToEvent))
}

// ---- public rooms ----

// publicRoomsBody is the body of POST /publicRooms (client and federation).
type publicRoomsBody struct {
	Limit  *int   `json:"limit,omitempty"`
	Since  string `json:"since,omitempty"`
	Filter *struct {
		GenericSearchTerm string             `json:"generic_search_term,omitempty"`
		RoomTypes         *[]json.RawMessage `json:"room_types,omitempty"`
	} `json:"filter,omitempty"`
	IncludeAllNetworks   bool   `json:"include_all_networks,omitempty"`
	ThirdPartyInstanceID string `json:"third_party_instance_id,omitempty"`
}

// check bounds the body as the client endpoint does and returns the
// directory actor's filter.
func (b *publicRoomsBody) check() (limit int, filter string, err error) {
	if b.Limit != nil {
		if *b.Limit < 0 {
			return 0, "", actors.ErrInvalidParam("limit must not be negative")
		}
		limit = *b.Limit
	}
	if b.Filter != nil {
		if len(b.Filter.GenericSearchTerm) > maxSearchTermBytes {
			return 0, "", actors.ErrInvalidParam("search term too long")
		}
		if b.Filter.RoomTypes != nil && len(*b.Filter.RoomTypes) > 64 {
			return 0, "", actors.ErrInvalidParam("too many room types")
		}
		raw, _ := json.Marshal(b.Filter)
		filter = string(raw)
	}
	return limit, filter, nil
}

func emptyPublicRooms(w http.ResponseWriter) {
	writeJSON(w, http.StatusOK, map[string]any{"chunk": []any{}, "total_room_count_estimate": 0})
}

func (s *Server) handleFedPublicRoomsGet(w http.ResponseWriter, r *http.Request, _ string, _ []byte) {
	q := r.URL.Query()
	limit := 0
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, r, actors.ErrInvalidParam("limit must be a non-negative integer"))
			return
		}
		limit = n
	}
	if v := q.Get("include_all_networks"); v != "" && v != "true" && v != "false" {
		writeError(w, r, actors.ErrInvalidParam("include_all_networks must be true or false"))
		return
	}
	if q.Get("third_party_instance_id") != "" {
		// shoal has no third-party networks: their listing is empty.
		emptyPublicRooms(w)
		return
	}
	s.listPublicRooms(w, r, limit, q.Get("since"), "")
}

func (s *Server) handleFedPublicRoomsPost(w http.ResponseWriter, r *http.Request, _ string, body []byte) {
	var b publicRoomsBody
	if err := json.Unmarshal(body, &b); err != nil {
		writeError(w, r, errNotJSON)
		return
	}
	limit, filter, err := b.check()
	if err != nil {
		writeError(w, r, err)
		return
	}
	if b.ThirdPartyInstanceID != "" {
		emptyPublicRooms(w)
		return
	}
	s.listPublicRooms(w, r, limit, b.Since, filter)
}

// remotePublicRooms answers a client's /publicRooms?server= naming another
// server: the request goes to that server's federation /publicRooms and its
// answer comes back as it is (once checked to be a JSON object). It
// reports false when server is this one (the caller lists the local
// directory).
func (s *Server) remotePublicRooms(w http.ResponseWriter, r *http.Request, server string) bool {
	if server == "" || server == s.server.ServerName {
		return false
	}
	if _, _, err := eventgraph.ParseServerName(server); err != nil {
		writeError(w, r, actors.ErrInvalidParam("invalid server name"))
		return true
	}
	req := fedclient.Request{Method: r.Method, Destination: server, Signed: true, Limit: maxRemoteDirectoryBytes,
		URI: "/_matrix/federation/v1/publicRooms"}
	if r.Method == http.MethodPost {
		var b publicRoomsBody
		if err := decodeJSON(r, &b); err != nil {
			writeError(w, r, err)
			return true
		}
		if _, _, err := b.check(); err != nil {
			writeError(w, r, err)
			return true
		}
		req.Content, _ = json.Marshal(b)
	} else {
		in, out := r.URL.Query(), url.Values{}
		for _, k := range []string{"limit", "since", "include_all_networks", "third_party_instance_id"} {
			if v := in.Get(k); v != "" {
				out.Set(k, v)
			}
		}
		if v := out.Get("limit"); v != "" {
			if n, err := strconv.Atoi(v); err != nil || n < 0 {
				writeError(w, r, actors.ErrInvalidParam("limit must be a non-negative integer"))
				return true
			}
		}
		if len(out) > 0 {
			req.URI += "?" + out.Encode()
		}
	}
	res, err := s.fed.client.Do(r.Context(), req)
	if err != nil {
		writeError(w, r, s.remoteQueryError(server, "public rooms", err))
		return true
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(res, &obj) != nil || obj == nil {
		writeError(w, r, errStatus(http.StatusBadGateway, "M_UNKNOWN", "bad public rooms answer from "+server))
		return true
	}
	writeJSON(w, http.StatusOK, json.RawMessage(res))
	return true
}

// remoteQueryError turns a failed federation query into the client's
// answer: the remote's 4xx refusals pass through with their code, anything
// else (unreachable, 5xx) is 502.
func (s *Server) remoteQueryError(server, what string, err error) error {
	var he *fedclient.HTTPError
	if errors.As(err, &he) && he.Status >= 400 && he.Status < 500 && he.ErrCode != "" && he.Status != http.StatusUnauthorized {
		return errStatus(he.Status, he.ErrCode, he.Message)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return errStatus(http.StatusGatewayTimeout, "M_UNKNOWN", "timed out asking "+server+" for "+what)
	}
	s.log.Info("gateway: remote query", "server", server, "what", what, "err", err)
	return errStatus(http.StatusBadGateway, "M_UNKNOWN", "could not get "+what+" from "+server)
}

// ---- which servers are in a room ----

// roomServers lists the servers with a joined member in a local room (nil
// when the room is unknown or cannot say).
func (s *Server) roomServers(ctx context.Context, roomID string) []string {
	rep, err := roomRequest[*pb.RoomFedInfoReply](ctx, s, &pb.RoomFedInfo{RoomId: roomID})
	if err != nil || !rep.Exists {
		return nil
	}
	return rep.Servers
}

func (s *Server) serverInRoom(ctx context.Context, roomID, server string) bool {
	return slices.Contains(s.roomServers(ctx, roomID), server)
}

// ---- hierarchy ----

// fedSpaceRoom is a local room's summary as server origin may see it: the
// room is accessible when anyone may preview it (public, knockable,
// world-readable), when origin has a member in it, or (restricted rooms)
// when origin has a member in one of the rooms its join rule allows. nil
// when this server does not have the room.
func (s *Server) fedSpaceRoom(ctx context.Context, roomID, origin string) (*spaceSummary, bool, error) {
	sum, _, err := s.spaceRoom(ctx, roomID, "")
	if err != nil || sum == nil {
		return nil, false, err
	}
	if sum.Accessible || s.serverInRoom(ctx, roomID, origin) {
		return sum, true, nil
	}
	var allowed []string
	_ = json.Unmarshal(sum.Room["allowed_room_ids"], &allowed)
	for i, a := range allowed {
		if i == maxRestrictedAllow {
			break
		}
		if eventgraph.ValidateRoomID(a) == nil && s.serverInRoom(ctx, a, origin) {
			return sum, true, nil
		}
	}
	return sum, false, nil
}

// hierarchyChunk is a summary with its children_state, as /hierarchy lists
// rooms.
func hierarchyChunk(sum *spaceSummary, children []spaceChild) map[string]json.RawMessage {
	out := make(map[string]json.RawMessage, len(sum.Room)+1)
	for k, v := range sum.Room {
		if k != "membership" {
			out[k] = v
		}
	}
	if children == nil {
		children = []spaceChild{}
	}
	out["children_state"], _ = json.Marshal(children)
	return out
}

// handleFedHierarchy serves a space and its direct children to another
// server, which walks further and filters for its user itself: children
// origin may not see are listed as inaccessible, children this server does
// not have are left out.
func (s *Server) handleFedHierarchy(w http.ResponseWriter, r *http.Request, origin string, _ []byte) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	suggested := false
	if v := r.URL.Query().Get("suggested_only"); v != "" {
		if suggested, err = strconv.ParseBool(v); err != nil {
			writeError(w, r, actors.ErrInvalidParam("suggested_only must be true or false"))
			return
		}
	}
	ctx := r.Context()
	sum, ok, err := s.fedSpaceRoom(ctx, roomID, origin)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if !ok {
		writeError(w, r, actors.ErrNotFound("room not found"))
		return
	}
	filter := func(cs []spaceChild) []spaceChild {
		if suggested {
			return filterSuggested(cs)
		}
		return cs
	}
	children := filter(sum.ChildrenState)
	sortSpaceChildren(children)
	out := map[string]any{"room": hierarchyChunk(sum, children)}
	chunks := []map[string]json.RawMessage{}
	inaccessible := []string{}
	seen := map[string]bool{roomID: true}
	for _, c := range children {
		if len(chunks)+len(inaccessible) == maxFedHierarchyChildren {
			break
		}
		if seen[c.StateKey] || eventgraph.ValidateRoomID(c.StateKey) != nil {
			continue
		}
		seen[c.StateKey] = true
		csum, cok, err := s.fedSpaceRoom(ctx, c.StateKey, origin)
		switch {
		case err != nil || csum == nil:
			// Nothing this server can say about it.
		case !cok:
			inaccessible = append(inaccessible, c.StateKey)
		default:
			gc := filter(csum.ChildrenState)
			sortSpaceChildren(gc)
			chunks = append(chunks, hierarchyChunk(csum, gc))
		}
	}
	out["children"], out["inaccessible_children"] = chunks, inaccessible
	writeJSON(w, http.StatusOK, out)
}

// remoteSpaces is what one client request learnt of rooms this server is
// not in, from other servers' /hierarchy answers.
type remoteSpaces struct {
	rooms        map[string]map[string]json.RawMessage // room ID → chunk (with children_state)
	inaccessible map[string]bool
	fetches      int
}

// childVia is the via list of an m.space.child event.
func childVia(c spaceChild) []string {
	var v struct {
		Via []string `json:"via"`
	}
	_ = json.Unmarshal(c.Content, &v)
	return v.Via
}

// spaceRoomVia is spaceRoom for a client's /hierarchy or room summary: a
// local room as the room says, and a room this server does not have as a
// server of via (or the room ID's own server) describes it over
// federation, filtered for userID: remote rooms are previewable when
// public, knockable or world-readable, or restricted to a room userID is
// joined to here.
func (s *Server) spaceRoomVia(ctx context.Context, rs *remoteSpaces, roomID, userID string, via []string) (*spaceSummary, bool, error) {
	sum, ok, err := s.spaceRoom(ctx, roomID, userID)
	if err != nil || sum != nil {
		return sum, ok, err
	}
	if rs.rooms == nil {
		rs.rooms, rs.inaccessible = map[string]map[string]json.RawMessage{}, map[string]bool{}
	}
	if rs.inaccessible[roomID] {
		return nil, false, nil
	}
	chunk := rs.rooms[roomID]
	if chunk == nil {
		chunk = s.fetchRemoteHierarchy(ctx, rs, roomID, via)
	}
	if chunk == nil {
		return nil, false, nil
	}
	rsum := &spaceSummary{Room: map[string]json.RawMessage{}}
	for k, v := range chunk {
		if k == "children_state" {
			_ = json.Unmarshal(v, &rsum.ChildrenState)
			continue
		}
		rsum.Room[k] = v
	}
	if id, _ := jsonString(rsum.Room["room_id"]); id != roomID {
		return nil, false, nil
	}
	if userID != "" {
		rsum.Room["membership"] = json.RawMessage(`"leave"`)
	}
	var jr string
	_ = json.Unmarshal(rsum.Room["join_rule"], &jr)
	var worldReadable bool
	_ = json.Unmarshal(rsum.Room["world_readable"], &worldReadable)
	switch {
	case worldReadable, jr == eventgraph.JoinRulePublic, jr == eventgraph.JoinRuleKnock, jr == eventgraph.JoinRuleKnockRestricted:
		rsum.Accessible = true
	case jr == eventgraph.JoinRuleRestricted && userID != "":
		var allowed []string
		_ = json.Unmarshal(rsum.Room["allowed_room_ids"], &allowed)
		for i, a := range allowed {
			if i == maxRestrictedAllow {
				break
			}
			if s.isJoined(ctx, a, userID) {
				rsum.Accessible = true
				break
			}
		}
	}
	return rsum, rsum.Accessible, nil
}

func jsonString(raw json.RawMessage) (string, bool) {
	var v string
	return v, json.Unmarshal(raw, &v) == nil
}

// fetchRemoteHierarchy asks the servers of via (at most maxViaTried, the
// room ID's server when via is empty) for roomID's hierarchy and records
// the room and its children in rs. It returns the room's chunk, nil when
// no server could describe it.
func (s *Server) fetchRemoteHierarchy(ctx context.Context, rs *remoteSpaces, roomID string, via []string) map[string]json.RawMessage {
	if len(via) == 0 {
		if _, domain, ok := cutColon(roomID); ok && domain != "" {
			via = []string{domain}
		}
	}
	tried := 0
	for _, server := range via {
		if tried == maxViaTried || rs.fetches == maxRemoteHierarchyFetches {
			break
		}
		if server == s.server.ServerName {
			continue
		}
		if _, _, err := eventgraph.ParseServerName(server); err != nil {
			continue
		}
		tried++
		rs.fetches++
		body, err := s.fed.client.Do(ctx, fedclient.Request{Method: http.MethodGet, Destination: server, Signed: true,
			Limit: maxRemoteDirectoryBytes, URI: "/_matrix/federation/v1/hierarchy/" + url.PathEscape(roomID)})
		if err != nil {
			var he *fedclient.HTTPError
			if errors.As(err, &he) && he.Status == http.StatusNotFound && he.ErrCode == "M_NOT_FOUND" {
				// The server knows the room and will not show it.
				continue
			}
			s.log.Info("gateway: remote hierarchy", "server", server, "room", roomID, "err", err)
			continue
		}
		var res struct {
			Room         map[string]json.RawMessage   `json:"room"`
			Children     []map[string]json.RawMessage `json:"children"`
			Inaccessible []string                     `json:"inaccessible_children"`
		}
		if json.Unmarshal(body, &res) != nil || res.Room == nil {
			continue
		}
		if id, _ := jsonString(res.Room["room_id"]); id != roomID {
			continue
		}
		rs.rooms[roomID] = res.Room
		for i, c := range res.Children {
			if i == maxFedHierarchyChildren*2 {
				break
			}
			if id, ok := jsonString(c["room_id"]); ok && eventgraph.ValidateRoomID(id) == nil && rs.rooms[id] == nil {
				rs.rooms[id] = c
			}
		}
		for i, id := range res.Inaccessible {
			if i == maxFedHierarchyChildren*2 {
				break
			}
			rs.inaccessible[id] = true
		}
		return res.Room
	}
	return nil
}

// remoteRoomSummary is the MSC3266 summary of a room this server does not
// have, from the servers the client named (via) or the room ID's server.
// It reports ok false when no server would describe it or the user may not
// see it (the caller answers 404 either way).
func (s *Server) remoteRoomSummary(ctx context.Context, roomID, userID string, via []string) (map[string]json.RawMessage, bool) {
	if len(via) > maxViaTried*4 {
		via = via[:maxViaTried*4]
	}
	sum, ok, err := s.spaceRoomVia(ctx, &remoteSpaces{}, roomID, userID, via)
	if err != nil || !ok {
		return nil, false
	}
	return sum.Room, true
}

// ---- timestamp_to_event ----

// handleFedTimestampToEvent finds the event closest to ts for a server in
// the room: the room answers as one of that server's joined members would
// see it.
func (s *Server) handleFedTimestampToEvent(w http.ResponseWriter, r *http.Request, origin string, _ []byte) {
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
	ctx := r.Context()
	info, err := roomRequest[*pb.RoomFedInfoReply](ctx, s, &pb.RoomFedInfo{RoomId: roomID})
	if err != nil || !info.Exists {
		writeError(w, r, actors.ErrNotFound("room not found"))
		return
	}
	if !slices.Contains(info.Servers, origin) {
		writeError(w, r, actors.ErrForbidden("server %s is not in room %s", origin, roomID))
		return
	}
	member, err := s.memberOfServer(ctx, roomID, origin, info.Extremities)
	if err != nil {
		writeError(w, r, err)
		return
	}
	rep, err := roomRequest[*pb.RoomQueryReply](ctx, s, &pb.RoomTimestamp{RoomId: roomID, UserId: member, Ts: ts, Dir: dir})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, json.RawMessage(rep.Json))
}

// memberOfServer names a joined member of room from server, read from the
// room's forward extremities and the state before them (as server itself
// may read them): the extremity may be the server's own join, which the
// state before it does not hold.
func (s *Server) memberOfServer(ctx context.Context, roomID, server string, extremities []string) (string, error) {
	joinedFrom := func(raw []byte) string {
		var ev struct {
			Type     string  `json:"type"`
			StateKey *string `json:"state_key"`
			Content  struct {
				Membership string `json:"membership"`
			} `json:"content"`
		}
		if json.Unmarshal(raw, &ev) != nil || ev.Type != "m.room.member" || ev.StateKey == nil ||
			ev.Content.Membership != "join" {
			return ""
		}
		if d, err := eventgraph.IDDomain(*ev.StateKey); err == nil && d == server {
			return *ev.StateKey
		}
		return ""
	}
	for i, ext := range extremities {
		if i == maxViaTried {
			break
		}
		for _, kind := range []string{"event", "state"} {
			rep, err := roomRequest[*pb.RoomFedReadReply](ctx, s, &pb.RoomFedRead{RoomId: roomID, Origin: server,
				Kind: kind, EventIds: []string{ext}})
			if err != nil {
				return "", err
			}
			for _, raw := range rep.Pdus {
				if u := joinedFrom(raw); u != "" {
					return u, nil
				}
			}
		}
	}
	return "", actors.ErrForbidden("server %s is not in room %s", server, roomID)
}

// remoteTimestampToEvent is the client's /timestamp_to_event when the
// local timeline has no event in that direction (local is the room's 404):
// the other servers in the room are asked, a few at most, and the first
// answer wins. It reports whether it wrote the response.
func (s *Server) remoteTimestampToEvent(w http.ResponseWriter, r *http.Request, roomID string, ts int64, dir string, local error) bool {
	var me *actors.MatrixError
	if !errors.As(local, &me) || me.Status != http.StatusNotFound {
		return false
	}
	ctx := r.Context()
	tried := 0
	for _, server := range s.roomServers(ctx, roomID) {
		if server == s.server.ServerName {
			continue
		}
		if tried == maxViaTried {
			break
		}
		tried++
		body, err := s.fed.client.Do(ctx, fedclient.Request{Method: http.MethodGet, Destination: server, Signed: true,
			Limit: 64 << 10, URI: "/_matrix/federation/v1/timestamp_to_event/" + url.PathEscape(roomID) +
				"?dir=" + dir + "&ts=" + strconv.FormatInt(ts, 10)})
		if err != nil {
			s.log.Info("gateway: remote timestamp_to_event", "server", server, "room", roomID, "err", err)
			continue
		}
		var res struct {
			EventID        string `json:"event_id"`
			OriginServerTS int64  `json:"origin_server_ts"`
		}
		if json.Unmarshal(body, &res) != nil || len(res.EventID) < 2 || len(res.EventID) > 255 || res.EventID[0] != '$' {
			continue
		}
		writeJSON(w, http.StatusOK, map[string]any{"event_id": res.EventID, "origin_server_ts": res.OriginServerTS})
		return true
	}
	return false
}

// ---- profiles over federation (MSC4170) ----

// maxProfileRoomsChecked bounds the rooms looked at to tell whether a
// server shares one with a user.
const maxProfileRoomsChecked = 200

// fedProfileLookupAllowed applies restrict_profile_lookups to another
// server's /query/profile: as for local requesters, the profile of a user
// in a public room, or in a room the asking server is in, is served; any
// other is 403 M_FORBIDDEN, which MSC4170 lets federation answer (and
// recommends over 404 for unknown users when lookups are restricted).
func (s *Server) fedProfileLookupAllowed(ctx context.Context, origin, userID string) error {
	if !s.cfg.RestrictProfileLookups {
		return nil
	}
	rep, err := roomRequest[*pb.RoomQueryReply](ctx, s, &pb.UserDirSearch{Term: userID, Limit: maxUserDirLimit})
	if err != nil {
		return err
	}
	var found struct {
		Results []struct {
			UserID string `json:"user_id"`
		} `json:"results"`
	}
	if err := json.Unmarshal(rep.Json, &found); err != nil {
		return err
	}
	for _, u := range found.Results {
		if u.UserID == userID {
			return nil
		}
	}
	acct, err := s.accountQuery(ctx, &pb.AccountQuery{UserId: userID, Kind: "joined_rooms"})
	if err == nil && acct.Found {
		var jr struct {
			JoinedRooms []string `json:"joined_rooms"`
		}
		_ = json.Unmarshal(acct.Json, &jr)
		for i, room := range jr.JoinedRooms {
			if i == maxProfileRoomsChecked {
				break
			}
			if s.serverInRoom(ctx, room, origin) {
				return nil
			}
		}
	}
	return actors.ErrForbidden("this server does not share a room with %s", userID)
}
