package gateway

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
)

// OpenID (client-server "OpenID", server-server "OpenID"): a client gets a
// short-lived token that proves its user's identity to a third party (an
// integration manager, a widget), which checks it with this server's
// federation /openid/userinfo.
//
// The tokens carry their user and expiry, authenticated by an HMAC under a
// key derived from the server's signing key (as media owner keys are), so
// every node of a cluster checks them without shared state and nothing has
// to be stored or swept. The spec defines no revocation; a deactivated
// account's tokens stop working because userinfo checks the account.

// openIDTokenLifetime is how long an OpenID token is valid (the spec's
// example, and Synapse's default).
const openIDTokenLifetime = time.Hour

// maxOpenIDToken bounds the tokens userinfo looks at.
const maxOpenIDToken = 1024

func (s *Server) registerOpenID() {
	s.handle("POST /_matrix/client/v3/user/{userId}/openid/request_token", s.authed(s.handleOpenIDRequestToken))
	s.handle("GET /_matrix/federation/v1/openid/userinfo", s.handleOpenIDUserinfo)
}

// openIDPayload is what a token says.
type openIDPayload struct {
	User    string `json:"u"`
	Expires int64  `json:"e"` // unix ms
	Nonce   string `json:"n"`
}

func (s *Server) openIDKey() []byte {
	k := sha256.Sum256(append([]byte("shoal openid token key\x00"), s.server.PrivateKey.Seed()...))
	return k[:]
}

func (s *Server) openIDMAC(payload []byte) []byte {
	mac := hmac.New(sha256.New, s.openIDKey())
	mac.Write(payload)
	return mac.Sum(nil)
}

// newOpenIDToken makes a token for userID valid until expires.
func (s *Server) newOpenIDToken(userID string, expires time.Time) (string, error) {
	nonce := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	payload, err := json.Marshal(openIDPayload{User: userID, Expires: expires.UnixMilli(),
		Nonce: base64.RawURLEncoding.EncodeToString(nonce)})
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding
	return "oid_" + enc.EncodeToString(payload) + "." + enc.EncodeToString(s.openIDMAC(payload)), nil
}

// openIDUser checks a token and returns its user, "" when the token is not
// one of this server's or has expired.
func (s *Server) openIDUser(token string) string {
	rest, ok := strings.CutPrefix(token, "oid_")
	if !ok || len(token) > maxOpenIDToken {
		return ""
	}
	p64, m64, ok := strings.Cut(rest, ".")
	if !ok {
		return ""
	}
	enc := base64.RawURLEncoding
	payload, err1 := enc.DecodeString(p64)
	mac, err2 := enc.DecodeString(m64)
	if err1 != nil || err2 != nil || !hmac.Equal(mac, s.openIDMAC(payload)) {
		return ""
	}
	var p openIDPayload
	if json.Unmarshal(payload, &p) != nil || p.User == "" || s.cfg.Now().UnixMilli() >= p.Expires {
		return ""
	}
	return p.User
}

func (s *Server) handleOpenIDRequestToken(w http.ResponseWriter, r *http.Request, sess *Session) {
	if r.PathValue("userId") != sess.UserID {
		writeError(w, r, actors.ErrForbidden("cannot request an OpenID token for another user"))
		return
	}
	// The body is an empty object; anything else is still a JSON object.
	var body map[string]json.RawMessage
	if err := decodeJSON(r, &body); err != nil {
		writeError(w, r, err)
		return
	}
	tok, err := s.newOpenIDToken(sess.UserID, s.cfg.Now().Add(openIDTokenLifetime))
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token":       tok,
		"token_type":         "Bearer",
		"matrix_server_name": s.server.ServerName,
		"expires_in":         int(openIDTokenLifetime / time.Second),
	})
}

// handleOpenIDUserinfo serves GET /_matrix/federation/v1/openid/userinfo:
// not signed (third parties that are no homeserver call it), the token is
// the credential.
func (s *Server) handleOpenIDUserinfo(w http.ResponseWriter, r *http.Request) {
	errToken := errStatus(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "access token unknown or expired")
	tok := r.URL.Query().Get("access_token")
	user := s.openIDUser(tok)
	if user == "" {
		writeError(w, r, errToken)
		return
	}
	rep, err := s.accountQuery(r.Context(), &pb.AccountQuery{UserId: user, Kind: "info"})
	if err != nil {
		writeError(w, r, err)
		return
	}
	var info struct {
		Deactivated bool `json:"deactivated"`
	}
	if !rep.Found || json.Unmarshal(rep.Json, &info) != nil || info.Deactivated {
		writeError(w, r, errToken)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"sub": user})
}
