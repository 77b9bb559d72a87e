package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/gateway"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// fakePushGateway is a push gateway on loopback that records what it is
// sent and answers as told: a status, then whether to reject the pushkey.
type fakePushGateway struct {
	srv     *httptest.Server
	mu      sync.Mutex
	answers []int // statuses to answer next; 200 once they run out
	reject  bool
	got     chan map[string]any
}

func newFakePushGateway(t *testing.T) *fakePushGateway {
	g := &fakePushGateway{got: make(chan map[string]any, 32)}
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var m map[string]any
		_ = json.Unmarshal(body, &m)
		if r.URL.Path != "/_matrix/push/v1/notify" {
			t.Errorf("push to %s", r.URL.Path)
		}
		g.got <- m
		g.mu.Lock()
		status, reject := http.StatusOK, g.reject
		if len(g.answers) > 0 {
			status, g.answers = g.answers[0], g.answers[1:]
		}
		g.mu.Unlock()
		w.WriteHeader(status)
		if status == http.StatusOK && reject {
			_ = json.NewEncoder(w).Encode(map[string]any{"rejected": []string{"bobkey"}})
			return
		}
		_, _ = w.Write([]byte("{}"))
	}))
	t.Cleanup(g.srv.Close)
	return g
}

func (g *fakePushGateway) next(t *testing.T) map[string]any {
	t.Helper()
	select {
	case m := <-g.got:
		n, _ := m["notification"].(map[string]any)
		if n == nil {
			t.Fatalf("push without notification: %v", m)
		}
		return n
	case <-time.After(10 * time.Second):
		t.Fatal("no push arrived")
		return nil
	}
}

func (g *fakePushGateway) none(t *testing.T, wait time.Duration) {
	t.Helper()
	select {
	case m := <-g.got:
		t.Fatalf("unexpected push: %v", m)
	case <-time.After(wait):
	}
}

func setPusher(t *testing.T, c *mautrix.Client, body map[string]any) error {
	t.Helper()
	_, err := c.MakeRequest(context.Background(), http.MethodPost, c.BuildClientURL("v3", "pushers", "set"), body, nil)
	return err
}

func TestPushersAndDelivery(t *testing.T) {
	node := shoaltest.Start(t, func(cfg *gateway.NodeConfig) { cfg.Gateway.PushAllowPrivate = true })
	ctx := context.Background()
	alice, bob := node.Register("alice"), node.Register("bob")
	pg := newFakePushGateway(t)
	pushURL := pg.srv.URL + "/_matrix/push/v1/notify"

	// Bad pushers are refused.
	bad := []map[string]any{
		{"kind": "http", "app_id": "a", "pushkey": "k", "app_display_name": "A", "device_display_name": "D", "lang": "en",
			"data": map[string]any{"url": pg.srv.URL + "/elsewhere"}},
		{"kind": "http", "app_id": "a", "pushkey": "k", "app_display_name": "A", "device_display_name": "D"},
		{"kind": "carrier-pigeon", "app_id": "a", "pushkey": "k", "app_display_name": "A", "device_display_name": "D",
			"lang": "en", "data": map[string]any{"url": pushURL}},
	}
	for i, b := range bad {
		var herr mautrix.HTTPError
		err := setPusher(t, bob, b)
		if err == nil {
			t.Fatalf("bad pusher %d accepted", i)
		}
		if !errors.As(err, &herr) || herr.Response == nil || herr.Response.StatusCode != http.StatusBadRequest {
			t.Fatalf("bad pusher %d: %v", i, err)
		}
	}

	pusher := map[string]any{"kind": "http", "app_id": "chat.shoal.test", "pushkey": "bobkey",
		"app_display_name": "Test", "device_display_name": "Bob's phone", "lang": "en",
		"data": map[string]any{"url": pushURL, "custom": "x"}}
	if err := setPusher(t, bob, pusher); err != nil {
		t.Fatal(err)
	}
	got, err := bob.GetPushers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Pushers) != 1 || got.Pushers[0].PushKey != "bobkey" {
		t.Fatalf("pushers = %+v", got.Pushers)
	}

	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Invite: []id.UserID{bob.UserID}, IsDirect: true})
	if err != nil {
		t.Fatal(err)
	}
	room := created.RoomID
	if _, err := bob.JoinRoomByID(ctx, room); err != nil {
		t.Fatal(err)
	}

	// A plain message in a 1:1 room notifies, after one retry of a 500.
	pg.mu.Lock()
	pg.answers = []int{http.StatusInternalServerError}
	pg.mu.Unlock()
	plain := sendText(t, alice, room, "hi bob")
	first, again := pg.next(t), pg.next(t)
	for _, n := range []map[string]any{first, again} {
		if n["event_id"] != plain.String() || n["room_id"] != room.String() || n["type"] != "m.room.message" ||
			n["sender"] != alice.UserID.String() {
			t.Fatalf("push = %v", n)
		}
		devs, _ := n["devices"].([]any)
		if len(devs) != 1 {
			t.Fatalf("devices = %v", n["devices"])
		}
		d := devs[0].(map[string]any)
		data, _ := d["data"].(map[string]any)
		if d["pushkey"] != "bobkey" || d["app_id"] != "chat.shoal.test" || data["custom"] != "x" || data["url"] != nil {
			t.Fatalf("device = %v", d)
		}
		if tw, _ := d["tweaks"].(map[string]any); tw["highlight"] == true {
			t.Fatalf("plain message highlighted: %v", tw)
		}
	}

	// Bob's own message pushes nothing.
	sendText(t, bob, room, "hello alice")
	pg.none(t, 500*time.Millisecond)

	// A mention highlights; the gateway then rejects the pushkey.
	pg.mu.Lock()
	pg.reject = true
	pg.mu.Unlock()
	mention := sendText(t, alice, room, "see this", bob.UserID)
	n := pg.next(t)
	d := n["devices"].([]any)[0].(map[string]any)
	if tw, _ := d["tweaks"].(map[string]any); n["event_id"] != mention.String() || tw["highlight"] != true {
		t.Fatalf("mention push = %v", n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := bob.GetPushers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Pushers) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("rejected pusher not dropped")
		}
		time.Sleep(20 * time.Millisecond)
	}
	sendText(t, alice, room, "anyone?")
	pg.none(t, 500*time.Millisecond)

	// /notifications lists what notified, newest first.
	var list struct {
		Notifications []struct {
			Event  map[string]any `json:"event"`
			RoomID string         `json:"room_id"`
			Read   bool           `json:"read"`
			TS     int64          `json:"ts"`
		} `json:"notifications"`
		NextToken string `json:"next_token"`
	}
	if _, err := bob.MakeRequest(ctx, http.MethodGet, bob.BuildClientURL("v3", "notifications"), nil, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Notifications) != 3 || list.Notifications[1].Event["event_id"] != mention.String() ||
		list.Notifications[2].Event["event_id"] != plain.String() || list.Notifications[0].RoomID != room.String() {
		t.Fatalf("notifications = %+v", list.Notifications)
	}
	url := bob.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "notifications"}, map[string]string{"only": "highlight"})
	if _, err := bob.MakeRequest(ctx, http.MethodGet, url, nil, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Notifications) != 1 || list.Notifications[0].Event["event_id"] != mention.String() {
		t.Fatalf("highlights = %+v", list.Notifications)
	}
	url = bob.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "notifications"}, map[string]string{"limit": "1"})
	list.NextToken = ""
	if _, err := bob.MakeRequest(ctx, http.MethodGet, url, nil, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Notifications) != 1 || list.NextToken == "" {
		t.Fatalf("first page = %+v next %q", list.Notifications, list.NextToken)
	}
	url = bob.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "notifications"}, map[string]string{"limit": "5", "from": list.NextToken})
	if _, err := bob.MakeRequest(ctx, http.MethodGet, url, nil, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Notifications) != 2 || list.Notifications[0].Event["event_id"] != mention.String() {
		t.Fatalf("second page = %+v", list.Notifications)
	}

	// Deleting a pusher (kind null) by app_id and pushkey.
	if err := setPusher(t, bob, pusher); err != nil {
		t.Fatal(err)
	}
	if err := setPusher(t, bob, map[string]any{"kind": nil, "app_id": "chat.shoal.test", "pushkey": "bobkey"}); err != nil {
		t.Fatal(err)
	}
	if got, err := bob.GetPushers(ctx); err != nil || len(got.Pushers) != 0 {
		t.Fatalf("after delete: %+v, %v", got, err)
	}
}
