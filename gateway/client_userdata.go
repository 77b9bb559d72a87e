package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
)

// User data: profiles (MSC4133's generic fields), global and per-room
// account data, room tags, filters and presence. Everything is answered by
// the user's actor; a change of display name or avatar is then carried into
// every room the user is joined to as a new membership event.
const (
	maxAccountDataTypeBytes = 255
	maxTagBytes             = 255
	maxDisplaynameBytes     = 256
	maxAvatarURLBytes       = 1000
	maxStatusMsgBytes       = 4096
	maxFilterBytes          = 64 << 10
)

// profileKeyPattern is the spec's grammar of profile field names.
var profileKeyPattern = regexp.MustCompile(`^(avatar_url|displayname|m\.tz|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+)$`)

// protectedAccountData are the types clients may read but not write
// through /account_data (MSC4010).
var protectedAccountData = map[string]bool{"m.push_rules": true, "m.fully_read": true}

func (s *Server) registerUserData() {
	s.handle("GET /_matrix/client/v3/profile/{userId}", s.handleGetProfile)
	s.handle("GET /_matrix/client/v3/profile/{userId}/{keyName}", s.handleGetProfileField)
	s.handle("PUT /_matrix/client/v3/profile/{userId}/{keyName}", s.authed(s.handleSetProfileField))
	s.handle("DELETE /_matrix/client/v3/profile/{userId}/{keyName}", s.authed(s.handleDeleteProfileField))

	s.handle("GET /_matrix/client/v3/user/{userId}/account_data/{type}", s.authed(s.handleGetAccountData))
	s.handle("PUT /_matrix/client/v3/user/{userId}/account_data/{type}", s.authed(s.handleSetAccountData))
	s.handle("GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}", s.authed(s.handleGetAccountData))
	s.handle("PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}", s.authed(s.handleSetAccountData))

	s.handle("GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags", s.authed(s.handleGetTags))
	s.handle("PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}", s.authed(s.handleSetTag))
	s.handle("DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}", s.authed(s.handleSetTag))

	s.handle("POST /_matrix/client/v3/user/{userId}/filter", s.authed(s.handleCreateFilter))
	s.handle("GET /_matrix/client/v3/user/{userId}/filter/{filterId}", s.authed(s.handleGetFilter))

	s.handle("GET /_matrix/client/v3/presence/{userId}/status", s.authed(s.handleGetPresence))
	s.handle("PUT /_matrix/client/v3/presence/{userId}/status", s.authed(s.handleSetPresence))
}

// ---- profiles ----

// profileUser checks the user ID of a profile request.
func (s *Server) profileUser(r *http.Request) (string, error) {
	userID := r.PathValue("userId")
	if eventgraph.ValidateUserID(userID) != nil {
		return "", actors.ErrInvalidParam("invalid user ID")
	}
	return userID, nil
}

// profile reads a local user's profile from its user actor, a remote
// user's over federation.
func (s *Server) profile(ctx context.Context, userID string) (map[string]json.RawMessage, error) {
	if !s.isLocalUser(userID) {
		return s.remoteProfile(ctx, userID)
	}
	rep, err := s.accountQuery(ctx, &pb.AccountQuery{UserId: userID, Kind: "profile"})
	if err != nil {
		return nil, err
	}
	if !rep.Found {
		return nil, actors.ErrNotFound("profile not found")
	}
	p := map[string]json.RawMessage{}
	if len(rep.Json) > 0 {
		if err := json.Unmarshal(rep.Json, &p); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func checkProfileKey(key string) error {
	if len(key) > actors.MaxProfileKeyBytes {
		return errStatus(http.StatusBadRequest, "M_KEY_TOO_LARGE", "profile key longer than 255 bytes")
	}
	if !profileKeyPattern.MatchString(key) {
		return actors.ErrInvalidParam("invalid profile key")
	}
	return nil
}

func (s *Server) handleGetProfile(w http.ResponseWriter, r *http.Request) {
	userID, err := s.profileUser(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if err := s.profileLookupAllowed(r, userID); err != nil {
		writeError(w, r, err)
		return
	}
	p, err := s.profile(r.Context(), userID)
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func (s *Server) handleGetProfileField(w http.ResponseWriter, r *http.Request) {
	userID, err := s.profileUser(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	key := r.PathValue("keyName")
	if err := checkProfileKey(key); err != nil {
		writeError(w, r, err)
		return
	}
	if err := s.profileLookupAllowed(r, userID); err != nil {
		writeError(w, r, err)
		return
	}
	p, err := s.profile(r.Context(), userID)
	if err != nil {
		writeError(w, r, err)
		return
	}
	v, ok := p[key]
	if !ok {
		writeError(w, r, actors.ErrNotFound("profile field not found"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]json.RawMessage{key: v})
}

// ownProfile checks that a profile change is the caller's own.
func (s *Server) ownProfile(r *http.Request, sess *Session) (key string, err error) {
	userID := r.PathValue("userId")
	if userID != sess.UserID {
		return "", actors.ErrForbidden("cannot change another user's profile")
	}
	key = r.PathValue("keyName")
	return key, checkProfileKey(key)
}

func (s *Server) handleSetProfileField(w http.ResponseWriter, r *http.Request, sess *Session) {
	key, err := s.ownProfile(r, sess)
	if err != nil {
		writeError(w, r, err)
		return
	}
	var body map[string]json.RawMessage
	if err := decodeJSON(r, &body); err != nil {
		writeError(w, r, err)
		return
	}
	raw, ok := body[key]
	if !ok {
		writeError(w, r, errMissingParam("the body must contain the field "+key))
		return
	}
	value, err := profileValue(key, raw)
	if err != nil {
		writeError(w, r, err)
		return
	}
	s.changeProfile(w, r, sess, key, value)
}

// profileValue checks a profile field's new value and returns it in
// canonical form; nil means "remove the field" (an empty display name or
// avatar URL, as Synapse treats them).
func profileValue(key string, raw json.RawMessage) ([]byte, error) {
	switch key {
	case "displayname", "avatar_url", "m.tz":
		var str string
		if err := json.Unmarshal(raw, &str); err != nil {
			return nil, actors.ErrInvalidParam("%s must be a string", key)
		}
		if key == "displayname" && len(str) > maxDisplaynameBytes {
			return nil, actors.ErrInvalidParam("displayname is longer than %d bytes", maxDisplaynameBytes)
		}
		if key == "avatar_url" && len(str) > maxAvatarURLBytes {
			return nil, actors.ErrInvalidParam("avatar_url is longer than %d bytes", maxAvatarURLBytes)
		}
		if str == "" && key != "m.tz" {
			return nil, nil
		}
		if key == "m.tz" && !validTimeZone(str) {
			return nil, actors.ErrInvalidParam("m.tz must be an IANA time zone name")
		}
	}
	v, err := eventgraph.CanonicalJSONLenient(raw)
	if err != nil {
		return nil, actors.ErrBadJSON("invalid JSON value")
	}
	return v, nil
}

func (s *Server) handleDeleteProfileField(w http.ResponseWriter, r *http.Request, sess *Session) {
	key, err := s.ownProfile(r, sess)
	if err != nil {
		writeError(w, r, err)
		return
	}
	s.changeProfile(w, r, sess, key, nil)
}

// changeProfile sets (or with value nil removes) a field, then carries a
// changed display name or avatar into the user's rooms.
func (s *Server) changeProfile(w http.ResponseWriter, r *http.Request, sess *Session, key string, value []byte) {
	ctx := r.Context()
	rep, err := s.accountUpdate(ctx, &pb.AccountUpdate{UserId: sess.UserID, Kind: "profile", Key: key, Value: value})
	if err != nil {
		writeError(w, r, err)
		return
	}
	var out struct {
		Profile     map[string]json.RawMessage `json:"profile"`
		Changed     bool                       `json:"changed"`
		JoinedRooms []string                   `json:"joined_rooms"`
	}
	if err := json.Unmarshal(rep.Json, &out); err != nil {
		writeError(w, r, err)
		return
	}
	if out.Changed && (key == "displayname" || key == "avatar_url") {
		s.propagateProfile(ctx, sess.UserID, out.Profile, out.JoinedRooms)
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

// propagateProfile sends each joined room a new join membership event
// carrying the display name and avatar (only those two fields go into
// member events).
func (s *Server) propagateProfile(ctx context.Context, userID string, profile map[string]json.RawMessage, rooms []string) {
	member := map[string]json.RawMessage{}
	for _, k := range []string{"displayname", "avatar_url"} {
		if v, ok := profile[k]; ok {
			member[k] = v
		}
	}
	body, err := json.Marshal(member)
	if err != nil {
		return
	}
	s.fanOutRooms(ctx, rooms, func(room string) error {
		_, err := s.router.Request(ctx, &pb.Membership{RoomId: room, Sender: userID, Target: userID,
			Membership: "join", Profile: body})
		return err
	})
}

// ---- account data and tags ----

// ownUserData checks that an account data request is for the caller and,
// for room data, that the room ID is valid.
func ownUserData(r *http.Request, sess *Session) (room string, err error) {
	if r.PathValue("userId") != sess.UserID {
		return "", actors.ErrForbidden("cannot access another user's account data")
	}
	room = r.PathValue("roomId")
	if strings.Contains(r.Pattern, "{roomId}") && eventgraph.ValidateRoomID(room) != nil {
		return "", actors.ErrInvalidParam("%q is not a valid room ID", room)
	}
	return room, nil
}

func accountDataType(r *http.Request) (string, error) {
	typ := r.PathValue("type")
	if typ == "" || len(typ) > maxAccountDataTypeBytes {
		return "", actors.ErrInvalidParam("account data type must be 1 to %d bytes", maxAccountDataTypeBytes)
	}
	return typ, nil
}

func (s *Server) handleGetAccountData(w http.ResponseWriter, r *http.Request, sess *Session) {
	room, err := ownUserData(r, sess)
	if err != nil {
		writeError(w, r, err)
		return
	}
	typ, err := accountDataType(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	q := &pb.AccountQuery{UserId: sess.UserID, Kind: "account_data", Key: typ}
	if room != "" {
		q.Kind, q.RoomId = "room_account_data", room
	}
	rep, err := s.accountQuery(r.Context(), q)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if !rep.Found {
		writeError(w, r, actors.ErrNotFound("account data not found"))
		return
	}
	writeJSON(w, http.StatusOK, rep.Json)
}

// readObject reads a JSON object body and returns it in canonical form.
func readObject(r *http.Request, limit int64) ([]byte, error) {
	body, err := readBody(r, limit)
	if err != nil {
		return nil, err
	}
	var obj map[string]json.RawMessage
	if err := unmarshalBody(body, &obj); err != nil {
		return nil, err
	}
	if obj == nil {
		return nil, actors.ErrBadJSON("body must be a JSON object")
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		body = []byte("{}")
	}
	out, err := eventgraph.CanonicalJSONLenient(body)
	if err != nil {
		return nil, actors.ErrBadJSON("body is not valid JSON")
	}
	return out, nil
}

func (s *Server) handleSetAccountData(w http.ResponseWriter, r *http.Request, sess *Session) {
	room, err := ownUserData(r, sess)
	if err != nil {
		writeError(w, r, err)
		return
	}
	typ, err := accountDataType(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if protectedAccountData[typ] {
		writeError(w, r, errStatus(http.StatusMethodNotAllowed, "M_BAD_JSON", "cannot set "+typ+" through this API"))
		return
	}
	content, err := readObject(r, maxBodyBytes)
	if err != nil {
		writeError(w, r, err)
		return
	}
	u := &pb.AccountUpdate{UserId: sess.UserID, Kind: "account_data", Key: typ, Value: content}
	if room != "" {
		u.Kind, u.RoomId = "room_account_data", room
	}
	if _, err := s.accountUpdate(r.Context(), u); err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

func (s *Server) handleGetTags(w http.ResponseWriter, r *http.Request, sess *Session) {
	room, err := ownUserData(r, sess)
	if err != nil {
		writeError(w, r, err)
		return
	}
	rep, err := s.accountQuery(r.Context(), &pb.AccountQuery{UserId: sess.UserID, Kind: "room_account_data", RoomId: room, Key: "m.tag"})
	if err != nil {
		writeError(w, r, err)
		return
	}
	tags := json.RawMessage("{}")
	if rep.Found {
		var content struct {
			Tags json.RawMessage `json:"tags"`
		}
		if json.Unmarshal(rep.Json, &content) == nil && len(content.Tags) > 0 && content.Tags[0] == '{' {
			tags = content.Tags
		}
	}
	writeJSON(w, http.StatusOK, map[string]json.RawMessage{"tags": tags})
}

// handleSetTag adds (PUT) or removes (DELETE) one tag.
func (s *Server) handleSetTag(w http.ResponseWriter, r *http.Request, sess *Session) {
	room, err := ownUserData(r, sess)
	if err != nil {
		writeError(w, r, err)
		return
	}
	tag := r.PathValue("tag")
	if tag == "" || len(tag) > maxTagBytes {
		writeError(w, r, actors.ErrInvalidParam("tag must be 1 to %d bytes", maxTagBytes))
		return
	}
	u := &pb.AccountUpdate{UserId: sess.UserID, Kind: "tag", RoomId: room, Key: tag}
	if r.Method == http.MethodPut {
		content, err := readObject(r, maxBodyBytes)
		if err != nil {
			writeError(w, r, err)
			return
		}
		var t struct {
			Order json.RawMessage `json:"order"`
		}
		_ = json.Unmarshal(content, &t)
		if len(t.Order) > 0 && string(t.Order) != "null" {
			var f float64
			if err := json.Unmarshal(t.Order, &f); err != nil {
				writeError(w, r, actors.ErrBadJSON("order must be a number"))
				return
			}
		}
		u.Value = content
	}
	if _, err := s.accountUpdate(r.Context(), u); err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

// ---- filters ----

// The filter definitions, decoded only to check their types: a wrong type
// anywhere is M_BAD_JSON.
type filterDef struct {
	EventFields []string        `json:"event_fields"`
	EventFormat string          `json:"event_format"`
	Presence    *eventFilterDef `json:"presence"`
	AccountData *eventFilterDef `json:"account_data"`
	Room        *struct {
		NotRooms     []string            `json:"not_rooms"`
		Rooms        []string            `json:"rooms"`
		Ephemeral    *roomEventFilterDef `json:"ephemeral"`
		IncludeLeave bool                `json:"include_leave"`
		State        *roomEventFilterDef `json:"state"`
		Timeline     *roomEventFilterDef `json:"timeline"`
		AccountData  *roomEventFilterDef `json:"account_data"`
	} `json:"room"`
}

type eventFilterDef struct {
	Limit      *int64   `json:"limit"`
	NotSenders []string `json:"not_senders"`
	NotTypes   []string `json:"not_types"`
	Senders    []string `json:"senders"`
	Types      []string `json:"types"`
}

type roomEventFilterDef struct {
	eventFilterDef
	UnreadThreadNotifications bool     `json:"unread_thread_notifications"`
	LazyLoadMembers           bool     `json:"lazy_load_members"`
	IncludeRedundantMembers   bool     `json:"include_redundant_members"`
	NotRooms                  []string `json:"not_rooms"`
	Rooms                     []string `json:"rooms"`
	ContainsURL               *bool    `json:"contains_url"`
}

func (f *eventFilterDef) check() error {
	if f == nil {
		return nil
	}
	if f.Limit != nil && *f.Limit < 0 {
		return actors.ErrBadJSON("filter limit must not be negative")
	}
	for _, list := range [][]string{f.Senders, f.NotSenders} {
		for _, u := range list {
			if !strings.HasPrefix(u, "@") {
				return actors.ErrBadJSON("filter senders must be user IDs")
			}
		}
	}
	return nil
}

func checkRooms(lists ...[]string) error {
	for _, list := range lists {
		for _, r := range list {
			if !strings.HasPrefix(r, "!") {
				return actors.ErrBadJSON("filter rooms must be room IDs")
			}
		}
	}
	return nil
}

func (f *roomEventFilterDef) check() error {
	if f == nil {
		return nil
	}
	if err := f.eventFilterDef.check(); err != nil {
		return err
	}
	return checkRooms(f.Rooms, f.NotRooms)
}

// validateFilter checks a filter body and returns it in canonical form.
func validateFilter(body []byte) ([]byte, error) {
	var f filterDef
	if err := unmarshalBody(body, &f); err != nil {
		return nil, err
	}
	switch f.EventFormat {
	case "", "client", "federation":
	default:
		return nil, actors.ErrBadJSON("event_format must be client or federation")
	}
	if err := f.Presence.check(); err != nil {
		return nil, err
	}
	if err := f.AccountData.check(); err != nil {
		return nil, err
	}
	if f.Room != nil {
		if err := checkRooms(f.Room.Rooms, f.Room.NotRooms); err != nil {
			return nil, err
		}
		for _, ef := range []*roomEventFilterDef{f.Room.Ephemeral, f.Room.State, f.Room.Timeline, f.Room.AccountData} {
			if err := ef.check(); err != nil {
				return nil, err
			}
		}
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		body = []byte("{}")
	}
	out, err := eventgraph.CanonicalJSONLenient(body)
	if err != nil {
		return nil, actors.ErrBadJSON("filter is not valid JSON")
	}
	return out, nil
}

func (s *Server) handleCreateFilter(w http.ResponseWriter, r *http.Request, sess *Session) {
	if r.PathValue("userId") != sess.UserID {
		writeError(w, r, actors.ErrForbidden("cannot create filters for other users"))
		return
	}
	body, err := readBody(r, maxFilterBytes)
	if err != nil {
		writeError(w, r, err)
		return
	}
	filter, err := validateFilter(body)
	if err != nil {
		writeError(w, r, err)
		return
	}
	rep, err := s.accountUpdate(r.Context(), &pb.AccountUpdate{UserId: sess.UserID, Kind: "filter", Value: filter})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, rep.Json)
}

func (s *Server) handleGetFilter(w http.ResponseWriter, r *http.Request, sess *Session) {
	if r.PathValue("userId") != sess.UserID {
		writeError(w, r, actors.ErrForbidden("cannot get filters of other users"))
		return
	}
	id := r.PathValue("filterId")
	if _, err := strconv.ParseUint(id, 10, 64); err != nil {
		writeError(w, r, actors.ErrNotFound("no such filter"))
		return
	}
	rep, err := s.accountQuery(r.Context(), &pb.AccountQuery{UserId: sess.UserID, Kind: "filter", Key: id})
	if err != nil {
		writeError(w, r, err)
		return
	}
	if !rep.Found {
		writeError(w, r, actors.ErrNotFound("no such filter"))
		return
	}
	writeJSON(w, http.StatusOK, rep.Json)
}

// ---- presence ----

func (s *Server) handleGetPresence(w http.ResponseWriter, r *http.Request, sess *Session) {
	userID := r.PathValue("userId")
	if eventgraph.ValidateUserID(userID) != nil {
		writeError(w, r, actors.ErrInvalidParam("invalid user ID"))
		return
	}
	if !s.isLocalUser(userID) {
		writeError(w, r, actors.ErrNotFound("no presence known for this user"))
		return
	}
	rep, err := s.accountQuery(r.Context(), &pb.AccountQuery{UserId: userID, Kind: "presence"})
	if err != nil {
		writeError(w, r, err)
		return
	}
	if !rep.Found {
		writeError(w, r, actors.ErrNotFound("no presence known for this user"))
		return
	}
	if userID != sess.UserID {
		// Another user's presence is visible to those sharing a room.
		shared, err := s.sharesRoom(r.Context(), sess.UserID, userID)
		if err != nil {
			writeError(w, r, err)
			return
		}
		if !shared {
			writeError(w, r, actors.ErrForbidden("you do not share a room with this user"))
			return
		}
	}
	writeJSON(w, http.StatusOK, rep.Json)
}

func (s *Server) handleSetPresence(w http.ResponseWriter, r *http.Request, sess *Session) {
	if r.PathValue("userId") != sess.UserID {
		writeError(w, r, actors.ErrForbidden("cannot set another user's presence"))
		return
	}
	var req struct {
		Presence  *string         `json:"presence"`
		StatusMsg json.RawMessage `json:"status_msg"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	if req.Presence == nil {
		writeError(w, r, errMissingParam("presence is required"))
		return
	}
	switch *req.Presence {
	case "online", "offline", "unavailable":
	default:
		writeError(w, r, actors.ErrInvalidParam("presence must be online, offline or unavailable"))
		return
	}
	update := map[string]any{"presence": *req.Presence}
	if len(req.StatusMsg) > 0 && string(req.StatusMsg) != "null" {
		var msg string
		if err := json.Unmarshal(req.StatusMsg, &msg); err != nil {
			writeError(w, r, actors.ErrBadJSON("status_msg must be a string"))
			return
		}
		if len(msg) > maxStatusMsgBytes {
			writeError(w, r, actors.ErrInvalidParam("status_msg is longer than %d bytes", maxStatusMsgBytes))
			return
		}
		update["status_msg"] = msg
	}
	body, err := json.Marshal(update)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if _, err := s.accountUpdate(r.Context(), &pb.AccountUpdate{UserId: sess.UserID, Kind: "presence", Value: body}); err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}
