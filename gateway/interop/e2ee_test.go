package interop

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/eventgraph"
)

// deviceKeys is what a test device published: its signed device keys and
// one signed one-time key.
type deviceKeys struct {
	user   id.UserID
	device id.DeviceID
	pub    ed25519.PublicKey
	curve  string
	otkID  string
	otk    string
}

func b64(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawStdEncoding.EncodeToString(b)
}

// uploadKeys publishes device keys (signed by the device's ed25519 key, as
// a real client would) and one signed_curve25519 one-time key.
func uploadKeys(t *testing.T, cli *mautrix.Client) *deviceKeys {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	dk := &deviceKeys{user: cli.UserID, device: cli.DeviceID, pub: pub, curve: b64(32), otkID: "signed_curve25519:AAAAAQ", otk: b64(32)}
	keyID := "ed25519:" + string(cli.DeviceID)
	sign := func(obj map[string]any) json.RawMessage {
		raw, _ := json.Marshal(obj)
		signed, err := eventgraph.SignJSON(raw, cli.UserID.String(), keyID, priv)
		if err != nil {
			t.Fatal(err)
		}
		return signed
	}
	body := map[string]any{
		"device_keys": sign(map[string]any{"user_id": cli.UserID, "device_id": cli.DeviceID,
			"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
			"keys":       map[string]string{"curve25519:" + string(cli.DeviceID): dk.curve, keyID: base64.RawStdEncoding.EncodeToString(pub)}}),
		"one_time_keys": map[string]any{dk.otkID: sign(map[string]any{"key": dk.otk})},
	}
	var resp struct {
		Counts map[string]int `json:"one_time_key_counts"`
	}
	if _, err := cli.MakeRequest(context.Background(), http.MethodPost, cli.BuildClientURL("v3", "keys", "upload"), body, &resp); err != nil {
		t.Fatalf("%s uploads keys: %v", cli.UserID, err)
	}
	if resp.Counts["signed_curve25519"] != 1 {
		t.Fatalf("%s uploads keys: counts %v", cli.UserID, resp.Counts)
	}
	return dk
}

// checkDeviceKeys: raw is exactly the published device keys, with the
// device's signature intact.
func (dk *deviceKeys) checkDeviceKeys(t *testing.T, what string, raw json.RawMessage) {
	t.Helper()
	var got struct {
		UserID   id.UserID         `json:"user_id"`
		DeviceID id.DeviceID       `json:"device_id"`
		Keys     map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatalf("%s: %v in %s", what, err, raw)
	}
	keyID := "ed25519:" + string(dk.device)
	if got.UserID != dk.user || got.DeviceID != dk.device || got.Keys["curve25519:"+string(dk.device)] != dk.curve ||
		got.Keys[keyID] != base64.RawStdEncoding.EncodeToString(dk.pub) {
		t.Fatalf("%s: device keys %s, want those of %s %s", what, raw, dk.user, dk.device)
	}
	if err := eventgraph.VerifyJSON(raw, dk.user.String(), keyID, dk.pub); err != nil {
		t.Fatalf("%s: the device's signature: %v in %s", what, err, raw)
	}
}

// e2ee: a user of a reads the device keys of a user of b and claims its
// one-time key (federation user/keys/query and user/keys/claim); each
// sends the other a to-device message; and when b's user logs in a new
// device, a's user (sharing a room) is told its device list changed and
// then sees both devices.
func (p *pair) e2ee(t *testing.T, a, b side, tag string) {
	ctx := context.Background()
	r := p.sharedRoom(t, "10", a.register("kquerier"+tag), b.register("kowner"+tag), a.server, mautrix.ReqCreateRoom{})
	querier, owner := r.creator, r.joiner
	ownerKeys := uploadKeys(t, owner)
	querierKeys := uploadKeys(t, querier)

	var q struct {
		DeviceKeys map[id.UserID]map[id.DeviceID]json.RawMessage `json:"device_keys"`
		Failures   map[string]any                                `json:"failures"`
	}
	if _, err := querier.MakeRequest(ctx, http.MethodPost, querier.BuildClientURL("v3", "keys", "query"),
		map[string]any{"device_keys": map[id.UserID][]string{owner.UserID: {}}}, &q); err != nil {
		t.Fatalf("%s queries %s's keys: %v", querier.UserID, owner.UserID, err)
	}
	raw, ok := q.DeviceKeys[owner.UserID][owner.DeviceID]
	if !ok || len(q.DeviceKeys[owner.UserID]) != 1 {
		t.Fatalf("%s queries %s's keys: devices %v, failures %v", querier.UserID, owner.UserID, q.DeviceKeys, q.Failures)
	}
	ownerKeys.checkDeviceKeys(t, "queried device keys", raw)

	var c struct {
		OneTimeKeys map[id.UserID]map[id.DeviceID]map[string]json.RawMessage `json:"one_time_keys"`
		Failures    map[string]any                                           `json:"failures"`
	}
	if _, err := querier.MakeRequest(ctx, http.MethodPost, querier.BuildClientURL("v3", "keys", "claim"),
		map[string]any{"one_time_keys": map[id.UserID]map[id.DeviceID]string{owner.UserID: {owner.DeviceID: "signed_curve25519"}}}, &c); err != nil {
		t.Fatalf("%s claims %s's key: %v", querier.UserID, owner.UserID, err)
	}
	otk, ok := c.OneTimeKeys[owner.UserID][owner.DeviceID][ownerKeys.otkID]
	if !ok {
		t.Fatalf("%s claims %s's key: %v, failures %v", querier.UserID, owner.UserID, c.OneTimeKeys, c.Failures)
	}
	var key struct {
		Key string `json:"key"`
	}
	if err := json.Unmarshal(otk, &key); err != nil || key.Key != ownerKeys.otk {
		t.Fatalf("claimed key %s, want %s", otk, ownerKeys.otk)
	}
	if err := eventgraph.VerifyJSON(otk, owner.UserID.String(), "ed25519:"+string(owner.DeviceID), ownerKeys.pub); err != nil {
		t.Fatalf("claimed key's signature: %v in %s", err, otk)
	}

	for _, dir := range []struct {
		from, to *mautrix.Client
		toSync   *syncer
		toKeys   *deviceKeys
	}{{querier, owner, r.js, ownerKeys}, {owner, querier, r.cs, querierKeys}} {
		want := "ping from " + dir.from.UserID.String()
		msgType := event.Type{Type: "org.shoal.interop.ping", Class: event.ToDeviceEventType}
		if _, err := dir.from.SendToDevice(ctx, msgType, &mautrix.ReqSendToDevice{Messages: map[id.UserID]map[id.DeviceID]*event.Content{
			dir.to.UserID: {dir.to.DeviceID: {Raw: map[string]any{"body": want}}}}}); err != nil {
			t.Fatalf("%s sends to-device: %v", dir.from.UserID, err)
		}
		got := dir.toSync.waitUntil(t, "to-device message from "+dir.from.UserID.String(), func() *event.Event {
			return find(dir.toSync.toDevice, func(e *event.Event) bool { return e.Type.Type == msgType.Type })
		}, r.diagnose)
		if got.Sender != dir.from.UserID || got.Content.Raw["body"] != want {
			t.Fatalf("to-device message: from %s content %s", got.Sender, got.Content.VeryRaw)
		}
	}

	// A new device of the owner: its server tells the querier's
	// (m.device_list_update), which flags the owner in device_lists.changed.
	r.cs.drainDeviceLists()
	second, err := mautrix.NewClient(owner.HomeserverURL.String(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	login, err := second.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: owner.UserID.String()},
		Password:   "password-" + owner.UserID.Localpart(), StoreCredentials: true})
	if err != nil {
		t.Fatalf("%s logs in a second device: %v", owner.UserID, err)
	}
	secondKeys := uploadKeys(t, second)
	r.cs.waitUntil(t, "the owner's device list change reaches the querier", func() *event.Event {
		if r.cs.deviceChanged[owner.UserID] {
			return &event.Event{}
		}
		return nil
	}, r.diagnose)
	q.DeviceKeys = nil
	if _, err := querier.MakeRequest(ctx, http.MethodPost, querier.BuildClientURL("v3", "keys", "query"),
		map[string]any{"device_keys": map[id.UserID][]string{owner.UserID: {}}}, &q); err != nil {
		t.Fatal(err)
	}
	if len(q.DeviceKeys[owner.UserID]) != 2 {
		t.Fatalf("after the second login, %s sees %s's devices %v", querier.UserID, owner.UserID, q.DeviceKeys[owner.UserID])
	}
	secondKeys.checkDeviceKeys(t, "the second device's keys", q.DeviceKeys[owner.UserID][login.DeviceID])
}

// uiaPost posts body to path; when the server asks for user-interactive
// auth, it answers with the user's password (the test users' passwords
// are "password-<localpart>").
func uiaPost(t *testing.T, cli *mautrix.Client, path mautrix.PrefixableURLPath, body map[string]any) error {
	t.Helper()
	ctx := context.Background()
	contents, err := cli.MakeRequest(ctx, http.MethodPost, cli.BuildURL(path), body, nil)
	var he mautrix.HTTPError
	if err == nil || !errors.As(err, &he) || he.Response == nil || he.Response.StatusCode != http.StatusUnauthorized {
		return err
	}
	var uia struct {
		Session string `json:"session"`
	}
	if json.Unmarshal(contents, &uia) != nil {
		return fmt.Errorf("%w: %s", err, contents)
	}
	body["auth"] = map[string]any{"type": "m.login.password", "session": uia.Session, "password": "password-" + cli.UserID.Localpart(),
		"identifier": map[string]any{"type": "m.id.user", "user": cli.UserID.String()}}
	_, err = cli.MakeRequest(ctx, http.MethodPost, cli.BuildURL(path), body, nil)
	return err
}

// crossSigning: a user of b publishes cross-signing keys (master,
// self-signing signed by the master, user-signing); a user of a reads the
// master and self-signing keys through its own server (federation
// user/keys/query), signatures intact.
func (p *pair) crossSigning(t *testing.T, a, b side, tag string) {
	ctx := context.Background()
	r := p.sharedRoom(t, "10", a.register("csquerier"+tag), b.register("csowner"+tag), a.server, mautrix.ReqCreateRoom{})
	querier, owner := r.creator, r.joiner
	type kp struct {
		pub  ed25519.PublicKey
		priv ed25519.PrivateKey
		id   string
	}
	gen := func() kp {
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		b := base64.RawStdEncoding.EncodeToString(pub)
		return kp{pub, priv, "ed25519:" + b}
	}
	master, self, usr := gen(), gen(), gen()
	keyObj := func(usage string, k kp, signer *kp) json.RawMessage {
		raw, _ := json.Marshal(map[string]any{"user_id": owner.UserID, "usage": []string{usage},
			"keys": map[string]string{k.id: base64.RawStdEncoding.EncodeToString(k.pub)}})
		if signer == nil {
			return raw
		}
		signed, err := eventgraph.SignJSON(raw, owner.UserID.String(), signer.id, signer.priv)
		if err != nil {
			t.Fatal(err)
		}
		return signed
	}
	body := map[string]any{"master_key": keyObj("master", master, nil),
		"self_signing_key": keyObj("self_signing", self, &master), "user_signing_key": keyObj("user_signing", usr, &master)}
	if err := uiaPost(t, owner, mautrix.ClientURLPath{"v3", "keys", "device_signing", "upload"}, body); err != nil {
		t.Fatalf("%s uploads cross-signing keys: %v", owner.UserID, err)
	}
	var q struct {
		MasterKeys      map[id.UserID]json.RawMessage `json:"master_keys"`
		SelfSigningKeys map[id.UserID]json.RawMessage `json:"self_signing_keys"`
		Failures        map[string]any                `json:"failures"`
	}
	if _, err := querier.MakeRequest(ctx, http.MethodPost, querier.BuildClientURL("v3", "keys", "query"),
		map[string]any{"device_keys": map[id.UserID][]string{owner.UserID: {}}}, &q); err != nil {
		t.Fatalf("%s queries %s's keys: %v", querier.UserID, owner.UserID, err)
	}
	check := func(what string, raw json.RawMessage, usage string, k kp, signer *kp) {
		t.Helper()
		var got struct {
			UserID id.UserID         `json:"user_id"`
			Usage  []string          `json:"usage"`
			Keys   map[string]string `json:"keys"`
		}
		if err := json.Unmarshal(raw, &got); err != nil || got.UserID != owner.UserID || len(got.Usage) != 1 || got.Usage[0] != usage ||
			len(got.Keys) != 1 || got.Keys[k.id] != base64.RawStdEncoding.EncodeToString(k.pub) {
			t.Fatalf("%s's %s key as %s sees it: %s (failures %v)", owner.UserID, what, querier.UserID, raw, q.Failures)
		}
		if signer != nil {
			if err := eventgraph.VerifyJSON(raw, owner.UserID.String(), signer.id, signer.pub); err != nil {
				t.Fatalf("%s's %s key: the master's signature: %v in %s", owner.UserID, what, err, raw)
			}
		}
	}
	check("master", q.MasterKeys[owner.UserID], "master", master, nil)
	check("self-signing", q.SelfSigningKeys[owner.UserID], "self_signing", self, &master)
}
