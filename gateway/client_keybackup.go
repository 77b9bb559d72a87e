package gateway

import (
	"encoding/json"
	"net/http"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
)

// Server-side key backup (spec: "Server-side key backups"): every call is
// one UserKeysOp to the user's actor, which keeps versions and keys.
func (s *Server) registerKeyBackup() {
	const v3 = "/_matrix/client/v3/room_keys"
	s.handle("POST "+v3+"/version", s.authed(s.backupHandler("backup_create", true)))
	s.handle("GET "+v3+"/version", s.authed(s.backupHandler("backup_get", false)))
	s.handle("GET "+v3+"/version/{version}", s.authed(s.backupHandler("backup_get", false)))
	s.handle("PUT "+v3+"/version/{version}", s.authed(s.backupHandler("backup_update", true)))
	s.handle("DELETE "+v3+"/version/{version}", s.authed(s.backupHandler("backup_delete", false)))
	for _, p := range []string{"/keys", "/keys/{roomId}", "/keys/{roomId}/{sessionId}"} {
		s.handle("GET "+v3+p, s.authed(s.backupHandler("backup_keys_get", false)))
		s.handle("PUT "+v3+p, s.authed(s.backupHandler("backup_put", true)))
		s.handle("DELETE "+v3+p, s.authed(s.backupHandler("backup_keys_delete", false)))
	}
}

func (s *Server) backupHandler(op string, hasBody bool) func(http.ResponseWriter, *http.Request, *Session) {
	return func(w http.ResponseWriter, r *http.Request, sess *Session) {
		m := &pb.UserKeysOp{UserId: sess.UserID, Op: op, Version: r.PathValue("version"),
			RoomId: r.PathValue("roomId"), SessionId: r.PathValue("sessionId")}
		if m.Version == "" {
			m.Version = r.URL.Query().Get("version")
		}
		if len(m.Version) > 64 || len(m.RoomId) > 255 || len(m.SessionId) > 255 {
			writeError(w, r, actors.ErrInvalidParam("parameter too long"))
			return
		}
		if op != "backup_create" && op != "backup_get" && op != "backup_update" && op != "backup_delete" && m.Version == "" {
			writeError(w, r, errMissingParam("version is required"))
			return
		}
		if hasBody {
			body, err := readBody(r, maxBodyBytes)
			if err != nil {
				writeError(w, r, err)
				return
			}
			var obj map[string]json.RawMessage
			if err := unmarshalBody(body, &obj); err != nil {
				writeError(w, r, err)
				return
			}
			// The three PUT forms all become the whole-backup shape.
			switch {
			case op == "backup_put" && m.SessionId != "":
				body, _ = json.Marshal(map[string]any{"rooms": map[string]any{m.RoomId: map[string]any{
					"sessions": map[string]json.RawMessage{m.SessionId: body}}}})
			case op == "backup_put" && m.RoomId != "":
				body, _ = json.Marshal(map[string]any{"rooms": map[string]any{m.RoomId: obj}})
			}
			m.Body = body
		}
		var out json.RawMessage
		if err := s.userKeys(r.Context(), m, &out); err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
	}
}
