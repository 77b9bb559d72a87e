package gateway

import (
	"encoding/json"
	"net/http"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
)

// Reporting content (client-server API, "Reporting content"): reports of
// events (spec), rooms (MSC4151) and users (MSC4260) are kept by the
// reporter's user actor, which also rate-limits them; server admins read
// them with AccountQuery kind reports. Rooms and users are reported with
// 200 whether or not they exist, as the spec allows, so the endpoints
// cannot be used to probe for them.

// maxReportReason bounds the reason a report carries.
const maxReportReason = 4096

func (s *Server) registerReports() {
	v3 := "/_matrix/client/v3"
	s.handle("POST "+v3+"/rooms/{roomId}/report/{eventId}", s.authed(s.handleReportEvent))
	s.handle("POST "+v3+"/rooms/{roomId}/report", s.authed(s.handleReportRoom))
	s.handle("POST "+v3+"/users/{userId}/report", s.authed(s.handleReportUser))
	s.handle("GET "+v3+"/admin/whois/{userId}", s.authed(s.handleWhois))
}

// reportReason reads the body's reason; required says whether it must be
// present (it is for rooms and users).
func reportReason(r *http.Request, required bool) (string, error) {
	var body struct {
		Reason *string `json:"reason"`
	}
	if err := decodeJSON(r, &body); err != nil {
		return "", err
	}
	if body.Reason == nil {
		if required {
			return "", errMissingParam("reason is required")
		}
		return "", nil
	}
	if len(*body.Reason) > maxReportReason {
		return "", actors.ErrInvalidParam("reason is longer than %d bytes", maxReportReason)
	}
	return *body.Reason, nil
}

func (s *Server) storeReport(w http.ResponseWriter, r *http.Request, sess *Session, report map[string]any) {
	report["ts"] = s.cfg.Now().UnixMilli()
	b, err := json.Marshal(report)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if _, err := s.accountUpdate(r.Context(), &pb.AccountUpdate{UserId: sess.UserID, Kind: "report", Value: b}); err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

// handleReportEvent reports an event the caller can see; any other event
// is 404, as the spec says.
func (s *Server) handleReportEvent(w http.ResponseWriter, r *http.Request, sess *Session) {
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
	reason, err := reportReason(r, false)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if _, err := s.roomQuery(r.Context(), &pb.RoomQuery{RoomId: roomID, UserId: sess.UserID, Kind: "event", EventId: eventID}); err != nil {
		writeError(w, r, actors.ErrNotFound("event not found or not visible to you"))
		return
	}
	s.storeReport(w, r, sess, map[string]any{"kind": "event", "room_id": roomID, "event_id": eventID, "reason": reason})
}

func (s *Server) handleReportRoom(w http.ResponseWriter, r *http.Request, sess *Session) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	reason, err := reportReason(r, true)
	if err != nil {
		writeError(w, r, err)
		return
	}
	s.storeReport(w, r, sess, map[string]any{"kind": "room", "room_id": roomID, "reason": reason})
}

func (s *Server) handleReportUser(w http.ResponseWriter, r *http.Request, sess *Session) {
	userID := r.PathValue("userId")
	if eventgraph.ValidateUserID(userID) != nil {
		writeError(w, r, actors.ErrInvalidParam("%q is not a valid user ID", userID))
		return
	}
	reason, err := reportReason(r, true)
	if err != nil {
		writeError(w, r, err)
		return
	}
	s.storeReport(w, r, sess, map[string]any{"kind": "user", "user_id": userID, "reason": reason})
}

// handleWhois lists a user's sessions and where they were last seen, to
// server admins and to the user itself; shoal keeps one connection per
// device (its last address and time).
func (s *Server) handleWhois(w http.ResponseWriter, r *http.Request, sess *Session) {
	userID := r.PathValue("userId")
	if userID != sess.UserID && !s.isServerAdmin(r.Context(), sess.UserID) {
		writeError(w, r, actors.ErrForbidden("only server admins may look up other users"))
		return
	}
	if eventgraph.ValidateUserID(userID) != nil {
		writeError(w, r, actors.ErrInvalidParam("%q is not a valid user ID", userID))
		return
	}
	if !s.isLocalUser(userID) {
		writeError(w, r, actors.ErrNotFound("not a local user"))
		return
	}
	exists, err := s.userExists(r.Context(), userID)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if !exists {
		writeError(w, r, actors.ErrNotFound("no such user"))
		return
	}
	ids, err := s.userDevices(r.Context(), userID)
	if err != nil {
		writeError(w, r, err)
		return
	}
	devices := map[string]any{}
	for _, id := range ids {
		info, err := s.deviceInfo(r.Context(), userID, id)
		if err != nil {
			writeError(w, r, err)
			return
		}
		if !info.Exists {
			continue
		}
		conn := map[string]any{"last_seen": info.LastSeenTs}
		if info.LastSeenIp != "" {
			conn["ip"] = info.LastSeenIp
		}
		devices[id] = map[string]any{"sessions": []any{map[string]any{"connections": []any{conn}}}}
	}
	writeJSON(w, http.StatusOK, map[string]any{"user_id": userID, "devices": devices})
}
