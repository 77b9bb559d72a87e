package gateway_test

import (
	"strings"
	"testing"
	"time"

	"github.com/shoal-chat/shoal/gateway"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

func TestProfileCustomFields(t *testing.T) {
	n := shoaltest.Start(t)
	alice := n.Register("alice")
	tok, me := alice.AccessToken, string(alice.UserID)
	base := "/_matrix/client/v3/profile/" + me
	caps := wantHTTP(t, n, "GET", "/_matrix/client/v3/capabilities", tok, nil, 200, "")["capabilities"].(map[string]any)
	if pf, _ := caps["m.profile_fields"].(map[string]any); pf["enabled"] != true {
		t.Fatalf("m.profile_fields: %v", caps)
	}
	wantHTTP(t, n, "PUT", base+"/org.example.pets", tok, map[string]any{"org.example.pets": []string{"cat"}}, 200, "")
	if out := wantHTTP(t, n, "GET", base+"/org.example.pets", "", nil, 200, ""); len(out["org.example.pets"].([]any)) != 1 {
		t.Fatalf("custom field: %v", out)
	}
	if out := wantHTTP(t, n, "GET", base, "", nil, 200, ""); out["org.example.pets"] == nil {
		t.Fatalf("whole profile: %v", out)
	}
	wantHTTP(t, n, "DELETE", base+"/org.example.pets", tok, nil, 200, "")
	wantHTTP(t, n, "GET", base+"/org.example.pets", "", nil, 404, "M_NOT_FOUND")
	// Bounds: key length, whole profile size.
	long := "org.example." + strings.Repeat("k", 250)
	wantHTTP(t, n, "PUT", base+"/"+long, tok, map[string]any{long: 1}, 400, "M_KEY_TOO_LARGE")
	wantHTTP(t, n, "GET", base+"/"+long, "", nil, 400, "M_KEY_TOO_LARGE")
	big := strings.Repeat("x", 40<<10)
	wantHTTP(t, n, "PUT", base+"/org.example.a", tok, map[string]any{"org.example.a": big}, 200, "")
	wantHTTP(t, n, "PUT", base+"/org.example.b", tok, map[string]any{"org.example.b": big}, 400, "M_PROFILE_TOO_LARGE")
	// Someone else's profile cannot be changed.
	bob := n.Register("bob")
	wantHTTP(t, n, "PUT", base+"/org.example.c", bob.AccessToken, map[string]any{"org.example.c": 1}, 403, "M_FORBIDDEN")
	// m.tz takes IANA zone names only (MSC4175).
	wantHTTP(t, n, "PUT", base+"/m.tz", tok, map[string]any{"m.tz": "Europe/Berlin"}, 200, "")
	if out := wantHTTP(t, n, "GET", base+"/m.tz", "", nil, 200, ""); out["m.tz"] != "Europe/Berlin" {
		t.Fatalf("m.tz: %v", out)
	}
	for _, bad := range []any{"Mars/Olympus_Mons", "", "Local", 5} {
		wantHTTP(t, n, "PUT", base+"/m.tz", tok, map[string]any{"m.tz": bad}, 400, "M_INVALID_PARAM")
	}
}

func TestProfileLookupRestriction(t *testing.T) {
	// Open by default: anyone, even without a token, reads any profile.
	open := shoaltest.Start(t)
	o := open.Register("olga")
	wantHTTP(t, open, "GET", "/_matrix/client/v3/profile/"+string(o.UserID), "", nil, 200, "")

	n := shoaltest.Start(t, func(c *gateway.NodeConfig) { c.Gateway.RestrictProfileLookups = true })
	alice, bob, carol := n.Register("alice"), n.Register("bob"), n.Register("carol")
	bobProfile := "/_matrix/client/v3/profile/" + string(bob.UserID)
	wantHTTP(t, n, "GET", bobProfile, "", nil, 401, "M_MISSING_TOKEN")
	wantHTTP(t, n, "GET", bobProfile, alice.AccessToken, nil, 403, "M_FORBIDDEN")
	wantHTTP(t, n, "GET", bobProfile+"/displayname", alice.AccessToken, nil, 403, "M_FORBIDDEN")
	wantHTTP(t, n, "GET", "/_matrix/client/v3/profile/@nobody:test.local", alice.AccessToken, nil, 403, "M_FORBIDDEN")
	wantHTTP(t, n, "GET", bobProfile, bob.AccessToken, nil, 200, "")

	// Sharing a private room opens it to the room's members only.
	room := wantHTTP(t, n, "POST", "/_matrix/client/v3/createRoom", alice.AccessToken,
		map[string]any{"preset": "private_chat", "invite": []string{string(bob.UserID)}}, 200, "")["room_id"].(string)
	wantHTTP(t, n, "POST", "/_matrix/client/v3/rooms/"+room+"/join", bob.AccessToken, map[string]any{}, 200, "")
	deadline := time.Now().Add(10 * time.Second)
	for {
		status, out := callHTTP(t, n, "GET", bobProfile+"/displayname", alice.AccessToken, nil)
		if status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("shared room: still %d %v", status, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	wantHTTP(t, n, "GET", bobProfile, carol.AccessToken, nil, 403, "M_FORBIDDEN")
}
