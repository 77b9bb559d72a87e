package gateway

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/shoal-chat/shoal/actors"
)

// User-interactive authentication (UIA). A session lives on the node that
// created it for uiaLifetime; clients complete a flow within seconds.
const (
	uiaLifetime    = 15 * time.Minute
	maxUIASessions = 100_000
)

type uiaFlow struct {
	Stages []string `json:"stages"`
}

type uiaSession struct {
	// mu serialises requests that continue the same session.
	mu        sync.Mutex
	id        string
	created   time.Time
	completed []string
	// user is the account the session authenticates, once known; a session
	// is bound to it so it cannot be replayed for another account.
	user string
	// data carries what a stage learned (e.g. accepted terms) to the endpoint.
	data map[string]any
}

type uiaSessions struct {
	now func() time.Time
	mu  sync.Mutex
	m   map[string]*uiaSession
}

func newUIASessions(now func() time.Time) *uiaSessions {
	return &uiaSessions{now: now, m: map[string]*uiaSession{}}
}

func (u *uiaSessions) get(id string) *uiaSession {
	u.mu.Lock()
	defer u.mu.Unlock()
	s, ok := u.m[id]
	if !ok || u.now().Sub(s.created) > uiaLifetime {
		delete(u.m, id)
		return nil
	}
	return s
}

func (u *uiaSessions) create() *uiaSession {
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	s := &uiaSession{id: base64.RawURLEncoding.EncodeToString(b), created: u.now(), data: map[string]any{}}
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.m) >= maxUIASessions {
		now := u.now()
		for k, v := range u.m {
			if now.Sub(v.created) > uiaLifetime {
				delete(u.m, k)
			}
		}
	}
	u.m[s.id] = s
	return s
}

func (u *uiaSessions) finish(id string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.m, id)
}

// uiaRequest describes one UIA-protected call.
type uiaRequest struct {
	flows  []uiaFlow
	params map[string]any
	// user binds the session to an account (empty for registration).
	user string
	// stage validates one stage's auth dict; nil error means completed.
	stage func(sess *uiaSession, stage string, auth map[string]json.RawMessage) error
}

// runUIA advances the UIA flow with the request's "auth" dict. It returns
// the session once some flow is complete, or an error to write: 401 with
// the flows (and the stage's error, if one failed).
func (s *Server) runUIA(auth map[string]json.RawMessage, req uiaRequest) (*uiaSession, error) {
	var sess *uiaSession
	if auth != nil {
		var sid string
		_ = json.Unmarshal(auth["session"], &sid)
		if sid != "" {
			sess = s.uia.get(sid)
			if sess == nil {
				return nil, errStatus(http.StatusBadRequest, "M_UNKNOWN", "unknown UIA session")
			}
			if sess.user != "" && req.user != "" && sess.user != req.user {
				return nil, actors.ErrForbidden("UIA session belongs to another user")
			}
		}
	}
	if sess == nil {
		sess = s.uia.create()
	}
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if req.user != "" {
		sess.user = req.user
	}
	var stageErr *actors.MatrixError
	if auth != nil {
		var typ string
		_ = json.Unmarshal(auth["type"], &typ)
		if typ != "" && allowedStage(req.flows, typ) && !slices.Contains(sess.completed, typ) {
			if err := req.stage(sess, typ, auth); err != nil {
				me, ok := err.(*actors.MatrixError)
				if !ok {
					return nil, err
				}
				stageErr = me
			} else {
				sess.completed = append(sess.completed, typ)
			}
		} else if typ != "" && !allowedStage(req.flows, typ) {
			stageErr = errStatus(http.StatusBadRequest, "M_UNRECOGNIZED", "unknown authentication stage")
		}
	}
	for _, f := range req.flows {
		if flowDone(f, sess.completed) {
			return sess, nil
		}
	}
	body := map[string]any{
		"flows":   req.flows,
		"params":  req.params,
		"session": sess.id,
	}
	if req.params == nil {
		body["params"] = map[string]any{}
	}
	if len(sess.completed) > 0 {
		body["completed"] = sess.completed
	}
	e := &actors.MatrixError{Status: http.StatusUnauthorized, ErrCode: "", Extra: body}
	if stageErr != nil {
		e.ErrCode, e.Message = stageErr.ErrCode, stageErr.Message
	}
	return nil, &uiaChallenge{e}
}

// uiaChallenge is the 401 a UIA endpoint answers with; unlike other errors
// it may have no errcode.
type uiaChallenge struct{ *actors.MatrixError }

func writeUIA(w http.ResponseWriter, r *http.Request, err error) {
	if c, ok := err.(*uiaChallenge); ok {
		body := c.Extra
		if c.ErrCode != "" {
			body["errcode"], body["error"] = c.ErrCode, c.Message
		}
		writeJSON(w, http.StatusUnauthorized, body)
		return
	}
	writeError(w, r, err)
}

func allowedStage(flows []uiaFlow, stage string) bool {
	for _, f := range flows {
		if slices.Contains(f.Stages, stage) {
			return true
		}
	}
	return false
}

func flowDone(f uiaFlow, completed []string) bool {
	for _, st := range f.Stages {
		if !slices.Contains(completed, st) {
			return false
		}
	}
	return true
}
