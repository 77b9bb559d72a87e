package gateway

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"time"

	"github.com/shoal-chat/shoal/eventgraph"
)

// keyValidity is how long remote servers may cache our key response.
const keyValidity = 7 * 24 * time.Hour

func (s *Server) registerKeys() {
	s.handle("GET /_matrix/key/v2/server", s.handleServerKeys)
	s.handle("GET /_matrix/key/v2/server/{keyId}", s.handleServerKeys)
}

// handleServerKeys publishes the cluster's signing key, self-signed.
func (s *Server) handleServerKeys(w http.ResponseWriter, r *http.Request) {
	signed, err := s.ownKeyResponse()
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, signed)
}

// ownKeyResponse is our key response, self-signed.
func (s *Server) ownKeyResponse() ([]byte, error) {
	pub := s.server.PrivateKey.Public().(ed25519.PublicKey)
	body, err := json.Marshal(map[string]any{
		"server_name":     s.server.ServerName,
		"valid_until_ts":  s.cfg.Now().Add(keyValidity).UnixMilli(),
		"verify_keys":     map[string]any{s.server.KeyID: map[string]string{"key": base64.RawStdEncoding.EncodeToString(pub)}},
		"old_verify_keys": map[string]any{},
	})
	if err != nil {
		return nil, err
	}
	return eventgraph.SignJSON(body, s.server.ServerName, s.server.KeyID, s.server.PrivateKey)
}
