package actors

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"

	"github.com/asynkron/protoactor-go/actor"
	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// The user actor's encryption half: the user's cross-signing keys, the
// stream of device list changes the user must hear of, and which to-device
// positions its devices reached (to wake long-polls).
//
// UserKeysOp ops (reply KeysReply.json):
//
//	xsign_check    body as xsign_upload → {"needs_auth":bool}: whether the
//	               upload replaces a different key (MSC3967)
//	xsign_upload   body {"master_key"?,"self_signing_key"?,"user_signing_key"?}
//	               → {"changed":bool}
//	xsign_query    requester → {"master_key"?,"self_signing_key"?,
//	               "user_signing_key"? (to the owner only)}; signatures on
//	               the master key by other users are shown only to their
//	               maker
//	xsign_addsig   body {"key":"master"|…,"signatures":{signer:{id:sig}}}
//	devlist_changed body "@user:server": that user's device list changed;
//	               it is added to the stream at a new account sequence
//	changes        from, to (sync tokens) → {"changed":[…],"left":[]}
//
// Key backup ops are in user_keybackup.go; the federation ops (fed_*,
// remote_*) in user_keys_remote.go.
const (
	// maxDevListEntries bounds the stored device list changes of a user;
	// the oldest go first (a client that far behind resyncs all keys).
	maxDevListEntries = 10_000
)

var devListCountKey = []byte("devlists_n")

// userKeys is what the user actor keeps in memory for encryption.
type userKeys struct {
	// toDevice is the newest inbox position each device was told of.
	toDevice map[string]uint64
	// pub is the device list publishing to other servers (user_keys_remote.go).
	pub fedPublishing
}

func (u *user) keysOp(ctx actor.Context, m *pb.UserKeysOp) acctResult {
	if strings.HasPrefix(m.Op, "fed_") || strings.HasPrefix(m.Op, "remote_") {
		return u.fedKeysOp(ctx, m)
	}
	if _, err := u.account(m.Op == "xsign_query" || m.Op == "devlist_changed"); err != nil {
		if m.Op == "xsign_query" {
			return keysReply(map[string]any{})
		}
		return acctFail(err)
	}
	switch m.Op {
	case "xsign_check":
		need, _, err := u.checkCrossSigning(m.Body)
		if err != nil {
			return acctFail(err)
		}
		return keysReply(map[string]any{"needs_auth": need})
	case "xsign_upload":
		return u.uploadCrossSigning(m.Body)
	case "xsign_query":
		return u.queryCrossSigning(m.Requester)
	case "xsign_addsig":
		return u.addCrossSignature(m.Body)
	case "devlist_changed":
		return u.deviceListChanged(ctx, m.Body)
	case "changes":
		return u.keyChanges(m.From, m.To)
	default:
		if strings.HasPrefix(m.Op, "backup_") {
			return u.keyBackup(m)
		}
		return acctFail(ErrInvalidParam("unknown keys op %q", m.Op))
	}
}

// crossSigningKey is the shape of a CrossSigningKey.
type crossSigningKey struct {
	UserID string            `json:"user_id"`
	Usage  []string          `json:"usage"`
	Keys   map[string]string `json:"keys"`
}

var crossSigningUsages = map[string]string{
	"master_key":       "master",
	"self_signing_key": "self_signing",
	"user_signing_key": "user_signing",
}

// publicKey answers the one ed25519 key of a cross-signing key.
func (k *crossSigningKey) publicKey() (id, pub string, ok bool) {
	if len(k.Keys) != 1 {
		return "", "", false
	}
	for id, pub := range k.Keys {
		if strings.HasPrefix(id, "ed25519:") && strings.TrimPrefix(id, "ed25519:") == pub {
			return id, pub, true
		}
	}
	return "", "", false
}

func (u *user) storedCrossSigning() (map[string][]byte, error) {
	out := map[string][]byte{}
	err := u.env.Partition.View(func(tx *bbolt.Tx) error {
		e := storage.E2EE(tx, u.env.Identity)
		for _, usage := range crossSigningUsages {
			v, err := e.Get(storage.CrossSignStore, []byte(usage))
			if err != nil {
				return err
			}
			if v != nil {
				out[usage] = v
			}
		}
		return nil
	})
	return out, err
}

// checkCrossSigning validates an upload and answers whether it replaces a
// stored key with a different one, and the keys to store by usage.
func (u *user) checkCrossSigning(body []byte) (bool, map[string][]byte, error) {
	var req map[string]json.RawMessage
	if err := json.Unmarshal(body, &req); err != nil {
		return false, nil, ErrBadJSON("malformed cross-signing keys")
	}
	stored, err := u.storedCrossSigning()
	if err != nil {
		return false, nil, err
	}
	parsed := map[string]*crossSigningKey{}
	raws := map[string][]byte{}
	for field, usage := range crossSigningUsages {
		raw := req[field]
		if len(raw) == 0 || string(raw) == "null" {
			continue
		}
		if len(raw) > MaxKeyJSON {
			return false, nil, ErrInvalidParam("%s larger than %d bytes", field, MaxKeyJSON)
		}
		var k crossSigningKey
		if err := json.Unmarshal(raw, &k); err != nil {
			return false, nil, ErrBadJSON("%s is malformed", field)
		}
		if k.UserID != u.userID {
			return false, nil, ErrInvalidParam("%s is not for user %s", field, u.userID)
		}
		if !slices.Contains(k.Usage, usage) {
			return false, nil, ErrInvalidParam("%s must have usage %q", field, usage)
		}
		_, pub, ok := k.publicKey()
		if !ok {
			return false, nil, ErrInvalidParam("%s must hold one ed25519 key named after itself", field)
		}
		if u.st.Devices[pub] {
			return false, nil, ErrForbidden("the public key of %s is one of the user's device IDs", field)
		}
		parsed[usage], raws[usage] = &k, raw
	}
	master := parsed["master"]
	if master == nil && stored["master"] != nil {
		master = &crossSigningKey{}
		_ = json.Unmarshal(stored["master"], master)
	}
	if (parsed["self_signing"] != nil || parsed["user_signing"] != nil) && master == nil {
		return false, nil, Errorf(http.StatusBadRequest, "M_MISSING_PARAM", "no master signing key is available")
	}
	for _, usage := range []string{"self_signing", "user_signing"} {
		if parsed[usage] == nil {
			continue
		}
		id, pub, _ := master.publicKey()
		if err := VerifyKeySignature(raws[usage], u.userID, id, pub); err != nil {
			return false, nil, Errorf(http.StatusBadRequest, "M_INVALID_SIGNATURE", "%s is not signed by the master key", usage)
		}
	}
	out := map[string][]byte{}
	for usage, raw := range raws {
		canon, err := canonicalKey(raw)
		if err != nil {
			return false, nil, ErrBadJSON("cross-signing key is malformed")
		}
		if old := stored[usage]; old != nil && string(withoutSignatures(old)) == string(withoutSignatures(canon)) {
			continue // identical re-upload: nothing to store
		}
		out[usage] = canon
	}
	if out["master"] != nil && stored["master"] != nil {
		// A new master key voids the keys it signed: keep the ones uploaded
		// with it (signed by it) and drop the others (nil: delete).
		for usage := range stored {
			if usage == "master" {
				continue
			}
			if raws[usage] == nil {
				out[usage] = nil
			} else if out[usage] == nil {
				out[usage], _ = canonicalKey(raws[usage])
			}
		}
	}
	// MSC3967: no UIA while there is no master key, nor for an upload
	// with no new key; any new key over an existing master needs it.
	return stored["master"] != nil && len(out) > 0, out, nil
}

func (u *user) uploadCrossSigning(body []byte) acctResult {
	_, keys, err := u.checkCrossSigning(body)
	if err != nil {
		return acctFail(err)
	}
	if len(keys) > 0 {
		if err := u.write(func(ut storage.UserTx) error {
			e := ut.E2EE()
			for usage, k := range keys {
				if k == nil {
					if err := e.Delete(storage.CrossSignStore, []byte(usage)); err != nil {
						return err
					}
					continue
				}
				if err := e.Put(storage.CrossSignStore, []byte(usage), k); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return acctFail(err)
		}
	}
	return keysReply(map[string]any{"changed": len(keys) > 0})
}

func (u *user) queryCrossSigning(requester string) acctResult {
	stored, err := u.storedCrossSigning()
	if err != nil {
		return acctFail(err)
	}
	out := map[string]json.RawMessage{}
	for field, usage := range crossSigningUsages {
		raw := stored[usage]
		if raw == nil || (usage == "user_signing" && requester != u.userID) {
			continue
		}
		if usage == "master" {
			raw = visibleSignatures(raw, u.userID, requester)
		}
		out[field] = raw
	}
	return keysReply(out)
}

// visibleSignatures drops the signatures of users other than the key's
// owner and the requester: a user sees only the signatures it made.
func visibleSignatures(raw []byte, owner, requester string) []byte {
	var obj map[string]json.RawMessage
	if json.Unmarshal(raw, &obj) != nil {
		return raw
	}
	var sigs map[string]json.RawMessage
	if json.Unmarshal(obj["signatures"], &sigs) != nil {
		return raw
	}
	for signer := range sigs {
		if signer != owner && signer != requester {
			delete(sigs, signer)
		}
	}
	obj["signatures"], _ = json.Marshal(sigs)
	b, err := json.Marshal(obj)
	if err != nil {
		return raw
	}
	return b
}

func canonicalKey(raw []byte) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, err
	}
	delete(obj, "unsigned")
	return json.Marshal(obj)
}

// addCrossSignature merges signatures (verified by the gateway) into one
// of the user's cross-signing keys.
func (u *user) addCrossSignature(body []byte) acctResult {
	var req struct {
		Key        string                       `json:"key"`
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return acctFail(ErrBadJSON("malformed signatures"))
	}
	stored, err := u.storedCrossSigning()
	if err != nil {
		return acctFail(err)
	}
	raw := stored[req.Key]
	if raw == nil {
		return acctFail(ErrNotFound("no %s key", req.Key))
	}
	merged, err := mergeSignatures(raw, req.Signatures)
	if err != nil {
		return acctFail(err)
	}
	if err := u.write(func(ut storage.UserTx) error {
		return ut.E2EE().Put(storage.CrossSignStore, []byte(req.Key), merged)
	}); err != nil {
		return acctFail(err)
	}
	return keysReply(map[string]any{})
}

// deviceListChanged adds a change of who's device list at a new account
// sequence, which wakes the user's long-polls like any account change.
func (u *user) deviceListChanged(ctx actor.Context, body []byte) acctResult {
	var who string
	if err := json.Unmarshal(body, &who); err != nil || who == "" || len(who) > 255 {
		return acctFail(ErrBadJSON("devlist_changed takes a user ID"))
	}
	meta := u.st.Meta
	meta.Seq++
	if err := u.write(func(ut storage.UserTx) error {
		e := ut.E2EE()
		if err := e.Put(storage.DevListStore, storage.U64Key(meta.Seq), []byte(who)); err != nil {
			return err
		}
		nraw, err := e.Get(storage.CrossSignStore, devListCountKey)
		if err != nil {
			return err
		}
		var n uint64
		if nraw != nil {
			n, _ = storage.ParseU64Key(nraw)
		}
		n++
		for ; n > maxDevListEntries; n-- {
			var oldest []byte
			if err := e.Scan(storage.DevListStore, nil, nil, 1, func(k, _ []byte) bool {
				oldest = k
				return false
			}); err != nil || oldest == nil {
				return err
			}
			if err := e.Delete(storage.DevListStore, oldest); err != nil {
				return err
			}
		}
		if err := e.Put(storage.CrossSignStore, devListCountKey, storage.U64Key(n)); err != nil {
			return err
		}
		return ut.PutMeta(meta)
	}); err != nil {
		return acctFail(err)
	}
	u.st.Meta = meta
	u.wakeAll(ctx)
	return keysReply(map[string]any{})
}

// devListsBetween lists the users whose device lists changed after
// sequence from, up to and including to (0: no upper bound).
func (u *user) devListsBetween(from, to uint64) ([]string, error) {
	set := map[string]bool{}
	err := u.env.Partition.View(func(tx *bbolt.Tx) error {
		e := storage.E2EE(tx, u.env.Identity)
		var after []byte
		if from > 0 {
			after = storage.U64Key(from)
		}
		return e.Scan(storage.DevListStore, nil, after, 0, func(k, v []byte) bool {
			seq, _ := storage.ParseU64Key(k)
			if to > 0 && seq > to {
				return false
			}
			set[string(v)] = true
			return true
		})
	})
	out := make([]string, 0, len(set))
	for who := range set {
		out = append(out, who)
	}
	slices.Sort(out)
	return out, err
}

// deviceListsInPlan adds the device list changes since seq to a plan.
func (u *user) deviceListsInPlan(since uint64, reply *pb.SyncPlanReply) error {
	changed, err := u.devListsBetween(since, 0)
	if err != nil || len(changed) == 0 {
		return err
	}
	reply.DeviceLists, err = json.Marshal(map[string]any{"changed": changed, "left": []string{}})
	return err
}

// keyChanges answers /keys/changes between two sync tokens.
func (u *user) keyChanges(from, to string) acctResult {
	fb, err := u.resolve(from)
	if err != nil {
		return acctFail(err)
	}
	var fromSeq, toSeq uint64
	if fb != nil {
		fromSeq = fb.seq
	}
	if tb, err := u.resolve(to); err != nil {
		return acctFail(err)
	} else if tb != nil {
		toSeq = tb.seq
	}
	if toSeq != 0 && toSeq <= fromSeq {
		return keysReply(map[string]any{"changed": []string{}, "left": []string{}})
	}
	changed, err := u.devListsBetween(fromSeq, toSeq)
	if err != nil {
		return acctFail(err)
	}
	return keysReply(map[string]any{"changed": changed, "left": []string{}})
}

// keysNotice records how far a device's inbox got and wakes the long-polls
// of that device that have not seen it.
func (u *user) keysNotice(ctx actor.Context, m *pb.KeysNotice) {
	if m.Kind != "to_device" || m.DeviceId == "" {
		return
	}
	if u.keys.toDevice == nil {
		u.keys.toDevice = map[string]uint64{}
	}
	if m.Pos <= u.keys.toDevice[m.DeviceId] {
		return
	}
	u.keys.toDevice[m.DeviceId] = m.Pos
	s := &u.sync
	kept := s.parked[:0]
	for _, p := range s.parked {
		if p.req.DeviceId == m.DeviceId && p.req.ToDeviceSeen < m.Pos {
			u.answer(ctx, p)
			continue
		}
		kept = append(kept, p)
	}
	clear(s.parked[len(kept):])
	s.parked = kept
}

// toDeviceWaiting reports whether the device has messages newer than the
// gateway saw, so a sync must not wait.
func (u *user) toDeviceWaiting(m *pb.SyncPlan) bool {
	return u.keys.toDevice[m.DeviceId] > m.ToDeviceSeen
}
