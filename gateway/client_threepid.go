package gateway

import (
	"encoding/json"
	"net/http"

	"github.com/shoal-chat/shoal/actors"
)

// Third-party identifiers (client-server API, "Adding Account
// Administrative Contact Information"). shoal sends neither e-mail nor SMS
// and talks to no identity server, so no third-party identifier can ever be
// validated or bound: every requestToken answers MSC4178's
// M_THREEPID_MEDIUM_NOT_SUPPORTED, an account's list is always empty, and
// adding or binding fails as the spec says an unvalidated session fails.
// No submit_url is ever handed out, so there are no submitToken endpoints
// (MSC4183).

func (s *Server) registerThreepid() {
	v3 := "/_matrix/client/v3"
	for _, p := range []string{"/account/3pid/email", "/account/3pid/msisdn", "/register/email", "/register/msisdn",
		"/account/password/email", "/account/password/msisdn"} {
		s.handle("POST "+v3+p+"/requestToken", s.handleRequestToken)
	}
	s.handle("GET "+v3+"/account/3pid", s.authed(func(w http.ResponseWriter, r *http.Request, _ *Session) {
		writeJSON(w, http.StatusOK, map[string]any{"threepids": []any{}})
	}))
	s.handle("POST "+v3+"/account/3pid", s.authed(s.handleThreepidLegacyAdd))
	s.handle("POST "+v3+"/account/3pid/add", s.authed(s.handleThreepidAdd))
	s.handle("POST "+v3+"/account/3pid/bind", s.authed(s.handleThreepidBind))
	s.handle("POST "+v3+"/account/3pid/delete", s.authed(s.handleThreepidRemove))
	s.handle("POST "+v3+"/account/3pid/unbind", s.authed(s.handleThreepidRemove))
}

var errThreepidAuthFailed = errStatus(http.StatusBadRequest, "M_THREEPID_AUTH_FAILED",
	"no third-party identifier was validated in this session")

// requireStrings checks that body has each field as a non-empty string.
func requireStrings(body map[string]json.RawMessage, fields ...string) error {
	for _, f := range fields {
		raw, ok := body[f]
		if !ok {
			return errMissingParam(f + " is required")
		}
		var v string
		if json.Unmarshal(raw, &v) != nil || v == "" {
			return actors.ErrInvalidParam("%s must be a non-empty string", f)
		}
	}
	return nil
}

func (s *Server) handleRequestToken(w http.ResponseWriter, r *http.Request) {
	var body map[string]json.RawMessage
	if err := decodeJSON(r, &body); err != nil {
		writeError(w, r, err)
		return
	}
	writeError(w, r, errStatus(http.StatusBadRequest, "M_THREEPID_MEDIUM_NOT_SUPPORTED",
		"this server does not send e-mail or SMS, so it cannot validate third-party identifiers"))
}

// handleThreepidLegacyAdd is the deprecated POST /account/3pid, whose
// documented failure is 403 M_THREEPID_AUTH_FAILED.
func (s *Server) handleThreepidLegacyAdd(w http.ResponseWriter, r *http.Request, _ *Session) {
	var body struct {
		Creds map[string]json.RawMessage `json:"three_pid_creds"`
	}
	if err := decodeJSON(r, &body); err != nil {
		writeError(w, r, err)
		return
	}
	if body.Creds == nil {
		writeError(w, r, errMissingParam("three_pid_creds is required"))
		return
	}
	if err := requireStrings(body.Creds, "client_secret", "sid"); err != nil {
		writeError(w, r, err)
		return
	}
	writeError(w, r, errStatus(http.StatusForbidden, "M_THREEPID_AUTH_FAILED", "the third-party identifier could not be validated"))
}

// handleThreepidAdd takes the user's password first, as the spec requires,
// then fails: the session it names cannot have been validated.
func (s *Server) handleThreepidAdd(w http.ResponseWriter, r *http.Request, sess *Session) {
	var body map[string]json.RawMessage
	if err := decodeJSON(r, &body); err != nil {
		writeError(w, r, err)
		return
	}
	if err := requireStrings(body, "client_secret", "sid"); err != nil {
		writeError(w, r, err)
		return
	}
	var auth map[string]json.RawMessage
	if raw, ok := body["auth"]; ok && json.Unmarshal(raw, &auth) != nil {
		writeError(w, r, actors.ErrBadJSON("auth must be an object"))
		return
	}
	uia, err := s.runUIA(auth, s.passwordUIA(r.Context(), sess.UserID))
	if err != nil {
		writeUIA(w, r, err)
		return
	}
	s.uia.finish(uia.id)
	writeError(w, r, errThreepidAuthFailed)
}

func (s *Server) handleThreepidBind(w http.ResponseWriter, r *http.Request, _ *Session) {
	var body map[string]json.RawMessage
	if err := decodeJSON(r, &body); err != nil {
		writeError(w, r, err)
		return
	}
	if err := requireStrings(body, "client_secret", "id_server", "id_access_token", "sid"); err != nil {
		writeError(w, r, err)
		return
	}
	writeError(w, r, errStatus(http.StatusBadRequest, "M_SERVER_NOT_TRUSTED", "this server does not use identity servers"))
}

// handleThreepidRemove answers delete and unbind: the account has no
// third-party identifiers, so there is nothing to remove, and no identity
// server was asked (no-support).
func (s *Server) handleThreepidRemove(w http.ResponseWriter, r *http.Request, _ *Session) {
	var body map[string]json.RawMessage
	if err := decodeJSON(r, &body); err != nil {
		writeError(w, r, err)
		return
	}
	if err := requireStrings(body, "medium", "address"); err != nil {
		writeError(w, r, err)
		return
	}
	var medium string
	_ = json.Unmarshal(body["medium"], &medium)
	if medium != "email" && medium != "msisdn" {
		writeError(w, r, actors.ErrInvalidParam("medium must be email or msisdn"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"id_server_unbind_result": "no-support"})
}
