package gateway

import (
	"net/http"

	"github.com/shoal-chat/shoal/eventgraph"
)

// specVersions are the Client-Server API versions shoal speaks.
var specVersions = []string{
	"r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9",
	"v1.10", "v1.11", "v1.12", "v1.13", "v1.14", "v1.15", "v1.16",
}

func (s *Server) registerDiscovery() {
	s.handle("GET /_matrix/client/versions", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{
			"versions":          specVersions,
			"unstable_features": map[string]bool{},
		})
	})
	s.handle("GET /.well-known/matrix/client", func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.PublicBaseURL == "" {
			writeError(w, r, errStatus(http.StatusNotFound, "M_NOT_FOUND", "no client discovery configured"))
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"m.homeserver": map[string]string{"base_url": s.cfg.PublicBaseURL}})
	})
	s.handle("GET /.well-known/matrix/server", func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.WellKnownServer == "" {
			writeError(w, r, errStatus(http.StatusNotFound, "M_NOT_FOUND", "no server delegation configured"))
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"m.server": s.cfg.WellKnownServer})
	})
	s.handle("GET /_matrix/client/v3/capabilities", s.authed(func(w http.ResponseWriter, r *http.Request, sess *Session) {
		caps := s.capabilities()
		// MSC4323: only admins may use the moderation endpoints.
		if s.isServerAdmin(r.Context(), sess.UserID) {
			caps["m.account_moderation"] = map[string]bool{"suspend": true, "lock": true}
		}
		writeJSON(w, http.StatusOK, map[string]any{"capabilities": caps})
	}))
}

func (s *Server) capabilities() map[string]any {
	available := map[string]string{}
	for _, id := range eventgraph.SupportedRoomVersions() {
		available[string(id)] = "stable"
	}
	return map[string]any{
		"m.room_versions":   map[string]any{"default": string(eventgraph.DefaultRoomVersion), "available": available},
		"m.change_password": map[string]bool{"enabled": true},
		"m.set_displayname": map[string]bool{"enabled": true},
		"m.set_avatar_url":  map[string]bool{"enabled": true},
		"m.3pid_changes":    map[string]bool{"enabled": false},
		// MSC4133: any field may be set, within the size limits.
		"m.profile_fields":  map[string]bool{"enabled": true},
		"m.get_login_token": map[string]bool{"enabled": false},
	}
}
