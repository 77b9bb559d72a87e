package gateway

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
)

// Account suspension (MSC3823) and locking (MSC3939), set by server admins
// through the MSC4323 endpoints.
//
// Enforcement costs no extra hop: the user actor stores the flags, the
// gateway copies them to every device actor of the user before it answers
// the admin, and new logins get them from the user actor's add_device
// reply. The device actor's DeviceAuthReply then carries them on every
// authenticated request. A login racing with the admin's change may leave
// that one new device with the old flags until the next change.

var (
	errUserLocked = &actors.MatrixError{Status: http.StatusUnauthorized, ErrCode: "M_USER_LOCKED",
		Message: "this account has been locked", Extra: map[string]any{"soft_logout": true}}
	errUserSuspended = errStatus(http.StatusForbidden, "M_USER_SUSPENDED", "this account is suspended")
)

func (s *Server) registerModeration() {
	for _, kind := range []string{"suspend", "lock"} {
		s.handle("GET /_matrix/client/v1/admin/"+kind+"/{userId}", s.authed(s.handleGetModeration(kind)))
		s.handle("PUT /_matrix/client/v1/admin/"+kind+"/{userId}", s.authed(s.handleSetModeration(kind)))
	}
	s.registerReports()
	s.registerThreepid()
}

// lockedMayUse says which requests a locked account may still make: only
// logging out (MSC3939).
func lockedMayUse(r *http.Request) bool {
	return r.Pattern == "POST /_matrix/client/v3/logout" || r.Pattern == "POST /_matrix/client/v3/logout/all"
}

// suspendedRoutes are the routes a suspended account may not use at all
// (MSC3823's forbidden list: joins, knocks, accepting invites, inviting,
// sending events, profile changes; room creation, upgrades and membership
// changes of others send events too). Leaving, reading, devices and keys,
// logout and deactivation stay open.
var suspendedRoutes = map[string]bool{
	"POST /_matrix/client/v3/createRoom":                                    true,
	"POST /_matrix/client/v3/join/{roomIdOrAlias}":                          true,
	"POST /_matrix/client/v3/knock/{roomIdOrAlias}":                         true,
	"POST /_matrix/client/v3/rooms/{roomId}/join":                           true,
	"POST /_matrix/client/v3/rooms/{roomId}/invite":                         true,
	"POST /_matrix/client/v3/rooms/{roomId}/kick":                           true,
	"POST /_matrix/client/v3/rooms/{roomId}/ban":                            true,
	"POST /_matrix/client/v3/rooms/{roomId}/unban":                          true,
	"POST /_matrix/client/v3/rooms/{roomId}/upgrade":                        true,
	"PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}":        true,
	"PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}":               true,
	"PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey...}": true,
	"PUT /_matrix/client/v3/profile/{userId}/{keyName}":                     true,
	"DELETE /_matrix/client/v3/profile/{userId}/{keyName}":                  true,
}

// checkSuspended refuses what a suspended account may not do. Redactions
// are allowed of the user's own events only, which takes a look at the
// event; an event the user cannot see is left to the handler to refuse.
func (s *Server) checkSuspended(r *http.Request, sess *Session) error {
	if suspendedRoutes[r.Pattern] {
		return errUserSuspended
	}
	if r.Pattern != "PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}" {
		return nil
	}
	roomID, eventID := r.PathValue("roomId"), r.PathValue("eventId")
	if eventgraph.ValidateRoomID(roomID) != nil || !validEventID(eventID) {
		return nil
	}
	raw, err := s.roomQuery(r.Context(), &pb.RoomQuery{RoomId: roomID, UserId: sess.UserID, Kind: "event", EventId: eventID})
	if err != nil {
		return nil
	}
	var ev struct {
		Sender string `json:"sender"`
	}
	if json.Unmarshal(raw, &ev) == nil && ev.Sender != sess.UserID {
		return errUserSuspended
	}
	return nil
}

// moderationField is the JSON field of each MSC4323 endpoint.
func moderationField(kind string) string {
	if kind == "suspend" {
		return "suspended"
	}
	return "locked"
}

// moderationTarget checks, in MSC4323's order, that the caller is a server
// admin (before anything about the target is looked up, so the endpoint
// cannot enumerate users), that the target is a local user and that it is
// not the caller.
func (s *Server) moderationTarget(ctx context.Context, r *http.Request, sess *Session) (string, error) {
	if !s.isServerAdmin(ctx, sess.UserID) {
		return "", actors.ErrForbidden("only server admins may suspend or lock accounts")
	}
	target := r.PathValue("userId")
	if eventgraph.ValidateUserID(target) != nil {
		return "", actors.ErrInvalidParam("%q is not a valid user ID", target)
	}
	if !s.isLocalUser(target) {
		return "", actors.ErrInvalidParam("only local users can be suspended or locked")
	}
	if target == sess.UserID {
		return "", actors.ErrForbidden("you cannot suspend or lock your own account")
	}
	return target, nil
}

func (s *Server) handleGetModeration(kind string) func(http.ResponseWriter, *http.Request, *Session) {
	return func(w http.ResponseWriter, r *http.Request, sess *Session) {
		target, err := s.moderationTarget(r.Context(), r, sess)
		if err != nil {
			writeError(w, r, err)
			return
		}
		rep, err := s.accountQuery(r.Context(), &pb.AccountQuery{UserId: target, Kind: "info"})
		if err != nil {
			writeError(w, r, err)
			return
		}
		var info struct {
			Admin, Deactivated, Suspended, Locked bool
		}
		if !rep.Found || json.Unmarshal(rep.Json, &info) != nil || info.Deactivated {
			writeError(w, r, actors.ErrNotFound("no such user"))
			return
		}
		if info.Admin {
			writeError(w, r, actors.ErrForbidden("server admins cannot be suspended or locked"))
			return
		}
		on := info.Suspended
		if kind == "lock" {
			on = info.Locked
		}
		writeJSON(w, http.StatusOK, map[string]bool{moderationField(kind): on})
	}
}

func (s *Server) handleSetModeration(kind string) func(http.ResponseWriter, *http.Request, *Session) {
	return func(w http.ResponseWriter, r *http.Request, sess *Session) {
		target, err := s.moderationTarget(r.Context(), r, sess)
		if err != nil {
			writeError(w, r, err)
			return
		}
		var body map[string]json.RawMessage
		if err := decodeJSON(r, &body); err != nil {
			writeError(w, r, err)
			return
		}
		var on bool
		raw, ok := body[moderationField(kind)]
		if !ok {
			writeError(w, r, errMissingParam(moderationField(kind)+" is required"))
			return
		}
		if json.Unmarshal(raw, &on) != nil {
			writeError(w, r, actors.ErrBadJSON("%s must be a boolean", moderationField(kind)))
			return
		}
		value := "false"
		if on {
			value = "true"
		}
		rep, err := s.accountUpdate(r.Context(), &pb.AccountUpdate{UserId: target, Kind: "moderation", Key: kind, Value: []byte(value)})
		if err != nil {
			writeError(w, r, err)
			return
		}
		var res struct {
			Locked, Suspended bool
			Devices           []string
		}
		if err := json.Unmarshal(rep.Json, &res); err != nil {
			writeError(w, r, err)
			return
		}
		// Every device learns the flags before the admin hears back, so the
		// change holds from the next request of any session.
		for _, dev := range res.Devices {
			if _, err := s.router.Request(r.Context(), &pb.DeviceUpdate{UserId: target, DeviceId: dev, Kind: "moderation",
				Locked: res.Locked, Suspended: res.Suspended}); err != nil {
				writeError(w, r, err)
				return
			}
		}
		writeJSON(w, http.StatusOK, map[string]bool{moderationField(kind): on})
	}
}
