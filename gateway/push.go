package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/cluster"
)

// Pushers and notifications (client-server API, "Push Notifications"):
// the user's actor keeps both and does the checking; the gateway bounds
// bodies and parameters. Pushes to push gateways leave through
// pushSender, which the user actors are given when the node starts.

const (
	maxPusherBodyBytes = 8 << 10
	// maxPushResponseBytes bounds what is read of a push gateway's answer.
	maxPushResponseBytes = 64 << 10
	defaultNotifications = 50
	maxNotificationLimit = 200
)

func (s *Server) registerPush() {
	s.handle("GET /_matrix/client/v3/pushers", s.authed(s.handleGetPushers))
	s.handle("POST /_matrix/client/v3/pushers/set", s.authed(s.handleSetPusher))
	s.handle("GET /_matrix/client/v3/notifications", s.authed(s.handleNotifications))
}

func (s *Server) handleGetPushers(w http.ResponseWriter, r *http.Request, sess *Session) {
	rep, err := s.accountQuery(r.Context(), &pb.AccountQuery{UserId: sess.UserID, Kind: "pushers"})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, json.RawMessage(rep.Json))
}

func (s *Server) handleSetPusher(w http.ResponseWriter, r *http.Request, sess *Session) {
	body, err := readBody(r, maxPusherBodyBytes)
	if err != nil {
		writeError(w, r, err)
		return
	}
	var probe map[string]json.RawMessage
	if err := unmarshalBody(body, &probe); err != nil {
		writeError(w, r, err)
		return
	}
	if _, ok := probe["kind"]; !ok {
		writeError(w, r, errMissingParam("kind is required"))
		return
	}
	if _, err := s.accountUpdate(r.Context(), &pb.AccountUpdate{UserId: sess.UserID, Kind: "pusher", Value: body}); err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

func (s *Server) handleNotifications(w http.ResponseWriter, r *http.Request, sess *Session) {
	q := r.URL.Query()
	limit := defaultNotifications
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, r, actors.ErrInvalidParam("limit must be a non-negative integer"))
			return
		}
		limit = max(1, min(n, maxNotificationLimit))
	}
	key, _ := json.Marshal(map[string]any{"from": q.Get("from"), "limit": limit, "only": q.Get("only")})
	rep, err := s.accountQuery(r.Context(), &pb.AccountQuery{UserId: sess.UserID, Kind: "notifications", Key: string(key)})
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, json.RawMessage(rep.Json))
}

// pushSender posts to push gateways; it implements actors.PushSender.
type pushSender struct{ client *http.Client }

// withPushSender binds the user actors to a push sender built from cfg:
// connections only to public addresses unless PushAllowPrivate, no
// redirects.
func withPushSender(kinds map[string]cluster.Producer, cfg Config) map[string]cluster.Producer {
	if _, ok := kinds[pb.KindUser]; !ok {
		return kinds
	}
	out := make(map[string]cluster.Producer, len(kinds))
	for k, v := range kinds {
		out[k] = v
	}
	out[pb.KindUser] = actors.NewUserKind(newPushSender(cfg))
	return out
}

func newPushSender(cfg Config) *pushSender {
	d := &net.Dialer{Timeout: 10 * time.Second}
	if !cfg.PushAllowPrivate {
		d.Control = previewDialControl(nil)
	}
	return &pushSender{client: &http.Client{
		Transport: &http.Transport{DialContext: d.DialContext, TLSHandshakeTimeout: 10 * time.Second,
			ResponseHeaderTimeout: 15 * time.Second, MaxIdleConnsPerHost: 4},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// Post implements actors.PushSender.
func (p *pushSender) Post(ctx context.Context, url string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxPushResponseBytes))
	if err != nil {
		return resp.StatusCode, nil, err
	}
	return resp.StatusCode, raw, nil
}
