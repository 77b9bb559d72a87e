package actors

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// Push notifications (client-server API, "Push Notifications"; push
// gateway API). The user actor owns the user's pushers and recent
// notifications:
//
//   - after a room commits an event it sends each local joined member a
//     PushNotice with the event and what evaluation needs of the room; the
//     member's actor evaluates its own rules, records a notification when
//     they say notify, and queues one push gateway request per HTTP pusher;
//   - the requests run on a goroutine the actor owns, through a bounded
//     queue, never inside Receive; a gateway that rejects a pushkey sends a
//     PushResult back and the actor drops that pusher.
//
// Left out: email pushers (shoal sends no email; setting one is refused),
// the counts object of a push (the user actor does not know what has been
// read), the "read" flag of listed notifications (always false), and
// append=false removing other users' pushers with the same app_id and
// pushkey (that needs an index across users).

// Bounds on what a client controls.
const (
	maxPushers           = 20
	maxPushkeyBytes      = 512
	maxAppIDChars        = 64
	maxPusherStringBytes = 256
	maxPusherDataBytes   = 4 << 10
	// maxNotifications is how many recent notifications are kept.
	maxNotifications = 200
	// maxNotificationsScan bounds the notifications one listing examines
	// (only=highlight skips the others).
	maxNotificationsScan = 1000
	// pushQueueLen bounds the pushes waiting for delivery; more are dropped.
	pushQueueLen = 128
	// pushAttempts bounds the tries of one push; pushBackoff is the first
	// wait between them, doubling each time.
	pushAttempts = 5
	pushBackoff  = 500 * time.Millisecond
	pushTimeout  = 15 * time.Second
	// pushGatewayPath is the path every HTTP pusher's URL must have.
	pushGatewayPath = "/_matrix/push/v1/notify"
)

// PushSender posts a notification to a push gateway. The gateway package
// implements it with an HTTP client that refuses private addresses unless
// configured otherwise.
type PushSender interface {
	// Post sends body to url and returns the status and (bounded) body
	// of the response.
	Post(ctx context.Context, url string, body []byte) (status int, resp []byte, err error)
}

// NewUserKind makes user actors that deliver pushes through sender.
func NewUserKind(sender PushSender) func(env *Env) actor.Actor {
	return func(env *Env) actor.Actor {
		u := NewUser(env).(*user)
		u.pushing.sender = sender
		return u
	}
}

// Pusher is one pusher in the spec's shape.
type Pusher struct {
	Pushkey           string          `json:"pushkey"`
	Kind              string          `json:"kind"`
	AppID             string          `json:"app_id"`
	AppDisplayName    string          `json:"app_display_name"`
	DeviceDisplayName string          `json:"device_display_name"`
	ProfileTag        string          `json:"profile_tag,omitempty"`
	Lang              string          `json:"lang"`
	Data              json.RawMessage `json:"data"`
	// PushkeyTS is when the pushkey was last set (ms), sent to gateways.
	PushkeyTS int64 `json:"pushkey_ts"`
}

// userPush is the user actor's push state.
type userPush struct {
	sender  PushSender
	loaded  bool
	pushers []Pusher
	seq     uint64 // newest notification's sequence number
	queue   chan pushJob
}

type pushJob struct {
	url, appID, pushkey string
	body                []byte
}

// loadPush reads the pushers and the notification sequence on first use.
func (u *user) loadPush() error {
	p := &u.pushing
	if p.loaded {
		return nil
	}
	var raw []byte
	if err := u.view(func(ut storage.UserTx) error {
		var err error
		if raw, err = ut.Pushers(); err != nil {
			return err
		}
		p.seq, err = ut.LastNotificationSeq()
		return err
	}); err != nil {
		return err
	}
	p.pushers = nil
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &p.pushers); err != nil {
			return err
		}
	}
	p.loaded = true
	return nil
}

// queryPushers answers AccountQuery pushers: {"pushers": [...]}.
func (u *user) queryPushers() acctResult {
	if err := u.loadPush(); err != nil {
		return acctFail(err)
	}
	list := u.pushing.pushers
	if list == nil {
		list = []Pusher{}
	}
	b, err := json.Marshal(map[string]any{"pushers": list})
	if err != nil {
		return acctFail(err)
	}
	return acctOK(&pb.AccountQueryReply{Json: b, Found: true})
}

// setPusher answers AccountUpdate pusher: the POST /pushers/set body.
func (u *user) setPusher(m *pb.AccountUpdate) acctResult {
	if _, err := u.account(false); err != nil {
		return acctFail(err)
	}
	if err := u.loadPush(); err != nil {
		return acctFail(err)
	}
	var req struct {
		Pusher
		Kind   *string `json:"kind"`
		Append bool    `json:"append"`
	}
	if err := json.Unmarshal(m.Value, &req); err != nil {
		return acctFail(ErrBadJSON("invalid pusher: %v", err))
	}
	p := req.Pusher
	if p.AppID == "" || p.Pushkey == "" {
		return acctFail(Errorf(http.StatusBadRequest, "M_MISSING_PARAM", "app_id and pushkey are required"))
	}
	if len(p.Pushkey) > maxPushkeyBytes || utf8.RuneCountInString(p.AppID) > maxAppIDChars {
		return acctFail(ErrInvalidParam("pushkey is limited to %d bytes and app_id to %d characters", maxPushkeyBytes, maxAppIDChars))
	}
	list := u.pushing.pushers
	idx := -1
	for i := range list {
		if list[i].AppID == p.AppID && list[i].Pushkey == p.Pushkey {
			idx = i
		}
	}
	next := append([]Pusher(nil), list...)
	if req.Kind == nil {
		if idx < 0 {
			return acctOK(&pb.AccountUpdateReply{Json: []byte("{}")})
		}
		next = append(next[:idx], next[idx+1:]...)
	} else {
		p.Kind = *req.Kind
		if err := validPusher(&p); err != nil {
			return acctFail(err)
		}
		p.PushkeyTS = u.env.NowMillis()
		if idx >= 0 {
			next[idx] = p
		} else {
			if len(next) >= maxPushers {
				return acctFail(Errorf(http.StatusBadRequest, "M_LIMIT_EXCEEDED", "at most %d pushers", maxPushers))
			}
			next = append(next, p)
		}
	}
	if err := u.putPushers(next); err != nil {
		return acctFail(err)
	}
	return acctOK(&pb.AccountUpdateReply{Json: []byte("{}")})
}

// validPusher checks a pusher to be added.
func validPusher(p *Pusher) error {
	switch p.Kind {
	case "http":
	case "email":
		return ErrInvalidParam("email pushers are not supported")
	default:
		return ErrInvalidParam("unknown pusher kind %q", p.Kind)
	}
	var missing []string
	if p.AppDisplayName == "" {
		missing = append(missing, "app_display_name")
	}
	if p.DeviceDisplayName == "" {
		missing = append(missing, "device_display_name")
	}
	if p.Lang == "" {
		missing = append(missing, "lang")
	}
	if len(p.Data) == 0 || string(p.Data) == "null" {
		missing = append(missing, "data")
	}
	if len(missing) > 0 {
		return Errorf(http.StatusBadRequest, "M_MISSING_PARAM", "Missing parameters: %s", strings.Join(missing, ", "))
	}
	for _, s := range []string{p.AppDisplayName, p.DeviceDisplayName, p.Lang, p.ProfileTag} {
		if len(s) > maxPusherStringBytes {
			return ErrInvalidParam("pusher strings are limited to %d bytes", maxPusherStringBytes)
		}
	}
	if len(p.Data) > maxPusherDataBytes {
		return ErrInvalidParam("pusher data is limited to %d bytes", maxPusherDataBytes)
	}
	var data map[string]any
	if err := json.Unmarshal(p.Data, &data); err != nil || data == nil {
		return ErrInvalidParam("data must be an object")
	}
	raw, _ := data["url"].(string)
	u, err := url.Parse(raw)
	if raw == "" || err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.Path != pushGatewayPath {
		return ErrInvalidParam("data.url must be an http(s) URL with the path %s", pushGatewayPath)
	}
	if f, ok := data["format"]; ok && f != "event_id_only" {
		return ErrInvalidParam("data.format must be event_id_only")
	}
	return nil
}

func (u *user) putPushers(next []Pusher) error {
	raw, err := json.Marshal(next)
	if err != nil {
		return err
	}
	if err := u.write(func(ut storage.UserTx) error { return ut.PutPushers(raw) }); err != nil {
		return err
	}
	u.pushing.pushers = next
	return nil
}

// pushResult drops a pusher its gateway rejected.
func (u *user) pushResult(m *pb.PushResult) {
	if !m.Rejected || u.loadPush() != nil {
		return
	}
	var next []Pusher
	for _, p := range u.pushing.pushers {
		if p.AppID != m.AppId || p.Pushkey != m.Pushkey {
			next = append(next, p)
		}
	}
	if len(next) == len(u.pushing.pushers) {
		return
	}
	if err := u.putPushers(next); err != nil {
		u.env.Log.Error("user: drop rejected pusher", slog.Any("err", err))
	}
}

// storedNotification is one recorded notification.
type storedNotification struct {
	Actions    []json.RawMessage `json:"actions"`
	Event      json.RawMessage   `json:"event"`
	ProfileTag string            `json:"profile_tag,omitempty"`
	Read       bool              `json:"read"`
	RoomID     string            `json:"room_id"`
	TS         int64             `json:"ts"`
	// Highlight serves only=highlight; not part of the listed object.
	Highlight bool `json:"highlight,omitempty"`
}

// pushNotice evaluates an event for the user: a notification is
// recorded, and pushed to each HTTP pusher, when the rules say notify.
func (u *user) pushNotice(m *pb.PushNotice) {
	if u.ready() != nil || u.st.Account == nil || u.st.Account.Deactivated {
		return
	}
	content, err := u.pushContent()
	if err != nil {
		u.env.Log.Error("user: push rules", slog.Any("err", err))
		return
	}
	eval := u.evaluators.get(u.userID, content)
	ev, err := NewPushEvent(m.Event)
	if eval == nil || err != nil {
		return
	}
	out := eval.Evaluate(ev, PushContext{MemberCount: int(m.MemberCount), SenderPowerLevel: m.SenderPowerLevel,
		NotificationLevels: m.NotificationLevels, DisplayName: m.DisplayName})
	if !out.Notify {
		return
	}
	if err := u.loadPush(); err != nil {
		u.env.Log.Error("user: load pushers", slog.Any("err", err))
		return
	}
	actions := []json.RawMessage{json.RawMessage(`"notify"`)}
	for k, v := range out.Tweaks {
		a, _ := json.Marshal(map[string]any{"set_tweak": k, "value": v})
		actions = append(actions, a)
	}
	n := storedNotification{Actions: actions, Event: m.Event, RoomID: m.RoomId, TS: u.env.NowMillis(), Highlight: out.Highlight}
	raw, err := json.Marshal(n)
	if err != nil {
		return
	}
	seq := u.pushing.seq + 1
	if err := u.write(func(ut storage.UserTx) error { return ut.PutNotification(seq, raw, maxNotifications) }); err != nil {
		u.env.Log.Error("user: record notification", slog.Any("err", err))
		return
	}
	u.pushing.seq = seq
	for _, p := range u.pushing.pushers {
		if p.Kind == "http" {
			u.queuePush(p, m, ev, out)
		}
	}
}

// queuePush builds the push gateway request for one pusher and queues it.
func (u *user) queuePush(p Pusher, m *pb.PushNotice, ev *PushEvent, out PushOutcome) {
	if u.pushing.sender == nil {
		return
	}
	var data map[string]json.RawMessage
	_ = json.Unmarshal(p.Data, &data)
	target := ""
	_ = json.Unmarshal(data["url"], &target)
	delete(data, "url")
	tweaks := out.Tweaks
	if tweaks == nil {
		tweaks = map[string]json.RawMessage{}
	}
	device := map[string]any{"app_id": p.AppID, "pushkey": p.Pushkey, "pushkey_ts": p.PushkeyTS / 1000,
		"data": data, "tweaks": tweaks}
	eventID, _ := ev.root["event_id"].(string)
	notif := map[string]any{"event_id": eventID, "room_id": m.RoomId, "devices": []any{device}}
	var format string
	_ = json.Unmarshal(data["format"], &format)
	if format != "event_id_only" {
		notif["type"] = ev.root["type"]
		notif["sender"] = ev.sender
		if m.SenderDisplayName != "" {
			notif["sender_display_name"] = m.SenderDisplayName
		}
		if m.RoomName != "" {
			notif["room_name"] = m.RoomName
		}
		if c, ok := ev.root["content"]; ok {
			notif["content"] = c
		}
		prio := "low"
		if out.Highlight || tweaks["sound"] != nil {
			prio = "high"
		}
		notif["prio"] = prio
	}
	body, err := json.Marshal(map[string]any{"notification": notif})
	if err != nil {
		return
	}
	if u.pushing.queue == nil {
		u.pushing.queue = make(chan pushJob, pushQueueLen)
		go deliverPushes(u.pushing.queue, u.pushing.sender, u.env.Router, u.userID, u.env.Log)
	}
	select {
	case u.pushing.queue <- pushJob{url: target, appID: p.AppID, pushkey: p.Pushkey, body: body}:
	default:
		u.env.Log.Warn("user: push queue full, dropping a push", slog.String("app_id", p.AppID))
	}
}

// stopPushing ends the delivery goroutine once it has sent what is
// queued (the actor is stopping).
func (u *user) stopPushing() {
	if u.pushing.queue != nil {
		close(u.pushing.queue)
		u.pushing.queue = nil
	}
}

// deliverPushes posts queued pushes in order, retrying 5xx answers and
// network errors with exponential backoff, and reports rejected pushkeys
// to the user actor.
func deliverPushes(queue <-chan pushJob, sender PushSender, router Router, userID string, log *slog.Logger) {
	for job := range queue {
		wait := pushBackoff
		for attempt := 1; attempt <= pushAttempts; attempt++ {
			ctx, cancel := context.WithTimeout(context.Background(), pushTimeout)
			status, resp, err := sender.Post(ctx, job.url, job.body)
			cancel()
			if err == nil && status < 500 {
				if status/100 == 2 {
					var r struct {
						Rejected []string `json:"rejected"`
					}
					_ = json.Unmarshal(resp, &r)
					for _, k := range r.Rejected {
						if k == job.pushkey {
							router.Send(&pb.PushResult{UserId: userID, AppId: job.appID, Pushkey: job.pushkey, Rejected: true})
						}
					}
				} else {
					log.Warn("user: push gateway refused a push", slog.Int("status", status))
				}
				break
			}
			if attempt == pushAttempts {
				log.Warn("user: push undelivered", slog.String("attempts", strconv.Itoa(attempt)), slog.Any("err", err))
				break
			}
			time.Sleep(wait)
			wait *= 2
		}
	}
}

// queryNotifications answers AccountQuery notifications; Key is
// {"from", "limit", "only"} as GET /notifications takes them.
func (u *user) queryNotifications(m *pb.AccountQuery) acctResult {
	var q struct {
		From  string `json:"from"`
		Limit int    `json:"limit"`
		Only  string `json:"only"`
	}
	if err := json.Unmarshal([]byte(m.Key), &q); err != nil {
		return acctFail(ErrInvalidParam("bad notifications query"))
	}
	var before uint64
	if q.From != "" {
		n, err := strconv.ParseUint(q.From, 10, 64)
		if err != nil {
			return acctFail(ErrInvalidParam("invalid from token"))
		}
		before = n
	}
	limit := q.Limit
	if limit <= 0 || limit > maxNotifications {
		limit = maxNotifications
	}
	out := []storedNotification{}
	var next uint64
	err := u.view(func(ut storage.UserTx) error {
		scanned := 0
		for scanned < maxNotificationsScan {
			page, err := ut.Notifications(before, limit)
			if err != nil || len(page) == 0 {
				return err
			}
			for _, n := range page {
				scanned++
				before = n.Seq
				var sn storedNotification
				if json.Unmarshal(n.JSON, &sn) != nil || (q.Only == "highlight" && !sn.Highlight) {
					continue
				}
				sn.Highlight = false
				out = append(out, sn)
				if len(out) == limit {
					next = n.Seq
					return nil
				}
			}
		}
		return nil
	})
	if err != nil {
		return acctFail(err)
	}
	res := map[string]any{"notifications": out}
	if next > 1 {
		res["next_token"] = strconv.FormatUint(next, 10)
	}
	b, err := json.Marshal(res)
	if err != nil {
		return acctFail(err)
	}
	return acctOK(&pb.AccountQueryReply{Json: b, Found: true})
}
