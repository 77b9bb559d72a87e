package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/gateway/fedclient"
)

// The federation query API (server-server API, "Query"): profiles and room
// aliases of this server, asked for by others; and its outbound half, a
// local client reading a remote user's profile.

// ServerVersion is what GET /_matrix/federation/v1/version reports.
var ServerVersion = "dev"

// maxRemoteProfileBytes bounds a remote server's profile answer.
const maxRemoteProfileBytes = 64 << 10

func (s *Server) handleFederationVersion(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"server": map[string]string{"name": "shoal", "version": ServerVersion}})
}

func (s *Server) handleFederationProfile(w http.ResponseWriter, r *http.Request, origin string, _ []byte) {
	q := r.URL.Query()
	userID := q.Get("user_id")
	if userID == "" {
		writeError(w, r, errStatus(http.StatusBadRequest, "M_MISSING_PARAM", "user_id is required"))
		return
	}
	if eventgraph.ValidateUserID(userID) != nil {
		writeError(w, r, actors.ErrInvalidParam("invalid user ID"))
		return
	}
	if !s.isLocalUser(userID) {
		writeError(w, r, actors.ErrInvalidParam("user %s is not local to this server", userID))
		return
	}
	if err := s.fedProfileLookupAllowed(r.Context(), origin, userID); err != nil { // MSC4170, federation_directory.go
		writeError(w, r, err)
		return
	}
	p, err := s.profile(r.Context(), userID)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if q.Has("field") {
		field := q.Get("field")
		v, ok := p[field]
		if !ok || string(v) == "null" {
			writeError(w, r, actors.ErrNotFound("profile field not found"))
			return
		}
		p = map[string]json.RawMessage{field: v}
	}
	writeJSON(w, http.StatusOK, p)
}

func (s *Server) handleFederationDirectory(w http.ResponseWriter, r *http.Request, origin string, _ []byte) {
	alias := r.URL.Query().Get("room_alias")
	if alias == "" {
		writeError(w, r, errStatus(http.StatusBadRequest, "M_MISSING_PARAM", "room_alias is required"))
		return
	}
	if len(alias) > 255 || eventgraph.ValidateRoomAlias(alias) != nil {
		writeError(w, r, actors.ErrInvalidParam("invalid room alias"))
		return
	}
	if _, domain, _ := cutColon(alias); domain != s.server.ServerName {
		writeError(w, r, actors.ErrNotFound("room alias %s is not local to this server", alias))
		return
	}
	rep, err := roomRequest[*pb.AliasReply](r.Context(), s, &pb.AliasOp{Alias: alias, Op: "get"})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"room_id": rep.RoomId, "servers": rep.Servers})
}

// remoteProfile asks userID's server for the user's profile.
func (s *Server) remoteProfile(ctx context.Context, userID string) (map[string]json.RawMessage, error) {
	server, err := eventgraph.IDDomain(userID)
	if err != nil {
		return nil, actors.ErrInvalidParam("invalid user ID")
	}
	body, err := s.fed.client.Do(ctx, fedclient.Request{
		Method: http.MethodGet, Destination: server, Signed: true, Limit: maxRemoteProfileBytes,
		URI: "/_matrix/federation/v1/query/profile?user_id=" + url.QueryEscape(userID),
	})
	if err != nil {
		var he *fedclient.HTTPError
		if errors.As(err, &he) && he.Status == http.StatusNotFound {
			return nil, actors.ErrNotFound("profile not found")
		}
		if errors.As(err, &he) && he.Status == http.StatusForbidden {
			return nil, actors.ErrForbidden("%s does not share this profile", server)
		}
		s.log.Info("gateway: remote profile", "user", userID, "err", err)
		return nil, errStatus(http.StatusBadGateway, "M_UNKNOWN", "could not get the profile from "+server)
	}
	p := map[string]json.RawMessage{}
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, errStatus(http.StatusBadGateway, "M_UNKNOWN", "bad profile from "+server)
	}
	for k, v := range p {
		if string(v) == "null" {
			delete(p, k)
		}
	}
	return p, nil
}
