package actors

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"maps"
	"slices"
	"strings"

	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/storage"
)

// A device actor's encryption half: its signed device keys, one-time and
// fallback keys, and its to-device inbox. The actor is the single writer of
// all of them, so a one-time key is handed out by exactly one claim.
//
// DeviceKeysOp ops (reply KeysReply.json):
//
//	upload   body {"device_keys"?,"one_time_keys"?,"fallback_keys"?}
//	         → {"one_time_key_counts":{alg:n},"changed":bool}
//	query    → {"device_keys":{…, "unsigned":{"device_display_name"}}} or {}
//	claim    algorithm → {"key_id","key"} or {}: the oldest uploaded
//	         one-time key (MSC4225), else the fallback key, marked used
//	sign     body {signer:{key_id:signature}} merged into the device keys'
//	         signatures (the gateway has verified them)
//	deliver  body {"type","sender","content"}; sender, sender_device and
//	         txn_id identify the message so a retry is stored once → {}
//	inbox    pos = acknowledged position (older messages are deleted),
//	         limit → {"events":[…],"last":p,"latest":p,
//	         "one_time_key_counts":{…},"unused_fallback_key_types":[…]}
const (
	// MaxOneTimeKeys bounds the unclaimed one-time keys of a device.
	MaxOneTimeKeys = 10_000
	// MaxInbox bounds a device's undelivered to-device messages; beyond it
	// the oldest are dropped (a device that never syncs cannot grow it).
	MaxInbox = 10_000
	// maxSeen is how many recent message IDs a device remembers to drop
	// retried sends.
	maxSeen = 4096
	// MaxKeyJSON bounds one key object (device keys, one-time key).
	MaxKeyJSON = 16 << 10
	// maxInboxBatch bounds the messages one sync carries.
	maxInboxBatch = 100
)

var (
	metaKeyE2EE   = []byte("meta")
	deviceKeysKey = []byte("keys")
)

// deviceKeysMeta is the device's key counters, persisted as one value.
type deviceKeysMeta struct {
	UploadSeq uint64                  `json:"seq"`
	Counts    map[string]int          `json:"counts,omitempty"`
	Fallback  map[string]*fallbackKey `json:"fallback,omitempty"`
	// InboxNext is the last inbox position handed out; it starts from the
	// clock so that a device ID reused after logout never repeats one a
	// client's token still acknowledges.
	InboxNext uint64 `json:"inbox_next"`
	Inbox     int    `json:"inbox"`
	SeenNext  uint64 `json:"seen_next"`
	Seen      int    `json:"seen"`
}

type fallbackKey struct {
	KeyID string          `json:"id"`
	Key   json.RawMessage `json:"key"`
	Used  bool            `json:"used,omitempty"`
}

func (m *deviceKeysMeta) clone() *deviceKeysMeta {
	n := *m
	n.Counts = maps.Clone(m.Counts)
	n.Fallback = map[string]*fallbackKey{}
	for k, v := range m.Fallback {
		c := *v
		n.Fallback[k] = &c
	}
	if n.Counts == nil {
		n.Counts = map[string]int{}
	}
	return &n
}

func (m *deviceKeysMeta) total() int {
	n := 0
	for _, c := range m.Counts {
		n += c
	}
	return n
}

// keysMeta loads the counters on first use.
func (d *device) keysMeta() (*deviceKeysMeta, error) {
	if d.keys != nil {
		return d.keys, nil
	}
	var raw []byte
	if err := d.env.Partition.View(func(tx *bbolt.Tx) error {
		var err error
		raw, err = storage.E2EE(tx, d.env.Identity).Get(storage.E2EEMetaStore, metaKeyE2EE)
		return err
	}); err != nil {
		return nil, err
	}
	m := &deviceKeysMeta{}
	if raw != nil {
		if err := json.Unmarshal(raw, m); err != nil {
			return nil, err
		}
	} else {
		m.InboxNext = uint64(max(d.env.NowMillis(), 0)) << 10
	}
	if m.Counts == nil {
		m.Counts = map[string]int{}
	}
	if m.Fallback == nil {
		m.Fallback = map[string]*fallbackKey{}
	}
	d.keys = m
	return m, nil
}

func putKeysMeta(e storage.E2EETx, m *deviceKeysMeta) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return e.Put(storage.E2EEMetaStore, metaKeyE2EE, b)
}

func (d *device) e2eeWrite(fn func(e storage.E2EETx) error) error {
	return d.write(func(tx *bbolt.Tx) error { return fn(storage.E2EE(tx, d.env.Identity)) })
}

func (d *device) e2eeView(fn func(e storage.E2EETx) error) error {
	return d.env.Partition.View(func(tx *bbolt.Tx) error { return fn(storage.E2EE(tx, d.env.Identity)) })
}

func keysReply(v any) acctResult {
	b, err := json.Marshal(v)
	if err != nil {
		return acctFail(err)
	}
	return acctOK(&pb.KeysReply{Json: b})
}

func (d *device) keysOp(m *pb.DeviceKeysOp) acctResult {
	if err := d.ready(m); err != nil {
		return acctFail(err)
	}
	meta, err := d.keysMeta()
	if err != nil {
		return acctFail(err)
	}
	switch m.Op {
	case "upload":
		return d.uploadKeys(meta, m.Body)
	case "query":
		return d.queryKeys()
	case "claim":
		return d.claimKey(meta, m.Algorithm)
	case "sign":
		return d.addSignatures(m.Body)
	case "deliver":
		return d.deliver(meta, m)
	case "inbox":
		return d.inbox(meta, m.Pos, int(m.Limit))
	default:
		return acctFail(ErrInvalidParam("unknown device keys op %q", m.Op))
	}
}

// VerifyKeySignature checks signer's signature with the ed25519 key keyID
// (public key pubB64, unpadded base64) on the key object obj.
func VerifyKeySignature(obj []byte, signer, keyID, pubB64 string) error {
	pub, err := eventgraph.DecodeBase64(pubB64)
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return ErrInvalidParam("%s is not an ed25519 public key", keyID)
	}
	if err := eventgraph.VerifyJSON(obj, signer, keyID, ed25519.PublicKey(pub)); err != nil {
		return ErrInvalidParam("signature of %s by %s does not verify", keyID, signer)
	}
	return nil
}

type deviceKeysBody struct {
	UserID     string            `json:"user_id"`
	DeviceID   string            `json:"device_id"`
	Algorithms []string          `json:"algorithms"`
	Keys       map[string]string `json:"keys"`
}

// checkDeviceKeys refuses device keys that are not this device's, not
// self-signed, or malformed.
func (d *device) checkDeviceKeys(raw json.RawMessage) error {
	if len(raw) > MaxKeyJSON {
		return ErrInvalidParam("device_keys larger than %d bytes", MaxKeyJSON)
	}
	var dk deviceKeysBody
	if err := json.Unmarshal(raw, &dk); err != nil {
		return ErrBadJSON("device_keys is malformed")
	}
	if dk.UserID != d.userID || dk.DeviceID != d.deviceID {
		return ErrInvalidParam("device_keys must be for user %s and device %s", d.userID, d.deviceID)
	}
	if len(dk.Algorithms) == 0 || len(dk.Keys) == 0 {
		return ErrInvalidParam("device_keys needs algorithms and keys")
	}
	edID := "ed25519:" + d.deviceID
	pub, ok := dk.Keys[edID]
	if !ok {
		return ErrInvalidParam("device_keys has no %s key", edID)
	}
	return VerifyKeySignature(raw, d.userID, edID, pub)
}

// keyEntry is one uploaded key: "algorithm:key_id" and its JSON.
type keyEntry struct {
	alg, id string
	key     json.RawMessage
}

func parseKeyMap(raw map[string]json.RawMessage, what string) ([]keyEntry, error) {
	out := make([]keyEntry, 0, len(raw))
	for k, v := range raw {
		alg, id, ok := strings.Cut(k, ":")
		if !ok || alg == "" || id == "" || len(k) > 255 || strings.ContainsRune(k, 0) {
			return nil, ErrInvalidParam("%s key %q is not algorithm:key_id", what, k)
		}
		if len(v) > MaxKeyJSON || len(v) == 0 || (v[0] != '"' && v[0] != '{') {
			return nil, ErrBadJSON("%s %q must be a string or an object of at most %d bytes", what, k, MaxKeyJSON)
		}
		out = append(out, keyEntry{alg: alg, id: id, key: slices.Clone(v)})
	}
	// Keys of one upload are ordered by ID, so "oldest first" is defined
	// within an upload as well.
	slices.SortFunc(out, func(a, b keyEntry) int { return strings.Compare(a.alg+":"+a.id, b.alg+":"+b.id) })
	return out, nil
}

func otkKey(alg string, seq uint64, id string) []byte {
	k := append([]byte(alg), 0)
	k = storage.AppendU64Key(k, seq)
	return append(k, id...)
}

func (d *device) uploadKeys(meta *deviceKeysMeta, body []byte) acctResult {
	if d.dev == nil {
		return acctFail(ErrNotFound("no such device"))
	}
	var req struct {
		DeviceKeys   json.RawMessage            `json:"device_keys"`
		OneTimeKeys  map[string]json.RawMessage `json:"one_time_keys"`
		FallbackKeys map[string]json.RawMessage `json:"fallback_keys"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return acctFail(ErrBadJSON("malformed keys upload"))
	}
	hasDK := len(req.DeviceKeys) > 0 && string(req.DeviceKeys) != "null"
	if hasDK {
		if err := d.checkDeviceKeys(req.DeviceKeys); err != nil {
			return acctFail(err)
		}
	}
	otks, err := parseKeyMap(req.OneTimeKeys, "one-time key")
	if err != nil {
		return acctFail(err)
	}
	fbs, err := parseKeyMap(req.FallbackKeys, "fallback key")
	if err != nil {
		return acctFail(err)
	}
	next := meta.clone()
	changed := false
	err = d.e2eeWrite(func(e storage.E2EETx) error {
		if hasDK {
			old, err := e.Get(storage.E2EEMetaStore, deviceKeysKey)
			if err != nil {
				return err
			}
			canon, err := eventgraph.CanonicalJSONLenient(req.DeviceKeys)
			if err != nil {
				return ErrBadJSON("device_keys is malformed")
			}
			if string(withoutSignatures(old)) != string(withoutSignatures(canon)) {
				changed = true
				if err := e.Put(storage.E2EEMetaStore, deviceKeysKey, canon); err != nil {
					return err
				}
			}
		}
		if len(otks) > 0 {
			next.UploadSeq++
		}
		for _, k := range otks {
			idKey := []byte(k.alg + ":" + k.id)
			prev, err := e.Get(storage.OTKIDStore, idKey)
			if err != nil {
				return err
			}
			if prev != nil {
				cur, err := e.Get(storage.OTKStore, prev)
				if err != nil {
					return err
				}
				if !jsonEqual(cur, k.key) {
					return ErrInvalidParam("one-time key %s:%s already exists with another value", k.alg, k.id)
				}
				continue
			}
			if next.total() >= MaxOneTimeKeys {
				return ErrInvalidParam("too many one-time keys (at most %d unclaimed)", MaxOneTimeKeys)
			}
			ok := otkKey(k.alg, next.UploadSeq, k.id)
			if err := e.Put(storage.OTKStore, ok, k.key); err != nil {
				return err
			}
			if err := e.Put(storage.OTKIDStore, idKey, ok); err != nil {
				return err
			}
			next.Counts[k.alg]++
		}
		for _, k := range fbs {
			cur := next.Fallback[k.alg]
			if cur != nil && cur.KeyID == k.id && jsonEqual(cur.Key, k.key) {
				continue // the same key again keeps its used flag
			}
			next.Fallback[k.alg] = &fallbackKey{KeyID: k.id, Key: k.key}
		}
		return putKeysMeta(e, next)
	})
	if err != nil {
		return acctFail(err)
	}
	d.keys = next
	return keysReply(map[string]any{"one_time_key_counts": countsOf(next), "changed": changed})
}

// withoutSignatures is a key object without its signatures and unsigned
// parts, for telling whether an upload changed the keys themselves.
func withoutSignatures(raw []byte) []byte {
	if len(raw) == 0 {
		return nil
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(raw, &obj) != nil {
		return raw
	}
	delete(obj, "signatures")
	delete(obj, "unsigned")
	b, _ := eventgraph.CanonicalMarshal(obj)
	return b
}

func jsonEqual(a, b []byte) bool {
	ca, err1 := eventgraph.CanonicalJSONLenient(a)
	cb, err2 := eventgraph.CanonicalJSONLenient(b)
	if err1 != nil || err2 != nil {
		return string(a) == string(b)
	}
	return string(ca) == string(cb)
}

func countsOf(m *deviceKeysMeta) map[string]int {
	out := map[string]int{}
	for alg, n := range m.Counts {
		if n > 0 {
			out[alg] = n
		}
	}
	return out
}

func (d *device) storedDeviceKeys() ([]byte, error) {
	var raw []byte
	err := d.e2eeView(func(e storage.E2EETx) error {
		var err error
		raw, err = e.Get(storage.E2EEMetaStore, deviceKeysKey)
		return err
	})
	return raw, err
}

func (d *device) queryKeys() acctResult {
	if d.dev == nil {
		return keysReply(map[string]any{})
	}
	raw, err := d.storedDeviceKeys()
	if err != nil {
		return acctFail(err)
	}
	if raw == nil {
		return keysReply(map[string]any{})
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return acctFail(err)
	}
	unsigned := map[string]json.RawMessage{}
	_ = json.Unmarshal(obj["unsigned"], &unsigned)
	if unsigned == nil {
		unsigned = map[string]json.RawMessage{}
	}
	if d.dev.DisplayName != "" {
		unsigned["device_display_name"], _ = json.Marshal(d.dev.DisplayName)
	} else {
		delete(unsigned, "device_display_name")
	}
	if len(unsigned) > 0 {
		obj["unsigned"], _ = json.Marshal(unsigned)
	}
	return keysReply(map[string]any{"device_keys": obj})
}

// claimKey hands out the oldest one-time key of alg, or else the fallback
// key. Being the device's single writer is what makes each key go once.
func (d *device) claimKey(meta *deviceKeysMeta, alg string) acctResult {
	if d.dev == nil || alg == "" || strings.ContainsRune(alg, 0) {
		return keysReply(map[string]any{})
	}
	// Nothing to change: answer without a write.
	if meta.Counts[alg] <= 0 {
		fb := meta.Fallback[alg]
		if fb == nil {
			return keysReply(map[string]any{})
		}
		if fb.Used {
			return keysReply(map[string]any{"key_id": alg + ":" + fb.KeyID, "key": fb.Key})
		}
	}
	next := meta.clone()
	var keyID string
	var key json.RawMessage
	err := d.e2eeWrite(func(e storage.E2EETx) error {
		if next.Counts[alg] > 0 {
			var sk []byte
			if err := e.Scan(storage.OTKStore, append([]byte(alg), 0), nil, 1, func(k, v []byte) bool {
				sk, key = k, v
				return false
			}); err != nil {
				return err
			}
			if sk != nil {
				keyID = alg + ":" + string(sk[len(alg)+1+8:])
				if err := e.Delete(storage.OTKStore, sk); err != nil {
					return err
				}
				if err := e.Delete(storage.OTKIDStore, []byte(keyID)); err != nil {
					return err
				}
				next.Counts[alg]--
				return putKeysMeta(e, next)
			}
			next.Counts[alg] = 0 // the count was off: there are none
		}
		fb := next.Fallback[alg]
		if fb == nil {
			return putKeysMeta(e, next)
		}
		keyID, key = alg+":"+fb.KeyID, fb.Key
		fb.Used = true
		return putKeysMeta(e, next)
	})
	if err != nil {
		return acctFail(err)
	}
	d.keys = next
	if keyID == "" {
		return keysReply(map[string]any{})
	}
	return keysReply(map[string]any{"key_id": keyID, "key": key})
}

// addSignatures merges verified signatures into the device keys.
func (d *device) addSignatures(body []byte) acctResult {
	var sigs map[string]map[string]string
	if err := json.Unmarshal(body, &sigs); err != nil {
		return acctFail(ErrBadJSON("signatures must be an object"))
	}
	raw, err := d.storedDeviceKeys()
	if err != nil {
		return acctFail(err)
	}
	if raw == nil {
		return acctFail(ErrNotFound("device has no keys"))
	}
	merged, err := mergeSignatures(raw, sigs)
	if err != nil {
		return acctFail(err)
	}
	if err := d.e2eeWrite(func(e storage.E2EETx) error {
		return e.Put(storage.E2EEMetaStore, deviceKeysKey, merged)
	}); err != nil {
		return acctFail(err)
	}
	return keysReply(map[string]any{})
}

// maxSignatures bounds the signatures kept on one key object.
const maxSignatures = 100

// mergeSignatures adds sigs to the signatures of the key object raw.
func mergeSignatures(raw []byte, sigs map[string]map[string]string) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, err
	}
	cur := map[string]map[string]string{}
	_ = json.Unmarshal(obj["signatures"], &cur)
	if cur == nil {
		cur = map[string]map[string]string{}
	}
	n := 0
	for _, s := range cur {
		n += len(s)
	}
	for signer, s := range sigs {
		if cur[signer] == nil {
			cur[signer] = map[string]string{}
		}
		for k, v := range s {
			if _, had := cur[signer][k]; !had {
				n++
			}
			cur[signer][k] = v
		}
	}
	if n > maxSignatures {
		return nil, ErrInvalidParam("too many signatures on one key (at most %d)", maxSignatures)
	}
	obj["signatures"], _ = json.Marshal(cur)
	return eventgraph.CanonicalMarshal(obj)
}

// deliver stores one to-device message, once per (sender, sending device,
// transaction ID), and tells the user actor so a waiting sync wakes.
func (d *device) deliver(meta *deviceKeysMeta, m *pb.DeviceKeysOp) acctResult {
	if d.dev == nil {
		return keysReply(map[string]any{}) // logged out: nobody to deliver to
	}
	if len(m.Body) > MaxToDeviceBytes {
		return acctFail(ErrInvalidParam("to-device message larger than %d bytes", MaxToDeviceBytes))
	}
	h := sha256.Sum256([]byte(m.Sender + "\x00" + m.SenderDevice + "\x00" + m.TxnId))
	msgID := h[:16]
	next := meta.clone()
	dup := false
	err := d.e2eeWrite(func(e storage.E2EETx) error {
		if m.TxnId != "" {
			seen, err := e.Get(storage.SeenStore, msgID)
			if err != nil {
				return err
			}
			if seen != nil {
				dup = true
				return nil
			}
			next.SeenNext++
			if err := e.Put(storage.SeenStore, msgID, storage.U64Key(next.SeenNext)); err != nil {
				return err
			}
			if err := e.Put(storage.SeenQueueStore, storage.U64Key(next.SeenNext), msgID); err != nil {
				return err
			}
			next.Seen++
			for next.Seen > maxSeen {
				var oldK, oldID []byte
				if err := e.Scan(storage.SeenQueueStore, nil, nil, 1, func(k, v []byte) bool {
					oldK, oldID = k, v
					return false
				}); err != nil || oldK == nil {
					return err
				}
				if err := e.Delete(storage.SeenQueueStore, oldK); err != nil {
					return err
				}
				if err := e.Delete(storage.SeenStore, oldID); err != nil {
					return err
				}
				next.Seen--
			}
		}
		next.InboxNext++
		if err := e.Put(storage.InboxStore, storage.U64Key(next.InboxNext), m.Body); err != nil {
			return err
		}
		next.Inbox++
		if next.Inbox > MaxInbox {
			var oldest []byte
			if err := e.Scan(storage.InboxStore, nil, nil, 1, func(k, _ []byte) bool {
				oldest = k
				return false
			}); err != nil {
				return err
			}
			if oldest != nil {
				if err := e.Delete(storage.InboxStore, oldest); err != nil {
					return err
				}
				next.Inbox--
			}
		}
		return putKeysMeta(e, next)
	})
	if err != nil {
		return acctFail(err)
	}
	if dup {
		return keysReply(map[string]any{})
	}
	d.keys = next
	d.env.Router.Send(&pb.KeysNotice{UserId: d.userID, Kind: "to_device", DeviceId: d.deviceID, Pos: next.InboxNext})
	return keysReply(map[string]any{"pos": next.InboxNext})
}

// MaxToDeviceBytes bounds one stored to-device message (type, sender and
// content).
const MaxToDeviceBytes = 64 << 10

// inbox deletes the messages up to ack (the client's token proves it has
// them) and answers the next ones, with the key counts /sync reports.
func (d *device) inbox(meta *deviceKeysMeta, ack uint64, limit int) acctResult {
	limit = max(0, min(limit, maxInboxBatch))
	next := meta.clone()
	var events []json.RawMessage
	last := ack
	// Most syncs acknowledge nothing new: look before taking a write.
	acked := false
	if ack > 0 && next.Inbox > 0 {
		if err := d.e2eeView(func(e storage.E2EETx) error {
			return e.Scan(storage.InboxStore, nil, nil, 1, func(k, _ []byte) bool {
				p, _ := storage.ParseU64Key(k)
				acked = p <= ack
				return false
			})
		}); err != nil {
			return acctFail(err)
		}
	}
	if acked {
		err := d.e2eeWrite(func(e storage.E2EETx) error {
			n, err := e.DeleteRange(storage.InboxStore, nil, storage.U64Key(ack))
			if err != nil {
				return err
			}
			next.Inbox -= n
			return putKeysMeta(e, next)
		})
		if err != nil {
			return acctFail(err)
		}
	}
	d.keys = next
	if limit > 0 && next.Inbox > 0 {
		if err := d.e2eeView(func(e storage.E2EETx) error {
			var from []byte
			if ack > 0 {
				from = storage.U64Key(ack)
			}
			return e.Scan(storage.InboxStore, nil, from, limit, func(k, v []byte) bool {
				events = append(events, v)
				last, _ = storage.ParseU64Key(k)
				return true
			})
		}); err != nil {
			return acctFail(err)
		}
	}
	unused := []string{}
	for alg, fb := range next.Fallback {
		if !fb.Used {
			unused = append(unused, alg)
		}
	}
	slices.Sort(unused)
	return keysReply(map[string]any{"events": orEmpty(events), "last": last, "latest": next.InboxNext,
		"one_time_key_counts": countsOf(next), "unused_fallback_key_types": unused})
}
