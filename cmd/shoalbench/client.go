package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// requestTimeout bounds every request but the long-polls, whose bound is
// their own timeout plus syncGrace.
const (
	requestTimeout = 2 * time.Minute
	syncGrace      = 30 * time.Second
	maxBody        = 256 << 20
)

// newHTTPClient is the one client every simulated user shares: keep-alives
// on, enough idle connections per host for every long-poll to keep its own,
// never a proxy (all targets are on loopback).
func newHTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        4096,
		MaxIdleConnsPerHost: 2048,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   false,
	}}
}

// homeserver is one Matrix server under test, as seen over HTTP.
type homeserver struct {
	base         string // e.g. http://127.0.0.1:8008, no trailing slash
	serverName   string
	sharedSecret string // when set, users are registered with the admin API
	hc           *http.Client
}

// user is a logged-in client of a homeserver.
type user struct {
	hs     *homeserver
	ID     string
	Token  string
	Device string
}

// matrixError is a non-2xx answer.
type matrixError struct {
	Status  int
	ErrCode string
	Message string
	Body    []byte // the raw body, for callers that need more (UIA)
}

func (e *matrixError) Error() string {
	if e.ErrCode == "" {
		return fmt.Sprintf("HTTP %d", e.Status)
	}
	return fmt.Sprintf("HTTP %d %s: %s", e.Status, e.ErrCode, e.Message)
}

// retryable tells whether a request that failed with err may be repeated
// as it was: transport errors and 5xx, never client errors.
func retryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var me *matrixError
	if errors.As(err, &me) {
		return me.Status >= 500 || me.Status == http.StatusTooManyRequests
	}
	return true
}

// do sends one request and decodes a 2xx JSON answer into out (if not nil).
func (hs *homeserver) do(ctx context.Context, method, path string, query url.Values, token string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode body: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	u := hs.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hs.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return fmt.Errorf("%s %s: read body: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		me := &matrixError{Status: resp.StatusCode, Body: data}
		var e struct {
			ErrCode string `json:"errcode"`
			Error   string `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil {
			me.ErrCode, me.Message = e.ErrCode, e.Error
		}
		return fmt.Errorf("%s %s: %w", method, path, me)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

func (u *user) do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	return u.hs.do(ctx, method, path, query, u.Token, body, out)
}

// versions is the unauthenticated probe used to wait for a server to start.
func (hs *homeserver) versions(ctx context.Context) error {
	var out struct {
		Versions []string `json:"versions"`
	}
	if err := hs.do(ctx, http.MethodGet, "/_matrix/client/versions", nil, "", nil, &out); err != nil {
		return err
	}
	if len(out.Versions) == 0 {
		return errors.New("/_matrix/client/versions lists no versions")
	}
	return nil
}

type loginAnswer struct {
	UserID      string `json:"user_id"`
	AccessToken string `json:"access_token"`
	DeviceID    string `json:"device_id"`
}

func (hs *homeserver) userFrom(a loginAnswer) (*user, error) {
	if a.UserID == "" || a.AccessToken == "" {
		return nil, errors.New("registration answer has no user_id or access_token")
	}
	return &user{hs: hs, ID: a.UserID, Token: a.AccessToken, Device: a.DeviceID}, nil
}

// register creates an account and logs it in, through the shared-secret
// admin API when the homeserver has a secret, else through the client API
// with m.login.dummy user-interactive auth.
func (hs *homeserver) register(ctx context.Context, localpart, password string) (*user, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	if hs.sharedSecret != "" {
		return hs.registerSharedSecret(ctx, localpart, password)
	}
	return hs.registerDummy(ctx, localpart, password)
}

func (hs *homeserver) registerDummy(ctx context.Context, localpart, password string) (*user, error) {
	const path = "/_matrix/client/v3/register"
	req := map[string]any{"username": localpart, "password": password, "initial_device_display_name": "shoalbench"}
	var ans loginAnswer
	err := hs.do(ctx, http.MethodPost, path, nil, "", req, &ans)
	if err == nil { // a server without UIA on registration
		return hs.userFrom(ans)
	}
	var me *matrixError
	if !errors.As(err, &me) || me.Status != http.StatusUnauthorized {
		return nil, fmt.Errorf("register %s: %w", localpart, err)
	}
	var uia struct {
		Session string `json:"session"`
		Flows   []struct {
			Stages []string `json:"stages"`
		} `json:"flows"`
	}
	if err := json.Unmarshal(me.Body, &uia); err != nil || uia.Session == "" {
		return nil, fmt.Errorf("register %s: 401 without a UIA session: %s", localpart, truncate(me.Body, 200))
	}
	dummy := false
	for _, f := range uia.Flows {
		dummy = dummy || (len(f.Stages) == 1 && f.Stages[0] == "m.login.dummy")
	}
	if !dummy {
		return nil, fmt.Errorf("register %s: the server offers no m.login.dummy flow (flows: %s); use -shared-secret",
			localpart, truncate(me.Body, 300))
	}
	req["auth"] = map[string]any{"type": "m.login.dummy", "session": uia.Session}
	if err := hs.do(ctx, http.MethodPost, path, nil, "", req, &ans); err != nil {
		return nil, fmt.Errorf("register %s with m.login.dummy: %w", localpart, err)
	}
	return hs.userFrom(ans)
}

// registerSharedSecret uses the Synapse-compatible admin API
// (/_synapse/admin/v1/register) that shoal and Dendrite both serve.
func (hs *homeserver) registerSharedSecret(ctx context.Context, localpart, password string) (*user, error) {
	const path = "/_synapse/admin/v1/register"
	var nonce struct {
		Nonce string `json:"nonce"`
	}
	if err := hs.do(ctx, http.MethodGet, path, nil, "", nil, &nonce); err != nil {
		return nil, fmt.Errorf("register %s: get nonce: %w", localpart, err)
	}
	mac := hmac.New(sha1.New, []byte(hs.sharedSecret))
	mac.Write([]byte(nonce.Nonce + "\x00" + localpart + "\x00" + password + "\x00notadmin"))
	req := map[string]any{"nonce": nonce.Nonce, "username": localpart, "password": password, "admin": false,
		"mac": hex.EncodeToString(mac.Sum(nil))}
	var ans loginAnswer
	if err := hs.do(ctx, http.MethodPost, path, nil, "", req, &ans); err != nil {
		return nil, fmt.Errorf("register %s with the shared secret: %w", localpart, err)
	}
	return hs.userFrom(ans)
}

// createRoom creates a room with a preset ("public_chat", "private_chat").
func (u *user) createRoom(ctx context.Context, preset, name string) (string, error) {
	var out struct {
		RoomID string `json:"room_id"`
	}
	body := map[string]any{"preset": preset, "name": name}
	if err := u.do(ctx, http.MethodPost, "/_matrix/client/v3/createRoom", nil, body, &out); err != nil {
		return "", fmt.Errorf("%s creates a room: %w", u.ID, err)
	}
	if out.RoomID == "" {
		return "", fmt.Errorf("%s creates a room: answer has no room_id", u.ID)
	}
	return out.RoomID, nil
}

// join joins a room by ID.
func (u *user) join(ctx context.Context, roomID string) error {
	if err := u.do(ctx, http.MethodPost, "/_matrix/client/v3/join/"+url.PathEscape(roomID), nil, map[string]any{}, nil); err != nil {
		return fmt.Errorf("%s joins %s: %w", u.ID, roomID, err)
	}
	return nil
}

// sendMessage sends an m.room.message with the client's transaction ID
// txnID; repeating it with the same txnID must not create a second event.
func (u *user) sendMessage(ctx context.Context, roomID, txnID string, content map[string]any) (string, error) {
	path := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/send/m.room.message/" + url.PathEscape(txnID)
	var out struct {
		EventID string `json:"event_id"`
	}
	if err := u.do(ctx, http.MethodPut, path, nil, content, &out); err != nil {
		return "", fmt.Errorf("%s sends %s: %w", u.ID, txnID, err)
	}
	if out.EventID == "" {
		return "", fmt.Errorf("%s sends %s: answer has no event_id", u.ID, txnID)
	}
	return out.EventID, nil
}

// event is the part of a client event the scenarios look at.
type event struct {
	EventID string          `json:"event_id"`
	Type    string          `json:"type"`
	Sender  string          `json:"sender"`
	Content json.RawMessage `json:"content"`
}

type syncAnswer struct {
	NextBatch string `json:"next_batch"`
	Rooms     struct {
		Join map[string]struct {
			Timeline struct {
				Events    []event `json:"events"`
				Limited   bool    `json:"limited"`
				PrevBatch string  `json:"prev_batch"`
			} `json:"timeline"`
		} `json:"join"`
	} `json:"rooms"`
}

// sync calls /sync. since "" is an initial sync; timeout is the long-poll
// time; filter is inline filter JSON or "".
func (u *user) sync(ctx context.Context, since string, timeout time.Duration, filter string) (*syncAnswer, int, error) {
	q := url.Values{"timeout": {strconv.FormatInt(timeout.Milliseconds(), 10)}}
	if since != "" {
		q.Set("since", since)
	}
	if filter != "" {
		q.Set("filter", filter)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout+syncGrace)
	defer cancel()
	var raw json.RawMessage
	if err := u.hs.do(ctx, http.MethodGet, "/_matrix/client/v3/sync", q, u.Token, nil, &raw); err != nil {
		return nil, 0, fmt.Errorf("%s syncs: %w", u.ID, err)
	}
	var out syncAnswer
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, 0, fmt.Errorf("%s syncs: decode answer: %w", u.ID, err)
	}
	if out.NextBatch == "" {
		return nil, 0, fmt.Errorf("%s syncs: answer has no next_batch", u.ID)
	}
	return &out, len(raw), nil
}

type messagesAnswer struct {
	Chunk []event `json:"chunk"`
	Start string  `json:"start"`
	End   string  `json:"end"`
}

// messages pages a room's history; from "" starts at the newest end
// (backwards) as the spec allows since v1.3.
func (u *user) messages(ctx context.Context, roomID, from, dir string, limit int) (*messagesAnswer, error) {
	q := url.Values{"dir": {dir}, "limit": {strconv.Itoa(limit)}}
	if from != "" {
		q.Set("from", from)
	}
	var out messagesAnswer
	if err := u.do(ctx, http.MethodGet, "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages", q, nil, &out); err != nil {
		return nil, fmt.Errorf("%s reads the history of %s: %w", u.ID, roomID, err)
	}
	return &out, nil
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}
