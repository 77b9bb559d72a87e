package actors

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// Server-side key backup (spec: "Server-side key backups"), kept by the user
// actor. Versions are decimal numbers; the current one is the newest not
// deleted. UserKeysOp ops (reply KeysReply.json):
//
//	backup_create       body {"algorithm","auth_data"} → {"version"}
//	backup_get          version ("" = current) → {"algorithm","auth_data","count","etag","version"}
//	backup_update       version, body {"algorithm","auth_data","version"?} → {}
//	backup_delete       version → {} (its keys go with it)
//	backup_put          version, body {"rooms":{room:{"sessions":{id:data}}}} → {"etag","count"}
//	backup_keys_get     version, room_id?, session_id? → the keys, the room's or the session's
//	backup_keys_delete  version, room_id?, session_id? → {"etag","count"}
const (
	// MaxBackupKeys bounds the sessions of one backup version.
	MaxBackupKeys = 100_000
	// maxBackupVersions bounds the versions kept; the oldest goes first.
	maxBackupVersions = 16
	// maxBackupAuthData bounds a version's auth_data.
	maxBackupAuthData = 16 << 10
)

var backupMetaKey = []byte("meta")

type backupVersion struct {
	Algorithm string          `json:"algorithm"`
	AuthData  json.RawMessage `json:"auth_data"`
	Count     int             `json:"count"`
	Etag      uint64          `json:"etag"`
}

type backupMeta struct {
	Last uint64 `json:"last"`
}

// keyBackupData is the part of KeyBackupData the replace rule compares.
type keyBackupData struct {
	FirstMessageIndex *int64          `json:"first_message_index"`
	ForwardedCount    *int64          `json:"forwarded_count"`
	IsVerified        *bool           `json:"is_verified"`
	SessionData       json.RawMessage `json:"session_data"`
}

func roomKeyPrefix(v uint64, room string) []byte {
	k := storage.U64Key(v)
	if room != "" {
		k = append(append(k, room...), 0)
	}
	return k
}

func (u *user) keyBackup(m *pb.UserKeysOp) acctResult {
	var out any
	err := u.write(func(ut storage.UserTx) error {
		e := ut.E2EE()
		var err error
		switch m.Op {
		case "backup_create":
			out, err = backupCreate(e, m.Body)
		case "backup_get":
			out, err = backupGet(e, m.Version)
		case "backup_update":
			out, err = backupUpdate(e, m.Version, m.Body)
		case "backup_delete":
			out, err = backupDelete(e, m.Version)
		case "backup_put":
			out, err = backupPut(e, m.Version, m.Body)
		case "backup_keys_get":
			out, err = backupKeysGet(e, m.Version, m.RoomId, m.SessionId)
		case "backup_keys_delete":
			out, err = backupKeysDelete(e, m.Version, m.RoomId, m.SessionId)
		default:
			err = ErrInvalidParam("unknown key backup op %q", m.Op)
		}
		return err
	})
	if err != nil {
		return acctFail(err)
	}
	return keysReply(out)
}

func loadBackupMeta(e storage.E2EETx) (backupMeta, error) {
	var bm backupMeta
	raw, err := e.Get(storage.BackupStore, backupMetaKey)
	if err != nil || raw == nil {
		return bm, err
	}
	return bm, json.Unmarshal(raw, &bm)
}

func putJSONValue(e storage.E2EETx, store string, key []byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return e.Put(store, key, b)
}

func loadVersion(e storage.E2EETx, v uint64) (*backupVersion, error) {
	raw, err := e.Get(storage.BackupStore, storage.U64Key(v))
	if err != nil || raw == nil {
		return nil, err
	}
	var bv backupVersion
	return &bv, json.Unmarshal(raw, &bv)
}

// currentVersion is the newest version kept, 0 when there is none.
func currentVersion(e storage.E2EETx) (uint64, error) {
	var cur uint64
	err := e.Scan(storage.BackupStore, nil, nil, 0, func(k, _ []byte) bool {
		if len(k) == 8 {
			cur, _ = storage.ParseU64Key(k)
		}
		return true
	})
	return cur, err
}

func errNoBackup() error { return ErrNotFound("no such backup version") }

// parseVersion reads a version parameter; one that is not a number names
// no backup.
func parseVersion(s string) (uint64, error) {
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || v == 0 {
		return 0, errNoBackup()
	}
	return v, nil
}

func checkBackupBody(body []byte) (*backupVersion, error) {
	var req struct {
		Algorithm *string         `json:"algorithm"`
		AuthData  json.RawMessage `json:"auth_data"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, ErrBadJSON("malformed backup version")
	}
	if req.Algorithm == nil || *req.Algorithm == "" {
		return nil, Errorf(http.StatusBadRequest, "M_MISSING_PARAM", "algorithm is required")
	}
	if len(req.AuthData) == 0 || req.AuthData[0] != '{' {
		return nil, Errorf(http.StatusBadRequest, "M_MISSING_PARAM", "auth_data must be an object")
	}
	if len(req.AuthData) > maxBackupAuthData {
		return nil, ErrInvalidParam("auth_data larger than %d bytes", maxBackupAuthData)
	}
	return &backupVersion{Algorithm: *req.Algorithm, AuthData: req.AuthData}, nil
}

func backupCreate(e storage.E2EETx, body []byte) (any, error) {
	bv, err := checkBackupBody(body)
	if err != nil {
		return nil, err
	}
	bm, err := loadBackupMeta(e)
	if err != nil {
		return nil, err
	}
	bm.Last++
	if err := putJSONValue(e, storage.BackupStore, storage.U64Key(bm.Last), bv); err != nil {
		return nil, err
	}
	if err := putJSONValue(e, storage.BackupStore, backupMetaKey, bm); err != nil {
		return nil, err
	}
	// Beyond the bound the oldest version and its keys go.
	var versions []uint64
	if err := e.Scan(storage.BackupStore, nil, nil, 0, func(k, _ []byte) bool {
		if len(k) == 8 {
			v, _ := storage.ParseU64Key(k)
			versions = append(versions, v)
		}
		return true
	}); err != nil {
		return nil, err
	}
	for len(versions) > maxBackupVersions {
		if _, err := backupDelete(e, strconv.FormatUint(versions[0], 10)); err != nil {
			return nil, err
		}
		versions = versions[1:]
	}
	return map[string]string{"version": strconv.FormatUint(bm.Last, 10)}, nil
}

func backupGet(e storage.E2EETx, version string) (any, error) {
	var v uint64
	var err error
	if version == "" {
		if v, err = currentVersion(e); err != nil {
			return nil, err
		}
		if v == 0 {
			return nil, ErrNotFound("no current backup version")
		}
	} else if v, err = parseVersion(version); err != nil {
		return nil, err
	}
	bv, err := loadVersion(e, v)
	if err != nil {
		return nil, err
	}
	if bv == nil {
		return nil, errNoBackup()
	}
	return map[string]any{"algorithm": bv.Algorithm, "auth_data": bv.AuthData, "count": bv.Count,
		"etag": strconv.FormatUint(bv.Etag, 10), "version": strconv.FormatUint(v, 10)}, nil
}

func backupUpdate(e storage.E2EETx, version string, body []byte) (any, error) {
	v, err := parseVersion(version)
	if err != nil {
		return nil, err
	}
	nb, err := checkBackupBody(body)
	if err != nil {
		return nil, err
	}
	var req struct {
		Version *string `json:"version"`
	}
	_ = json.Unmarshal(body, &req)
	if req.Version != nil && *req.Version != version {
		return nil, ErrInvalidParam("version in the body does not match the path")
	}
	bv, err := loadVersion(e, v)
	if err != nil {
		return nil, err
	}
	if bv == nil {
		return nil, errNoBackup()
	}
	if nb.Algorithm != bv.Algorithm {
		return nil, ErrInvalidParam("algorithm cannot be changed")
	}
	bv.AuthData = nb.AuthData
	return map[string]any{}, putJSONValue(e, storage.BackupStore, storage.U64Key(v), bv)
}

func backupDelete(e storage.E2EETx, version string) (any, error) {
	v, err := parseVersion(version)
	if err != nil {
		return nil, err
	}
	bv, err := loadVersion(e, v)
	if err != nil {
		return nil, err
	}
	if bv == nil {
		return nil, errNoBackup()
	}
	if _, err := e.DeleteRange(storage.RoomKeysStore, storage.U64Key(v), nil); err != nil {
		return nil, err
	}
	return map[string]any{}, e.Delete(storage.BackupStore, storage.U64Key(v))
}

// writableVersion checks that version is the current backup.
func writableVersion(e storage.E2EETx, version string) (uint64, *backupVersion, error) {
	cur, err := currentVersion(e)
	if err != nil {
		return 0, nil, err
	}
	if cur == 0 {
		return 0, nil, errNoBackup()
	}
	if version != strconv.FormatUint(cur, 10) {
		return 0, nil, &MatrixError{Status: http.StatusForbidden, ErrCode: "M_WRONG_ROOM_KEYS_VERSION",
			Message: "wrong backup version", Extra: map[string]any{"current_version": strconv.FormatUint(cur, 10)}}
	}
	bv, err := loadVersion(e, cur)
	if err != nil {
		return 0, nil, err
	}
	return cur, bv, nil
}

// better reports whether candidate should replace existing: verified beats
// unverified, then a lower first message index, then fewer forwards.
func better(candidate, existing keyBackupData) bool {
	cv, ev := candidate.IsVerified != nil && *candidate.IsVerified, existing.IsVerified != nil && *existing.IsVerified
	if cv != ev {
		return cv
	}
	ci, ei := derefI(candidate.FirstMessageIndex), derefI(existing.FirstMessageIndex)
	if ci != ei {
		return ci < ei
	}
	return derefI(candidate.ForwardedCount) < derefI(existing.ForwardedCount)
}

func derefI(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}

func backupPut(e storage.E2EETx, version string, body []byte) (any, error) {
	v, bv, err := writableVersion(e, version)
	if err != nil {
		return nil, err
	}
	var req struct {
		Rooms map[string]struct {
			Sessions map[string]json.RawMessage `json:"sessions"`
		} `json:"rooms"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, ErrBadJSON("malformed room keys")
	}
	changed := false
	for room, rk := range req.Rooms {
		if room == "" || len(room) > 255 || strings.ContainsRune(room, 0) {
			return nil, ErrInvalidParam("invalid room ID")
		}
		for sid, raw := range rk.Sessions {
			if sid == "" || len(sid) > 255 || strings.ContainsRune(sid, 0) {
				return nil, ErrInvalidParam("invalid session ID")
			}
			var cand keyBackupData
			if err := json.Unmarshal(raw, &cand); err != nil || cand.FirstMessageIndex == nil ||
				cand.ForwardedCount == nil || cand.IsVerified == nil || len(cand.SessionData) == 0 {
				return nil, ErrBadJSON("key data needs first_message_index, forwarded_count, is_verified and session_data")
			}
			key := append(roomKeyPrefix(v, room), sid...)
			old, err := e.Get(storage.RoomKeysStore, key)
			if err != nil {
				return nil, err
			}
			if old != nil {
				var ex keyBackupData
				if json.Unmarshal(old, &ex) == nil && !better(cand, ex) {
					continue
				}
			} else {
				if bv.Count >= MaxBackupKeys {
					return nil, Errorf(http.StatusForbidden, "M_LIMIT_EXCEEDED", "backup holds %d keys, the most allowed", MaxBackupKeys)
				}
				bv.Count++
			}
			if err := e.Put(storage.RoomKeysStore, key, raw); err != nil {
				return nil, err
			}
			changed = true
		}
	}
	if changed {
		bv.Etag++
		if err := putJSONValue(e, storage.BackupStore, storage.U64Key(v), bv); err != nil {
			return nil, err
		}
	}
	return map[string]any{"etag": strconv.FormatUint(bv.Etag, 10), "count": bv.Count}, nil
}

func backupKeysGet(e storage.E2EETx, version, room, session string) (any, error) {
	v, err := parseVersion(version)
	if err != nil {
		return nil, err
	}
	bv, err := loadVersion(e, v)
	if err != nil {
		return nil, err
	}
	if bv == nil {
		return nil, errNoBackup()
	}
	if room != "" && session != "" {
		raw, err := e.Get(storage.RoomKeysStore, append(roomKeyPrefix(v, room), session...))
		if err != nil {
			return nil, err
		}
		if raw == nil {
			return nil, ErrNotFound("no key for this session")
		}
		return json.RawMessage(raw), nil
	}
	rooms := map[string]map[string]json.RawMessage{}
	prefix := roomKeyPrefix(v, room)
	if err := e.Scan(storage.RoomKeysStore, prefix, nil, 0, func(k, val []byte) bool {
		rest := k[8:]
		r, sid, ok := strings.Cut(string(rest), "\x00")
		if ok {
			if rooms[r] == nil {
				rooms[r] = map[string]json.RawMessage{}
			}
			rooms[r][sid] = val
		}
		return true
	}); err != nil {
		return nil, err
	}
	if room != "" {
		s := rooms[room]
		if s == nil {
			s = map[string]json.RawMessage{}
		}
		return map[string]any{"sessions": s}, nil
	}
	out := map[string]any{}
	for r, s := range rooms {
		out[r] = map[string]any{"sessions": s}
	}
	return map[string]any{"rooms": out}, nil
}

func backupKeysDelete(e storage.E2EETx, version, room, session string) (any, error) {
	v, bv, err := writableVersion(e, version)
	if err != nil {
		return nil, err
	}
	var n int
	if room != "" && session != "" {
		key := append(roomKeyPrefix(v, room), session...)
		old, err := e.Get(storage.RoomKeysStore, key)
		if err != nil {
			return nil, err
		}
		if old != nil {
			if err := e.Delete(storage.RoomKeysStore, key); err != nil {
				return nil, err
			}
			n = 1
		}
	} else if n, err = e.DeleteRange(storage.RoomKeysStore, roomKeyPrefix(v, room), nil); err != nil {
		return nil, err
	}
	if n > 0 {
		bv.Count = max(0, bv.Count-n)
		bv.Etag++
		if err := putJSONValue(e, storage.BackupStore, storage.U64Key(v), bv); err != nil {
			return nil, err
		}
	}
	return map[string]any{"etag": strconv.FormatUint(bv.Etag, 10), "count": bv.Count}, nil
}
