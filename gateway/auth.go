package gateway

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strings"

	"github.com/shoal-chat/shoal/actors/pb"
)

// An access token names its user and device, so any node can route its
// check to the device actor, plus a random secret of which the device actor
// keeps only a hash: "shoal_" b64(user) "." b64(device) "." secret.
const tokenPrefix = "shoal_"

// NewAccessToken makes a token for a device and returns it with the hash
// the device actor stores.
func NewAccessToken(userID, deviceID string) (token string, hash []byte) {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		panic("gateway: no randomness: " + err.Error())
	}
	s := base64.RawURLEncoding.EncodeToString(secret)
	token = tokenPrefix + base64.RawURLEncoding.EncodeToString([]byte(userID)) + "." +
		base64.RawURLEncoding.EncodeToString([]byte(deviceID)) + "." + s
	return token, TokenHash(token)
}

// TokenHash is what a device actor stores for token.
func TokenHash(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// parseAccessToken splits a token into its user and device.
func parseAccessToken(token string) (userID, deviceID string, ok bool) {
	rest, ok := strings.CutPrefix(token, tokenPrefix)
	if !ok {
		return "", "", false
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 3 || parts[2] == "" {
		return "", "", false
	}
	u, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	d, err2 := base64.RawURLEncoding.DecodeString(parts[1])
	if err1 != nil || err2 != nil || len(u) == 0 || len(d) == 0 {
		return "", "", false
	}
	return string(u), string(d), true
}

// Session is the authenticated caller of a client API request.
type Session struct {
	UserID   string
	DeviceID string
	Token    string
	// Suspended is the account's MSC3823 flag as the device knows it.
	Suspended bool
}

type sessionKey struct{}

// bearerToken takes the token from the Authorization header only: query
// string auth is removed from the spec (MSC4126).
func bearerToken(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", false
	}
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// authenticate checks the request's access token with its device actor.
func (s *Server) authenticate(r *http.Request) (*Session, error) {
	tok, ok := bearerToken(r)
	if !ok {
		return nil, errMissingAuth
	}
	userID, deviceID, ok := parseAccessToken(tok)
	if !ok {
		return nil, errUnknownAuth
	}
	res, err := s.router.Request(r.Context(), &pb.DeviceAuth{UserId: userID, DeviceId: deviceID, TokenHash: TokenHash(tok), Ip: clientIP(r)})
	if err != nil {
		return nil, err
	}
	rep, ok := res.(*pb.DeviceAuthReply)
	if !ok || !rep.Valid {
		return nil, errUnknownAuth
	}
	if rep.Locked && !lockedMayUse(r) {
		return nil, errUserLocked
	}
	return &Session{UserID: userID, DeviceID: deviceID, Token: tok, Suspended: rep.Suspended}, nil
}

// authed wraps a handler that needs an authenticated user. Once the user
// is known the request counts against the user's concurrency limit rather
// than its address's, and routes the spec rate-limits take a token from the
// user's bucket.
func (s *Server) authed(h func(w http.ResponseWriter, r *http.Request, sess *Session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sess, err := s.authenticate(r)
		if err == nil {
			err = s.moveSlotToUser(r, sess.UserID)
		}
		if err == nil {
			err = s.limitUser(r, sess.UserID)
		}
		if err == nil && sess.Suspended {
			err = s.checkSuspended(r, sess)
		}
		if err == nil && isGuest(sess.UserID) {
			err = s.checkGuest(r)
		}
		if err != nil {
			writeError(w, r, err)
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), sessionKey{}, sess)), sess)
	}
}
