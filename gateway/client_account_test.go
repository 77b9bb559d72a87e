package gateway_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/cluster"
	"github.com/shoal-chat/shoal/gateway"
)

const acctServerName = "acct.test"

// acctEnv is a real node (actors on bbolt files in a temp dir) behind the
// real gateway on a loopback HTTP listener. Passwords are hashed at bcrypt
// cost 4 to keep the tests fast.
type acctEnv struct {
	t    *testing.T
	node *cluster.Node
	gw   *gateway.Server
	srv  *httptest.Server
}

func startAcctEnv(t *testing.T, configure func(*gateway.Config)) *acctEnv {
	t.Helper()
	ident := &actors.ServerIdentity{ServerName: acctServerName, KeyID: "ed25519:t",
		PrivateKey: ed25519.NewKeyFromSeed(make([]byte, 32))}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	node, err := cluster.Start(cluster.Config{DataDir: t.TempDir(), Partitions: 4, Kinds: actors.Kinds(),
		Server: ident, Log: log, RequestTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cfg := gateway.Config{ServerName: acctServerName, Registration: "open", RegistrationSharedSecret: "s3cret", Log: log,
		PasswordHashCost: 4}
	if configure != nil {
		configure(&cfg)
	}
	gw := gateway.New(cfg, node, ident)
	e := &acctEnv{t: t, node: node, gw: gw, srv: httptest.NewServer(gw.Handler())}
	t.Cleanup(func() {
		e.srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = gw.Shutdown(ctx)
		if err := node.Stop(ctx); err != nil {
			t.Errorf("stop node: %v", err)
		}
	})
	return e
}

func (e *acctEnv) client(userID id.UserID, token string, device id.DeviceID) *mautrix.Client {
	e.t.Helper()
	cli, err := mautrix.NewClient(e.srv.URL, userID, token)
	if err != nil {
		e.t.Fatal(err)
	}
	cli.DeviceID = device
	return cli
}

// register makes a user through the UIA dummy flow, as a client would.
func (e *acctEnv) register(localpart string) *mautrix.Client {
	e.t.Helper()
	cli := e.client("", "", "")
	resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: localpart, Password: "pw-" + localpart})
	if err != nil {
		e.t.Fatalf("register %s: %v", localpart, err)
	}
	return e.client(resp.UserID, resp.AccessToken, resp.DeviceID)
}

func (e *acctEnv) login(localpart, password string, device id.DeviceID, name string) (*mautrix.Client, error) {
	cli := e.client("", "", "")
	resp, err := cli.Login(context.Background(), &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localpart},
		Password:   password, DeviceID: device, InitialDeviceDisplayName: name})
	if err != nil {
		return nil, err
	}
	return e.client(resp.UserID, resp.AccessToken, resp.DeviceID), nil
}

// do sends a raw request (body: string as is, anything else as JSON) and
// decodes the JSON object answered.
func (e *acctEnv) do(method, path, token string, body any) (int, map[string]any) {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := map[string]any{}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			e.t.Fatalf("%s %s: answer is not a JSON object: %s", method, path, raw)
		}
	}
	return resp.StatusCode, out
}

// expectError checks a raw request fails with status and errcode.
func (e *acctEnv) expectError(method, path, token string, body any, status int, errcode string) map[string]any {
	e.t.Helper()
	got, out := e.do(method, path, token, body)
	if got != status || out["errcode"] != errcode {
		e.t.Fatalf("%s %s: %d %v, want %d %s", method, path, got, out, status, errcode)
	}
	return out
}

func expectMatrixError(t *testing.T, err error, want mautrix.RespError) {
	t.Helper()
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.RespError == nil || he.RespError.ErrCode != want.ErrCode || he.Response.StatusCode != want.StatusCode {
		t.Fatalf("got %v, want %s (%d)", err, want.ErrCode, want.StatusCode)
	}
}

func TestRegisterLoginWhoamiLogout(t *testing.T) {
	e := startAcctEnv(t, nil)
	ctx := context.Background()
	alice := e.register("alice")
	if alice.UserID != "@alice:"+acctServerName || alice.AccessToken == "" || alice.DeviceID == "" {
		t.Fatalf("registered %s %q %q", alice.UserID, alice.AccessToken, alice.DeviceID)
	}
	who, err := alice.Whoami(ctx)
	if err != nil || who.UserID != alice.UserID || who.DeviceID != alice.DeviceID {
		t.Fatalf("whoami = %+v, %v", who, err)
	}
	_, out := e.do("GET", "/_matrix/client/v3/account/whoami", alice.AccessToken, nil)
	if out["is_guest"] != false {
		t.Fatalf("whoami is_guest = %v", out["is_guest"])
	}
	// The display name starts as the localpart.
	if p, err := alice.GetProfile(ctx, alice.UserID); err != nil || p.DisplayName != "alice" {
		t.Fatalf("profile = %+v, %v", p, err)
	}

	laptop, err := e.login("alice", "pw-alice", "LAPTOP", "Laptop")
	if err != nil {
		t.Fatal(err)
	}
	if laptop.DeviceID != "LAPTOP" {
		t.Fatalf("login device = %s", laptop.DeviceID)
	}
	// The full user ID and the deprecated top-level "user" work as well.
	if code, out := e.do("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password",
		"identifier": map[string]string{"type": "m.id.user", "user": "@Alice:" + acctServerName}, "password": "pw-alice"}); code != 200 || out["user_id"] != "@alice:"+acctServerName {
		t.Fatalf("login with full ID: %d %v", code, out)
	}
	code, out := e.do("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "user": "alice", "password": "pw-alice"})
	if code != 200 || out["device_id"] == "" || out["access_token"] == "" {
		t.Fatalf("login with user: %d %v", code, out)
	}
	legacyToken := out["access_token"].(string)

	// A login reusing a device ID replaces that device's token.
	again, err := e.login("alice", "pw-alice", "LAPTOP", "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = laptop.Whoami(ctx)
	expectMatrixError(t, err, mautrix.MUnknownToken)
	if _, err := again.Whoami(ctx); err != nil {
		t.Fatal(err)
	}

	if _, err := again.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = again.Whoami(ctx)
	expectMatrixError(t, err, mautrix.MUnknownToken)
	if _, err := alice.Whoami(ctx); err != nil {
		t.Fatalf("logout of one device logged out another: %v", err)
	}
	if _, err := alice.LogoutAll(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{alice.AccessToken, legacyToken} {
		e.expectError("GET", "/_matrix/client/v3/account/whoami", tok, nil, 401, "M_UNKNOWN_TOKEN")
	}
	devs, err := e.node.Request(ctx, &pb.AccountQuery{UserId: "@alice:" + acctServerName, Kind: "devices"})
	if err != nil || string(devs.(*pb.AccountQueryReply).Json) != "[]" {
		t.Fatalf("devices after logout/all = %v %v", devs, err)
	}
}

func TestRegistrationErrors(t *testing.T) {
	e := startAcctEnv(t, nil)
	ctx := context.Background()
	e.register("taken")
	reg := func(body map[string]any) (int, map[string]any) {
		return e.do("POST", "/_matrix/client/v3/register", "", body)
	}
	dummy := map[string]any{"type": "m.login.dummy"}
	// Checks come before user-interactive auth.
	e.expectError("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "taken", "password": "x"}, 400, "M_USER_IN_USE")
	for _, bad := range []string{"bad!name", "white space", "", "12345", "_reserved", strings.Repeat("a", 250)} {
		e.expectError("POST", "/_matrix/client/v3/register", "", map[string]any{"username": bad, "password": "x", "auth": dummy}, 400, "M_INVALID_USERNAME")
	}
	// Upper case is folded, as Synapse does.
	code, out := reg(map[string]any{"username": "MixedCase", "password": "x", "auth": dummy})
	if code != 200 || out["user_id"] != "@mixedcase:"+acctServerName {
		t.Fatalf("register MixedCase: %d %v", code, out)
	}
	// No username: one is made up. inhibit_login: no token.
	code, out = reg(map[string]any{"password": "x", "auth": dummy, "inhibit_login": true})
	if code != 200 || !strings.HasSuffix(out["user_id"].(string), ":"+acctServerName) || out["access_token"] != nil || out["device_id"] != nil {
		t.Fatalf("generated, inhibited registration: %d %v", code, out)
	}
	// A password is required once auth is done.
	e.expectError("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "nopass", "auth": dummy}, 400, "M_MISSING_PARAM")
	// An unknown stage or session.
	e.expectError("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "x1", "password": "x", "auth": map[string]any{"session": "nope", "type": "m.login.dummy"}}, 400, "M_UNKNOWN")
	e.expectError("POST", "/_matrix/client/v3/register?kind=admin", "", map[string]any{}, 400, "M_INVALID_PARAM")
	// Device ID and name are honoured.
	code, out = reg(map[string]any{"username": "withdev", "password": "x", "auth": dummy, "device_id": "MYDEV", "initial_device_display_name": "Mine"})
	if code != 200 || out["device_id"] != "MYDEV" {
		t.Fatalf("register with device: %d %v", code, out)
	}
	devs, err := e.client(id.UserID(out["user_id"].(string)), out["access_token"].(string), "MYDEV").GetDevicesInfo(ctx)
	if err != nil || len(devs.Devices) != 1 || devs.Devices[0].DisplayName != "Mine" {
		t.Fatalf("devices = %+v, %v", devs, err)
	}

	// Availability.
	if _, err := e.client("", "", "").RegisterAvailable(ctx, "free"); err != nil {
		t.Fatal(err)
	}
	e.expectError("GET", "/_matrix/client/v3/register/available?username=taken", "", nil, 400, "M_USER_IN_USE")
	e.expectError("GET", "/_matrix/client/v3/register/available?username=b%21d", "", nil, 400, "M_INVALID_USERNAME")

	// Guests: a numeric ID, a token, is_guest.
	guest, _, err := e.client("", "", "").RegisterGuest(ctx, &mautrix.ReqRegister[any]{InitialDeviceDisplayName: "Guest phone"})
	if err != nil {
		t.Fatal(err)
	}
	lp := strings.TrimPrefix(strings.Split(string(guest.UserID), ":")[0], "@")
	if strings.Trim(lp, "0123456789") != "" || guest.AccessToken == "" {
		t.Fatalf("guest = %+v", guest)
	}
	_, out = e.do("GET", "/_matrix/client/v3/account/whoami", guest.AccessToken, nil)
	if out["is_guest"] != true {
		t.Fatalf("guest whoami = %v", out)
	}
	// Guests have no password to log in with.
	e.expectError("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "user": lp, "password": ""}, 403, "M_FORBIDDEN")
}

func TestRegistrationClosed(t *testing.T) {
	e := startAcctEnv(t, func(c *gateway.Config) { c.Registration = "closed" })
	e.expectError("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "a", "password": "x"}, 403, "M_FORBIDDEN")
	e.expectError("POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{}, 403, "M_FORBIDDEN")
	e.expectError("GET", "/_matrix/client/v1/register/m.login.registration_token/validity?token=x", "", nil, 403, "M_FORBIDDEN")
}

// TestRegistrationTokenAndTerms walks the token flow with the terms stage
// (MSC1692) in front, and checks the accepted versions are recorded.
func TestRegistrationTokenAndTerms(t *testing.T) {
	e := startAcctEnv(t, func(c *gateway.Config) {
		c.Registration = "token"
		c.RegistrationTokens = []string{"letmein"}
		c.Terms = map[string]gateway.TermsPolicy{"tos": {Version: "1.2", Langs: map[string]gateway.TermsPolicyString{
			"en": {Name: "Terms of Service", URL: "https://example.org/tos-1.2.html"}}}}
	})
	ctx := context.Background()
	body := map[string]any{"username": "carol", "password": "pw"}
	code, out := e.do("POST", "/_matrix/client/v3/register", "", body)
	if code != 401 || out["session"] == nil || out["errcode"] != nil {
		t.Fatalf("first step: %d %v", code, out)
	}
	flows, _ := json.Marshal(out["flows"])
	if string(flows) != `[{"stages":["m.login.terms","m.login.registration_token"]}]` {
		t.Fatalf("flows = %s", flows)
	}
	params, _ := json.Marshal(out["params"])
	if string(params) != `{"m.login.terms":{"policies":{"tos":{"en":{"name":"Terms of Service","url":"https://example.org/tos-1.2.html"},"version":"1.2"}}}}` {
		t.Fatalf("params = %s", params)
	}
	session := out["session"].(string)
	body["auth"] = map[string]any{"type": "m.login.terms", "session": session}
	code, out = e.do("POST", "/_matrix/client/v3/register", "", body)
	completed, _ := json.Marshal(out["completed"])
	if code != 401 || string(completed) != `["m.login.terms"]` {
		t.Fatalf("after terms: %d %v", code, out)
	}
	body["auth"] = map[string]any{"type": "m.login.registration_token", "token": "wrong", "session": session}
	code, out = e.do("POST", "/_matrix/client/v3/register", "", body)
	if code != 401 || out["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("wrong token: %d %v", code, out)
	}
	body["auth"] = map[string]any{"type": "m.login.registration_token", "token": "letmein", "session": session}
	code, out = e.do("POST", "/_matrix/client/v3/register", "", body)
	if code != 200 || out["user_id"] != "@carol:"+acctServerName {
		t.Fatalf("final step: %d %v", code, out)
	}
	res, err := e.node.Request(ctx, &pb.AccountQuery{UserId: "@carol:" + acctServerName, Kind: "info"})
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		AcceptedTerms map[string]string `json:"accepted_terms"`
	}
	if err := json.Unmarshal(res.(*pb.AccountQueryReply).Json, &info); err != nil || info.AcceptedTerms["tos"] != "1.2" {
		t.Fatalf("accepted terms = %v, %v", info.AcceptedTerms, err)
	}
	// Guests would bypass the token: refused.
	e.expectError("POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{}, 403, "M_FORBIDDEN")
	// The dummy stage is not offered when a token is required.
	e.expectError("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "dave", "password": "pw",
		"auth": map[string]any{"type": "m.login.dummy"}}, 401, "M_UNRECOGNIZED")
	for tok, want := range map[string]bool{"letmein": true, "nope": false} {
		code, out := e.do("GET", "/_matrix/client/v1/register/m.login.registration_token/validity?token="+tok, "", nil)
		if code != 200 || out["valid"] != want {
			t.Fatalf("validity of %s: %d %v", tok, code, out)
		}
	}
}

func TestLoginErrors(t *testing.T) {
	e := startAcctEnv(t, nil)
	e.register("bob")
	code, out := e.do("GET", "/_matrix/client/v3/login", "", nil)
	flows, _ := json.Marshal(out["flows"])
	if code != 200 || string(flows) != `[{"type":"m.login.password"}]` {
		t.Fatalf("login flows: %d %s", code, flows)
	}
	_, err := e.login("bob", "wrong", "", "")
	expectMatrixError(t, err, mautrix.MForbidden)
	_, err = e.login("nobody", "x", "", "")
	expectMatrixError(t, err, mautrix.MForbidden)
	e.expectError("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password",
		"identifier": map[string]string{"type": "m.id.user", "user": "@bob:elsewhere.test"}, "password": "pw-bob"}, 403, "M_FORBIDDEN")
	e.expectError("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password",
		"identifier": map[string]string{"type": "m.id.thirdparty", "medium": "email", "address": "bob@example.org"}, "password": "pw-bob"}, 403, "M_FORBIDDEN")
	e.expectError("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.magic", "user": "bob"}, 400, "M_UNKNOWN")
	e.expectError("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "user": "bob"}, 400, "M_MISSING_PARAM")
}

// TestErrorTable checks the spec's error for each kind of bad request.
func TestErrorTable(t *testing.T) {
	e := startAcctEnv(t, nil)
	alice := e.register("alice")
	e.register("bob")
	tok := alice.AccessToken
	cases := []struct {
		name, method, path, token string
		body                      any
		status                    int
		errcode                   string
	}{
		{"malformed JSON", "POST", "/_matrix/client/v3/login", "", `{"type": "m.login.password",`, 400, "M_NOT_JSON"},
		{"not an object", "POST", "/_matrix/client/v3/login", "", `[1,2]`, 400, "M_BAD_JSON"},
		{"wrong field type", "POST", "/_matrix/client/v3/login", "", `{"type":"m.login.password","user":"alice","password":5}`, 400, "M_BAD_JSON"},
		{"unknown endpoint", "GET", "/_matrix/client/v3/no/such/thing", tok, nil, 404, "M_UNRECOGNIZED"},
		{"wrong method", "DELETE", "/_matrix/client/v3/account/whoami", tok, nil, 405, "M_UNRECOGNIZED"},
		{"missing token", "GET", "/_matrix/client/v3/account/whoami", "", nil, 401, "M_MISSING_TOKEN"},
		{"bad token", "GET", "/_matrix/client/v3/account/whoami", "shoal_garbage", nil, 401, "M_UNKNOWN_TOKEN"},
		{"forged token", "GET", "/_matrix/client/v3/account/whoami", tok[:len(tok)-4] + "AAAA", nil, 401, "M_UNKNOWN_TOKEN"},
		{"query token only", "GET", "/_matrix/client/v3/account/whoami?access_token=" + url.QueryEscape(tok), "", nil, 401, "M_MISSING_TOKEN"},
		{"taken username", "POST", "/_matrix/client/v3/register", "", map[string]any{"username": "bob", "password": "x"}, 400, "M_USER_IN_USE"},
		{"invalid username", "POST", "/_matrix/client/v3/register", "", map[string]any{"username": "b@d", "password": "x"}, 400, "M_INVALID_USERNAME"},
		{"someone else's account data", "GET", "/_matrix/client/v3/user/@bob:" + acctServerName + "/account_data/m.x", tok, nil, 403, "M_FORBIDDEN"},
		{"set someone else's account data", "PUT", "/_matrix/client/v3/user/@bob:" + acctServerName + "/account_data/m.x", tok, map[string]any{}, 403, "M_FORBIDDEN"},
		{"someone else's room account data", "PUT", "/_matrix/client/v3/user/@bob:" + acctServerName + "/rooms/!r:x/account_data/m.x", tok, map[string]any{}, 403, "M_FORBIDDEN"},
		{"account data not an object", "PUT", "/_matrix/client/v3/user/@alice:" + acctServerName + "/account_data/m.x", tok, `"str"`, 400, "M_BAD_JSON"},
		{"account data not JSON", "PUT", "/_matrix/client/v3/user/@alice:" + acctServerName + "/account_data/m.x", tok, `{nope`, 400, "M_NOT_JSON"},
		{"server-controlled account data", "PUT", "/_matrix/client/v3/user/@alice:" + acctServerName + "/account_data/m.push_rules", tok, map[string]any{}, 405, "M_BAD_JSON"},
		{"server-controlled room account data", "PUT", "/_matrix/client/v3/user/@alice:" + acctServerName + "/rooms/!r:x/account_data/m.fully_read", tok, map[string]any{"event_id": "$e"}, 405, "M_BAD_JSON"},
		{"bad room ID", "GET", "/_matrix/client/v3/user/@alice:" + acctServerName + "/rooms/notaroom/account_data/m.x", tok, nil, 400, "M_INVALID_PARAM"},
		{"unknown account data", "GET", "/_matrix/client/v3/user/@alice:" + acctServerName + "/account_data/m.unset", tok, nil, 404, "M_NOT_FOUND"},
		{"someone else's filter", "POST", "/_matrix/client/v3/user/@bob:" + acctServerName + "/filter", tok, map[string]any{}, 403, "M_FORBIDDEN"},
		{"filter with wrong types", "POST", "/_matrix/client/v3/user/@alice:" + acctServerName + "/filter", tok, map[string]any{"room": map[string]any{"timeline": map[string]any{"limit": "ten"}}}, 400, "M_BAD_JSON"},
		{"filter with bad rooms", "POST", "/_matrix/client/v3/user/@alice:" + acctServerName + "/filter", tok, map[string]any{"room": map[string]any{"rooms": []string{"nope"}}}, 400, "M_BAD_JSON"},
		{"unknown filter", "GET", "/_matrix/client/v3/user/@alice:" + acctServerName + "/filter/12345", tok, nil, 404, "M_NOT_FOUND"},
		{"someone else's presence", "PUT", "/_matrix/client/v3/presence/@bob:" + acctServerName + "/status", tok, map[string]any{"presence": "online"}, 403, "M_FORBIDDEN"},
		{"bad presence", "PUT", "/_matrix/client/v3/presence/@alice:" + acctServerName + "/status", tok, map[string]any{"presence": "busy"}, 400, "M_INVALID_PARAM"},
		{"someone else's profile", "PUT", "/_matrix/client/v3/profile/@bob:" + acctServerName + "/displayname", tok, map[string]any{"displayname": "x"}, 403, "M_FORBIDDEN"},
		{"unknown user's profile", "GET", "/_matrix/client/v3/profile/@nobody:" + acctServerName, "", nil, 404, "M_NOT_FOUND"},
		{"unreachable remote user's profile", "GET", "/_matrix/client/v3/profile/@carl:elsewhere.test", "", nil, 502, "M_UNKNOWN"},
		{"invalid profile key", "PUT", "/_matrix/client/v3/profile/@alice:" + acctServerName + "/Bad-Key", tok, map[string]any{"Bad-Key": 1}, 400, "M_INVALID_PARAM"},
		{"profile key too long", "PUT", "/_matrix/client/v3/profile/@alice:" + acctServerName + "/a." + strings.Repeat("b", 300), tok, map[string]any{}, 400, "M_KEY_TOO_LARGE"},
		{"profile field missing from body", "PUT", "/_matrix/client/v3/profile/@alice:" + acctServerName + "/displayname", tok, map[string]any{"avatar_url": "x"}, 400, "M_MISSING_PARAM"},
		{"displayname not a string", "PUT", "/_matrix/client/v3/profile/@alice:" + acctServerName + "/displayname", tok, map[string]any{"displayname": 5}, 400, "M_INVALID_PARAM"},
		{"unknown device", "GET", "/_matrix/client/v3/devices/NOPE", tok, nil, 404, "M_NOT_FOUND"},
		{"rename unknown device", "PUT", "/_matrix/client/v3/devices/NOPE", tok, map[string]any{"display_name": "x"}, 404, "M_NOT_FOUND"},
		{"delete_devices without a list", "POST", "/_matrix/client/v3/delete_devices", tok, map[string]any{}, 400, "M_MISSING_PARAM"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sub := *e
			sub.t = t
			sub.expectError(c.method, c.path, c.token, c.body, c.status, c.errcode)
		})
	}
}

// uiaPassword completes a password UIA for a request: the first call gets
// the session, the second carries the password.
func (e *acctEnv) uiaPassword(method, path, token, userID, password string, body map[string]any) (int, map[string]any) {
	e.t.Helper()
	if body == nil {
		body = map[string]any{}
	}
	code, out := e.do(method, path, token, body)
	if code != 401 || out["session"] == nil {
		e.t.Fatalf("%s %s without auth: %d %v", method, path, code, out)
	}
	flows, _ := json.Marshal(out["flows"])
	if string(flows) != `[{"stages":["m.login.password"]}]` {
		e.t.Fatalf("%s %s flows = %s", method, path, flows)
	}
	body["auth"] = map[string]any{"type": "m.login.password", "session": out["session"], "password": password,
		"identifier": map[string]string{"type": "m.id.user", "user": userID}}
	return e.do(method, path, token, body)
}

func TestPasswordChangeAndDeactivate(t *testing.T) {
	e := startAcctEnv(t, nil)
	ctx := context.Background()
	alice := e.register("alice")
	other, err := e.login("alice", "pw-alice", "OTHER", "")
	if err != nil {
		t.Fatal(err)
	}
	// A wrong password fails the stage: 401 with M_FORBIDDEN.
	code, out := e.do("POST", "/_matrix/client/v3/account/password", alice.AccessToken, map[string]any{"new_password": "n"})
	session := out["session"]
	code, out = e.do("POST", "/_matrix/client/v3/account/password", alice.AccessToken, map[string]any{"new_password": "n",
		"auth": map[string]any{"type": "m.login.password", "session": session, "password": "wrong", "user": "alice"}})
	if code != 401 || out["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("wrong password stage: %d %v", code, out)
	}
	code, out = e.uiaPassword("POST", "/_matrix/client/v3/account/password", alice.AccessToken, string(alice.UserID), "pw-alice",
		map[string]any{"new_password": "new-pw"})
	if code != 200 {
		t.Fatalf("change password: %d %v", code, out)
	}
	// The other device is logged out (logout_devices defaults to true), this one is not.
	_, err = other.Whoami(ctx)
	expectMatrixError(t, err, mautrix.MUnknownToken)
	if _, err := alice.Whoami(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = e.login("alice", "pw-alice", "", "")
	expectMatrixError(t, err, mautrix.MForbidden)
	if _, err := e.login("alice", "new-pw", "", ""); err != nil {
		t.Fatal(err)
	}

	code, out = e.uiaPassword("POST", "/_matrix/client/v3/account/deactivate", alice.AccessToken, string(alice.UserID), "new-pw", nil)
	if code != 200 || out["id_server_unbind_result"] != "success" {
		t.Fatalf("deactivate: %d %v", code, out)
	}
	_, err = alice.Whoami(ctx)
	expectMatrixError(t, err, mautrix.MUnknownToken)
	e.expectError("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "user": "alice", "password": "new-pw"}, 403, "M_USER_DEACTIVATED")
	e.expectError("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "alice", "password": "x"}, 400, "M_USER_IN_USE")
	if code, out := e.do("GET", "/_matrix/client/v3/profile/@alice:"+acctServerName, "", nil); code != 200 || len(out) != 0 {
		t.Fatalf("profile after deactivation: %d %v", code, out)
	}
}

func TestDevices(t *testing.T) {
	e := startAcctEnv(t, nil)
	ctx := context.Background()
	alice := e.register("alice")
	phone, err := e.login("alice", "pw-alice", "PHONE", "Phone")
	if err != nil {
		t.Fatal(err)
	}
	tablet, err := e.login("alice", "pw-alice", "TABLET", "Tablet")
	if err != nil {
		t.Fatal(err)
	}
	devs, err := alice.GetDevicesInfo(ctx)
	if err != nil || len(devs.Devices) != 3 {
		t.Fatalf("devices = %+v, %v", devs, err)
	}
	names := map[id.DeviceID]string{}
	for _, d := range devs.Devices {
		names[d.DeviceID] = d.DisplayName
		if d.LastSeenTS == 0 || d.LastSeenIP != "127.0.0.1" {
			t.Fatalf("device %s last seen %d from %q", d.DeviceID, d.LastSeenTS, d.LastSeenIP)
		}
	}
	if names["PHONE"] != "Phone" || names["TABLET"] != "Tablet" {
		t.Fatalf("device names = %v", names)
	}
	if err := alice.SetDeviceInfo(ctx, "PHONE", &mautrix.ReqDeviceInfo{DisplayName: "Old phone"}); err != nil {
		t.Fatal(err)
	}
	d, err := alice.GetDeviceInfo(ctx, "PHONE")
	if err != nil || d.DisplayName != "Old phone" {
		t.Fatalf("device = %+v, %v", d, err)
	}
	e.expectError("PUT", "/_matrix/client/v3/devices/PHONE", alice.AccessToken, map[string]any{"display_name": strings.Repeat("x", 101)}, 400, "M_INVALID_PARAM")

	// Deleting needs the password.
	code, out := e.uiaPassword("DELETE", "/_matrix/client/v3/devices/PHONE", alice.AccessToken, "alice", "pw-alice", nil)
	if code != 200 {
		t.Fatalf("delete device: %d %v", code, out)
	}
	_, err = phone.Whoami(ctx)
	expectMatrixError(t, err, mautrix.MUnknownToken)
	e.expectError("GET", "/_matrix/client/v3/devices/PHONE", alice.AccessToken, nil, 404, "M_NOT_FOUND")
	// Deleting it again is not an error.
	if code, out := e.uiaPassword("DELETE", "/_matrix/client/v3/devices/PHONE", alice.AccessToken, "alice", "pw-alice", nil); code != 200 {
		t.Fatalf("delete deleted device: %d %v", code, out)
	}
	code, out = e.uiaPassword("POST", "/_matrix/client/v3/delete_devices", alice.AccessToken, "alice", "pw-alice",
		map[string]any{"devices": []string{"TABLET", "NEVER"}})
	if code != 200 {
		t.Fatalf("delete_devices: %d %v", code, out)
	}
	_, err = tablet.Whoami(ctx)
	expectMatrixError(t, err, mautrix.MUnknownToken)
	devs, err = alice.GetDevicesInfo(ctx)
	if err != nil || len(devs.Devices) != 1 || devs.Devices[0].DeviceID != alice.DeviceID {
		t.Fatalf("devices left = %+v, %v", devs, err)
	}
	// A UIA session is bound to its user.
	bob := e.register("bob")
	_, out = e.do("DELETE", "/_matrix/client/v3/devices/X", alice.AccessToken, map[string]any{})
	code, out = e.do("DELETE", "/_matrix/client/v3/devices/X", bob.AccessToken, map[string]any{"auth": map[string]any{
		"type": "m.login.password", "session": out["session"], "user": "bob", "password": "pw-bob"}})
	if code != 403 || out["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("another user's UIA session: %d %v", code, out)
	}
}

func TestProfileEndpoints(t *testing.T) {
	e := startAcctEnv(t, nil)
	ctx := context.Background()
	alice := e.register("alice")
	bob := e.register("bob")
	if err := alice.SetDisplayName(ctx, "Alice Liddell"); err != nil {
		t.Fatal(err)
	}
	if err := alice.SetAvatarURL(ctx, id.ContentURI{Homeserver: "acct.test", FileID: "pic"}); err != nil {
		t.Fatal(err)
	}
	p, err := bob.GetProfile(ctx, alice.UserID)
	if err != nil || p.DisplayName != "Alice Liddell" || p.AvatarURL.String() != "mxc://acct.test/pic" {
		t.Fatalf("profile = %+v, %v", p, err)
	}
	dn, err := bob.GetDisplayName(ctx, alice.UserID)
	if err != nil || dn.DisplayName != "Alice Liddell" {
		t.Fatalf("displayname = %+v, %v", dn, err)
	}
	// Custom fields (MSC4133) and deleting a field.
	if code, out := e.do("PUT", "/_matrix/client/v3/profile/"+string(alice.UserID)+"/m.tz", alice.AccessToken, map[string]any{"m.tz": "Europe/London"}); code != 200 {
		t.Fatalf("set m.tz: %d %v", code, out)
	}
	if code, out := e.do("PUT", "/_matrix/client/v3/profile/"+string(alice.UserID)+"/org.example.pet", alice.AccessToken, map[string]any{"org.example.pet": map[string]any{"kind": "cat"}}); code != 200 {
		t.Fatalf("set custom field: %d %v", code, out)
	}
	code, out := e.do("GET", "/_matrix/client/v3/profile/"+string(alice.UserID)+"/org.example.pet", "", nil)
	if pet, _ := out["org.example.pet"].(map[string]any); code != 200 || pet["kind"] != "cat" {
		t.Fatalf("get custom field: %d %v", code, out)
	}
	if code, out := e.do("DELETE", "/_matrix/client/v3/profile/"+string(alice.UserID)+"/avatar_url", alice.AccessToken, nil); code != 200 {
		t.Fatalf("delete avatar: %d %v", code, out)
	}
	e.expectError("GET", "/_matrix/client/v3/profile/"+string(alice.UserID)+"/avatar_url", "", nil, 404, "M_NOT_FOUND")
	code, out = e.do("GET", "/_matrix/client/v3/profile/"+string(alice.UserID), "", nil)
	if code != 200 || out["displayname"] != "Alice Liddell" || out["m.tz"] != "Europe/London" || out["avatar_url"] != nil {
		t.Fatalf("whole profile: %d %v", code, out)
	}
	// An empty display name removes it, as Synapse does.
	if err := alice.SetDisplayName(ctx, ""); err != nil {
		t.Fatal(err)
	}
	e.expectError("GET", "/_matrix/client/v3/profile/"+string(alice.UserID)+"/displayname", "", nil, 404, "M_NOT_FOUND")
	e.expectError("PUT", "/_matrix/client/v3/profile/"+string(alice.UserID)+"/org.example.big", alice.AccessToken,
		map[string]any{"org.example.big": strings.Repeat("x", 70_000)}, 400, "M_PROFILE_TOO_LARGE")
}

func TestAccountDataTagsFiltersPresence(t *testing.T) {
	e := startAcctEnv(t, nil)
	ctx := context.Background()
	alice := e.register("alice")
	room := id.RoomID("!room:" + acctServerName)

	if err := alice.SetAccountData(ctx, "org.example.settings", map[string]any{"theme": "dark"}); err != nil {
		t.Fatal(err)
	}
	var settings map[string]any
	if err := alice.GetAccountData(ctx, "org.example.settings", &settings); err != nil || settings["theme"] != "dark" {
		t.Fatalf("account data = %v, %v", settings, err)
	}
	if err := alice.SetRoomAccountData(ctx, room, "org.example.room", map[string]any{"pinned": true}); err != nil {
		t.Fatal(err)
	}
	var roomData map[string]any
	if err := alice.GetRoomAccountData(ctx, room, "org.example.room", &roomData); err != nil || roomData["pinned"] != true {
		t.Fatalf("room account data = %v, %v", roomData, err)
	}
	// Global and room data are separate.
	e.expectError("GET", "/_matrix/client/v3/user/"+string(alice.UserID)+"/account_data/org.example.room", alice.AccessToken, nil, 404, "M_NOT_FOUND")

	if err := alice.AddTag(ctx, room, "u.work", 0.25); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddTag(ctx, room, "m.favourite", 1); err != nil {
		t.Fatal(err)
	}
	if err := alice.RemoveTag(ctx, room, "m.favourite"); err != nil {
		t.Fatal(err)
	}
	tags, err := alice.GetTags(ctx, room)
	if err != nil || len(tags.Tags) != 1 || tags.Tags["u.work"].Order.String() != "0.25" {
		t.Fatalf("tags = %+v, %v", tags, err)
	}
	e.expectError("PUT", "/_matrix/client/v3/user/"+string(alice.UserID)+"/rooms/"+string(room)+"/tags/u.bad", alice.AccessToken,
		map[string]any{"order": "first"}, 400, "M_BAD_JSON")
	code, out := e.do("GET", "/_matrix/client/v3/user/"+string(alice.UserID)+"/rooms/!other:x/tags", alice.AccessToken, nil)
	if tagsOut, _ := out["tags"].(map[string]any); code != 200 || tagsOut == nil || len(tagsOut) != 0 {
		t.Fatalf("tags of an untagged room: %d %v", code, out)
	}

	limit := 7
	f, err := alice.CreateFilter(ctx, &mautrix.Filter{Room: &mautrix.RoomFilter{Timeline: &mautrix.FilterPart{Limit: limit}}})
	if err != nil || f.FilterID == "" || strings.HasPrefix(f.FilterID, "{") {
		t.Fatalf("filter = %+v, %v", f, err)
	}
	code, out = e.do("GET", "/_matrix/client/v3/user/"+string(alice.UserID)+"/filter/"+f.FilterID, alice.AccessToken, nil)
	timeline, _ := out["room"].(map[string]any)["timeline"].(map[string]any)
	if code != 200 || timeline["limit"] != float64(limit) {
		t.Fatalf("get filter: %d %v", code, out)
	}

	if err := alice.SetPresence(ctx, mautrix.ReqPresence{Presence: "unavailable", StatusMsg: "away"}); err != nil {
		t.Fatal(err)
	}
	// Another user's presence is for those sharing a room with them.
	bob := e.register("bob")
	if _, err := bob.GetPresence(ctx, alice.UserID); err == nil || !strings.Contains(err.Error(), "M_FORBIDDEN") {
		t.Fatalf("presence of a user sharing no room: %v, want M_FORBIDDEN", err)
	}
	shared, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Invite: []id.UserID{bob.UserID}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, shared.RoomID); err != nil {
		t.Fatal(err)
	}
	pres, err := bob.GetPresence(ctx, alice.UserID)
	if err != nil || pres.Presence != "unavailable" || pres.StatusMsg != "away" {
		t.Fatalf("presence = %+v, %v", pres, err)
	}
	e.expectError("GET", "/_matrix/client/v3/presence/@nobody:"+acctServerName+"/status", alice.AccessToken, nil, 404, "M_NOT_FOUND")
}

func TestSharedSecretRegistration(t *testing.T) {
	e := startAcctEnv(t, nil)
	nonce := func() string {
		code, out := e.do("GET", "/_synapse/admin/v1/register", "", nil)
		if code != 200 || out["nonce"] == nil {
			t.Fatalf("nonce: %d %v", code, out)
		}
		return out["nonce"].(string)
	}
	mac := func(secret, nonce, user, password string, admin bool) string {
		m := hmac.New(sha1.New, []byte(secret))
		role := "notadmin"
		if admin {
			role = "admin"
		}
		m.Write([]byte(nonce + "\x00" + user + "\x00" + password + "\x00" + role))
		return hex.EncodeToString(m.Sum(nil))
	}
	n := nonce()
	body := map[string]any{"nonce": n, "username": "root", "password": "pw", "admin": true, "mac": mac("s3cret", n, "root", "pw", true)}
	code, out := e.do("POST", "/_synapse/admin/v1/register", "", body)
	if code != 200 || out["user_id"] != "@root:"+acctServerName || out["access_token"] == nil || out["home_server"] != acctServerName {
		t.Fatalf("shared-secret registration: %d %v", code, out)
	}
	// Nonces are single-use.
	e.expectError("POST", "/_synapse/admin/v1/register", "", body, 400, "M_UNKNOWN")
	res, err := e.node.Request(context.Background(), &pb.AccountQuery{UserId: "@root:" + acctServerName, Kind: "info"})
	if err != nil || !strings.Contains(string(res.(*pb.AccountQueryReply).Json), `"admin":true`) {
		t.Fatalf("admin flag: %v %v", res, err)
	}
	n = nonce()
	e.expectError("POST", "/_synapse/admin/v1/register", "", map[string]any{"nonce": n, "username": "mallory", "password": "pw",
		"mac": mac("wrong", n, "mallory", "pw", false)}, 403, "M_FORBIDDEN")

	closed := startAcctEnv(t, func(c *gateway.Config) { c.RegistrationSharedSecret = "" })
	closed.expectError("GET", "/_synapse/admin/v1/register", "", nil, 400, "M_UNKNOWN")
}

// TestAccountDataReachesSync checks the user actor's half of the sync
// contract end to end: account data appears in /sync, and a long-poll is
// woken by a change.
func TestAccountDataReachesSync(t *testing.T) {
	e := startAcctEnv(t, nil)
	ctx := context.Background()
	alice := e.register("alice")
	if err := alice.SetAccountData(ctx, "org.example.a", map[string]any{"n": 1}); err != nil {
		t.Fatal(err)
	}
	first, err := alice.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ev := range first.AccountData.Events {
		found = found || ev.Type.Type == "org.example.a"
	}
	if !found || first.NextBatch == "" {
		t.Fatalf("initial sync account data = %+v", first.AccountData.Events)
	}
	done := make(chan *mautrix.RespSync, 1)
	go func() {
		resp, err := alice.SyncRequest(ctx, 20_000, first.NextBatch, "", false, "")
		if err != nil {
			t.Error(err)
		}
		done <- resp
	}()
	time.Sleep(300 * time.Millisecond)
	if err := alice.SetAccountData(ctx, "org.example.b", map[string]any{"n": 2}); err != nil {
		t.Fatal(err)
	}
	select {
	case resp := <-done:
		if resp == nil || len(resp.AccountData.Events) != 1 || resp.AccountData.Events[0].Type.Type != "org.example.b" {
			t.Fatalf("woken sync account data = %+v", resp)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("account data change did not wake the long-poll")
	}
}

// TestProfileAndDeactivationReachRooms: a new display name becomes a new
// membership event in every joined room, and deactivation leaves them.
func TestProfileAndDeactivationReachRooms(t *testing.T) {
	e := startAcctEnv(t, nil)
	ctx := context.Background()
	alice := e.register("alice")
	bob := e.register("bob")
	var rooms []id.RoomID
	for i := 0; i < 2; i++ {
		resp, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := bob.JoinRoomByID(ctx, resp.RoomID); err != nil {
			t.Fatal(err)
		}
		rooms = append(rooms, resp.RoomID)
	}
	if err := alice.SetDisplayName(ctx, "Queen Alice"); err != nil {
		t.Fatal(err)
	}
	for _, room := range rooms {
		var member struct {
			Membership  string `json:"membership"`
			Displayname string `json:"displayname"`
		}
		if err := bob.StateEvent(ctx, room, event.StateMember, string(alice.UserID), &member); err != nil {
			t.Fatal(err)
		}
		if member.Membership != "join" || member.Displayname != "Queen Alice" {
			t.Fatalf("alice's member event in %s = %+v", room, member)
		}
	}
	code, out := e.uiaPassword("POST", "/_matrix/client/v3/account/deactivate", alice.AccessToken, string(alice.UserID), "pw-alice", nil)
	if code != 200 {
		t.Fatalf("deactivate: %d %v", code, out)
	}
	for _, room := range rooms {
		var member struct {
			Membership string `json:"membership"`
		}
		if err := bob.StateEvent(ctx, room, event.StateMember, string(alice.UserID), &member); err != nil {
			t.Fatal(err)
		}
		if member.Membership != "leave" {
			t.Fatalf("alice's membership in %s after deactivation = %q", room, member.Membership)
		}
	}
}
