package gateway_test

import (
	"testing"

	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

func TestThreepidEndpoints(t *testing.T) {
	n := shoaltest.Start(t)
	alice := n.Register("alice")
	a := alice.AccessToken
	for _, p := range []string{"/account/3pid/email", "/account/3pid/msisdn", "/register/email", "/register/msisdn",
		"/account/password/email", "/account/password/msisdn"} {
		wantHTTP(t, n, "POST", "/_matrix/client/v3"+p+"/requestToken", "", map[string]any{"client_secret": "s", "email": "a@example.org",
			"send_attempt": 1}, 400, "M_THREEPID_MEDIUM_NOT_SUPPORTED")
		wantHTTP(t, n, "POST", "/_matrix/client/v3"+p+"/requestToken", "", "nope", 400, "M_BAD_JSON")
	}
	if out := wantHTTP(t, n, "GET", "/_matrix/client/v3/account/3pid", a, nil, 200, ""); len(out["threepids"].([]any)) != 0 {
		t.Fatalf("threepids: %v", out)
	}
	wantHTTP(t, n, "GET", "/_matrix/client/v3/account/3pid", "", nil, 401, "M_MISSING_TOKEN")

	// add: the password first (user-interactive auth), then the session
	// cannot have been validated.
	add := map[string]any{"client_secret": "s", "sid": "1"}
	out := wantHTTP(t, n, "POST", "/_matrix/client/v3/account/3pid/add", a, add, 401, "")
	if out["flows"] == nil || out["session"] == nil {
		t.Fatalf("add UIA: %v", out)
	}
	add["auth"] = map[string]any{"type": "m.login.password", "session": out["session"],
		"identifier": map[string]string{"type": "m.id.user", "user": "alice"}, "password": "password-alice"}
	wantHTTP(t, n, "POST", "/_matrix/client/v3/account/3pid/add", a, add, 400, "M_THREEPID_AUTH_FAILED")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/account/3pid/add", a, map[string]any{"sid": "1"}, 400, "M_MISSING_PARAM")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/account/3pid", a, map[string]any{"three_pid_creds": map[string]string{
		"client_secret": "s", "sid": "1"}}, 403, "M_THREEPID_AUTH_FAILED")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/account/3pid/bind", a, map[string]any{"client_secret": "s", "sid": "1",
		"id_server": "id.example.org", "id_access_token": "t"}, 400, "M_SERVER_NOT_TRUSTED")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/account/3pid/bind", a, map[string]any{"sid": "1"}, 400, "M_MISSING_PARAM")
	for _, p := range []string{"delete", "unbind"} {
		out := wantHTTP(t, n, "POST", "/_matrix/client/v3/account/3pid/"+p, a, map[string]any{"medium": "email", "address": "a@example.org"}, 200, "")
		if out["id_server_unbind_result"] != "no-support" {
			t.Fatalf("%s: %v", p, out)
		}
		wantHTTP(t, n, "POST", "/_matrix/client/v3/account/3pid/"+p, a, map[string]any{"medium": "fax", "address": "1"}, 400, "M_INVALID_PARAM")
		wantHTTP(t, n, "POST", "/_matrix/client/v3/account/3pid/"+p, a, map[string]any{"medium": "email"}, 400, "M_MISSING_PARAM")
	}
}

func TestGuestAccess(t *testing.T) {
	n := shoaltest.Start(t)
	bob := n.Register("bob")
	reg := wantHTTP(t, n, "POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{}, 200, "")
	g, guestID := reg["access_token"].(string), reg["user_id"].(string)
	if out := wantHTTP(t, n, "GET", "/_matrix/client/v3/account/whoami", g, nil, 200, ""); out["is_guest"] != true {
		t.Fatalf("whoami: %v", out)
	}
	wantHTTP(t, n, "GET", "/_matrix/client/v3/sync?timeout=0", g, nil, 200, "")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/createRoom", g, map[string]any{}, 403, "M_GUEST_ACCESS_FORBIDDEN")
	wantHTTP(t, n, "GET", "/_matrix/client/v3/joined_rooms", g, nil, 403, "M_GUEST_ACCESS_FORBIDDEN")
	wantHTTP(t, n, "GET", "/_matrix/client/v3/account/3pid", g, nil, 403, "M_GUEST_ACCESS_FORBIDDEN")
	wantHTTP(t, n, "PUT", "/_matrix/client/v3/profile/"+guestID+"/avatar_url", g, map[string]string{"avatar_url": "mxc://x/y"}, 403, "M_GUEST_ACCESS_FORBIDDEN")
	wantHTTP(t, n, "PUT", "/_matrix/client/v3/profile/"+guestID+"/displayname", g, map[string]string{"displayname": "Guest"}, 200, "")

	room := wantHTTP(t, n, "POST", "/_matrix/client/v3/createRoom", bob.AccessToken, map[string]any{"preset": "public_chat"}, 200, "")["room_id"].(string)
	wantHTTP(t, n, "POST", "/_matrix/client/v3/rooms/"+room+"/join", g, map[string]any{}, 403, "M_GUEST_ACCESS_FORBIDDEN")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/join/"+room, g, map[string]any{}, 403, "M_GUEST_ACCESS_FORBIDDEN")
	wantHTTP(t, n, "PUT", "/_matrix/client/v3/rooms/"+room+"/state/m.room.guest_access", bob.AccessToken, map[string]string{"guest_access": "can_join"}, 200, "")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/rooms/"+room+"/join", g, map[string]any{}, 200, "")
	wantHTTP(t, n, "PUT", "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/g1", g, map[string]string{"msgtype": "m.text", "body": "hello"}, 200, "")
	wantHTTP(t, n, "GET", "/_matrix/client/v3/rooms/"+room+"/messages?dir=b", g, nil, 200, "")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/rooms/"+room+"/leave", g, map[string]any{}, 200, "")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/logout", g, map[string]any{}, 200, "")
}
