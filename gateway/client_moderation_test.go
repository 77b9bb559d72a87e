package gateway_test

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"net/http"
	"testing"

	"github.com/shoal-chat/shoal/gateway"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

const modSecret = "mod-s3cret"

func withSharedSecret(c *gateway.NodeConfig) { c.Gateway.RegistrationSharedSecret = modSecret }

// registerAdmin makes a server admin through shared-secret registration
// and returns its access token.
func registerAdmin(t *testing.T, n *shoaltest.Node, localpart string) string {
	t.Helper()
	rt := http.DefaultTransport
	_, out, _ := jsonCall(t, rt, "GET", n.BaseURL+"/_synapse/admin/v1/register", "", nil)
	nonce, _ := out["nonce"].(string)
	m := hmac.New(sha1.New, []byte(modSecret))
	m.Write([]byte(nonce + "\x00" + localpart + "\x00pw\x00admin"))
	status, out, _ := jsonCall(t, rt, "POST", n.BaseURL+"/_synapse/admin/v1/register", "", map[string]any{
		"nonce": nonce, "username": localpart, "password": "pw", "admin": true, "mac": hex.EncodeToString(m.Sum(nil))})
	tok, _ := out["access_token"].(string)
	if status != 200 || tok == "" {
		t.Fatalf("admin registration: %d %v", status, out)
	}
	return tok
}

// callHTTP makes a JSON request to the node and returns status and body.
func callHTTP(t *testing.T, n *shoaltest.Node, method, path, token string, body any) (int, map[string]any) {
	t.Helper()
	status, out, _ := jsonCall(t, http.DefaultTransport, method, n.BaseURL+path, token, body)
	return status, out
}

// wantHTTP checks a response's status and, for errors, errcode.
func wantHTTP(t *testing.T, n *shoaltest.Node, method, path, token string, body any, status int, errcode string) map[string]any {
	t.Helper()
	got, out := callHTTP(t, n, method, path, token, body)
	if got != status || (errcode != "" && out["errcode"] != errcode) {
		t.Fatalf("%s %s: got %d %v, want %d %s", method, path, got, out, status, errcode)
	}
	return out
}

// passwordLogin logs localpart in again (a new device) and returns the token.
func passwordLogin(t *testing.T, n *shoaltest.Node, localpart string) string {
	t.Helper()
	out := wantHTTP(t, n, "POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password",
		"identifier": map[string]string{"type": "m.id.user", "user": localpart}, "password": "password-" + localpart}, 200, "")
	return out["access_token"].(string)
}

func TestModerationEndpointErrors(t *testing.T) {
	n := shoaltest.Start(t, withSharedSecret)
	admin := registerAdmin(t, n, "root")
	other := registerAdmin(t, n, "root2")
	bob := n.Register("bob")
	alice := n.Register("alice")
	aliceID := string(alice.UserID)
	for _, kind := range []string{"suspend", "lock"} {
		base := "/_matrix/client/v1/admin/" + kind + "/"
		// Non-admins are refused before the target is looked at: unknown,
		// remote and existing targets answer alike.
		for _, target := range []string{aliceID, "@nobody:test.local", "@x:elsewhere.example"} {
			wantHTTP(t, n, "GET", base+target, bob.AccessToken, nil, 403, "M_FORBIDDEN")
			wantHTTP(t, n, "PUT", base+target, bob.AccessToken, map[string]bool{"suspended": true, "locked": true}, 403, "M_FORBIDDEN")
		}
		wantHTTP(t, n, "GET", base+aliceID, "", nil, 401, "M_MISSING_TOKEN")
		wantHTTP(t, n, "GET", base+"@x:elsewhere.example", admin, nil, 400, "M_INVALID_PARAM")
		wantHTTP(t, n, "GET", base+"not-a-user", admin, nil, 400, "M_INVALID_PARAM")
		wantHTTP(t, n, "GET", base+"@root:test.local", admin, nil, 403, "M_FORBIDDEN")
		wantHTTP(t, n, "GET", base+"@root2:test.local", admin, nil, 403, "M_FORBIDDEN")
		field := map[string]string{"suspend": "suspended", "lock": "locked"}[kind]
		wantHTTP(t, n, "PUT", base+"@root2:test.local", admin, map[string]bool{field: true}, 403, "M_FORBIDDEN")
		wantHTTP(t, n, "GET", base+"@nobody:test.local", admin, nil, 404, "M_NOT_FOUND")
		wantHTTP(t, n, "PUT", base+"@nobody:test.local", admin, map[string]bool{field: true}, 404, "M_NOT_FOUND")
		wantHTTP(t, n, "PUT", base+aliceID, admin, map[string]string{field: "yes"}, 400, "M_BAD_JSON")
		wantHTTP(t, n, "PUT", base+aliceID, admin, map[string]string{}, 400, "M_MISSING_PARAM")
		if out := wantHTTP(t, n, "GET", base+aliceID, other, nil, 200, ""); out[field] != false {
			t.Fatalf("%s: %v", kind, out)
		}
	}
	// The capability is an admin's only.
	caps := wantHTTP(t, n, "GET", "/_matrix/client/v3/capabilities", admin, nil, 200, "")["capabilities"].(map[string]any)
	if mod, _ := caps["m.account_moderation"].(map[string]any); mod["suspend"] != true || mod["lock"] != true {
		t.Fatalf("admin capabilities: %v", caps)
	}
	caps = wantHTTP(t, n, "GET", "/_matrix/client/v3/capabilities", bob.AccessToken, nil, 200, "")["capabilities"].(map[string]any)
	if _, ok := caps["m.account_moderation"]; ok {
		t.Fatalf("non-admin capabilities: %v", caps)
	}
	// A deactivated account is not found.
	wantHTTP(t, n, "POST", "/_matrix/client/v3/account/deactivate", bob.AccessToken, map[string]any{
		"auth": map[string]string{"type": "m.login.password", "user": "bob", "password": "password-bob"}}, 200, "")
	wantHTTP(t, n, "GET", "/_matrix/client/v1/admin/suspend/@bob:test.local", admin, nil, 404, "M_NOT_FOUND")
}

func TestSuspendedAccount(t *testing.T) {
	n := shoaltest.Start(t, withSharedSecret)
	admin := registerAdmin(t, n, "root")
	bob := n.Register("bob")
	alice := n.Register("alice")
	a := alice.AccessToken
	room := wantHTTP(t, n, "POST", "/_matrix/client/v3/createRoom", bob.AccessToken, map[string]any{"preset": "public_chat"}, 200, "")["room_id"].(string)
	other := wantHTTP(t, n, "POST", "/_matrix/client/v3/createRoom", bob.AccessToken, map[string]any{"preset": "public_chat"}, 200, "")["room_id"].(string)
	wantHTTP(t, n, "POST", "/_matrix/client/v3/join/"+room, a, map[string]any{}, 200, "")
	mine := wantHTTP(t, n, "PUT", "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/t1", a, map[string]string{"msgtype": "m.text", "body": "hi"}, 200, "")["event_id"].(string)
	theirs := wantHTTP(t, n, "PUT", "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/t2", bob.AccessToken, map[string]string{"msgtype": "m.text", "body": "yo"}, 200, "")["event_id"].(string)

	path := "/_matrix/client/v1/admin/suspend/" + string(alice.UserID)
	if out := wantHTTP(t, n, "PUT", path, admin, map[string]bool{"suspended": true}, 200, ""); out["suspended"] != true {
		t.Fatalf("suspend: %v", out)
	}
	if out := wantHTTP(t, n, "GET", path, admin, nil, 200, ""); out["suspended"] != true {
		t.Fatalf("suspended state: %v", out)
	}
	later := passwordLogin(t, n, "alice") // new sessions are suspended too
	for _, tok := range []string{a, later} {
		wantHTTP(t, n, "POST", "/_matrix/client/v3/createRoom", tok, map[string]any{}, 403, "M_USER_SUSPENDED")
		wantHTTP(t, n, "POST", "/_matrix/client/v3/join/"+other, tok, map[string]any{}, 403, "M_USER_SUSPENDED")
		wantHTTP(t, n, "POST", "/_matrix/client/v3/rooms/"+other+"/join", tok, map[string]any{}, 403, "M_USER_SUSPENDED")
		wantHTTP(t, n, "POST", "/_matrix/client/v3/knock/"+other, tok, map[string]any{}, 403, "M_USER_SUSPENDED")
		wantHTTP(t, n, "POST", "/_matrix/client/v3/rooms/"+room+"/invite", tok, map[string]any{"user_id": "@carol:test.local"}, 403, "M_USER_SUSPENDED")
		wantHTTP(t, n, "PUT", "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/t3", tok, map[string]string{"msgtype": "m.text", "body": "x"}, 403, "M_USER_SUSPENDED")
		wantHTTP(t, n, "PUT", "/_matrix/client/v3/rooms/"+room+"/state/m.room.topic", tok, map[string]string{"topic": "x"}, 403, "M_USER_SUSPENDED")
		wantHTTP(t, n, "PUT", "/_matrix/client/v3/profile/"+string(alice.UserID)+"/displayname", tok, map[string]string{"displayname": "x"}, 403, "M_USER_SUSPENDED")
		wantHTTP(t, n, "DELETE", "/_matrix/client/v3/profile/"+string(alice.UserID)+"/displayname", tok, nil, 403, "M_USER_SUSPENDED")
		wantHTTP(t, n, "PUT", "/_matrix/client/v3/rooms/"+room+"/redact/"+theirs+"/r1", tok, map[string]any{}, 403, "M_USER_SUSPENDED")
		// Reading stays open.
		wantHTTP(t, n, "GET", "/_matrix/client/v3/sync?timeout=0", tok, nil, 200, "")
		wantHTTP(t, n, "GET", "/_matrix/client/v3/rooms/"+room+"/messages?dir=b", tok, nil, 200, "")
		wantHTTP(t, n, "GET", "/_matrix/client/v3/devices", tok, nil, 200, "")
	}
	// Own events may be redacted, rooms left.
	wantHTTP(t, n, "PUT", "/_matrix/client/v3/rooms/"+room+"/redact/"+mine+"/r2", a, map[string]any{}, 200, "")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/rooms/"+room+"/leave", a, map[string]any{}, 200, "")

	wantHTTP(t, n, "PUT", path, admin, map[string]bool{"suspended": false}, 200, "")
	for _, tok := range []string{a, later} {
		wantHTTP(t, n, "POST", "/_matrix/client/v3/createRoom", tok, map[string]any{}, 200, "")
	}
}

func TestLockedAccount(t *testing.T) {
	n := shoaltest.Start(t, withSharedSecret)
	admin := registerAdmin(t, n, "root")
	alice := n.Register("alice")
	second := passwordLogin(t, n, "alice")
	third := passwordLogin(t, n, "alice")
	path := "/_matrix/client/v1/admin/lock/" + string(alice.UserID)
	if out := wantHTTP(t, n, "PUT", path, admin, map[string]bool{"locked": true}, 200, ""); out["locked"] != true {
		t.Fatalf("lock: %v", out)
	}
	if out := wantHTTP(t, n, "GET", path, admin, nil, 200, ""); out["locked"] != true {
		t.Fatalf("locked state: %v", out)
	}
	for _, tok := range []string{alice.AccessToken, second, third} {
		for _, req := range [][2]string{{"GET", "/_matrix/client/v3/account/whoami"}, {"GET", "/_matrix/client/v3/sync?timeout=0"},
			{"POST", "/_matrix/client/v3/createRoom"}, {"GET", "/_matrix/client/v3/devices"}} {
			out := wantHTTP(t, n, req[0], req[1], tok, map[string]any{}, 401, "M_USER_LOCKED")
			if out["soft_logout"] != true {
				t.Fatalf("%s: no soft_logout: %v", req[1], out)
			}
		}
	}
	// A fresh login is locked as well; logging out still works.
	fresh := passwordLogin(t, n, "alice")
	wantHTTP(t, n, "GET", "/_matrix/client/v3/account/whoami", fresh, nil, 401, "M_USER_LOCKED")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/logout", fresh, map[string]any{}, 200, "")
	wantHTTP(t, n, "GET", "/_matrix/client/v3/account/whoami", fresh, nil, 401, "M_UNKNOWN_TOKEN")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/logout", second, map[string]any{}, 200, "")

	wantHTTP(t, n, "PUT", path, admin, map[string]bool{"locked": false}, 200, "")
	wantHTTP(t, n, "GET", "/_matrix/client/v3/account/whoami", alice.AccessToken, nil, 200, "")
	wantHTTP(t, n, "GET", "/_matrix/client/v3/account/whoami", second, nil, 401, "M_UNKNOWN_TOKEN")
	wantHTTP(t, n, "POST", "/_matrix/client/v3/logout/all", third, map[string]any{}, 200, "")
	wantHTTP(t, n, "GET", "/_matrix/client/v3/account/whoami", alice.AccessToken, nil, 401, "M_UNKNOWN_TOKEN")
}
