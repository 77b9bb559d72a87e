package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
)

const (
	// maxEventBody bounds an event content body: no larger content can fit
	// in a 65536-byte PDU.
	maxEventBody = eventgraph.MaxPDUSize
	// maxInvites bounds createRoom's invite list.
	maxInvites = 100
	// maxInitialState bounds createRoom's initial_state.
	maxInitialState = 100
	// maxRestrictedAllow bounds the allow-list rooms asked about one join.
	maxRestrictedAllow = 16
	maxReasonBytes     = 2048
)

func (s *Server) registerRooms() {
	const v3 = "/_matrix/client/v3"
	s.handle("POST "+v3+"/createRoom", s.authed(s.handleCreateRoom))
	s.handle("POST "+v3+"/join/{roomIdOrAlias}", s.authed(s.handleJoinByIDOrAlias))
	s.handle("POST "+v3+"/knock/{roomIdOrAlias}", s.authed(s.handleKnock))
	s.handle("POST "+v3+"/rooms/{roomId}/join", s.authed(s.handleJoinRoom))
	s.handle("POST "+v3+"/rooms/{roomId}/invite", s.authed(s.handleInvite))
	s.handle("POST "+v3+"/rooms/{roomId}/leave", s.authed(s.handleLeave))
	s.handle("POST "+v3+"/rooms/{roomId}/forget", s.authed(s.handleForget))
	s.handle("POST "+v3+"/rooms/{roomId}/kick", s.authed(s.handleModeration("leave")))
	s.handle("POST "+v3+"/rooms/{roomId}/ban", s.authed(s.handleModeration("ban")))
	s.handle("POST "+v3+"/rooms/{roomId}/unban", s.authed(s.handleModeration("unban")))
	s.handle("PUT "+v3+"/rooms/{roomId}/send/{eventType}/{txnId}", s.authed(s.handleSend))
	s.handle("PUT "+v3+"/rooms/{roomId}/state/{eventType}", s.authed(s.handleSetState))
	s.handle("PUT "+v3+"/rooms/{roomId}/state/{eventType}/{stateKey...}", s.authed(s.handleSetState))
	s.handle("GET "+v3+"/rooms/{roomId}/state/{eventType}", s.authed(s.handleGetStateEvent))
	s.handle("GET "+v3+"/rooms/{roomId}/state/{eventType}/{stateKey...}", s.authed(s.handleGetStateEvent))
	s.handle("GET "+v3+"/rooms/{roomId}/state", s.authed(s.handleRoomQuery("state")))
	s.handle("PUT "+v3+"/rooms/{roomId}/redact/{eventId}/{txnId}", s.authed(s.handleRedact))
	s.handle("GET "+v3+"/rooms/{roomId}/messages", s.authed(s.handleMessages))
	s.handle("GET "+v3+"/rooms/{roomId}/context/{eventId}", s.authed(s.handleContext))
	s.handle("GET "+v3+"/rooms/{roomId}/event/{eventId}", s.authed(s.handleGetEvent))
	s.handle("GET "+v3+"/rooms/{roomId}/members", s.authed(s.handleMembers))
	s.handle("GET "+v3+"/rooms/{roomId}/joined_members", s.authed(s.handleRoomQuery("joined_members")))
	s.handle("GET "+v3+"/joined_rooms", s.authed(s.handleJoinedRooms))
	s.handle("PUT "+v3+"/rooms/{roomId}/typing/{userId}", s.authed(s.handleTyping))
	s.handle("POST "+v3+"/rooms/{roomId}/receipt/{receiptType}/{eventId}", s.authed(s.handleReceipt))
	s.handle("POST "+v3+"/rooms/{roomId}/read_markers", s.authed(s.handleReadMarkers))
}

// ---- shared helpers ----

// pathRoomID returns the {roomId} path value if it is a valid room ID.
func pathRoomID(r *http.Request) (string, error) {
	id := r.PathValue("roomId")
	if eventgraph.ValidateRoomID(id) != nil {
		return "", actors.ErrInvalidParam("%q is not a valid room ID", id)
	}
	return id, nil
}

// validEventID accepts an event ID of any room version's form.
func validEventID(id string) bool {
	for _, v := range []eventgraph.RoomVersionID{"1", "3", "4"} {
		if eventgraph.ValidateEventID(id, eventgraph.MustRoomVersion(v)) == nil {
			return true
		}
	}
	return false
}

func pathEventID(r *http.Request) (string, error) {
	id := r.PathValue("eventId")
	if !validEventID(id) {
		return "", actors.ErrInvalidParam("%q is not a valid event ID", id)
	}
	return id, nil
}

func validEventType(t string) error {
	if t == "" || len(t) > eventgraph.MaxEventTypeBytes || !utf8.ValidString(t) {
		return actors.ErrInvalidParam("event type must be 1 to %d bytes of UTF-8", eventgraph.MaxEventTypeBytes)
	}
	return nil
}

// readContent reads an event content body: a JSON object of at most
// maxEventBody bytes, kept byte for byte (numbers included).
func readContent(r *http.Request) (json.RawMessage, error) {
	body, err := readBody(r, maxEventBody)
	if err != nil {
		return nil, err
	}
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return json.RawMessage(`{}`), nil
	}
	if !json.Valid(body) {
		return nil, errNotJSON
	}
	if body[0] != '{' {
		return nil, actors.ErrBadJSON("event content must be a JSON object")
	}
	return body, nil
}

// roomRequest sends msg to a room and returns its reply as T.
func roomRequest[T proto.Message](ctx context.Context, s *Server, msg pb.Targeted) (T, error) {
	var zero T
	res, err := s.router.Request(ctx, msg)
	if err != nil {
		return zero, err
	}
	rep, ok := res.(T)
	if !ok {
		return zero, errors.New("gateway: unexpected reply from room")
	}
	return rep, nil
}

func (s *Server) roomQuery(ctx context.Context, q *pb.RoomQuery) (json.RawMessage, error) {
	rep, err := roomRequest[*pb.RoomQueryReply](ctx, s, q)
	if err != nil {
		return nil, err
	}
	return rep.Json, nil
}

// memberProfile is the display name and avatar a user's member events
// carry; a user without a profile gets none.
func (s *Server) memberProfile(ctx context.Context, userID string) []byte {
	if !s.isLocalUser(userID) {
		return nil
	}
	p, err := s.profile(ctx, userID)
	if err != nil {
		return nil
	}
	out := map[string]json.RawMessage{}
	for _, k := range []string{"displayname", "avatar_url"} {
		if v, ok := p[k]; ok {
			out[k] = v
		}
	}
	b, _ := json.Marshal(out)
	return b
}

func isForbidden(err error) bool {
	var me *actors.MatrixError
	return errors.As(err, &me) && me.ErrCode == "M_FORBIDDEN"
}

// reasonBody is the body of the membership endpoints.
type reasonBody struct {
	Reason string `json:"reason"`
	UserID string `json:"user_id"`
}

func readReasonBody(r *http.Request) (*reasonBody, error) {
	var b reasonBody
	if err := decodeJSON(r, &b); err != nil {
		return nil, err
	}
	if len(b.Reason) > maxReasonBytes {
		return nil, actors.ErrInvalidParam("reason longer than %d bytes", maxReasonBytes)
	}
	return &b, nil
}

// readMembershipRequest reads what invite, kick, ban and unban share: the
// room ID from the path, and a body with a reason and a valid user_id.
func readMembershipRequest(r *http.Request) (roomID string, b *reasonBody, err error) {
	if roomID, err = pathRoomID(r); err != nil {
		return "", nil, err
	}
	if b, err = readReasonBody(r); err != nil {
		return "", nil, err
	}
	if b.UserID == "" {
		return "", nil, errMissingParam("user_id is required")
	}
	if eventgraph.ValidateUserID(b.UserID) != nil {
		return "", nil, actors.ErrInvalidParam("%q is not a valid user ID", b.UserID)
	}
	return roomID, b, nil
}

// ---- createRoom ----

type createRoomRequest struct {
	Visibility                string                     `json:"visibility"`
	RoomAliasName             *string                    `json:"room_alias_name"`
	Name                      *string                    `json:"name"`
	Topic                     *string                    `json:"topic"`
	Invite                    []string                   `json:"invite"`
	Invite3PID                []json.RawMessage          `json:"invite_3pid"`
	RoomVersion               string                     `json:"room_version"`
	CreationContent           map[string]json.RawMessage `json:"creation_content"`
	InitialState              []initialStateEvent        `json:"initial_state"`
	Preset                    string                     `json:"preset"`
	IsDirect                  bool                       `json:"is_direct"`
	PowerLevelContentOverride map[string]json.RawMessage `json:"power_level_content_override"`
}

type initialStateEvent struct {
	Type     string          `json:"type"`
	StateKey string          `json:"state_key"`
	Content  json.RawMessage `json:"content"`
}

func (s *Server) handleCreateRoom(w http.ResponseWriter, r *http.Request, sess *Session) {
	var req createRoomRequest
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	roomID, err := s.createRoom(r.Context(), sess, &req)
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
}

// createTS is the origin_server_ts of a new room's create event: the clock,
// but strictly increasing on this node. A version 12 room's ID is the hash
// of its create event, so two rooms created by one user with the same
// content in the same millisecond would otherwise get the same ID.
func (s *Server) createTS() int64 {
	for {
		last := s.lastCreateTS.Load()
		ts := max(s.cfg.Now().UnixMilli(), last+1)
		if s.lastCreateTS.CompareAndSwap(last, ts) {
			return ts
		}
	}
}

func (s *Server) createRoom(ctx context.Context, sess *Session, req *createRoomRequest) (string, error) {
	plan, err := s.planCreateRoom(sess.UserID, req)
	if err != nil {
		return "", err
	}
	msg := plan.msg
	msg.CreatorProfile = s.memberProfile(ctx, sess.UserID)
	if plan.rv.RoomIDFromCreateEvent {
		pdu, evID, err := actors.BuildCreateEvent(s.server, plan.rv, "", sess.UserID, plan.createContent, s.createTS())
		if err != nil {
			return "", err
		}
		if msg.RoomId, err = actors.RoomIDForCreateEvent(evID); err != nil {
			return "", err
		}
		msg.CreatePdu = pdu
	} else {
		msg.RoomId = actors.NewRoomID(s.server.ServerName)
		msg.CreateContent = plan.createContent
	}
	// The alias is claimed first: createRoom fails with M_ROOM_IN_USE, and
	// no room is created, when it is taken.
	if plan.alias != "" {
		_, err := roomRequest[*pb.AliasReply](ctx, s, &pb.AliasOp{Alias: plan.alias, Op: "set", RoomId: msg.RoomId, UserId: sess.UserID})
		if err != nil {
			var me *actors.MatrixError
			if errors.As(err, &me) && me.Status == http.StatusConflict {
				return "", errStatus(http.StatusBadRequest, "M_ROOM_IN_USE", "room alias already taken")
			}
			return "", err
		}
	}
	if _, err := roomRequest[*pb.CreateRoomReply](ctx, s, msg); err != nil {
		if plan.alias != "" {
			_, _ = s.router.Request(context.WithoutCancel(ctx), &pb.AliasOp{Alias: plan.alias, Op: "delete", RoomId: msg.RoomId, Admin: true})
		}
		return "", err
	}
	if plan.alias != "" {
		if _, err := roomRequest[*pb.Empty](ctx, s, &pb.RoomAliasUpdate{RoomId: msg.RoomId, Alias: plan.alias}); err != nil {
			return "", err
		}
	}
	if plan.publish {
		if err := s.setDirectoryVisibility(ctx, msg.RoomId, sess.UserID, "public"); err != nil {
			return "", err
		}
	}
	return msg.RoomId, nil
}

// createPlan is a validated createRoom request turned into the room's
// initial events.
type createPlan struct {
	rv            *eventgraph.RoomVersion
	msg           *pb.CreateRoom
	createContent json.RawMessage
	alias         string
	publish       bool
}

// planCreateRoom validates a createRoom request and lays out its events in
// the order the spec gives: power levels (with the override), canonical
// alias, the preset's join rules, history visibility and guest access
// (unless initial_state sets them), initial_state, name, topic. The create
// event, the creator's join and the invites are the room's to write.
func (s *Server) planCreateRoom(creator string, req *createRoomRequest) (*createPlan, error) {
	switch req.Visibility {
	case "", "private", "public":
	default:
		return nil, actors.ErrInvalidParam("visibility must be public or private")
	}
	preset := req.Preset
	switch preset {
	case "":
		preset = "private_chat"
		if req.Visibility == "public" {
			preset = "public_chat"
		}
	case "private_chat", "public_chat", "trusted_private_chat":
	default:
		return nil, actors.ErrInvalidParam("unknown preset %q", req.Preset)
	}
	version := req.RoomVersion
	if version == "" {
		version = string(eventgraph.DefaultRoomVersion)
	}
	rv, ok := eventgraph.GetRoomVersion(eventgraph.RoomVersionID(version))
	if !ok {
		return nil, errStatus(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "unsupported room version "+strconv.Quote(version))
	}
	if len(req.Invite3PID) > 0 {
		return nil, actors.ErrInvalidParam("third-party invites are not supported")
	}
	if len(req.Invite) > maxInvites {
		return nil, actors.ErrInvalidParam("at most %d invites", maxInvites)
	}
	var invites []string
	for _, u := range req.Invite {
		if eventgraph.ValidateUserID(u) != nil {
			return nil, actors.ErrInvalidParam("%q is not a valid user ID", u)
		}
		if u != creator && !containsString(invites, u) {
			invites = append(invites, u)
		}
	}
	if len(req.InitialState) > maxInitialState {
		return nil, actors.ErrInvalidParam("at most %d initial state events", maxInitialState)
	}
	plan := &createPlan{rv: rv, publish: req.Visibility == "public"}

	// m.room.create content: creation_content without the keys the server
	// sets, the room version, the creator before v11 and, for a trusted
	// private chat in v12, the invitees as additional creators.
	cc := map[string]json.RawMessage{}
	for k, v := range req.CreationContent {
		cc[k] = v
	}
	delete(cc, "creator")
	cc["room_version"], _ = json.Marshal(version)
	if !rv.ImplicitCreator {
		cc["creator"], _ = json.Marshal(creator)
	}
	if rv.PrivilegedCreators && preset == "trusted_private_chat" && len(invites) > 0 {
		var extra []string
		if raw, ok := cc["additional_creators"]; ok {
			if json.Unmarshal(raw, &extra) != nil {
				return nil, actors.ErrBadJSON("additional_creators must be a list of user IDs")
			}
		}
		for _, u := range invites {
			if !containsString(extra, u) {
				extra = append(extra, u)
			}
		}
		cc["additional_creators"], _ = json.Marshal(extra)
	}
	createContent, err := json.Marshal(cc)
	if err != nil {
		return nil, actors.ErrBadJSON("creation_content: %v", err)
	}
	plan.createContent = createContent

	initial := map[[2]string]bool{}
	var fromInitial []*pb.StateEvent
	var initialPL json.RawMessage
	for _, ev := range req.InitialState {
		if err := validEventType(ev.Type); err != nil {
			return nil, actors.ErrBadJSON("initial_state: %s", err.(*actors.MatrixError).Message)
		}
		if len(ev.Content) == 0 || bytes.TrimSpace(ev.Content)[0] != '{' {
			return nil, actors.ErrBadJSON("initial_state content must be a JSON object")
		}
		if ev.Type == "m.room.create" || (ev.Type == "m.room.member") {
			return nil, errStatus(http.StatusBadRequest, "M_INVALID_ROOM_STATE", "initial_state may not set "+ev.Type)
		}
		if ev.Type == "m.room.power_levels" && ev.StateKey == "" {
			initialPL = ev.Content
			continue
		}
		if (ev.Type == "m.room.name" && req.Name != nil || ev.Type == "m.room.topic" && req.Topic != nil) && ev.StateKey == "" {
			continue
		}
		initial[[2]string{ev.Type, ev.StateKey}] = true
		fromInitial = append(fromInitial, &pb.StateEvent{Type: ev.Type, StateKey: ev.StateKey, Content: ev.Content})
	}

	var events []*pb.StateEvent
	pl, err := powerLevelsContent(rv, creator, preset, invites, initialPL, req.PowerLevelContentOverride)
	if err != nil {
		return nil, err
	}
	events = append(events, &pb.StateEvent{Type: "m.room.power_levels", Content: pl})
	if req.RoomAliasName != nil {
		alias, err := s.localAlias(*req.RoomAliasName)
		if err != nil {
			return nil, err
		}
		plan.alias = alias
		c, _ := json.Marshal(map[string]string{"alias": alias})
		events = append(events, &pb.StateEvent{Type: "m.room.canonical_alias", Content: c})
	}
	joinRule, guest := "invite", "can_join"
	if preset == "public_chat" {
		joinRule, guest = "public", "forbidden"
	}
	for _, e := range []struct{ typ, key, val string }{
		{"m.room.join_rules", "join_rule", joinRule},
		{"m.room.history_visibility", "history_visibility", "shared"},
		{"m.room.guest_access", "guest_access", guest},
	} {
		if initial[[2]string{e.typ, ""}] {
			continue
		}
		c, _ := json.Marshal(map[string]string{e.key: e.val})
		events = append(events, &pb.StateEvent{Type: e.typ, Content: c})
	}
	events = append(events, fromInitial...)
	if req.Name != nil {
		c, _ := json.Marshal(map[string]string{"name": *req.Name})
		events = append(events, &pb.StateEvent{Type: "m.room.name", Content: c})
	}
	if req.Topic != nil {
		c, _ := json.Marshal(map[string]any{"topic": *req.Topic,
			"m.topic": map[string]any{"m.text": []map[string]string{{"body": *req.Topic, "mimetype": "text/plain"}}}})
		events = append(events, &pb.StateEvent{Type: "m.room.topic", Content: c})
	}
	plan.msg = &pb.CreateRoom{RoomVersion: version, Creator: creator, Initial: events, Invite: invites, IsDirect: req.IsDirect}
	return plan, nil
}

// powerLevelsContent is the default m.room.power_levels of a new room (the
// creator at 100 before v12, where creators have infinite power instead;
// trusted private chats give invitees the creator's level), overlaid by
// initial_state's power levels and then by power_level_content_override.
func powerLevelsContent(rv *eventgraph.RoomVersion, creator, preset string, invites []string,
	initial json.RawMessage, override map[string]json.RawMessage) (json.RawMessage, error) {
	users := map[string]int{}
	if !rv.PrivilegedCreators {
		users[creator] = 100
		if preset == "trusted_private_chat" {
			for _, u := range invites {
				users[u] = 100
			}
		}
	}
	tombstone := 100
	if rv.PrivilegedCreators {
		tombstone = 150
	}
	invite := 0
	if preset == "public_chat" {
		invite = 50
	}
	pl := map[string]any{
		"users":          users,
		"users_default":  0,
		"events_default": 0,
		"state_default":  50,
		"ban":            50,
		"kick":           50,
		"redact":         50,
		"invite":         invite,
		"notifications":  map[string]int{"room": 50},
		"events": map[string]int{
			"m.room.name":               50,
			"m.room.power_levels":       100,
			"m.room.history_visibility": 100,
			"m.room.canonical_alias":    50,
			"m.room.avatar":             50,
			"m.room.tombstone":          tombstone,
			"m.room.server_acl":         100,
			"m.room.encryption":         100,
		},
	}
	merged := map[string]json.RawMessage{}
	for k, v := range pl {
		merged[k], _ = json.Marshal(v)
	}
	if len(initial) > 0 {
		var ini map[string]json.RawMessage
		if json.Unmarshal(initial, &ini) != nil {
			return nil, actors.ErrBadJSON("initial power levels must be a JSON object")
		}
		for k, v := range ini {
			merged[k] = v
		}
	}
	for k, v := range override {
		merged[k] = v
	}
	out, err := json.Marshal(merged)
	if err != nil {
		return nil, actors.ErrBadJSON("power_level_content_override: %v", err)
	}
	return out, nil
}

// localAlias turns an alias local part into "#part:server", checking it.
func (s *Server) localAlias(local string) (string, error) {
	if local == "" || strings.ContainsAny(local, ":# \t\n\r") {
		return "", actors.ErrInvalidParam("invalid room alias name")
	}
	alias := "#" + local + ":" + s.server.ServerName
	if len(alias) > 255 || eventgraph.ValidateRoomAlias(alias) != nil {
		return "", actors.ErrInvalidParam("invalid room alias name")
	}
	return alias, nil
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// ---- membership ----

// resolveRoom turns a room ID or a local alias into a room ID.
func (s *Server) resolveRoom(ctx context.Context, idOrAlias string) (string, error) {
	switch {
	case strings.HasPrefix(idOrAlias, "!"):
		if eventgraph.ValidateRoomID(idOrAlias) != nil {
			return "", actors.ErrInvalidParam("%q is not a valid room ID", idOrAlias)
		}
		return idOrAlias, nil
	case strings.HasPrefix(idOrAlias, "#"):
		if eventgraph.ValidateRoomAlias(idOrAlias) != nil {
			return "", actors.ErrInvalidParam("%q is not a valid room alias", idOrAlias)
		}
		rep, err := roomRequest[*pb.AliasReply](ctx, s, &pb.AliasOp{Alias: idOrAlias, Op: "get"})
		if err != nil {
			return "", err
		}
		return rep.RoomId, nil
	}
	return "", actors.ErrInvalidParam("%q is neither a room ID nor a room alias", idOrAlias)
}

func (s *Server) handleJoinByIDOrAlias(w http.ResponseWriter, r *http.Request, sess *Session) {
	if s.joinByRemoteAlias(w, r, sess) {
		return
	}
	roomID, err := s.resolveRoom(r.Context(), r.PathValue("roomIdOrAlias"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	s.joinRoom(w, r, sess, roomID)
}

func (s *Server) handleJoinRoom(w http.ResponseWriter, r *http.Request, sess *Session) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	s.joinRoom(w, r, sess, roomID)
}

func (s *Server) joinRoom(w http.ResponseWriter, r *http.Request, sess *Session, roomID string) {
	b, err := readReasonBody(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	ctx := r.Context()
	if s.joinRemote(w, r, sess, roomID, b.Reason) {
		return
	}
	m := &pb.Membership{RoomId: roomID, Sender: sess.UserID, Target: sess.UserID, Membership: "join",
		Reason: b.Reason, Profile: s.memberProfile(ctx, sess.UserID), DeviceId: sess.DeviceID}
	_, err = roomRequest[*pb.SendEventReply](ctx, s, m)
	if err != nil && isForbidden(err) {
		// A restricted room admits members of the rooms its join rule
		// allows: find one the user is in and let the room authorise.
		if via := s.restrictedVia(ctx, roomID, sess.UserID); via != "" {
			m.RestrictedVia = via
			_, err = roomRequest[*pb.SendEventReply](ctx, s, m)
		}
	}
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
}

// restrictedVia returns a room of roomID's restricted join rule's allow list
// in which userID is joined, or "".
func (s *Server) restrictedVia(ctx context.Context, roomID, userID string) string {
	raw, err := s.roomQuery(ctx, &pb.RoomQuery{RoomId: roomID, UserId: userID, Kind: "join_rules"})
	if err != nil {
		return ""
	}
	var jr struct {
		JoinRule string   `json:"join_rule"`
		Allow    []string `json:"allow"`
	}
	if json.Unmarshal(raw, &jr) != nil || (jr.JoinRule != "restricted" && jr.JoinRule != "knock_restricted") {
		return ""
	}
	for i, allowed := range jr.Allow {
		if i == maxRestrictedAllow {
			break
		}
		raw, err := s.roomQuery(ctx, &pb.RoomQuery{RoomId: allowed, UserId: userID, Kind: "membership"})
		if err != nil {
			continue
		}
		var m struct {
			Membership string `json:"membership"`
		}
		if json.Unmarshal(raw, &m) == nil && m.Membership == "join" {
			return allowed
		}
	}
	return ""
}

func (s *Server) handleKnock(w http.ResponseWriter, r *http.Request, sess *Session) {
	if s.knockRemote(w, r, sess) {
		return
	}
	roomID, err := s.resolveRoom(r.Context(), r.PathValue("roomIdOrAlias"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	b, err := readReasonBody(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	ctx := r.Context()
	_, err = roomRequest[*pb.SendEventReply](ctx, s, &pb.Membership{RoomId: roomID, Sender: sess.UserID, Target: sess.UserID,
		Membership: "knock", Reason: b.Reason, Profile: s.memberProfile(ctx, sess.UserID), DeviceId: sess.DeviceID})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
}

func (s *Server) handleInvite(w http.ResponseWriter, r *http.Request, sess *Session) {
	roomID, b, err := readMembershipRequest(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if s.inviteRemote(w, r, sess, roomID, b) {
		return
	}
	ctx := r.Context()
	var profile []byte
	if s.isLocalUser(b.UserID) {
		exists, err := s.userExists(ctx, b.UserID)
		if err != nil {
			writeError(w, r, err)
			return
		}
		if !exists {
			writeError(w, r, actors.ErrNotFound("user %s does not exist", b.UserID))
			return
		}
		profile = s.memberProfile(ctx, b.UserID)
	}
	_, err = roomRequest[*pb.SendEventReply](ctx, s, &pb.Membership{RoomId: roomID, Sender: sess.UserID, Target: b.UserID,
		Membership: "invite", Reason: b.Reason, Profile: profile, DeviceId: sess.DeviceID})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

func (s *Server) handleLeave(w http.ResponseWriter, r *http.Request, sess *Session) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	b, err := readReasonBody(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if s.leaveRemote(w, r, sess, roomID, b.Reason) {
		return
	}
	_, err = roomRequest[*pb.SendEventReply](r.Context(), s, &pb.Membership{RoomId: roomID, Sender: sess.UserID,
		Target: sess.UserID, Membership: "leave", Reason: b.Reason, DeviceId: sess.DeviceID})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

// handleModeration serves kick (membership leave of another user), ban and
// unban: the body names the target.
func (s *Server) handleModeration(membership string) func(http.ResponseWriter, *http.Request, *Session) {
	return func(w http.ResponseWriter, r *http.Request, sess *Session) {
		roomID, b, err := readMembershipRequest(r)
		if err != nil {
			writeError(w, r, err)
			return
		}
		_, err = roomRequest[*pb.SendEventReply](r.Context(), s, &pb.Membership{RoomId: roomID, Sender: sess.UserID,
			Target: b.UserID, Membership: membership, Reason: b.Reason, DeviceId: sess.DeviceID})
		if err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{})
	}
}

// handleForget asks the user actor to drop a room the user has left; it
// refuses (400 M_UNKNOWN) while the user is still in it.
func (s *Server) handleForget(w http.ResponseWriter, r *http.Request, sess *Session) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	ctx := r.Context()
	raw, err := s.roomQuery(ctx, &pb.RoomQuery{RoomId: roomID, UserId: sess.UserID, Kind: "membership"})
	if err != nil {
		writeError(w, r, err)
		return
	}
	var m struct {
		Membership string `json:"membership"`
	}
	_ = json.Unmarshal(raw, &m)
	if m.Membership == "join" || m.Membership == "invite" || m.Membership == "knock" {
		writeError(w, r, errStatus(http.StatusBadRequest, "M_UNKNOWN", "user "+sess.UserID+" is in room "+roomID))
		return
	}
	if _, err := s.accountUpdate(ctx, &pb.AccountUpdate{UserId: sess.UserID, Kind: "forget", RoomId: roomID}); err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

// ---- sending ----

func (s *Server) handleSend(w http.ResponseWriter, r *http.Request, sess *Session) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	typ, txn := r.PathValue("eventType"), r.PathValue("txnId")
	if err := validEventType(typ); err != nil {
		writeError(w, r, err)
		return
	}
	if txn == "" || len(txn) > 255 {
		writeError(w, r, actors.ErrInvalidParam("transaction ID must be 1 to 255 bytes"))
		return
	}
	content, err := readContent(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	rep, err := roomRequest[*pb.SendEventReply](r.Context(), s, &pb.SendEvent{RoomId: roomID, Sender: sess.UserID,
		DeviceId: sess.DeviceID, TxnId: txn, Type: typ, Content: content})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"event_id": rep.EventId})
}

func (s *Server) handleSetState(w http.ResponseWriter, r *http.Request, sess *Session) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	typ, key := r.PathValue("eventType"), r.PathValue("stateKey")
	if err := validEventType(typ); err != nil {
		writeError(w, r, err)
		return
	}
	if len(key) > eventgraph.MaxStateKeyBytes {
		writeError(w, r, errStatus(http.StatusBadRequest, "M_TOO_LARGE", "state key longer than 255 bytes"))
		return
	}
	content, err := readContent(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	ctx := r.Context()
	if typ == "m.room.canonical_alias" && key == "" {
		if err := s.checkCanonicalAlias(ctx, roomID, content); err != nil {
			writeError(w, r, err)
			return
		}
	}
	rep, err := roomRequest[*pb.SendEventReply](ctx, s, &pb.SendEvent{RoomId: roomID, Sender: sess.UserID,
		DeviceId: sess.DeviceID, Type: typ, IsState: true, StateKey: key, Content: content})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"event_id": rep.EventId})
}

// checkCanonicalAlias applies the spec's rule for m.room.canonical_alias:
// every alias it names must be valid (400 M_INVALID_PARAM) and point to the
// room (400 M_BAD_ALIAS). Only local aliases can be checked here; a remote
// one is refused as unverifiable.
func (s *Server) checkCanonicalAlias(ctx context.Context, roomID string, content json.RawMessage) error {
	var c struct {
		Alias      *string  `json:"alias"`
		AltAliases []string `json:"alt_aliases"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return actors.ErrBadJSON("canonical alias content: %s", jsonTypeError(err))
	}
	aliases := append([]string{}, c.AltAliases...)
	if c.Alias != nil && *c.Alias != "" {
		aliases = append(aliases, *c.Alias)
	}
	if len(aliases) > maxInvites {
		return actors.ErrInvalidParam("too many aliases")
	}
	for _, a := range aliases {
		if eventgraph.ValidateRoomAlias(a) != nil {
			return actors.ErrInvalidParam("%q is not a valid room alias", a)
		}
		rep, err := roomRequest[*pb.AliasReply](ctx, s, &pb.AliasOp{Alias: a, Op: "get"})
		if err != nil || rep.RoomId != roomID {
			return errStatus(http.StatusBadRequest, "M_BAD_ALIAS", "room alias "+a+" does not point to this room")
		}
	}
	return nil
}

func (s *Server) handleRedact(w http.ResponseWriter, r *http.Request, sess *Session) {
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
	txn := r.PathValue("txnId")
	if txn == "" || len(txn) > 255 {
		writeError(w, r, actors.ErrInvalidParam("transaction ID must be 1 to 255 bytes"))
		return
	}
	b, err := readReasonBody(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	content := map[string]string{}
	if b.Reason != "" {
		content["reason"] = b.Reason
	}
	c, _ := json.Marshal(content)
	rep, err := roomRequest[*pb.SendEventReply](r.Context(), s, &pb.SendEvent{RoomId: roomID, Sender: sess.UserID,
		DeviceId: sess.DeviceID, TxnId: txn, Type: "m.room.redaction", Content: c, Redacts: eventID})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"event_id": rep.EventId})
}

// ---- reading ----

// handleRoomQuery serves the reads that need nothing but the room ID and
// the caller: the whole current state, the joined members.
func (s *Server) handleRoomQuery(kind string) func(http.ResponseWriter, *http.Request, *Session) {
	return func(w http.ResponseWriter, r *http.Request, sess *Session) {
		roomID, err := pathRoomID(r)
		if err != nil {
			writeError(w, r, err)
			return
		}
		raw, err := s.roomQuery(r.Context(), &pb.RoomQuery{RoomId: roomID, UserId: sess.UserID, Kind: kind})
		if err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, raw)
	}
}

// handleGetStateEvent returns one piece of state's content, or the whole
// event with ?format=event.
func (s *Server) handleGetStateEvent(w http.ResponseWriter, r *http.Request, sess *Session) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	typ := r.PathValue("eventType")
	if err := validEventType(typ); err != nil {
		writeError(w, r, err)
		return
	}
	raw, err := s.roomQuery(r.Context(), &pb.RoomQuery{RoomId: roomID, UserId: sess.UserID, Kind: "state_event",
		Type: typ, StateKey: r.PathValue("stateKey")})
	if err != nil {
		writeError(w, r, err)
		return
	}
	if r.URL.Query().Get("format") == "event" {
		writeJSON(w, http.StatusOK, raw)
		return
	}
	var ev struct {
		Content json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(raw, &ev); err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ev.Content)
}

// queryLimit parses a limit query parameter (absent: 0, the room's default).
func queryLimit(r *http.Request) (int32, error) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, actors.ErrInvalidParam("limit must be a non-negative integer")
	}
	return int32(min(n, 1000)), nil
}

// queryFilter reads a RoomEventFilter query parameter as JSON.
func queryFilter(r *http.Request) ([]byte, error) {
	f := r.URL.Query().Get("filter")
	if f == "" {
		return nil, nil
	}
	if len(f) > maxEventBody {
		return nil, errTooLarge
	}
	var probe map[string]json.RawMessage
	if err := json.Unmarshal([]byte(f), &probe); err != nil {
		return nil, actors.ErrInvalidParam("filter must be a JSON object")
	}
	var typed struct {
		Limit           *int      `json:"limit"`
		Types           *[]string `json:"types"`
		NotTypes        []string  `json:"not_types"`
		Senders         *[]string `json:"senders"`
		NotSenders      []string  `json:"not_senders"`
		ContainsURL     *bool     `json:"contains_url"`
		LazyLoadMembers bool      `json:"lazy_load_members"`
	}
	if err := json.Unmarshal([]byte(f), &typed); err != nil {
		return nil, actors.ErrInvalidParam("invalid filter: %s", jsonTypeError(err))
	}
	return []byte(f), nil
}

func (s *Server) handleMessages(w http.ResponseWriter, r *http.Request, sess *Session) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	q := r.URL.Query()
	dir := q.Get("dir")
	if dir != "b" && dir != "f" {
		writeError(w, r, actors.ErrInvalidParam("dir must be b or f"))
		return
	}
	limit, err := queryLimit(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	filter, err := queryFilter(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	raw, err := s.messagesBackfilled(r.Context(), &pb.RoomQuery{RoomId: roomID, UserId: sess.UserID, Kind: "messages",
		From: q.Get("from"), To: q.Get("to"), Dir: dir, Limit: limit, Filter: filter})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, raw)
}

func (s *Server) handleContext(w http.ResponseWriter, r *http.Request, sess *Session) {
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
	limit, err := queryLimit(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if r.URL.Query().Get("limit") == "0" {
		limit = -1 // no context, only the event
	}
	filter, err := queryFilter(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	raw, err := s.roomQuery(r.Context(), &pb.RoomQuery{RoomId: roomID, UserId: sess.UserID, Kind: "context",
		EventId: eventID, Limit: limit, Filter: filter})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, raw)
}

func (s *Server) handleGetEvent(w http.ResponseWriter, r *http.Request, sess *Session) {
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
	raw, err := s.roomQuery(r.Context(), &pb.RoomQuery{RoomId: roomID, UserId: sess.UserID, Kind: "event", EventId: eventID})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, raw)
}

func validMembershipFilter(m string) bool {
	switch m {
	case "", "join", "invite", "knock", "leave", "ban":
		return true
	}
	return false
}

func (s *Server) handleMembers(w http.ResponseWriter, r *http.Request, sess *Session) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	q := r.URL.Query()
	if !validMembershipFilter(q.Get("membership")) || !validMembershipFilter(q.Get("not_membership")) {
		writeError(w, r, actors.ErrInvalidParam("unknown membership"))
		return
	}
	raw, err := s.roomQuery(r.Context(), &pb.RoomQuery{RoomId: roomID, UserId: sess.UserID, Kind: "members",
		At: q.Get("at"), Membership: q.Get("membership"), NotMembership: q.Get("not_membership")})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, raw)
}

func (s *Server) handleJoinedRooms(w http.ResponseWriter, r *http.Request, sess *Session) {
	rep, err := s.accountQuery(r.Context(), &pb.AccountQuery{UserId: sess.UserID, Kind: "joined_rooms"})
	if err != nil {
		writeError(w, r, err)
		return
	}
	if len(rep.Json) == 0 {
		writeJSON(w, http.StatusOK, map[string]any{"joined_rooms": []string{}})
		return
	}
	writeJSON(w, http.StatusOK, rep.Json)
}

// ---- typing, receipts, read markers ----

func (s *Server) handleTyping(w http.ResponseWriter, r *http.Request, sess *Session) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if r.PathValue("userId") != sess.UserID {
		writeError(w, r, actors.ErrForbidden("cannot set another user's typing state"))
		return
	}
	var b struct {
		Typing  *bool  `json:"typing"`
		Timeout *int64 `json:"timeout"`
	}
	if err := decodeJSON(r, &b); err != nil {
		writeError(w, r, err)
		return
	}
	if b.Typing == nil {
		writeError(w, r, actors.ErrBadJSON("typing is required"))
		return
	}
	timeout := int64(0)
	if b.Timeout != nil {
		if *b.Timeout < 0 {
			writeError(w, r, actors.ErrInvalidParam("timeout must not be negative"))
			return
		}
		timeout = *b.Timeout
	}
	if _, err := roomRequest[*pb.Empty](r.Context(), s, &pb.Typing{RoomId: roomID, UserId: sess.UserID,
		Typing: *b.Typing, TimeoutMs: timeout}); err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

func (s *Server) handleReceipt(w http.ResponseWriter, r *http.Request, sess *Session) {
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
	typ := r.PathValue("receiptType")
	var b struct {
		ThreadID *json.RawMessage `json:"thread_id"`
	}
	if err := decodeJSON(r, &b); err != nil {
		writeError(w, r, err)
		return
	}
	thread := ""
	if b.ThreadID != nil {
		if json.Unmarshal(*b.ThreadID, &thread) != nil || thread == "" || len(thread) > 255 {
			writeError(w, r, actors.ErrInvalidParam("thread_id field must be a non-empty string"))
			return
		}
	}
	ctx := r.Context()
	switch typ {
	case "m.read", "m.read.private":
		if thread != "" && thread != "main" && !validEventID(thread) {
			writeError(w, r, actors.ErrInvalidParam("thread_id must be main or an event ID"))
			return
		}
		_, err = roomRequest[*pb.Empty](ctx, s, &pb.Receipt{RoomId: roomID, UserId: sess.UserID, ReceiptType: typ,
			EventId: eventID, ThreadId: thread, Ts: s.cfg.Now().UnixMilli()})
	case "m.fully_read":
		if thread != "" {
			writeError(w, r, actors.ErrInvalidParam("m.fully_read takes no thread_id"))
			return
		}
		err = s.setFullyRead(ctx, sess.UserID, roomID, eventID)
	default:
		writeError(w, r, actors.ErrInvalidParam("unknown receipt type %q", typ))
		return
	}
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

// setFullyRead stores the m.fully_read marker as room account data (the
// gateway may write it; client PUTs of it through /account_data are not).
func (s *Server) setFullyRead(ctx context.Context, userID, roomID, eventID string) error {
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
	v, _ := json.Marshal(map[string]string{"event_id": eventID})
	_, err = s.accountUpdate(ctx, &pb.AccountUpdate{UserId: userID, Kind: "room_account_data", RoomId: roomID,
		Key: "m.fully_read", Value: v})
	return err
}

func (s *Server) handleReadMarkers(w http.ResponseWriter, r *http.Request, sess *Session) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	var b struct {
		FullyRead   string `json:"m.fully_read"`
		Read        string `json:"m.read"`
		ReadPrivate string `json:"m.read.private"`
	}
	if err := decodeJSON(r, &b); err != nil {
		writeError(w, r, err)
		return
	}
	for _, id := range []string{b.FullyRead, b.Read, b.ReadPrivate} {
		if id != "" && !validEventID(id) {
			writeError(w, r, actors.ErrInvalidParam("%q is not a valid event ID", id))
			return
		}
	}
	ctx := r.Context()
	for _, rc := range []struct{ typ, id string }{{"m.read", b.Read}, {"m.read.private", b.ReadPrivate}} {
		if rc.id == "" {
			continue
		}
		if _, err := roomRequest[*pb.Empty](ctx, s, &pb.Receipt{RoomId: roomID, UserId: sess.UserID, ReceiptType: rc.typ,
			EventId: rc.id, Ts: s.cfg.Now().UnixMilli()}); err != nil {
			writeError(w, r, err)
			return
		}
	}
	if b.FullyRead != "" {
		if err := s.setFullyRead(ctx, sess.UserID, roomID, b.FullyRead); err != nil {
			writeError(w, r, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}
