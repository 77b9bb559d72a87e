package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

type rawResp struct {
	status int
	body   map[string]any
	header http.Header
}

func doRaw(t *testing.T, method, u, token, body string) rawResp {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	out := rawResp{status: resp.StatusCode, header: resp.Header}
	_ = json.Unmarshal(data, &out.body)
	return out
}

// Bad input of every kind gets the spec's errcode and status, and the node
// stays healthy.
func TestBadInputGetsSpecErrors(t *testing.T) {
	node := shoaltest.Start(t)
	alice := node.Register("alice")
	carol := node.Register("carol")
	tok := alice.AccessToken
	room := must(carol.CreateRoom(bg(), &mautrix.ReqCreateRoom{Preset: "private_chat"}))(t).RoomID
	base := node.BaseURL + "/_matrix/client/v3"
	roomPath := base + "/rooms/" + url.PathEscape(room.String())
	huge := `{"body":"` + strings.Repeat("x", 70000) + `","msgtype":"m.text"}`

	cases := []struct {
		name, method, url, token, body string
		status                         int
		errcode                        string
	}{
		{"malformed JSON", "POST", base + "/createRoom", tok, `{"name": `, 400, "M_NOT_JSON"},
		{"not an object", "POST", base + "/createRoom", tok, `[1,2]`, 400, "M_BAD_JSON"},
		{"wrong type", "POST", base + "/createRoom", tok, `{"name": 5}`, 400, "M_BAD_JSON"},
		{"unknown room version", "POST", base + "/createRoom", tok, `{"room_version": "999"}`, 400, "M_UNSUPPORTED_ROOM_VERSION"},
		{"oversized event", "PUT", roomPath + "/send/m.room.message/t1", carol.AccessToken, huge, 413, "M_TOO_LARGE"},
		{"oversized body", "POST", base + "/createRoom", tok, `{"name":"` + strings.Repeat("y", 2<<20) + `"}`, 413, "M_TOO_LARGE"},
		{"unknown endpoint", "GET", base + "/no/such/thing", tok, "", 404, "M_UNRECOGNIZED"},
		{"wrong method", "DELETE", base + "/createRoom", tok, "", 405, "M_UNRECOGNIZED"},
		{"missing token", "GET", base + "/account/whoami", "", "", 401, "M_MISSING_TOKEN"},
		{"bad token", "GET", base + "/account/whoami", "shoal_bogus", "", 401, "M_UNKNOWN_TOKEN"},
		{"query-string token", "GET", base + "/account/whoami?access_token=" + tok, "", "", 401, "M_MISSING_TOKEN"},
		{"invalid room ID", "PUT", base + "/rooms/not-a-room/send/m.room.message/t2", tok, `{"body":"x","msgtype":"m.text"}`, 400, "M_INVALID_PARAM"},
		{"someone else's room", "PUT", roomPath + "/send/m.room.message/t3", tok, `{"body":"x","msgtype":"m.text"}`, 403, "M_FORBIDDEN"},
		{"someone else's room state", "GET", roomPath + "/state", tok, "", 403, "M_FORBIDDEN"},
		{"unknown room", "GET", base + "/rooms/" + url.PathEscape("!nope:test.local") + "/state", tok, "", 403, "M_FORBIDDEN"},
		{"invalid sync timeout", "GET", base + "/sync?timeout=soon", tok, "", 400, "M_INVALID_PARAM"},
		{"taken username", "POST", base + "/register", "", `{"username":"alice","password":"x","auth":{"type":"m.login.dummy"}}`, 400, "M_USER_IN_USE"},
		{"invalid username", "POST", base + "/register", "", `{"username":"Not Valid!","password":"x","auth":{"type":"m.login.dummy"}}`, 400, "M_INVALID_USERNAME"},
		{"wrong password", "POST", base + "/login", "", `{"type":"m.login.password","identifier":{"type":"m.id.user","user":"alice"},"password":"nope"}`, 403, "M_FORBIDDEN"},
		{"someone else's account data", "PUT", base + "/user/" + url.PathEscape(carol.UserID.String()) + "/account_data/x.y", tok, `{}`, 403, "M_FORBIDDEN"},
		{"protected account data", "PUT", base + "/user/" + url.PathEscape(alice.UserID.String()) + "/account_data/m.push_rules", tok, `{}`, 405, "M_BAD_JSON"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := doRaw(t, c.method, c.url, c.token, c.body)
			if r.status != c.status || r.body["errcode"] != c.errcode {
				t.Fatalf("got %d %v, want %d %s", r.status, r.body, c.status, c.errcode)
			}
		})
	}
	// Still healthy.
	if r := doRaw(t, "GET", node.BaseURL+"/_matrix/client/versions", "", ""); r.status != 200 {
		t.Fatalf("versions after bad input: %d", r.status)
	}
	must(alice.Whoami(bg()))(t)
	must(carol.SendText(bg(), room, "still works"))(t)
}
