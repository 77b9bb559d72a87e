package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
)

const maxSearchTermBytes = 1024

func (s *Server) registerDirectory() {
	const v3 = "/_matrix/client/v3"
	s.handle("GET "+v3+"/directory/room/{roomAlias}", s.handleGetAlias)
	s.handle("PUT "+v3+"/directory/room/{roomAlias}", s.authed(s.handleSetAlias))
	s.handle("DELETE "+v3+"/directory/room/{roomAlias}", s.authed(s.handleDeleteAlias))
	s.handle("GET "+v3+"/rooms/{roomId}/aliases", s.authed(s.handleRoomAliases))
	s.handle("GET "+v3+"/directory/list/room/{roomId}", s.handleGetDirectoryVisibility)
	s.handle("PUT "+v3+"/directory/list/room/{roomId}", s.authed(s.handleSetDirectoryVisibility))
	s.handle("GET "+v3+"/publicRooms", s.handleGetPublicRooms)
	s.handle("POST "+v3+"/publicRooms", s.authed(s.handlePostPublicRooms))
}

// pathAlias returns the {roomAlias} path value if it is a valid alias.
func pathAlias(r *http.Request) (string, error) {
	a := r.PathValue("roomAlias")
	if len(a) > 255 || eventgraph.ValidateRoomAlias(a) != nil {
		return "", errStatus(http.StatusBadRequest, "M_INVALID_PARAM", "room alias invalid")
	}
	return a, nil
}

func (s *Server) handleGetAlias(w http.ResponseWriter, r *http.Request) {
	alias, err := pathAlias(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if _, domain, _ := cutColon(alias); domain != s.server.ServerName {
		// Another server's alias: that server answers (query/directory).
		roomID, servers, err := s.resolveRemoteAlias(r.Context(), alias)
		if err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"room_id": roomID, "servers": servers})
		return
	}
	rep, err := roomRequest[*pb.AliasReply](r.Context(), s, &pb.AliasOp{Alias: alias, Op: "get"})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"room_id": rep.RoomId, "servers": rep.Servers})
}

// handleSetAlias creates a local alias for a room the caller is joined to
// (Synapse's default require_membership_for_aliases), then adds it to the
// room's list of local aliases.
func (s *Server) handleSetAlias(w http.ResponseWriter, r *http.Request, sess *Session) {
	alias, err := pathAlias(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if _, domain, _ := cutColon(alias); domain != s.server.ServerName {
		writeError(w, r, actors.ErrInvalidParam("room alias must be on this server"))
		return
	}
	var b struct {
		RoomID string `json:"room_id"`
	}
	if err := decodeJSON(r, &b); err != nil {
		writeError(w, r, err)
		return
	}
	if b.RoomID == "" {
		writeError(w, r, errMissingParam("room_id is required"))
		return
	}
	if eventgraph.ValidateRoomID(b.RoomID) != nil {
		writeError(w, r, actors.ErrInvalidParam("%q is not a valid room ID", b.RoomID))
		return
	}
	ctx := r.Context()
	if err := s.mustBeJoined(ctx, b.RoomID, sess.UserID); err != nil {
		writeError(w, r, err)
		return
	}
	if _, err := roomRequest[*pb.AliasReply](ctx, s, &pb.AliasOp{Alias: alias, Op: "set", RoomId: b.RoomID, UserId: sess.UserID}); err != nil {
		writeError(w, r, err)
		return
	}
	if _, err := roomRequest[*pb.Empty](ctx, s, &pb.RoomAliasUpdate{RoomId: b.RoomID, Alias: alias}); err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

func cutColon(id string) (string, string, bool) {
	for i := 0; i < len(id); i++ {
		if id[i] == ':' {
			return id[:i], id[i+1:], true
		}
	}
	return id, "", false
}

// mustBeJoined refuses with 403 unless userID is joined to roomID (404 when
// the room does not exist).
func (s *Server) mustBeJoined(ctx context.Context, roomID, userID string) error {
	raw, err := s.roomQuery(ctx, &pb.RoomQuery{RoomId: roomID, UserId: userID, Kind: "membership"})
	if err != nil {
		return err
	}
	var m struct {
		Membership string `json:"membership"`
	}
	if json.Unmarshal(raw, &m) != nil || m.Membership != "join" {
		return actors.ErrForbidden("user %s is not in room %s", userID, roomID)
	}
	return nil
}

// handleDeleteAlias removes an alias. Its creator, a server admin, or a room
// member with the power to change the canonical alias may do so.
func (s *Server) handleDeleteAlias(w http.ResponseWriter, r *http.Request, sess *Session) {
	alias, err := pathAlias(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	ctx := r.Context()
	cur, err := roomRequest[*pb.AliasReply](ctx, s, &pb.AliasOp{Alias: alias, Op: "get"})
	if err != nil {
		writeError(w, r, err)
		return
	}
	vouched := cur.Creator != sess.UserID && (s.isServerAdmin(ctx, sess.UserID) || s.canSetCanonicalAlias(ctx, cur.RoomId, sess.UserID))
	if _, err := roomRequest[*pb.AliasReply](ctx, s, &pb.AliasOp{Alias: alias, Op: "delete", RoomId: cur.RoomId,
		UserId: sess.UserID, Admin: vouched}); err != nil {
		writeError(w, r, err)
		return
	}
	if _, err := roomRequest[*pb.Empty](ctx, s, &pb.RoomAliasUpdate{RoomId: cur.RoomId, Alias: alias, Remove: true}); err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

func (s *Server) isServerAdmin(ctx context.Context, userID string) bool {
	rep, err := s.accountQuery(ctx, &pb.AccountQuery{UserId: userID, Kind: "info"})
	if err != nil || !rep.Found {
		return false
	}
	var info struct {
		Admin bool `json:"admin"`
	}
	return json.Unmarshal(rep.Json, &info) == nil && info.Admin
}

func (s *Server) canSetCanonicalAlias(ctx context.Context, roomID, userID string) bool {
	raw, err := s.roomQuery(ctx, &pb.RoomQuery{RoomId: roomID, UserId: userID, Kind: "power", Type: "m.room.canonical_alias"})
	if err != nil {
		return false
	}
	var p struct {
		Allowed bool `json:"allowed"`
	}
	return json.Unmarshal(raw, &p) == nil && p.Allowed
}

func (s *Server) handleRoomAliases(w http.ResponseWriter, r *http.Request, sess *Session) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	raw, err := s.roomQuery(r.Context(), &pb.RoomQuery{RoomId: roomID, UserId: sess.UserID, Kind: "aliases"})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, raw)
}

func (s *Server) handleGetDirectoryVisibility(w http.ResponseWriter, r *http.Request) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	rep, err := roomRequest[*pb.RoomPublishReply](r.Context(), s, &pb.RoomPublish{RoomId: roomID})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"visibility": rep.Visibility})
}

func (s *Server) handleSetDirectoryVisibility(w http.ResponseWriter, r *http.Request, sess *Session) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	var b struct {
		Visibility string `json:"visibility"`
	}
	if err := decodeJSON(r, &b); err != nil {
		writeError(w, r, err)
		return
	}
	if b.Visibility == "" {
		b.Visibility = "public"
	}
	if b.Visibility != "public" && b.Visibility != "private" {
		writeError(w, r, actors.ErrInvalidParam("visibility must be public or private"))
		return
	}
	if err := s.setDirectoryVisibility(r.Context(), roomID, sess.UserID, b.Visibility); err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

// setDirectoryVisibility has the room (which checks the caller's power and
// keeps its published flag) change its visibility, then updates the
// directory before answering, so the client's next listing shows it.
func (s *Server) setDirectoryVisibility(ctx context.Context, roomID, userID, visibility string) error {
	rep, err := roomRequest[*pb.RoomPublishReply](ctx, s, &pb.RoomPublish{RoomId: roomID, UserId: userID, Visibility: visibility})
	if err != nil {
		return err
	}
	op := &pb.DirectoryOp{Op: "unpublish", RoomId: roomID, Pos: rep.Pos}
	if visibility == "public" {
		op = &pb.DirectoryOp{Op: "publish", RoomId: roomID, Summary: rep.Summary, Pos: rep.Pos}
	}
	_, err = roomRequest[*pb.DirectoryReply](ctx, s, op)
	return err
}

func (s *Server) handleGetPublicRooms(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if s.remotePublicRooms(w, r, q.Get("server")) { // federation_directory.go
		return
	}
	if err := s.checkDirectoryServer(q.Get("server")); err != nil {
		writeError(w, r, err)
		return
	}
	limit := 0
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, r, actors.ErrInvalidParam("limit must be a non-negative integer"))
			return
		}
		limit = n
	}
	s.listPublicRooms(w, r, limit, q.Get("since"), "")
}

func (s *Server) handlePostPublicRooms(w http.ResponseWriter, r *http.Request, _ *Session) {
	if s.remotePublicRooms(w, r, r.URL.Query().Get("server")) { // federation_directory.go
		return
	}
	if err := s.checkDirectoryServer(r.URL.Query().Get("server")); err != nil {
		writeError(w, r, err)
		return
	}
	var b struct {
		Limit  *int   `json:"limit"`
		Since  string `json:"since"`
		Filter *struct {
			GenericSearchTerm string             `json:"generic_search_term"`
			RoomTypes         *[]json.RawMessage `json:"room_types"`
		} `json:"filter"`
		IncludeAllNetworks   bool   `json:"include_all_networks"`
		ThirdPartyInstanceID string `json:"third_party_instance_id"`
	}
	if err := decodeJSON(r, &b); err != nil {
		writeError(w, r, err)
		return
	}
	limit := 0
	if b.Limit != nil {
		if *b.Limit < 0 {
			writeError(w, r, actors.ErrInvalidParam("limit must not be negative"))
			return
		}
		limit = *b.Limit
	}
	filter := ""
	if b.Filter != nil {
		if len(b.Filter.GenericSearchTerm) > maxSearchTermBytes {
			writeError(w, r, actors.ErrInvalidParam("search term too long"))
			return
		}
		if b.Filter.RoomTypes != nil && len(*b.Filter.RoomTypes) > 64 {
			writeError(w, r, actors.ErrInvalidParam("too many room types"))
			return
		}
		raw, _ := json.Marshal(b.Filter)
		filter = string(raw)
	}
	if b.ThirdPartyInstanceID != "" {
		// shoal has no third-party networks: their listing is empty.
		writeJSON(w, http.StatusOK, map[string]any{"chunk": []any{}, "total_room_count_estimate": 0})
		return
	}
	s.listPublicRooms(w, r, limit, b.Since, filter)
}

// checkDirectoryServer allows listing only this server's directory: other
// servers' directories need federation.
func (s *Server) checkDirectoryServer(server string) error {
	if server != "" && server != s.server.ServerName {
		return actors.ErrInvalidParam("listing another server's directory is not supported")
	}
	return nil
}

func (s *Server) listPublicRooms(w http.ResponseWriter, r *http.Request, limit int, since, filter string) {
	if len(since) > 64 {
		writeError(w, r, actors.ErrInvalidParam("invalid since token"))
		return
	}
	rep, err := roomRequest[*pb.DirectoryReply](r.Context(), s, &pb.DirectoryOp{Op: "list", Limit: int32(min(limit, 1000)),
		Since: since, Filter: filter})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, rep.Json)
}
