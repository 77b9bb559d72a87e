package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

func TestReporting(t *testing.T) {
	n := shoaltest.Start(t)
	alice, bob, eve := n.Register("alice"), n.Register("bob"), n.Register("eve")
	a := alice.AccessToken
	room := wantHTTP(t, n, "POST", "/_matrix/client/v3/createRoom", bob.AccessToken, map[string]any{"preset": "public_chat"}, 200, "")["room_id"].(string)
	wantHTTP(t, n, "POST", "/_matrix/client/v3/join/"+room, a, map[string]any{}, 200, "")
	ev := wantHTTP(t, n, "PUT", "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/t1", bob.AccessToken,
		map[string]string{"msgtype": "m.text", "body": "spam"}, 200, "")["event_id"].(string)

	// Events: only one the reporter can see.
	wantHTTP(t, n, "POST", "/_matrix/client/v3/rooms/"+room+"/report/"+ev, a, map[string]any{"reason": "spam", "score": -100}, 200, "")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/rooms/"+room+"/report/"+ev, eve.AccessToken, map[string]any{"reason": "x"}, 404, "M_NOT_FOUND")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/rooms/"+room+"/report/$"+strings.Repeat("A", 43), a, map[string]any{"reason": "x"}, 404, "M_NOT_FOUND")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/rooms/!unknown:test.local/report/"+ev, a, map[string]any{}, 404, "M_NOT_FOUND")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/rooms/"+room+"/report/"+ev, "", map[string]any{}, 401, "M_MISSING_TOKEN")
	// Rooms and users: 200 whether or not they exist; reason required.
	wantHTTP(t, n, "POST", "/_matrix/client/v3/rooms/"+room+"/report", a, map[string]any{"reason": "bad room"}, 200, "")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/rooms/!unknown:test.local/report", a, map[string]any{"reason": ""}, 200, "")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/rooms/"+room+"/report", a, map[string]any{}, 400, "M_MISSING_PARAM")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/rooms/not-a-room/report", a, map[string]any{"reason": "x"}, 400, "M_INVALID_PARAM")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/users/"+string(bob.UserID)+"/report", a, map[string]any{"reason": "rude"}, 200, "")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/users/@ghost:test.local/report", a, map[string]any{"reason": "rude"}, 200, "")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/users/"+string(bob.UserID)+"/report", a, map[string]any{}, 400, "M_MISSING_PARAM")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/users/"+string(bob.UserID)+"/report", a,
		map[string]any{"reason": strings.Repeat("x", 5000)}, 400, "M_INVALID_PARAM")

	// Stored for admins, newest first.
	res, err := n.Cluster.Request(context.Background(), &pb.AccountQuery{UserId: string(alice.UserID), Kind: "reports"})
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Reports []map[string]any `json:"reports"`
	}
	if err := json.Unmarshal(res.(*pb.AccountQueryReply).Json, &got); err != nil || len(got.Reports) != 5 {
		t.Fatalf("reports: %s %v", res.(*pb.AccountQueryReply).Json, err)
	}
	if r := got.Reports[4]; r["kind"] != "event" || r["event_id"] != ev || r["reason"] != "spam" {
		t.Fatalf("first report: %v", r)
	}

	// Rate limit: ten a minute per reporter.
	for i := range 10 {
		status, out := callHTTP(t, n, "POST", "/_matrix/client/v3/users/"+string(alice.UserID)+"/report", eve.AccessToken, map[string]any{"reason": fmt.Sprint(i)})
		if status != 200 {
			t.Fatalf("report %d: %d %v", i, status, out)
		}
	}
	out := wantHTTP(t, n, "POST", "/_matrix/client/v3/users/"+string(alice.UserID)+"/report", eve.AccessToken, map[string]any{"reason": "more"}, 429, "M_LIMIT_EXCEEDED")
	if ms, _ := out["retry_after_ms"].(float64); ms <= 0 {
		t.Fatalf("retry_after_ms: %v", out)
	}
}

func TestWhois(t *testing.T) {
	n := shoaltest.Start(t, withSharedSecret)
	admin := registerAdmin(t, n, "root")
	alice, bob := n.Register("alice"), n.Register("bob")
	path := "/_matrix/client/v3/admin/whois/" + string(alice.UserID)
	for _, tok := range []string{admin, alice.AccessToken} {
		out := wantHTTP(t, n, "GET", path, tok, nil, 200, "")
		devs, _ := out["devices"].(map[string]any)
		d, _ := devs[string(alice.DeviceID)].(map[string]any)
		sessions, _ := d["sessions"].([]any)
		if out["user_id"] != string(alice.UserID) || len(sessions) != 1 {
			t.Fatalf("whois: %v", out)
		}
		conns := sessions[0].(map[string]any)["connections"].([]any)
		if c := conns[0].(map[string]any); c["ip"] != "127.0.0.1" || c["last_seen"].(float64) <= 0 {
			t.Fatalf("connection: %v", c)
		}
	}
	wantHTTP(t, n, "GET", path, bob.AccessToken, nil, 403, "M_FORBIDDEN")
	wantHTTP(t, n, "GET", "/_matrix/client/v3/admin/whois/@ghost:test.local", bob.AccessToken, nil, 403, "M_FORBIDDEN")
	wantHTTP(t, n, "GET", "/_matrix/client/v3/admin/whois/@ghost:test.local", admin, nil, 404, "M_NOT_FOUND")
}
