package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
)

// End-to-end encryption endpoints (spec: "End-to-End Encryption", "Send-to-
// Device messaging"): the gateway fans each request out to the device and
// user actors that own the keys, and, when a user's device list changes,
// tells the user actors of everyone sharing a room with that user.
//
// Remote users go over federation (federation_e2ee.go).
const (
	// maxKeyTargets bounds the users × devices one request may name.
	maxKeyTargets = 10_000
	keysFanout    = 16
)

func (s *Server) registerE2EE() {
	const v3 = "/_matrix/client/v3"
	s.handle("POST "+v3+"/keys/upload", s.authed(s.handleKeysUpload))
	s.handle("POST "+v3+"/keys/query", s.authed(s.handleKeysQuery))
	s.handle("POST "+v3+"/keys/claim", s.authed(s.handleKeysClaim))
	s.handle("GET "+v3+"/keys/changes", s.authed(s.handleKeysChanges))
	// The spec says GET; mautrix-go sends POST with the same query.
	s.handle("POST "+v3+"/keys/changes", s.authed(s.handleKeysChanges))
	s.handle("PUT "+v3+"/sendToDevice/{eventType}/{txnId}", s.authed(s.handleSendToDevice))
	s.handle("POST "+v3+"/keys/device_signing/upload", s.authed(s.handleCrossSigningUpload))
	s.handle("POST "+v3+"/keys/signatures/upload", s.authed(s.handleSignaturesUpload))
	s.registerKeyBackup()
}

func (s *Server) deviceKeys(ctx context.Context, op *pb.DeviceKeysOp, out any) error {
	res, err := s.router.Request(ctx, op)
	if err != nil {
		return err
	}
	return decodeKeysReply(res, out)
}

func (s *Server) userKeys(ctx context.Context, op *pb.UserKeysOp, out any) error {
	res, err := s.router.Request(ctx, op)
	if err != nil {
		return err
	}
	return decodeKeysReply(res, out)
}

func decodeKeysReply(res any, out any) error {
	rep, ok := res.(*pb.KeysReply)
	if !ok {
		return errors.New("gateway: unexpected keys reply")
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = rep.Json
		return nil
	}
	return json.Unmarshal(rep.Json, out)
}

// fanOut runs fn for each item with bounded concurrency.
func fanOut[T any](items []T, fn func(T)) {
	sem := make(chan struct{}, keysFanout)
	var wg sync.WaitGroup
	for _, it := range items {
		wg.Add(1)
		sem <- struct{}{}
		go func(it T) {
			defer func() { <-sem; wg.Done() }()
			fn(it)
		}(it)
	}
	wg.Wait()
}

// notifyDeviceListChange tells userID's own user actor and those of the
// local users sharing a joined room with userID that its device list (or
// cross-signing keys) changed.
func (s *Server) notifyDeviceListChange(ctx context.Context, userID string) {
	body, _ := json.Marshal(userID)
	targets := s.localRoomPeers(ctx, userID)
	targets[userID] = true
	for u := range targets {
		s.router.Send(&pb.UserKeysOp{UserId: u, Op: "devlist_changed", Body: body})
	}
	// The user's actor tells the other servers sharing a room what changed.
	s.router.Send(&pb.UserKeysOp{UserId: userID, Op: "fed_publish"})
}

// localRoomPeers returns the local users sharing a joined room with userID
// (userID among them when it is joined anywhere).
func (s *Server) localRoomPeers(ctx context.Context, userID string) map[string]bool {
	rep, err := s.accountQuery(ctx, &pb.AccountQuery{UserId: userID, Kind: "joined_rooms"})
	if err != nil {
		return map[string]bool{}
	}
	var jr struct {
		JoinedRooms []string `json:"joined_rooms"`
	}
	_ = json.Unmarshal(rep.Json, &jr)
	return actors.LocalRoomPeers(ctx, s.router, s.server.ServerName, userID, jr.JoinedRooms, func(room string, err error) {
		s.log.Warn("gateway: room members lookup failed", slog.String("room", room), slog.Any("err", err))
	})
}

// ---- /keys/upload ----

func (s *Server) handleKeysUpload(w http.ResponseWriter, r *http.Request, sess *Session) {
	body, err := readBody(r, maxBodyBytes)
	if err != nil {
		writeError(w, r, err)
		return
	}
	var req struct {
		DeviceKeys   json.RawMessage            `json:"device_keys"`
		OneTimeKeys  map[string]json.RawMessage `json:"one_time_keys"`
		FallbackKeys map[string]json.RawMessage `json:"fallback_keys"`
	}
	if err := unmarshalBody(body, &req); err != nil {
		writeError(w, r, err)
		return
	}
	if len(req.DeviceKeys) > 0 && string(req.DeviceKeys) != "null" && req.DeviceKeys[0] != '{' {
		writeError(w, r, actors.ErrBadJSON("device_keys must be an object"))
		return
	}
	if len(req.OneTimeKeys) > actors.MaxOneTimeKeys || len(req.FallbackKeys) > 100 {
		writeError(w, r, actors.ErrInvalidParam("too many keys in one upload"))
		return
	}
	fwd, _ := json.Marshal(req)
	var rep struct {
		Counts  map[string]int `json:"one_time_key_counts"`
		Changed bool           `json:"changed"`
	}
	ctx := r.Context()
	if err := s.deviceKeys(ctx, &pb.DeviceKeysOp{UserId: sess.UserID, DeviceId: sess.DeviceID, Op: "upload", Body: fwd}, &rep); err != nil {
		writeError(w, r, err)
		return
	}
	if rep.Changed {
		s.notifyDeviceListChange(ctx, sess.UserID)
	}
	if rep.Counts == nil {
		rep.Counts = map[string]int{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"one_time_key_counts": rep.Counts})
}

// ---- /keys/query ----

type keysQueryResult struct {
	mu          sync.Mutex
	deviceKeys  map[string]map[string]json.RawMessage
	master      map[string]json.RawMessage
	selfSigning map[string]json.RawMessage
	userSigning map[string]json.RawMessage
	failures    map[string]any
}

func (s *Server) handleKeysQuery(w http.ResponseWriter, r *http.Request, sess *Session) {
	var req struct {
		DeviceKeys map[string][]string `json:"device_keys"`
		Timeout    *int64              `json:"timeout"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	n := 0
	for _, devs := range req.DeviceKeys {
		n += max(1, len(devs))
	}
	if n > maxKeyTargets {
		writeError(w, r, actors.ErrInvalidParam("too many users or devices (at most %d)", maxKeyTargets))
		return
	}
	ctx := r.Context()
	res := newKeysQueryResult()
	var users []string
	remote := map[string][]string{}
	for u, devs := range req.DeviceKeys {
		if !s.isLocalUser(u) {
			remote[u] = devs
			continue
		}
		users = append(users, u)
	}
	var wg sync.WaitGroup
	if len(remote) > 0 {
		wg.Go(func() { s.queryRemoteKeys(ctx, sess.UserID, remote, keysTimeout(req.Timeout), res) })
	}
	fanOut(users, func(u string) { s.queryUserKeys(ctx, sess.UserID, u, req.DeviceKeys[u], res) })
	wg.Wait()
	writeJSON(w, http.StatusOK, map[string]any{"device_keys": res.deviceKeys, "master_keys": res.master,
		"self_signing_keys": res.selfSigning, "user_signing_keys": res.userSigning, "failures": res.failures})
}

func (s *Server) queryUserKeys(ctx context.Context, requester, userID string, want []string, res *keysQueryResult) {
	devices, err := s.userDevices(ctx, userID)
	if err != nil {
		devices = nil // an unknown user has no devices
	}
	if len(want) > 0 {
		devices = slices.DeleteFunc(devices, func(d string) bool { return !slices.Contains(want, d) })
	}
	found := map[string]json.RawMessage{}
	var mu sync.Mutex
	fanOut(devices, func(d string) {
		var rep struct {
			DeviceKeys json.RawMessage `json:"device_keys"`
		}
		if err := s.deviceKeys(ctx, &pb.DeviceKeysOp{UserId: userID, DeviceId: d, Op: "query"}, &rep); err != nil || len(rep.DeviceKeys) == 0 {
			return
		}
		mu.Lock()
		found[d] = rep.DeviceKeys
		mu.Unlock()
	})
	var xs map[string]json.RawMessage
	_ = s.userKeys(ctx, &pb.UserKeysOp{UserId: userID, Op: "xsign_query", Requester: requester}, &xs)
	res.mu.Lock()
	defer res.mu.Unlock()
	res.deviceKeys[userID] = found
	if k, ok := xs["master_key"]; ok {
		res.master[userID] = k
	}
	if k, ok := xs["self_signing_key"]; ok {
		res.selfSigning[userID] = k
	}
	if k, ok := xs["user_signing_key"]; ok {
		res.userSigning[userID] = k
	}
}

// ---- /keys/claim ----

type claimTarget struct{ user, device, alg string }

func (s *Server) handleKeysClaim(w http.ResponseWriter, r *http.Request, sess *Session) {
	var req struct {
		OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
		Timeout     *int64                       `json:"timeout"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	var targets []claimTarget
	failures := map[string]any{}
	remote := map[string]map[string]string{}
	n := 0
	for u, devs := range req.OneTimeKeys {
		n += len(devs)
		if !s.isLocalUser(u) {
			remote[u] = devs
			continue
		}
		for d, alg := range devs {
			targets = append(targets, claimTarget{u, d, alg})
		}
	}
	if n > maxKeyTargets {
		writeError(w, r, actors.ErrInvalidParam("too many devices (at most %d)", maxKeyTargets))
		return
	}
	ctx := r.Context()
	remoteOut := map[string]map[string]map[string]json.RawMessage{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	if len(remote) > 0 {
		wg.Go(func() { s.claimRemoteKeys(ctx, remote, keysTimeout(req.Timeout), remoteOut, failures, &mu) })
	}
	out := s.claimLocalKeys(ctx, targets)
	wg.Wait()
	for u, devs := range remoteOut {
		out[u] = devs
	}
	writeJSON(w, http.StatusOK, map[string]any{"one_time_keys": out, "failures": failures})
}

// claimLocalKeys claims one key per target from the local devices' actors.
func (s *Server) claimLocalKeys(ctx context.Context, targets []claimTarget) map[string]map[string]map[string]json.RawMessage {
	out := map[string]map[string]map[string]json.RawMessage{}
	var mu sync.Mutex
	fanOut(targets, func(t claimTarget) {
		if t.device == "" || t.alg == "" {
			return
		}
		var rep struct {
			KeyID string          `json:"key_id"`
			Key   json.RawMessage `json:"key"`
		}
		if err := s.deviceKeys(ctx, &pb.DeviceKeysOp{UserId: t.user, DeviceId: t.device, Op: "claim", Algorithm: t.alg}, &rep); err != nil || rep.KeyID == "" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if out[t.user] == nil {
			out[t.user] = map[string]map[string]json.RawMessage{}
		}
		out[t.user][t.device] = map[string]json.RawMessage{rep.KeyID: rep.Key}
	})
	return out
}

// ---- /keys/changes ----

func (s *Server) handleKeysChanges(w http.ResponseWriter, r *http.Request, sess *Session) {
	q := r.URL.Query()
	from, to := q.Get("from"), q.Get("to")
	if from == "" || to == "" {
		writeError(w, r, errMissingParam("from and to are required"))
		return
	}
	if len(from) > 128 || len(to) > 128 {
		writeError(w, r, actors.ErrInvalidParam("invalid token"))
		return
	}
	fromTok, _ := splitSyncToken(from)
	toTok, _ := splitSyncToken(to)
	var out json.RawMessage
	if err := s.userKeys(r.Context(), &pb.UserKeysOp{UserId: sess.UserID, Op: "changes", From: fromTok, To: toTok}, &out); err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// ---- /sendToDevice ----

type deliverTarget struct{ user, device string }

func (s *Server) handleSendToDevice(w http.ResponseWriter, r *http.Request, sess *Session) {
	evType, txnID := r.PathValue("eventType"), r.PathValue("txnId")
	if evType == "" || len(evType) > 255 || txnID == "" || len(txnID) > 255 {
		writeError(w, r, actors.ErrInvalidParam("invalid event type or transaction ID"))
		return
	}
	var req struct {
		Messages map[string]map[string]json.RawMessage `json:"messages"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	ctx := r.Context()
	n := 0
	for _, devs := range req.Messages {
		n += len(devs)
	}
	if n > maxKeyTargets {
		writeError(w, r, actors.ErrInvalidParam("too many devices (at most %d)", maxKeyTargets))
		return
	}
	var targets []deliverTarget
	bodies := map[deliverTarget][]byte{}
	remote := map[string]map[string]json.RawMessage{}
	for u, devs := range req.Messages {
		for d, content := range devs {
			if len(content) == 0 || content[0] != '{' {
				writeError(w, r, actors.ErrBadJSON("message content must be an object"))
				return
			}
			if !s.isLocalUser(u) {
				if len(content) > actors.MaxToDeviceBytes {
					writeError(w, r, errStatus(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "to-device message too large"))
					return
				}
				if remote[u] == nil {
					remote[u] = map[string]json.RawMessage{}
				}
				remote[u][d] = content
				continue
			}
			msg, err := json.Marshal(map[string]any{"type": evType, "sender": sess.UserID, "content": content})
			if err != nil {
				writeError(w, r, actors.ErrBadJSON("message content must be an object"))
				return
			}
			if len(msg) > actors.MaxToDeviceBytes {
				writeError(w, r, errStatus(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "to-device message too large"))
				return
			}
			devices := []string{d}
			if d == "*" {
				if devices, err = s.userDevices(ctx, u); err != nil {
					devices = nil
				}
			}
			for _, dev := range devices {
				t := deliverTarget{u, dev}
				if _, dup := bodies[t]; !dup {
					targets = append(targets, t)
				}
				bodies[t] = msg
			}
		}
	}
	if len(targets) > maxKeyTargets {
		writeError(w, r, actors.ErrInvalidParam("too many devices (at most %d)", maxKeyTargets))
		return
	}
	var mu sync.Mutex
	var firstErr error
	fanOut(targets, func(t deliverTarget) {
		err := s.deviceKeys(ctx, &pb.DeviceKeysOp{UserId: t.user, DeviceId: t.device, Op: "deliver", Body: bodies[t],
			Sender: sess.UserID, SenderDevice: sess.DeviceID, TxnId: evType + "\x00" + txnID}, nil)
		var me *actors.MatrixError
		if err != nil && (!errors.As(err, &me) || me.Status >= 500) {
			mu.Lock()
			if firstErr == nil {
				firstErr = err
			}
			mu.Unlock()
		}
	})
	if firstErr != nil {
		// The client retries with the same transaction ID; devices that
		// already have the message keep one copy.
		writeError(w, r, firstErr)
		return
	}
	if len(remote) > 0 {
		s.sendRemoteToDevice(sess.UserID, sess.DeviceID, evType, txnID, remote)
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

// ---- /keys/device_signing/upload ----

func (s *Server) handleCrossSigningUpload(w http.ResponseWriter, r *http.Request, sess *Session) {
	body, err := readBody(r, maxBodyBytes)
	if err != nil {
		writeError(w, r, err)
		return
	}
	var req struct {
		Auth           map[string]json.RawMessage `json:"auth"`
		MasterKey      json.RawMessage            `json:"master_key,omitempty"`
		SelfSigningKey json.RawMessage            `json:"self_signing_key,omitempty"`
		UserSigningKey json.RawMessage            `json:"user_signing_key,omitempty"`
	}
	if err := unmarshalBody(body, &req); err != nil {
		writeError(w, r, err)
		return
	}
	auth := req.Auth
	req.Auth = nil
	keys, _ := json.Marshal(req)
	ctx := r.Context()
	var check struct {
		NeedsAuth bool `json:"needs_auth"`
	}
	if err := s.userKeys(ctx, &pb.UserKeysOp{UserId: sess.UserID, Op: "xsign_check", Body: keys}, &check); err != nil {
		writeError(w, r, err)
		return
	}
	// MSC3967: the first upload, or the same keys again, needs no UIA;
	// replacing a key does.
	var uia *uiaSession
	if check.NeedsAuth {
		if uia, err = s.runUIA(auth, s.passwordUIA(ctx, sess.UserID)); err != nil {
			writeUIA(w, r, err)
			return
		}
	}
	var rep struct {
		Changed bool `json:"changed"`
	}
	if err := s.userKeys(ctx, &pb.UserKeysOp{UserId: sess.UserID, Op: "xsign_upload", Body: keys}, &rep); err != nil {
		writeError(w, r, err)
		return
	}
	if uia != nil {
		s.uia.finish(uia.id)
	}
	if rep.Changed {
		s.notifyDeviceListChange(ctx, sess.UserID)
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

// ---- /keys/signatures/upload ----

type signedKey struct {
	UserID     string                       `json:"user_id"`
	Keys       map[string]string            `json:"keys"`
	Signatures map[string]map[string]string `json:"signatures"`
}

type sigFailure map[string]any

func sigFail(errcode, msg string) sigFailure { return sigFailure{"errcode": errcode, "error": msg} }

func (s *Server) handleSignaturesUpload(w http.ResponseWriter, r *http.Request, sess *Session) {
	var req map[string]map[string]json.RawMessage
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	n := 0
	for _, ks := range req {
		n += len(ks)
	}
	if n > maxKeyTargets {
		writeError(w, r, actors.ErrInvalidParam("too many keys (at most %d)", maxKeyTargets))
		return
	}
	ctx := r.Context()
	me := sess.UserID
	var mine map[string]json.RawMessage
	if err := s.userKeys(ctx, &pb.UserKeysOp{UserId: me, Op: "xsign_query", Requester: me}, &mine); err != nil {
		writeError(w, r, err)
		return
	}
	failures := map[string]map[string]sigFailure{}
	fail := func(u, k string, f sigFailure) {
		if failures[u] == nil {
			failures[u] = map[string]sigFailure{}
		}
		failures[u][k] = f
	}
	ownChanged := false
	changedOthers := map[string]bool{}
	for target, ks := range req {
		for keyID, raw := range ks {
			var obj signedKey
			if err := json.Unmarshal(raw, &obj); err != nil {
				fail(target, keyID, sigFail("M_BAD_JSON", "malformed key"))
				continue
			}
			if obj.UserID != target {
				fail(target, keyID, sigFail("M_INVALID_PARAM", "user_id does not match"))
				continue
			}
			var f sigFailure
			if target == me {
				f = s.signOwnKey(ctx, me, keyID, raw, obj, mine)
				if f == nil {
					ownChanged = true
				}
			} else {
				f = s.signOtherMaster(ctx, me, target, keyID, raw, obj, mine)
				if f == nil {
					changedOthers[target] = true
				}
			}
			if f != nil {
				fail(target, keyID, f)
			}
		}
	}
	if ownChanged {
		s.notifyDeviceListChange(ctx, me)
	}
	for u := range changedOthers {
		// Only the signer sees its signature, so only it hears of it.
		body, _ := json.Marshal(u)
		s.router.Send(&pb.UserKeysOp{UserId: me, Op: "devlist_changed", Body: body})
	}
	writeJSON(w, http.StatusOK, map[string]any{"failures": failures})
}

// crossKey reads the public key and its key ID from a cross-signing key.
func crossKey(raw json.RawMessage) (id, pub string, ok bool) {
	if len(raw) == 0 {
		return "", "", false
	}
	var k signedKey
	if json.Unmarshal(raw, &k) != nil || len(k.Keys) != 1 {
		return "", "", false
	}
	for id, pub := range k.Keys {
		return id, pub, true
	}
	return "", "", false
}

// sameKey reports whether two key objects are equal but for signatures
// and unsigned data.
func sameKey(a, b []byte) bool {
	strip := func(raw []byte) string {
		var obj map[string]json.RawMessage
		if json.Unmarshal(raw, &obj) != nil {
			return ""
		}
		delete(obj, "signatures")
		delete(obj, "unsigned")
		out, _ := json.Marshal(obj)
		return string(out)
	}
	sa, sb := strip(a), strip(b)
	return sa != "" && sa == sb
}

// signOwnKey handles a signature of one of the uploader's own keys: a
// device signed by the self-signing key, or the master key signed by a
// device.
func (s *Server) signOwnKey(ctx context.Context, me, keyID string, raw json.RawMessage, obj signedKey,
	mine map[string]json.RawMessage) sigFailure {
	if _, masterPub, ok := crossKey(mine["master_key"]); ok && keyID == masterPub {
		var added = map[string]string{}
		for sigID, sig := range obj.Signatures[me] {
			dev, isDev := strings.CutPrefix(sigID, "ed25519:")
			if !isDev || dev == masterPub {
				continue
			}
			var rep struct {
				DeviceKeys json.RawMessage `json:"device_keys"`
			}
			if err := s.deviceKeys(ctx, &pb.DeviceKeysOp{UserId: me, DeviceId: dev, Op: "query"}, &rep); err != nil || len(rep.DeviceKeys) == 0 {
				return sigFail("M_NOT_FOUND", "unknown signing device")
			}
			var dk signedKey
			_ = json.Unmarshal(rep.DeviceKeys, &dk)
			if actors.VerifyKeySignature(raw, me, sigID, dk.Keys[sigID]) != nil {
				return sigFail("M_INVALID_SIGNATURE", "invalid signature")
			}
			added[sigID] = sig
		}
		if len(added) == 0 {
			return sigFail("M_INVALID_SIGNATURE", "no device signature")
		}
		if !sameKey(raw, mine["master_key"]) {
			return sigFail("M_INVALID_PARAM", "key does not match the stored master key")
		}
		body, _ := json.Marshal(map[string]any{"key": "master", "signatures": map[string]any{me: added}})
		if err := s.userKeys(ctx, &pb.UserKeysOp{UserId: me, Op: "xsign_addsig", Body: body}, nil); err != nil {
			return sigFail("M_UNKNOWN", "could not store the signature")
		}
		return nil
	}
	sskID, sskPub, ok := crossKey(mine["self_signing_key"])
	if !ok {
		return sigFail("M_NOT_FOUND", "no self-signing key")
	}
	sig, ok := obj.Signatures[me][sskID]
	if !ok {
		return sigFail("M_INVALID_SIGNATURE", "not signed by the self-signing key")
	}
	var rep struct {
		DeviceKeys json.RawMessage `json:"device_keys"`
	}
	if err := s.deviceKeys(ctx, &pb.DeviceKeysOp{UserId: me, DeviceId: keyID, Op: "query"}, &rep); err != nil || len(rep.DeviceKeys) == 0 {
		return sigFail("M_NOT_FOUND", "unknown device")
	}
	if !sameKey(raw, rep.DeviceKeys) {
		return sigFail("M_INVALID_PARAM", "key does not match the device's keys")
	}
	if actors.VerifyKeySignature(raw, me, sskID, sskPub) != nil {
		return sigFail("M_INVALID_SIGNATURE", "invalid signature")
	}
	body, _ := json.Marshal(map[string]any{me: map[string]string{sskID: sig}})
	if err := s.deviceKeys(ctx, &pb.DeviceKeysOp{UserId: me, DeviceId: keyID, Op: "sign", Body: body}, nil); err != nil {
		return sigFail("M_UNKNOWN", "could not store the signature")
	}
	return nil
}

// signOtherMaster handles a signature of another user's master key by the
// uploader's user-signing key.
func (s *Server) signOtherMaster(ctx context.Context, me, target, keyID string, raw json.RawMessage, obj signedKey,
	mine map[string]json.RawMessage) sigFailure {
	if !s.isLocalUser(target) {
		return sigFail("M_UNAVAILABLE", "federation is not available")
	}
	uskID, uskPub, ok := crossKey(mine["user_signing_key"])
	if !ok {
		return sigFail("M_NOT_FOUND", "no user-signing key")
	}
	var theirs map[string]json.RawMessage
	if err := s.userKeys(ctx, &pb.UserKeysOp{UserId: target, Op: "xsign_query", Requester: me}, &theirs); err != nil {
		return sigFail("M_NOT_FOUND", "unknown user")
	}
	if _, pub, ok := crossKey(theirs["master_key"]); !ok || pub != keyID {
		return sigFail("M_NOT_FOUND", "not the user's master key")
	}
	if !sameKey(raw, theirs["master_key"]) {
		return sigFail("M_INVALID_PARAM", "key does not match the stored master key")
	}
	sig, ok := obj.Signatures[me][uskID]
	if !ok || actors.VerifyKeySignature(raw, me, uskID, uskPub) != nil {
		return sigFail("M_INVALID_SIGNATURE", "invalid signature")
	}
	body, _ := json.Marshal(map[string]any{"key": "master", "signatures": map[string]any{me: map[string]string{uskID: sig}}})
	if err := s.userKeys(ctx, &pb.UserKeysOp{UserId: target, Op: "xsign_addsig", Body: body}, nil); err != nil {
		return sigFail("M_UNKNOWN", "could not store the signature")
	}
	return nil
}

// ---- sync tokens ----

// splitSyncToken separates the gateway's part of a sync token — the
// device's acknowledged to-device position, "_d<pos>" — from the user
// actor's part.
func splitSyncToken(tok string) (string, uint64) {
	user, dev, ok := strings.Cut(tok, "_d")
	if !ok {
		return tok, 0
	}
	pos, err := strconv.ParseUint(dev, 10, 64)
	if err != nil {
		return user, 0
	}
	return user, pos
}

func joinSyncToken(user string, pos uint64) string {
	if pos == 0 {
		return user
	}
	return user + "_d" + strconv.FormatUint(pos, 10)
}

// deviceInbox is what a sync learns from the syncing device's actor.
type deviceInbox struct {
	Events   []json.RawMessage `json:"events"`
	Last     uint64            `json:"last"`
	Latest   uint64            `json:"latest"`
	Counts   map[string]int    `json:"one_time_key_counts"`
	Fallback []string          `json:"unused_fallback_key_types"`
	// unread: the device could not be read; its part is left out rather
	// than reported as empty (zero keys would make the client upload more).
	unread bool
}

// readInbox acknowledges the to-device messages up to ack (the since token
// proves the client has them) and reads up to limit newer ones.
func (s *Server) readInbox(ctx context.Context, sess *Session, ack uint64, limit int32) (*deviceInbox, error) {
	in := &deviceInbox{}
	if err := s.deviceKeys(ctx, &pb.DeviceKeysOp{UserId: sess.UserID, DeviceId: sess.DeviceID, Op: "inbox",
		Pos: ack, Limit: limit}, in); err != nil {
		return nil, err
	}
	return in, nil
}

// addTo puts the device's part into a sync response.
func (in *deviceInbox) addTo(resp *syncResponse) {
	if in.unread {
		return
	}
	if len(in.Events) > 0 {
		resp.ToDevice = &eventsWrapper{Events: in.Events}
	}
	resp.OneTimeKeysCount = in.Counts
	if resp.OneTimeKeysCount == nil {
		resp.OneTimeKeysCount = map[string]int{}
	}
	fb := in.Fallback
	if fb == nil {
		fb = []string{}
	}
	resp.UnusedFallbackKeyTypes = &fb
}

// withJoinedUsers adds to a sync's device_lists.changed the users who
// joined a room the syncer is in, and the members of rooms the syncer
// joined, as read from the rooms' state and timeline in this response (the
// spec's "started sharing a room"). Incremental syncs only; lazy-loaded
// members not in the response are not seen.
func withJoinedUsers(resp *syncResponse, lists json.RawMessage, me string) json.RawMessage {
	if resp.Rooms == nil || len(resp.Rooms.Join) == 0 {
		return lists
	}
	type member struct {
		Type     string  `json:"type"`
		StateKey *string `json:"state_key"`
		Content  struct {
			Membership string `json:"membership"`
		} `json:"content"`
	}
	type room struct {
		State    struct{ Events []member } `json:"state"`
		Timeline struct{ Events []member } `json:"timeline"`
	}
	joined := map[string]bool{}
	for _, body := range resp.Rooms.Join {
		var rm room
		if json.Unmarshal(body, &rm) != nil {
			continue
		}
		for _, ev := range append(rm.State.Events, rm.Timeline.Events...) {
			if ev.Type == "m.room.member" && ev.StateKey != nil && *ev.StateKey != me && ev.Content.Membership == "join" {
				joined[*ev.StateKey] = true
			}
		}
	}
	if len(joined) == 0 {
		return lists
	}
	var dl struct {
		Changed []string `json:"changed"`
		Left    []string `json:"left"`
	}
	if len(lists) > 0 {
		_ = json.Unmarshal(lists, &dl)
	}
	for _, u := range dl.Changed {
		joined[u] = true
	}
	dl.Changed = dl.Changed[:0]
	for u := range joined {
		dl.Changed = append(dl.Changed, u)
	}
	slices.Sort(dl.Changed)
	if dl.Left == nil {
		dl.Left = []string{}
	}
	out, err := json.Marshal(dl)
	if err != nil {
		return lists
	}
	return out
}

// maxLeftCheckRooms bounds the rooms read to tell whether users who left
// still share a room with the syncer; beyond it `left` stays empty (a
// client then keeps tracking a few users too long, which is harmless).
const maxLeftCheckRooms = 500

// withLeftUsers adds to device_lists.left the users this sync shows
// leaving a room the syncer is in, or who were in a room the syncer left,
// and who share no joined room with the syncer any more.
func (s *Server) withLeftUsers(ctx context.Context, sess *Session, resp *syncResponse, lists json.RawMessage) json.RawMessage {
	if resp.Rooms == nil || (len(resp.Rooms.Join) == 0 && len(resp.Rooms.Leave) == 0) {
		return lists
	}
	type member struct {
		Type     string  `json:"type"`
		StateKey *string `json:"state_key"`
		Content  struct {
			Membership string `json:"membership"`
		} `json:"content"`
	}
	type room struct {
		State    struct{ Events []member } `json:"state"`
		Timeline struct{ Events []member } `json:"timeline"`
	}
	candidates := map[string]bool{}
	// In joined rooms only the timeline tells who left now (the state of a
	// newly joined room lists long-gone members); in rooms the syncer left,
	// everyone who was joined is a candidate.
	scan := func(bodies map[string]json.RawMessage, membership string) {
		for _, body := range bodies {
			var rm room
			if json.Unmarshal(body, &rm) != nil {
				continue
			}
			evs := rm.Timeline.Events
			if membership == "join" {
				evs = append(rm.State.Events, evs...)
			}
			for _, ev := range evs {
				if ev.Type == "m.room.member" && ev.StateKey != nil && *ev.StateKey != sess.UserID &&
					(ev.Content.Membership == membership || (membership == "leave" && ev.Content.Membership == "ban")) {
					candidates[*ev.StateKey] = true
				}
			}
		}
	}
	scan(resp.Rooms.Join, "leave")
	scan(resp.Rooms.Leave, "join")
	if len(candidates) == 0 {
		return lists
	}
	rep, err := s.accountQuery(ctx, &pb.AccountQuery{UserId: sess.UserID, Kind: "joined_rooms"})
	if err != nil {
		return lists
	}
	var jr struct {
		JoinedRooms []string `json:"joined_rooms"`
	}
	if json.Unmarshal(rep.Json, &jr) != nil || len(jr.JoinedRooms) > maxLeftCheckRooms {
		return lists
	}
	var mu sync.Mutex
	failed := false
	fanOut(jr.JoinedRooms, func(room string) {
		res, err := s.router.Request(ctx, &pb.RoomQuery{RoomId: room, UserId: sess.UserID, Kind: "joined_members"})
		var jm struct {
			Joined map[string]json.RawMessage `json:"joined"`
		}
		rr, ok := res.(*pb.RoomQueryReply)
		if err == nil && ok {
			err = json.Unmarshal(rr.Json, &jm)
		}
		mu.Lock()
		defer mu.Unlock()
		if err != nil || !ok {
			failed = true // unsure: report nobody as left
			return
		}
		for u := range jm.Joined {
			delete(candidates, u)
		}
	})
	if failed || len(candidates) == 0 {
		return lists
	}
	var dl struct {
		Changed []string `json:"changed"`
		Left    []string `json:"left"`
	}
	if len(lists) > 0 {
		_ = json.Unmarshal(lists, &dl)
	}
	for _, u := range dl.Changed {
		delete(candidates, u)
	}
	for u := range candidates {
		if !slices.Contains(dl.Left, u) {
			dl.Left = append(dl.Left, u)
		}
	}
	slices.Sort(dl.Left)
	if dl.Changed == nil {
		dl.Changed = []string{}
	}
	out, err := json.Marshal(dl)
	if err != nil {
		return lists
	}
	return out
}
