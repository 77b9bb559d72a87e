package gateway

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
)

// Push rules (client-server API, "Push Rules: API"). The user's actor keeps
// the rules and checks every change; the gateway reads the path, bounds the
// body and, for reads, picks the asked part out of the user's ruleset. Only
// the "global" scope exists.

// maxPushRuleBodyBytes bounds a PUT body; a rule itself is bounded by
// actors.MaxPushRuleBytes.
const maxPushRuleBodyBytes = 16 << 10

func (s *Server) registerPushRules() {
	const base = "/_matrix/client/v3/pushrules/"
	s.handle("GET "+base+"{$}", s.authed(s.handleGetPushRules))
	s.handle("GET "+base+"global/{$}", s.authed(s.handleGetPushRules))
	s.handle("GET "+base+"global/{kind}/{ruleId}", s.authed(s.handleGetPushRule))
	s.handle("PUT "+base+"global/{kind}/{ruleId}", s.authed(s.handlePushRuleChange("put")))
	s.handle("DELETE "+base+"global/{kind}/{ruleId}", s.authed(s.handlePushRuleChange("delete")))
	s.handle("GET "+base+"global/{kind}/{ruleId}/enabled", s.authed(s.handleGetPushRule))
	s.handle("PUT "+base+"global/{kind}/{ruleId}/enabled", s.authed(s.handlePushRuleChange("enabled")))
	s.handle("GET "+base+"global/{kind}/{ruleId}/actions", s.authed(s.handleGetPushRule))
	s.handle("PUT "+base+"global/{kind}/{ruleId}/actions", s.authed(s.handlePushRuleChange("actions")))
}

// pushRules reads the caller's ruleset: {"global": PushRuleset}.
func (s *Server) pushRules(r *http.Request, sess *Session) (json.RawMessage, error) {
	rep, err := s.accountQuery(r.Context(), &pb.AccountQuery{UserId: sess.UserID, Kind: "push_rules"})
	if err != nil {
		return nil, err
	}
	if !rep.Found {
		return nil, actors.ErrNotFound("no such user")
	}
	return rep.Json, nil
}

// handleGetPushRules answers GET /pushrules/ with every scope and GET
// /pushrules/global/ with the global ruleset alone.
func (s *Server) handleGetPushRules(w http.ResponseWriter, r *http.Request, sess *Session) {
	all, err := s.pushRules(r, sess)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if r.Pattern == "GET /_matrix/client/v3/pushrules/{$}" {
		writeJSON(w, http.StatusOK, all)
		return
	}
	var scopes map[string]json.RawMessage
	if err := json.Unmarshal(all, &scopes); err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, scopes["global"])
}

// handleGetPushRule answers GET of a rule, of its enabled flag or of its
// actions.
func (s *Server) handleGetPushRule(w http.ResponseWriter, r *http.Request, sess *Session) {
	all, err := s.pushRules(r, sess)
	if err != nil {
		writeError(w, r, err)
		return
	}
	var scopes struct {
		Global *actors.PushRuleset `json:"global"`
	}
	if err := json.Unmarshal(all, &scopes); err != nil || scopes.Global == nil {
		writeError(w, r, errors.Join(errors.New("gateway: malformed push ruleset"), err))
		return
	}
	rule, err := scopes.Global.Find(r.PathValue("kind"), r.PathValue("ruleId"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	switch {
	case r.Pattern == "GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled":
		writeJSON(w, http.StatusOK, map[string]bool{"enabled": rule.Enabled})
	case r.Pattern == "GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions":
		writeJSON(w, http.StatusOK, map[string]any{"actions": rule.Actions})
	default:
		writeJSON(w, http.StatusOK, rule)
	}
}

// handlePushRuleChange sends a PUT or DELETE to the user's actor, which
// checks it (kind, rule ID, body) and answers the spec's errors.
func (s *Server) handlePushRuleChange(op string) func(http.ResponseWriter, *http.Request, *Session) {
	return func(w http.ResponseWriter, r *http.Request, sess *Session) {
		u := &pb.PushRuleUpdate{UserId: sess.UserID, Op: op, Kind: r.PathValue("kind"), RuleId: r.PathValue("ruleId")}
		if op != "delete" {
			body, err := readObject(r, maxPushRuleBodyBytes)
			if err != nil {
				writeError(w, r, err)
				return
			}
			u.Body = body
		}
		if op == "put" {
			q := r.URL.Query()
			u.Before, u.After = q.Get("before"), q.Get("after")
		}
		if _, err := s.router.Request(r.Context(), u); err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{})
	}
}
