package storage

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"

	"go.etcd.io/bbolt"
)

// The account store: everything a user actor ("user/<user_id>") persists,
// under the top-level bucket of its identity, one sub-bucket per kind:
//
//	account    "account" → Account, "profile" → profile object, "presence"
//	           → Presence, "meta" → UserMeta (counters), "pushrules" → the
//	           user's push rule settings (JSON the user actor defines)
//	acctdata   room 0x00 type → AccountDataEntry ("" room: global data)
//	acctseq    sequence (u64) → room 0x00 type of the entry written at it
//	filters    filter ID (u64) → filter JSON
//	filterhash sha256(filter JSON) → filter ID (u64), for de-duplication
//	rooms      room ID → UserRoom (membership and its stream position)
//	devices    device ID → nothing (the index of the user's devices)
//	sync       record number (u64) → SyncRecord
//
// The account data sequence orders every change to account data (and
// presence) of one user, so that "what changed since sequence s" is a range
// scan of acctseq: its cost grows with the changes, not with the data.
//
// And the device store: a device actor ("device/<user_id>/<device_id>")
// keeps its Device in the sub-bucket "device" under the key "device".
const (
	accountStore    = "account"
	acctDataStore   = "acctdata"
	acctSeqStore    = "acctseq"
	filterStore     = "filters"
	filterHashStore = "filterhash"
	userRoomsStore  = "rooms"
	userDevStore    = "devices"
	syncStore       = "sync"
	deviceStore     = "device"
)

var (
	accountKey   = []byte("account")
	profileKey   = []byte("profile")
	presenceKey  = []byte("presence")
	userMetaKey  = []byte("meta")
	pushRulesKey = []byte("pushrules")
	deviceKey    = []byte("device")
)

// Account is a local user's account record.
type Account struct {
	// PasswordHash is a bcrypt hash; empty when the account has no password
	// (guests, accounts of application services).
	PasswordHash []byte `json:"password_hash,omitempty"`
	Admin        bool   `json:"admin,omitempty"`
	Guest        bool   `json:"guest,omitempty"`
	Deactivated  bool   `json:"deactivated,omitempty"`
	CreatedTS    int64  `json:"created_ts"`
	// AcceptedTerms maps policy ID → version accepted at registration.
	AcceptedTerms map[string]string `json:"accepted_terms,omitempty"`
	// Suspended (MSC3823) and Locked (MSC3939) are set by a server admin
	// and copied to every device of the user, which enforces them.
	Suspended bool `json:"suspended,omitempty"`
	Locked    bool `json:"locked,omitempty"`
}

// Presence is a user's last set presence.
type Presence struct {
	State        string  `json:"state"`
	StatusMsg    *string `json:"status_msg,omitempty"`
	LastActiveTS int64   `json:"last_active_ts"`
	// Seq is the account data sequence the presence was last changed at.
	Seq uint64 `json:"seq"`
}

// UserMeta holds a user's counters.
type UserMeta struct {
	// Seq is the last account data sequence handed out.
	Seq uint64 `json:"seq"`
	// LastFilter is the last filter ID handed out; Filters the number stored.
	LastFilter uint64 `json:"last_filter"`
	Filters    int    `json:"filters"`
	// AccountData is the number of account data entries stored.
	AccountData int `json:"account_data"`
}

// AccountDataEntry is one account data event's content and the sequence it
// was last written at.
type AccountDataEntry struct {
	Seq     uint64          `json:"seq"`
	Content json.RawMessage `json:"content"`
}

// AccountDataChange is an entry found by AccountDataSince.
type AccountDataChange struct {
	Room    string // "" for global account data
	Type    string
	Seq     uint64
	Content json.RawMessage
}

// UserRoom is a user's membership of a room and the room's stream position
// of the membership event.
type UserRoom struct {
	Membership string `json:"m"`
	Pos        uint64 `json:"p"`
}

// SyncRecord is what a sync token stands for. A record is either full
// (Base 0) or a delta over record Base: its maps then hold only what
// differs from the base, so that writing a record costs what changed.
type SyncRecord struct {
	Base  uint64 `json:"b,omitempty"`
	Depth int    `json:"d,omitempty"`
	// Positions and Ephemeral are the room positions the sync reached.
	Positions map[string]uint64 `json:"p,omitempty"`
	Ephemeral map[string]uint64 `json:"e,omitempty"`
	// Memberships are the user's memberships the sync reported.
	Memberships map[string]string `json:"m,omitempty"`
	// Seq is the account data sequence the sync reported up to.
	Seq uint64 `json:"s,omitempty"`
}

// SyncRecordMeta is the part of a record needed to walk chains and prune.
type SyncRecordMeta struct {
	Base  uint64
	Depth int
}

// UserState is what a user actor loads on activation. Account data,
// filters and sync record contents are read on demand.
type UserState struct {
	Account  *Account // nil: no such account
	Profile  map[string]json.RawMessage
	Presence *Presence
	Meta     UserMeta
	Rooms    map[string]UserRoom
	Devices  map[string]bool
	Records  map[uint64]SyncRecordMeta
}

// Device is a device actor's record.
type Device struct {
	DisplayName string `json:"display_name,omitempty"`
	// TokenHash is the SHA-256 of the device's current access token.
	TokenHash  []byte `json:"token_hash"`
	LastSeenIP string `json:"last_seen_ip,omitempty"`
	LastSeenTS int64  `json:"last_seen_ts,omitempty"`
	CreatedTS  int64  `json:"created_ts"`
	// Suspended and Locked mirror the account's flags, so that checking a
	// token is the one hop that also tells what the caller may do.
	Suspended bool `json:"suspended,omitempty"`
	Locked    bool `json:"locked,omitempty"`
}

// UserTx reads and writes one user's data inside a bbolt transaction.
// Readers treat missing buckets as empty, so reading a user that was never
// written creates nothing.
type UserTx struct {
	tx       *bbolt.Tx
	identity string
}

// User returns the account store of identity inside tx.
func User(tx *bbolt.Tx, identity string) UserTx { return UserTx{tx: tx, identity: identity} }

func (u UserTx) bucket(store string, create bool) (*bbolt.Bucket, error) {
	b, err := Namespace(u.tx, create, u.identity, store)
	if err != nil {
		return nil, fmt.Errorf("storage: user %s: %w", u.identity, err)
	}
	return b, nil
}

func (u UserTx) getJSON(store string, key []byte, v any) (bool, error) {
	b, err := u.bucket(store, false)
	if err != nil || b == nil {
		return false, err
	}
	raw := b.Get(key)
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return false, fmt.Errorf("storage: user %s: decode %s/%s: %w", u.identity, store, key, err)
	}
	return true, nil
}

func (u UserTx) putJSON(store string, key []byte, v any) error {
	b, err := u.bucket(store, true)
	if err != nil {
		return err
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("storage: user %s: encode %s/%s: %w", u.identity, store, key, err)
	}
	if err := b.Put(key, raw); err != nil {
		return fmt.Errorf("storage: user %s: put %s/%s: %w", u.identity, store, key, err)
	}
	return nil
}

func checkKey(what, k string) error {
	if k == "" || len(k) > bbolt.MaxKeySize {
		return fmt.Errorf("storage: %s of %d bytes: %w", what, len(k), ErrBadKey)
	}
	return nil
}

// Load reads everything a user actor keeps in memory.
func (u UserTx) Load() (*UserState, error) {
	st := &UserState{
		Profile: map[string]json.RawMessage{},
		Rooms:   map[string]UserRoom{},
		Devices: map[string]bool{},
		Records: map[uint64]SyncRecordMeta{},
	}
	var acct Account
	ok, err := u.getJSON(accountStore, accountKey, &acct)
	if err != nil {
		return nil, err
	}
	if !ok {
		return st, nil
	}
	st.Account = &acct
	if _, err := u.getJSON(accountStore, profileKey, &st.Profile); err != nil {
		return nil, err
	}
	if st.Profile == nil {
		st.Profile = map[string]json.RawMessage{}
	}
	var pres Presence
	if ok, err := u.getJSON(accountStore, presenceKey, &pres); err != nil {
		return nil, err
	} else if ok {
		st.Presence = &pres
	}
	if _, err := u.getJSON(accountStore, userMetaKey, &st.Meta); err != nil {
		return nil, err
	}
	if b, err := u.bucket(userRoomsStore, false); err != nil {
		return nil, err
	} else if b != nil {
		err := b.ForEach(func(k, v []byte) error {
			var r UserRoom
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("storage: user %s: decode room %s: %w", u.identity, k, err)
			}
			st.Rooms[string(k)] = r
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	if b, err := u.bucket(userDevStore, false); err != nil {
		return nil, err
	} else if b != nil {
		_ = b.ForEach(func(k, _ []byte) error {
			st.Devices[string(k)] = true
			return nil
		})
	}
	if b, err := u.bucket(syncStore, false); err != nil {
		return nil, err
	} else if b != nil {
		err := b.ForEach(func(k, v []byte) error {
			n, err := ParseU64Key(k)
			if err != nil {
				return fmt.Errorf("storage: user %s: sync record key: %w", u.identity, err)
			}
			var hdr struct {
				Base  uint64 `json:"b"`
				Depth int    `json:"d"`
			}
			if err := json.Unmarshal(v, &hdr); err != nil {
				return fmt.Errorf("storage: user %s: decode sync record %d: %w", u.identity, n, err)
			}
			st.Records[n] = SyncRecordMeta{Base: hdr.Base, Depth: hdr.Depth}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return st, nil
}

// PutAccount writes the account record.
func (u UserTx) PutAccount(a *Account) error { return u.putJSON(accountStore, accountKey, a) }

// PutProfile writes the whole profile.
func (u UserTx) PutProfile(p map[string]json.RawMessage) error {
	return u.putJSON(accountStore, profileKey, p)
}

// PutPresence writes the presence record.
func (u UserTx) PutPresence(p *Presence) error { return u.putJSON(accountStore, presenceKey, p) }

// PutMeta writes the counters.
func (u UserTx) PutMeta(m UserMeta) error { return u.putJSON(accountStore, userMetaKey, m) }

// PushRules returns the user's push rule settings as last written, or nil.
// Their shape is the user actor's; the store keeps them as bytes.
func (u UserTx) PushRules() (json.RawMessage, error) {
	b, err := u.bucket(accountStore, false)
	if err != nil || b == nil {
		return nil, err
	}
	return bytes.Clone(b.Get(pushRulesKey)), nil
}

// PutPushRules writes the user's push rule settings.
func (u UserTx) PutPushRules(raw json.RawMessage) error {
	if !json.Valid(raw) {
		return fmt.Errorf("storage: user %s: push rules are not valid JSON", u.identity)
	}
	b, err := u.bucket(accountStore, true)
	if err != nil {
		return err
	}
	if err := b.Put(pushRulesKey, raw); err != nil {
		return fmt.Errorf("storage: user %s: put push rules: %w", u.identity, err)
	}
	return nil
}

// DeletePushRules removes the user's push rule settings.
func (u UserTx) DeletePushRules() error {
	b, err := u.bucket(accountStore, false)
	if err != nil || b == nil {
		return err
	}
	if err := b.Delete(pushRulesKey); err != nil {
		return fmt.Errorf("storage: user %s: delete push rules: %w", u.identity, err)
	}
	return nil
}

func accountDataKey(room, typ string) []byte {
	k := make([]byte, 0, len(room)+1+len(typ))
	k = append(k, room...)
	k = append(k, 0)
	return append(k, typ...)
}

func splitAccountDataKey(k []byte) (room, typ string, ok bool) {
	i := bytes.IndexByte(k, 0)
	if i < 0 {
		return "", "", false
	}
	return string(k[:i]), string(k[i+1:]), true
}

// AccountData returns one account data entry (room "" for global data).
func (u UserTx) AccountData(room, typ string) (*AccountDataEntry, error) {
	var e AccountDataEntry
	ok, err := u.getJSON(acctDataStore, accountDataKey(room, typ), &e)
	if err != nil || !ok {
		return nil, err
	}
	return &e, nil
}

// PutAccountData writes an account data entry at sequence seq, which must
// be above every sequence used before, and reports whether the entry is new.
func (u UserTx) PutAccountData(room, typ string, seq uint64, content json.RawMessage) (created bool, err error) {
	if typ == "" || len(room)+1+len(typ) > bbolt.MaxKeySize {
		return false, fmt.Errorf("storage: user %s: account data key: %w", u.identity, ErrBadKey)
	}
	key := accountDataKey(room, typ)
	data, err := u.bucket(acctDataStore, true)
	if err != nil {
		return false, err
	}
	seqs, err := u.bucket(acctSeqStore, true)
	if err != nil {
		return false, err
	}
	if old := data.Get(key); old != nil {
		var e AccountDataEntry
		if err := json.Unmarshal(old, &e); err != nil {
			return false, fmt.Errorf("storage: user %s: decode account data: %w", u.identity, err)
		}
		if err := seqs.Delete(U64Key(e.Seq)); err != nil {
			return false, fmt.Errorf("storage: user %s: account data sequence: %w", u.identity, err)
		}
	} else {
		created = true
	}
	raw, err := json.Marshal(AccountDataEntry{Seq: seq, Content: content})
	if err != nil {
		return false, fmt.Errorf("storage: user %s: encode account data: %w", u.identity, err)
	}
	if err := data.Put(key, raw); err != nil {
		return false, fmt.Errorf("storage: user %s: put account data: %w", u.identity, err)
	}
	if err := seqs.Put(U64Key(seq), key); err != nil {
		return false, fmt.Errorf("storage: user %s: put account data sequence: %w", u.identity, err)
	}
	return created, nil
}

// AccountDataSince returns the entries written after sequence since, in
// sequence order, at most limit of them (0: no limit).
func (u UserTx) AccountDataSince(since uint64, limit int) ([]AccountDataChange, error) {
	seqs, err := u.bucket(acctSeqStore, false)
	if err != nil || seqs == nil {
		return nil, err
	}
	data, err := u.bucket(acctDataStore, false)
	if err != nil || data == nil {
		return nil, err
	}
	var out []AccountDataChange
	c := seqs.Cursor()
	for k, v := c.Seek(U64Key(since + 1)); k != nil; k, v = c.Next() {
		if limit > 0 && len(out) >= limit {
			break
		}
		room, typ, ok := splitAccountDataKey(v)
		if !ok {
			return nil, fmt.Errorf("storage: user %s: malformed account data index entry: %w", u.identity, ErrBadKey)
		}
		raw := data.Get(v)
		if raw == nil {
			continue
		}
		var e AccountDataEntry
		if err := json.Unmarshal(raw, &e); err != nil {
			return nil, fmt.Errorf("storage: user %s: decode account data: %w", u.identity, err)
		}
		out = append(out, AccountDataChange{Room: room, Type: typ, Seq: e.Seq, Content: e.Content})
	}
	return out, nil
}

// ClearAccountData deletes all account data and its sequence index.
func (u UserTx) ClearAccountData() error {
	for _, store := range []string{acctDataStore, acctSeqStore} {
		if err := u.deleteStore(store); err != nil {
			return err
		}
	}
	return nil
}

func (u UserTx) deleteStore(store string) error {
	top := u.tx.Bucket([]byte(u.identity))
	if top == nil || top.Bucket([]byte(store)) == nil {
		return nil
	}
	if err := top.DeleteBucket([]byte(store)); err != nil {
		return fmt.Errorf("storage: user %s: delete %s: %w", u.identity, store, err)
	}
	return nil
}

// FilterHash is the de-duplication key of a filter's JSON.
func FilterHash(filter []byte) []byte {
	h := sha256.Sum256(filter)
	return h[:]
}

// FilterByHash returns the ID of a stored filter with exactly this JSON.
func (u UserTx) FilterByHash(hash []byte) (uint64, bool, error) {
	b, err := u.bucket(filterHashStore, false)
	if err != nil || b == nil {
		return 0, false, err
	}
	v := b.Get(hash)
	if v == nil {
		return 0, false, nil
	}
	id, err := ParseU64Key(v)
	if err != nil {
		return 0, false, fmt.Errorf("storage: user %s: filter hash entry: %w", u.identity, err)
	}
	return id, true, nil
}

// Filter returns a stored filter's JSON, or nil.
func (u UserTx) Filter(id uint64) ([]byte, error) {
	b, err := u.bucket(filterStore, false)
	if err != nil || b == nil {
		return nil, err
	}
	return bytes.Clone(b.Get(U64Key(id))), nil
}

// PutFilter stores filter under id. With evictOldest, the stored filter of
// the lowest ID is deleted first (the caller bounds the number kept).
func (u UserTx) PutFilter(id uint64, filter []byte, evictOldest bool) error {
	b, err := u.bucket(filterStore, true)
	if err != nil {
		return err
	}
	hashes, err := u.bucket(filterHashStore, true)
	if err != nil {
		return err
	}
	if evictOldest {
		if k, v := b.Cursor().First(); k != nil {
			if err := hashes.Delete(FilterHash(v)); err != nil {
				return fmt.Errorf("storage: user %s: evict filter hash: %w", u.identity, err)
			}
			if err := b.Delete(bytes.Clone(k)); err != nil {
				return fmt.Errorf("storage: user %s: evict filter: %w", u.identity, err)
			}
		}
	}
	if err := b.Put(U64Key(id), filter); err != nil {
		return fmt.Errorf("storage: user %s: put filter: %w", u.identity, err)
	}
	if err := hashes.Put(FilterHash(filter), U64Key(id)); err != nil {
		return fmt.Errorf("storage: user %s: put filter hash: %w", u.identity, err)
	}
	return nil
}

// ClearFilters deletes every stored filter.
func (u UserTx) ClearFilters() error {
	for _, store := range []string{filterStore, filterHashStore} {
		if err := u.deleteStore(store); err != nil {
			return err
		}
	}
	return nil
}

// PutRoom records the user's membership of a room.
func (u UserTx) PutRoom(roomID string, r UserRoom) error {
	if err := checkKey("room ID", roomID); err != nil {
		return err
	}
	return u.putJSON(userRoomsStore, []byte(roomID), r)
}

// DeleteRoom forgets a room.
func (u UserTx) DeleteRoom(roomID string) error {
	b, err := u.bucket(userRoomsStore, false)
	if err != nil || b == nil || roomID == "" || len(roomID) > bbolt.MaxKeySize {
		return err
	}
	if err := b.Delete([]byte(roomID)); err != nil {
		return fmt.Errorf("storage: user %s: delete room: %w", u.identity, err)
	}
	return nil
}

// PutDevice adds a device ID to the user's index.
func (u UserTx) PutDevice(deviceID string) error {
	if err := checkKey("device ID", deviceID); err != nil {
		return err
	}
	b, err := u.bucket(userDevStore, true)
	if err != nil {
		return err
	}
	if err := b.Put([]byte(deviceID), []byte{}); err != nil {
		return fmt.Errorf("storage: user %s: put device: %w", u.identity, err)
	}
	return nil
}

// DeleteDevice removes a device ID from the user's index.
func (u UserTx) DeleteDevice(deviceID string) error {
	b, err := u.bucket(userDevStore, false)
	if err != nil || b == nil || deviceID == "" || len(deviceID) > bbolt.MaxKeySize {
		return err
	}
	if err := b.Delete([]byte(deviceID)); err != nil {
		return fmt.Errorf("storage: user %s: delete device: %w", u.identity, err)
	}
	return nil
}

// ClearDevices empties the user's device index.
func (u UserTx) ClearDevices() error { return u.deleteStore(userDevStore) }

// SyncRecord reads one sync record, or nil.
func (u UserTx) SyncRecord(n uint64) (*SyncRecord, error) {
	var r SyncRecord
	ok, err := u.getJSON(syncStore, U64Key(n), &r)
	if err != nil || !ok {
		return nil, err
	}
	return &r, nil
}

// PutSyncRecord writes record n and deletes the records in prune.
func (u UserTx) PutSyncRecord(n uint64, r *SyncRecord, prune []uint64) error {
	if err := u.putJSON(syncStore, U64Key(n), r); err != nil {
		return err
	}
	b, err := u.bucket(syncStore, true)
	if err != nil {
		return err
	}
	for _, p := range prune {
		if p == n {
			return fmt.Errorf("storage: user %s: sync record %d written and pruned: %w", u.identity, n, ErrBadKey)
		}
		if err := b.Delete(U64Key(p)); err != nil {
			return fmt.Errorf("storage: user %s: prune sync record %d: %w", u.identity, p, err)
		}
	}
	return nil
}

// LoadDevice reads a device actor's record, or nil when it has none.
func LoadDevice(tx *bbolt.Tx, identity string) (*Device, error) {
	b, err := Namespace(tx, false, identity, deviceStore)
	if err != nil {
		return nil, fmt.Errorf("storage: device %s: %w", identity, err)
	}
	if b == nil {
		return nil, nil
	}
	raw := b.Get(deviceKey)
	if raw == nil {
		return nil, nil
	}
	var d Device
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, fmt.Errorf("storage: device %s: decode: %w", identity, err)
	}
	return &d, nil
}

// PutDevice writes a device actor's record.
func PutDevice(tx *bbolt.Tx, identity string, d *Device) error {
	if d == nil {
		return errors.New("storage: put nil device")
	}
	b, err := Namespace(tx, true, identity, deviceStore)
	if err != nil {
		return fmt.Errorf("storage: device %s: %w", identity, err)
	}
	raw, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("storage: device %s: encode: %w", identity, err)
	}
	if err := b.Put(deviceKey, raw); err != nil {
		return fmt.Errorf("storage: device %s: put: %w", identity, err)
	}
	return nil
}
