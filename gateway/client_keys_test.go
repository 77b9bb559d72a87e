package gateway_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// e2eeRaw sends a raw request and answers the status and decoded body.
func e2eeRaw(t testing.TB, node *shoaltest.Node, token, method, path string, body any) (int, map[string]json.RawMessage) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, node.BaseURL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]json.RawMessage
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

func errcodeOf(body map[string]json.RawMessage) string {
	var c string
	_ = json.Unmarshal(body["errcode"], &c)
	return c
}

// signObj signs a JSON object as signer with the ed25519 key keyID.
func signObj(t testing.TB, obj any, signer, keyID string, priv ed25519.PrivateKey) []byte {
	t.Helper()
	raw, _ := json.Marshal(obj)
	signed, err := eventgraph.SignJSON(raw, signer, keyID, priv)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

// clientDeviceKeys makes a client's signed device keys and its ed25519 key.
func clientDeviceKeys(t testing.TB, cli *mautrix.Client) (*mautrix.DeviceKeys, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(nil)
	edID := "ed25519:" + string(cli.DeviceID)
	raw := signObj(t, map[string]any{"user_id": cli.UserID, "device_id": cli.DeviceID,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys":       map[string]string{edID: eventgraph.EncodeBase64(pub), "curve25519:" + string(cli.DeviceID): "Y3VydmU"}},
		string(cli.UserID), edID, priv)
	var dk mautrix.DeviceKeys
	if err := json.Unmarshal(raw, &dk); err != nil {
		t.Fatal(err)
	}
	return &dk, priv
}

func syncOnce(t testing.TB, cli *mautrix.Client, since string, timeout int) *mautrix.RespSync {
	t.Helper()
	resp, err := cli.SyncRequest(context.Background(), timeout, since, "", false, event.PresenceOnline)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestE2EEKeysOverHTTP(t *testing.T) {
	node := shoaltest.Start(t)
	ctx := context.Background()
	alice := node.Register("alice")
	bob := node.Register("bob")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	if err := alice.SetDeviceInfo(ctx, alice.DeviceID, &mautrix.ReqDeviceInfo{DisplayName: "Alice's phone"}); err != nil {
		t.Fatal(err)
	}
	bobTok := syncOnce(t, bob, "", 0).NextBatch

	// Device keys must be the uploader's and self-signed.
	dk, _ := clientDeviceKeys(t, alice)
	wrong := *dk
	wrong.DeviceID = "NOTMINE"
	if st, body := e2eeRaw(t, node, alice.AccessToken, "POST", "/_matrix/client/v3/keys/upload",
		map[string]any{"device_keys": wrong}); st != 400 || errcodeOf(body) != "M_INVALID_PARAM" {
		t.Fatalf("foreign device keys: %d %v", st, body)
	}
	up, err := alice.UploadKeys(ctx, &mautrix.ReqUploadKeys{DeviceKeys: dk, OneTimeKeys: map[id.KeyID]mautrix.OneTimeKey{
		"signed_curve25519:BBB": {Key: "b"}, "signed_curve25519:AAA": {Key: "a"}, "signed_curve25519:CCC": {Key: "c"}}})
	if err != nil {
		t.Fatal(err)
	}
	if up.OneTimeKeyCounts.SignedCurve25519 != 3 {
		t.Fatalf("counts = %v", up.OneTimeKeyCounts)
	}
	if st, body := e2eeRaw(t, node, alice.AccessToken, "POST", "/_matrix/client/v3/keys/upload", map[string]any{
		"fallback_keys": map[string]any{"signed_curve25519:FB": map[string]any{"key": "f", "fallback": true}}}); st != 200 {
		t.Fatalf("fallback upload: %d %v", st, body)
	}

	q, err := bob.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.UserID: {}}})
	if err != nil {
		t.Fatal(err)
	}
	got, ok := q.DeviceKeys[alice.UserID][alice.DeviceID]
	if !ok || got.Keys[id.NewDeviceKeyID(id.KeyAlgorithmEd25519, alice.DeviceID)] == "" {
		t.Fatalf("query = %+v", q.DeviceKeys)
	}
	if got.Unsigned["device_display_name"] != "Alice's phone" {
		t.Fatalf("unsigned = %v", got.Unsigned)
	}

	claim := func() id.KeyID {
		t.Helper()
		c, err := bob.ClaimKeys(ctx, &mautrix.ReqClaimKeys{OneTimeKeys: mautrix.OneTimeKeysRequest{
			alice.UserID: {alice.DeviceID: id.KeyAlgorithmSignedCurve25519}}})
		if err != nil {
			t.Fatal(err)
		}
		for k := range c.OneTimeKeys[alice.UserID][alice.DeviceID] {
			return k
		}
		return ""
	}
	if k := claim(); k != "signed_curve25519:AAA" {
		t.Fatalf("first claim = %q", k)
	}

	// Bob shares a room with Alice: her new device keys show in his sync.
	deadline := time.Now().Add(10 * time.Second)
	var changed bool
	tok := bobTok
	for !changed && time.Now().Before(deadline) {
		s := syncOnce(t, bob, tok, 2000)
		changed = slices.Contains(s.DeviceLists.Changed, alice.UserID)
		tok = s.NextBatch
	}
	if !changed {
		t.Fatal("alice's device list change never reached bob's sync")
	}
	kc, err := bob.GetKeyChanges(ctx, bobTok, tok)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(kc.Changed, alice.UserID) {
		t.Fatalf("keys/changes = %+v", kc)
	}
	if st, body := e2eeRaw(t, node, bob.AccessToken, "GET", "/_matrix/client/v3/keys/changes?from="+bobTok, nil); st != 400 || errcodeOf(body) != "M_MISSING_PARAM" {
		t.Fatalf("keys/changes without to: %d %v", st, body)
	}

	s := syncOnce(t, alice, "", 0)
	if s.DeviceOTKCount.SignedCurve25519 != 2 || !slices.Contains(s.FallbackKeys, id.KeyAlgorithmSignedCurve25519) {
		t.Fatalf("alice's sync: counts %+v fallback %v", s.DeviceOTKCount, s.FallbackKeys)
	}
	claim()
	claim()
	if k := claim(); k != "signed_curve25519:FB" {
		t.Fatalf("claim after one-time keys ran out = %q", k)
	}
	s = syncOnce(t, alice, s.NextBatch, 0)
	if len(s.FallbackKeys) != 0 {
		t.Fatalf("used fallback still reported unused: %v", s.FallbackKeys)
	}
}

func TestSendToDeviceOverHTTP(t *testing.T) {
	node := shoaltest.Start(t)
	ctx := context.Background()
	alice := node.Register("alice")
	bob := node.Register("bob")
	tok := syncOnce(t, bob, "", 0).NextBatch

	send := func(txn string, dev id.DeviceID, n int) {
		t.Helper()
		body := map[string]any{"messages": map[string]any{string(bob.UserID): map[string]any{string(dev): map[string]any{"n": n}}}}
		if st, rb := e2eeRaw(t, node, alice.AccessToken, "PUT", "/_matrix/client/v3/sendToDevice/m.test/"+txn, body); st != 200 {
			t.Fatalf("sendToDevice: %d %v", st, rb)
		}
	}
	// A long-poll wakes for a message.
	done := make(chan *mautrix.RespSync, 1)
	go func() {
		r, err := bob.SyncRequest(ctx, 10_000, tok, "", false, event.PresenceOnline)
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	time.Sleep(300 * time.Millisecond)
	send("t1", bob.DeviceID, 1)
	var s *mautrix.RespSync
	select {
	case s = <-done:
	case <-time.After(8 * time.Second):
		t.Fatal("sync not woken by a to-device message")
	}
	if s == nil || len(s.ToDevice.Events) != 1 || s.ToDevice.Events[0].Sender != alice.UserID {
		t.Fatalf("to_device = %+v", s)
	}
	// A retry of the same transaction is not delivered again, and syncing
	// from the next token acknowledges (deletes) what was delivered.
	send("t1", bob.DeviceID, 1)
	send("t2", "*", 2)
	s2 := syncOnce(t, bob, s.NextBatch, 0)
	if len(s2.ToDevice.Events) != 1 || s2.ToDevice.Events[0].Content.Raw["n"] != float64(2) {
		t.Fatalf("second sync to_device = %+v", s2.ToDevice.Events)
	}
	s3 := syncOnce(t, bob, s2.NextBatch, 0)
	if len(s3.ToDevice.Events) != 0 {
		t.Fatalf("acknowledged messages delivered again: %+v", s3.ToDevice.Events)
	}
	// Once acknowledged a message is gone, even for a sync from an older
	// token.
	if again := syncOnce(t, bob, s.NextBatch, 0); len(again.ToDevice.Events) != 0 {
		t.Fatalf("resync from older token = %+v", again.ToDevice.Events)
	}
	// mautrix's own call works too.
	if _, err := alice.SendToDevice(ctx, event.Type{Type: "m.test", Class: event.ToDeviceEventType}, &mautrix.ReqSendToDevice{
		Messages: map[id.UserID]map[id.DeviceID]*event.Content{bob.UserID: {bob.DeviceID: {Raw: map[string]any{"n": 3}}}}}); err != nil {
		t.Fatal(err)
	}
	if s4 := syncOnce(t, bob, s3.NextBatch, 0); len(s4.ToDevice.Events) != 1 {
		t.Fatalf("mautrix to-device = %+v", s4.ToDevice.Events)
	}
}

func crossKeys(t testing.TB, user id.UserID, masterPriv, sskPriv, uskPriv ed25519.PrivateKey) map[string]json.RawMessage {
	t.Helper()
	b64 := func(p ed25519.PrivateKey) string { return eventgraph.EncodeBase64(p.Public().(ed25519.PublicKey)) }
	mID := "ed25519:" + b64(masterPriv)
	master, _ := json.Marshal(map[string]any{"user_id": user, "usage": []string{"master"}, "keys": map[string]string{mID: b64(masterPriv)}})
	ssk := signObj(t, map[string]any{"user_id": user, "usage": []string{"self_signing"},
		"keys": map[string]string{"ed25519:" + b64(sskPriv): b64(sskPriv)}}, string(user), mID, masterPriv)
	usk := signObj(t, map[string]any{"user_id": user, "usage": []string{"user_signing"},
		"keys": map[string]string{"ed25519:" + b64(uskPriv): b64(uskPriv)}}, string(user), mID, masterPriv)
	return map[string]json.RawMessage{"master_key": master, "self_signing_key": ssk, "user_signing_key": usk}
}

func newKey() ed25519.PrivateKey {
	_, p, _ := ed25519.GenerateKey(nil)
	return p
}

func TestCrossSigningOverHTTP(t *testing.T) {
	node := shoaltest.Start(t)
	ctx := context.Background()
	alice := node.Register("alice")
	bob := node.Register("bob")
	const path = "/_matrix/client/v3/keys/device_signing/upload"
	mk, ssk, usk := newKey(), newKey(), newKey()
	keys := crossKeys(t, alice.UserID, mk, ssk, usk)

	// A self-signing key not signed by the master key is refused.
	bad := crossKeys(t, alice.UserID, mk, ssk, usk)
	bad["self_signing_key"] = crossKeys(t, alice.UserID, newKey(), ssk, usk)["self_signing_key"]
	if st, body := e2eeRaw(t, node, alice.AccessToken, "POST", path, bad); st != 400 || errcodeOf(body) != "M_INVALID_SIGNATURE" {
		t.Fatalf("badly signed upload: %d %v", st, body)
	}
	// First upload and an identical re-upload need no UIA (MSC3967).
	for range 2 {
		if st, body := e2eeRaw(t, node, alice.AccessToken, "POST", path, keys); st != 200 {
			t.Fatalf("upload: %d %v", st, body)
		}
	}
	// Replacing needs the password.
	replace := func(ks map[string]json.RawMessage) {
		t.Helper()
		st, body := e2eeRaw(t, node, alice.AccessToken, "POST", path, ks)
		if st != 401 || body["flows"] == nil {
			t.Fatalf("replacement without auth: %d %v", st, body)
		}
		var session string
		_ = json.Unmarshal(body["session"], &session)
		withAuth := map[string]any{"auth": map[string]any{"type": "m.login.password", "session": session,
			"identifier": map[string]any{"type": "m.id.user", "user": alice.UserID}, "password": "password-alice"}}
		for k, v := range ks {
			withAuth[k] = v
		}
		if st, body := e2eeRaw(t, node, alice.AccessToken, "POST", path, withAuth); st != 200 {
			t.Fatalf("replacement with auth: %d %v", st, body)
		}
	}
	mk2 := newKey()
	replace(crossKeys(t, alice.UserID, mk2, newKey(), newKey()))
	// A new self-signing key over the existing master is new too.
	replace(map[string]json.RawMessage{"self_signing_key": crossKeys(t, alice.UserID, mk2, newKey(), newKey())["self_signing_key"]})
	replace(keys) // back to the first keys

	// Query: the user-signing key only to its owner.
	q, err := bob.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.UserID: {}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := q.MasterKeys[alice.UserID]; !ok {
		t.Fatalf("no master key: %+v", q)
	}
	if _, ok := q.SelfSigningKeys[alice.UserID]; !ok {
		t.Fatalf("no self-signing key: %+v", q)
	}
	if _, ok := q.UserSigningKeys[alice.UserID]; ok {
		t.Fatal("user-signing key shown to another user")
	}
	q, err = alice.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.UserID: {}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := q.UserSigningKeys[alice.UserID]; !ok {
		t.Fatal("user-signing key not shown to its owner")
	}

	// Signatures: alice's device by her self-signing key; a bad one fails.
	dk, _ := clientDeviceKeys(t, alice)
	if _, err := alice.UploadKeys(ctx, &mautrix.ReqUploadKeys{DeviceKeys: dk}); err != nil {
		t.Fatal(err)
	}
	sskPubB64 := eventgraph.EncodeBase64(ssk.Public().(ed25519.PublicKey))
	var dkObj map[string]any
	dkRaw, _ := json.Marshal(dk)
	_ = json.Unmarshal(dkRaw, &dkObj)
	delete(dkObj, "signatures")
	signedDev := signObj(t, dkObj, string(alice.UserID), "ed25519:"+sskPubB64, ssk)
	forged := signObj(t, dkObj, string(alice.UserID), "ed25519:"+sskPubB64, newKey())
	st, body := e2eeRaw(t, node, alice.AccessToken, "POST", "/_matrix/client/v3/keys/signatures/upload",
		map[string]any{string(alice.UserID): map[string]json.RawMessage{string(alice.DeviceID): signedDev}})
	if st != 200 || string(body["failures"]) != "{}" {
		t.Fatalf("signature upload: %d %s", st, body["failures"])
	}
	st, body = e2eeRaw(t, node, alice.AccessToken, "POST", "/_matrix/client/v3/keys/signatures/upload",
		map[string]any{string(alice.UserID): map[string]json.RawMessage{string(alice.DeviceID): forged}})
	if st != 200 || !bytes.Contains(body["failures"], []byte("M_INVALID_SIGNATURE")) {
		t.Fatalf("forged signature: %d %s", st, body["failures"])
	}
	q, err = bob.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.UserID: {}}})
	if err != nil {
		t.Fatal(err)
	}
	sigs := q.DeviceKeys[alice.UserID][alice.DeviceID].Signatures[alice.UserID]
	if _, ok := sigs[id.NewKeyID(id.KeyAlgorithmEd25519, sskPubB64)]; !ok {
		t.Fatalf("device signatures = %v", sigs)
	}

	// Bob signs alice's master key with his user-signing key.
	bmk, bssk, busk := newKey(), newKey(), newKey()
	if st, body := e2eeRaw(t, node, bob.AccessToken, "POST", path, crossKeys(t, bob.UserID, bmk, bssk, busk)); st != 200 {
		t.Fatalf("bob upload: %d %v", st, body)
	}
	mPub := eventgraph.EncodeBase64(mk.Public().(ed25519.PublicKey))
	var master map[string]any
	_ = json.Unmarshal(keys["master_key"], &master)
	buskPub := eventgraph.EncodeBase64(busk.Public().(ed25519.PublicKey))
	signedMaster := signObj(t, master, string(bob.UserID), "ed25519:"+buskPub, busk)
	st, body = e2eeRaw(t, node, bob.AccessToken, "POST", "/_matrix/client/v3/keys/signatures/upload",
		map[string]any{string(alice.UserID): map[string]json.RawMessage{mPub: signedMaster}})
	if st != 200 || string(body["failures"]) != "{}" {
		t.Fatalf("bob signs alice: %d %s", st, body["failures"])
	}
	q, _ = bob.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.UserID: {}}})
	if _, ok := q.MasterKeys[alice.UserID].Signatures[bob.UserID]; !ok {
		t.Fatalf("bob does not see his signature: %+v", q.MasterKeys[alice.UserID])
	}
	carol := node.Register("carol")
	q, _ = carol.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.UserID: {}}})
	if _, ok := q.MasterKeys[alice.UserID].Signatures[bob.UserID]; ok {
		t.Fatal("carol sees bob's signature")
	}
}

func TestKeyBackupOverHTTP(t *testing.T) {
	node := shoaltest.Start(t)
	alice := node.Register("alice")
	tok := alice.AccessToken
	const base = "/_matrix/client/v3/room_keys"
	if st, body := e2eeRaw(t, node, tok, "GET", base+"/version", nil); st != 404 || errcodeOf(body) != "M_NOT_FOUND" {
		t.Fatalf("no backup: %d %v", st, body)
	}
	create := map[string]any{"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": map[string]any{"public_key": "abc"}}
	st, body := e2eeRaw(t, node, tok, "POST", base+"/version", create)
	var v1 string
	_ = json.Unmarshal(body["version"], &v1)
	if st != 200 || v1 == "" {
		t.Fatalf("create: %d %v", st, body)
	}
	key := func(fmi, fwd int, verified bool, data string) map[string]any {
		return map[string]any{"first_message_index": fmi, "forwarded_count": fwd, "is_verified": verified,
			"session_data": map[string]any{"d": data}}
	}
	st, body = e2eeRaw(t, node, tok, "PUT", base+"/keys?version="+v1, map[string]any{"rooms": map[string]any{
		"!r:test.local": map[string]any{"sessions": map[string]any{"s1": key(5, 0, false, "first"), "s2": key(0, 0, false, "x")}}}})
	if st != 200 || string(body["count"]) != "2" {
		t.Fatalf("put all: %d %v", st, body)
	}
	etag1 := string(body["etag"])
	// A worse key does not replace; a better (verified) one does.
	e2eeRaw(t, node, tok, "PUT", base+"/keys/!r:test.local/s1?version="+v1, key(9, 0, false, "worse"))
	st, body = e2eeRaw(t, node, tok, "GET", base+"/keys/!r:test.local/s1?version="+v1, nil)
	if st != 200 || !bytes.Contains(body["session_data"], []byte("first")) {
		t.Fatalf("worse key replaced: %d %v", st, body)
	}
	st, body = e2eeRaw(t, node, tok, "PUT", base+"/keys/!r:test.local?version="+v1,
		map[string]any{"sessions": map[string]any{"s1": key(9, 3, true, "verified")}})
	if st != 200 || string(body["etag"]) == etag1 {
		t.Fatalf("put room: %d %v", st, body)
	}
	_, body = e2eeRaw(t, node, tok, "GET", base+"/keys/!r:test.local/s1?version="+v1, nil)
	if !bytes.Contains(body["session_data"], []byte("verified")) {
		t.Fatalf("verified key did not replace: %v", body)
	}
	st, body = e2eeRaw(t, node, tok, "GET", base+"/version", nil)
	if st != 200 || string(body["count"]) != "2" {
		t.Fatalf("version info: %d %v", st, body)
	}
	// A new version makes writes to the old one fail with the current one.
	_, body = e2eeRaw(t, node, tok, "POST", base+"/version", create)
	var v2 string
	_ = json.Unmarshal(body["version"], &v2)
	st, body = e2eeRaw(t, node, tok, "PUT", base+"/keys/!r:test.local/s3?version="+v1, key(0, 0, false, "old"))
	if st != 403 || errcodeOf(body) != "M_WRONG_ROOM_KEYS_VERSION" || string(body["current_version"]) != `"`+v2+`"` {
		t.Fatalf("write to old version: %d %v", st, body)
	}
	// Update auth_data, delete keys, delete the version.
	if st, body := e2eeRaw(t, node, tok, "PUT", base+"/version/"+v2, map[string]any{"algorithm": create["algorithm"],
		"auth_data": map[string]any{"public_key": "new"}, "version": v2}); st != 200 {
		t.Fatalf("update: %d %v", st, body)
	}
	e2eeRaw(t, node, tok, "PUT", base+"/keys/!r:test.local/s1?version="+v2, key(0, 0, false, "a"))
	st, body = e2eeRaw(t, node, tok, "DELETE", base+"/keys?version="+v2, nil)
	if st != 200 || string(body["count"]) != "0" {
		t.Fatalf("delete keys: %d %v", st, body)
	}
	if st, body := e2eeRaw(t, node, tok, "DELETE", base+"/version/"+v2, nil); st != 200 {
		t.Fatalf("delete version: %d %v", st, body)
	}
	st, body = e2eeRaw(t, node, tok, "GET", base+"/version", nil)
	var cur string
	_ = json.Unmarshal(body["version"], &cur)
	if st != 200 || cur != v1 {
		t.Fatalf("current after delete = %d %v", st, body)
	}
	if st, body := e2eeRaw(t, node, tok, "GET", base+"/version/999", nil); st != 404 || errcodeOf(body) != "M_NOT_FOUND" {
		t.Fatalf("unknown version: %d %v", st, body)
	}
}

// TestDeviceListsOnJoin: a user who starts sharing a room shows in
// device_lists.changed of the members' next sync.
func TestDeviceListsOnJoin(t *testing.T) {
	node := shoaltest.Start(t)
	ctx := context.Background()
	alice := node.Register("alice")
	carol := node.Register("carol")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	tok := syncOnce(t, alice, "", 0).NextBatch
	if _, err := carol.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	s := syncOnce(t, alice, tok, 5000)
	if !slices.Contains(s.DeviceLists.Changed, carol.UserID) {
		t.Fatalf("device_lists = %+v", s.DeviceLists)
	}
	// Sharing no room any more: carol is left. Dave, still in another
	// room with alice, is not when he leaves this one.
	dave := node.Register("dave")
	other, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []id.RoomID{room.RoomID, other.RoomID} {
		if _, err := dave.JoinRoomByID(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	s = syncOnce(t, alice, s.NextBatch, 0)
	// Dave leaves first, so any sync that shows carol leaving has seen him.
	if _, err := dave.LeaveRoom(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	if _, err := carol.LeaveRoom(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	var left []id.UserID
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		s = syncOnce(t, alice, s.NextBatch, 2000)
		left = append(left, s.DeviceLists.Left...)
		if slices.Contains(left, carol.UserID) {
			break
		}
	}
	if !slices.Contains(left, carol.UserID) || slices.Contains(left, dave.UserID) {
		t.Fatalf("device_lists.left = %v", left)
	}
}

// TestToDeviceSurvivesRestart: an undelivered message is kept across a
// node restart, and one-time keys too.
func TestToDeviceSurvivesRestart(t *testing.T) {
	node := shoaltest.Start(t)
	ctx := context.Background()
	alice := node.Register("alice")
	bob := node.Register("bob")
	tok := syncOnce(t, bob, "", 0).NextBatch
	if _, err := alice.SendToDevice(ctx, event.Type{Type: "m.test", Class: event.ToDeviceEventType}, &mautrix.ReqSendToDevice{
		Messages: map[id.UserID]map[id.DeviceID]*event.Content{bob.UserID: {"*": {Raw: map[string]any{"n": 1}}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.UploadKeys(ctx, &mautrix.ReqUploadKeys{OneTimeKeys: map[id.KeyID]mautrix.OneTimeKey{"signed_curve25519:A": {Key: "a"}}}); err != nil {
		t.Fatal(err)
	}
	node.Restart()
	s := syncOnce(t, bob, tok, 0)
	if len(s.ToDevice.Events) != 1 || s.DeviceOTKCount.SignedCurve25519 != 1 {
		t.Fatalf("after restart: to_device %+v, counts %+v", s.ToDevice.Events, s.DeviceOTKCount)
	}
	if s = syncOnce(t, bob, s.NextBatch, 0); len(s.ToDevice.Events) != 0 {
		t.Fatalf("acknowledged message again: %+v", s.ToDevice.Events)
	}
}
