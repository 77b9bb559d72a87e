package actors

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// The user actor's federation half of encryption (server-server API,
// "Device Management" and "End-to-End Encryption").
//
// For a local user the actor publishes the user's device list to the other
// servers sharing a room: on each change it snapshots the devices' keys,
// compares them with what it last published, and sends one
// m.device_list_update EDU per changed or deleted device (stream_id counting
// up per user, prev_id the previous one) and an m.signing_key_update when
// the cross-signing keys changed. Comparing snapshots rather than being told
// what changed means every path that changes devices (login, logout, key
// upload, renaming, signatures) only has to say "something changed".
//
// For a remote user (identity user/@bob:elsewhere) the actor is the cache of
// that user's devices and cross-signing keys as last fetched from their
// server, and the list of local users who asked for them (the watchers, who
// must hear when the list changes). An m.device_list_update or
// m.signing_key_update for the user drops the cache: the next query fetches
// it again.
//
// UserKeysOp ops (reply KeysReply.json):
//
//	fed_publish     (local user, no reply needed) the device list or the
//	                cross-signing keys may have changed: publish the changes
//	fed_snapshot    (from the actor's own goroutine) the devices' keys
//	fed_stream      → {"stream_id":n}: the newest published stream ID
//	remote_get      requester → {"cached":bool,"gen":n,"devices":{id:keys},
//	                "master_key"?,"self_signing_key"?}; the requester
//	                becomes a watcher
//	remote_put      body {"gen","devices","master_key"?,"self_signing_key"?}
//	                → {"stored":bool}: kept unless the cache was dropped
//	                since the remote_get that answered gen
//	remote_invalidate → {"watchers":[…]}: the cache is dropped
//	remote_unwatch  body [user IDs] no longer sharing a room → {}
const (
	// fedPubStore holds a local user's published device list state;
	// remoteKeysStore a remote user's cached keys. Both live in the user's
	// encryption namespace.
	fedPubStore     = "fedpub"
	remoteKeysStore = "remotekeys"
	// maxWatchers bounds the local users tracking one remote user; the
	// ones who asked longest ago go first.
	maxWatchers = 2000
	// maxRemoteCacheBytes bounds one remote user's cached keys; a bigger
	// answer is served but not kept.
	maxRemoteCacheBytes = 4 << 20
	// publishTimeout bounds one snapshot of a user's devices, and the
	// lookup of the servers to send the changes to.
	publishTimeout = 30 * time.Second
	// publishFanout bounds the device actors asked at once.
	publishFanout = 16
	// remoteCacheTTL is how long a remote user's keys are served from the
	// cache. Updates come only while a room is shared with the user's
	// server: a list cached without one (or after the last shared room was
	// left) would otherwise never be corrected.
	remoteCacheTTL = 10 * time.Minute
)

var (
	fedPubKey      = []byte("state")
	remoteCacheKey = []byte("cache")
)

// fedPublishing is the in-memory part of a local user's publishing: one
// snapshot runs at a time; a change during it asks for one more.
type fedPublishing struct {
	running bool
	dirty   bool
}

// fedPubState is what a local user last published.
type fedPubState struct {
	StreamID uint64 `json:"stream_id"`
	// Devices maps device ID to a hash of its keys as published ("" for a
	// device without keys).
	Devices map[string]string `json:"devices"`
	// XSign is a hash of the master and self-signing keys as published.
	XSign string `json:"xsign,omitempty"`
}

// remoteKeysCache is a remote user's cached keys and watchers.
type remoteKeysCache struct {
	Cached      bool                       `json:"cached"`
	Gen         uint64                     `json:"gen"`
	Devices     map[string]json.RawMessage `json:"devices,omitempty"`
	Master      json.RawMessage            `json:"master_key,omitempty"`
	SelfSigning json.RawMessage            `json:"self_signing_key,omitempty"`
	// FetchedMs is when the cached keys were fetched.
	FetchedMs int64    `json:"fetched_ms,omitempty"`
	Watchers  []string `json:"watchers,omitempty"`
}

// fedKeysOp handles the federation ops; it is reached before the account
// check because remote users have no account here.
func (u *user) fedKeysOp(ctx actor.Context, m *pb.UserKeysOp) acctResult {
	if err := u.ready(); err != nil {
		return acctFail(err)
	}
	local := u.isLocal()
	switch m.Op {
	case "fed_publish", "fed_snapshot", "fed_stream":
		if !local {
			return acctFail(ErrInvalidParam("%s is not a local user", u.userID))
		}
	default:
		if local {
			return acctFail(ErrInvalidParam("%s is a local user", u.userID))
		}
	}
	switch m.Op {
	case "fed_publish":
		if _, err := u.account(true); err != nil {
			return acctFail(err)
		}
		if u.keys.pub.running {
			u.keys.pub.dirty = true
		} else {
			u.startSnapshot(ctx)
		}
		return keysReply(map[string]any{})
	case "fed_snapshot":
		return u.publishSnapshot(ctx, m.Body)
	case "fed_stream":
		st, err := u.loadFedPub()
		if err != nil {
			return acctFail(err)
		}
		return keysReply(map[string]any{"stream_id": st.StreamID})
	case "remote_get":
		return u.remoteGet(m.Requester)
	case "remote_put":
		return u.remotePut(m.Body)
	case "remote_invalidate":
		return u.remoteInvalidate()
	case "remote_unwatch":
		return u.remoteUnwatch(m.Body)
	default:
		return acctFail(ErrInvalidParam("unknown keys op %q", m.Op))
	}
}

func (u *user) isLocal() bool {
	if u.env.Server == nil {
		return true
	}
	_, domain, _ := strings.Cut(u.userID, ":")
	return domain == u.env.Server.ServerName
}

// ---- publishing a local user's device list ----

// deviceSnapshot is what the snapshot goroutine reports: each device's
// keys (null when it has none) and the devices it could not read.
type deviceSnapshot struct {
	Devices map[string]json.RawMessage `json:"devices"`
	Failed  []string                   `json:"failed,omitempty"`
}

// startSnapshot reads the keys of the user's devices in a goroutine (the
// device actors answer over the router) and sends them back as
// fed_snapshot.
func (u *user) startSnapshot(ctx actor.Context) {
	u.keys.pub.running = true
	devices := u.deviceList()
	router, userID := u.env.Router, u.userID
	go func() {
		c, cancel := context.WithTimeout(context.Background(), publishTimeout)
		defer cancel()
		snap := deviceSnapshot{Devices: map[string]json.RawMessage{}}
		var mu sync.Mutex
		sem := make(chan struct{}, publishFanout)
		var wg sync.WaitGroup
		for _, d := range devices {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				res, err := router.Request(c, &pb.DeviceKeysOp{UserId: userID, DeviceId: d, Op: "query"})
				var rep struct {
					DeviceKeys json.RawMessage `json:"device_keys"`
				}
				if err == nil {
					if kr, ok := res.(*pb.KeysReply); ok {
						err = json.Unmarshal(kr.Json, &rep)
					}
				}
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					snap.Failed = append(snap.Failed, d)
					return
				}
				snap.Devices[d] = rep.DeviceKeys
			}()
		}
		wg.Wait()
		body, _ := json.Marshal(snap)
		router.Send(&pb.UserKeysOp{UserId: userID, Op: "fed_snapshot", Body: body})
	}()
}

func (u *user) loadFedPub() (*fedPubState, error) {
	st := &fedPubState{}
	err := u.env.Partition.View(func(tx *bbolt.Tx) error {
		raw, err := storage.E2EE(tx, u.env.Identity).Get(fedPubStore, fedPubKey)
		if err != nil || raw == nil {
			return err
		}
		return json.Unmarshal(raw, st)
	})
	if st.Devices == nil {
		st.Devices = map[string]string{}
	}
	return st, err
}

func hashJSON(parts ...[]byte) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write(p)
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// publishSnapshot compares a snapshot with what was published, stores the
// new state and sends the changes to the servers sharing a room.
func (u *user) publishSnapshot(ctx actor.Context, body []byte) acctResult {
	u.keys.pub.running = false
	defer func() {
		if u.keys.pub.dirty && !u.keys.pub.running {
			u.keys.pub.dirty = false
			u.startSnapshot(ctx)
		}
	}()
	var snap deviceSnapshot
	if err := json.Unmarshal(body, &snap); err != nil {
		return acctFail(ErrBadJSON("malformed snapshot"))
	}
	st, err := u.loadFedPub()
	if err != nil {
		return acctFail(err)
	}
	var edus []*pb.FedEDU
	add := func(content map[string]any) {
		st.StreamID++
		content["user_id"] = u.userID
		content["stream_id"] = st.StreamID
		if st.StreamID > 1 {
			content["prev_id"] = []uint64{st.StreamID - 1}
		}
		b, err := json.Marshal(content)
		if err != nil {
			return
		}
		edus = append(edus, &pb.FedEDU{EduType: "m.device_list_update", Content: b})
	}
	ids := make([]string, 0, len(snap.Devices))
	for d := range snap.Devices {
		ids = append(ids, d)
	}
	slices.Sort(ids)
	for _, d := range ids {
		raw := snap.Devices[d]
		h := ""
		if len(raw) > 0 && string(raw) != "null" {
			h = hashJSON(raw)
		}
		if old, had := st.Devices[d]; had && old == h {
			continue
		}
		st.Devices[d] = h
		content := map[string]any{"device_id": d}
		if h != "" {
			keys, name := splitDisplayName(raw)
			content["keys"] = keys
			if name != "" {
				content["device_display_name"] = name
			}
		}
		add(content)
	}
	var gone []string
	for d := range st.Devices {
		if _, ok := snap.Devices[d]; !ok && !slices.Contains(snap.Failed, d) {
			gone = append(gone, d)
		}
	}
	slices.Sort(gone)
	for _, d := range gone {
		delete(st.Devices, d)
		add(map[string]any{"device_id": d, "deleted": true})
	}
	stored, err := u.storedCrossSigning()
	if err != nil {
		return acctFail(err)
	}
	xs := map[string]json.RawMessage{}
	if raw := stored["master"]; raw != nil {
		xs["master_key"] = visibleSignatures(raw, u.userID, "")
	}
	if raw := stored["self_signing"]; raw != nil {
		xs["self_signing_key"] = raw
	}
	if h := hashJSON(xs["master_key"], xs["self_signing_key"]); h != st.XSign {
		wasPublished := st.XSign != ""
		st.XSign = h
		if wasPublished || len(xs) > 0 {
			content := map[string]any{"user_id": u.userID}
			for k, v := range xs {
				content[k] = v
			}
			if b, err := json.Marshal(content); err == nil {
				edus = append(edus, &pb.FedEDU{EduType: "m.signing_key_update", Content: b, Key: u.userID})
			}
		}
	}
	if len(edus) == 0 {
		return keysReply(map[string]any{})
	}
	b, err := json.Marshal(st)
	if err != nil {
		return acctFail(err)
	}
	if err := u.write(func(ut storage.UserTx) error { return ut.E2EE().Put(fedPubStore, fedPubKey, b) }); err != nil {
		return acctFail(err)
	}
	rooms := u.roomsWith("join")
	if len(rooms) > 0 && u.env.Server != nil {
		router, userID, server, log := u.env.Router, u.userID, u.env.Server.ServerName, u.env.Log
		go func() {
			c, cancel := context.WithTimeout(context.Background(), publishTimeout)
			defer cancel()
			servers := RemoteRoomServers(c, router, server, userID, rooms, func(room string, err error) {
				log.Warn("user: room members lookup failed", slog.String("room", room), slog.Any("err", err))
			})
			for _, dest := range servers {
				router.Send(&pb.FedEnqueue{Destination: dest, Edus: edus})
			}
		}()
	}
	return keysReply(map[string]any{})
}

// splitDisplayName takes the display name out of a device keys object's
// unsigned part: the EDU carries it in its own field.
func splitDisplayName(raw json.RawMessage) (json.RawMessage, string) {
	var obj map[string]json.RawMessage
	if json.Unmarshal(raw, &obj) != nil {
		return raw, ""
	}
	var unsigned struct {
		Name string `json:"device_display_name"`
	}
	_ = json.Unmarshal(obj["unsigned"], &unsigned)
	delete(obj, "unsigned")
	b, err := json.Marshal(obj)
	if err != nil {
		return raw, unsigned.Name
	}
	return b, unsigned.Name
}

// SharesRoom reports whether remote is joined to one of rooms (rooms local
// is joined to), asking each room's actor on behalf of local; it stops at
// the first room found. A room that cannot answer counts as not shared.
func SharesRoom(ctx context.Context, router Router, local, remote string, rooms []string) bool {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var found bool
	var mu sync.Mutex
	sem := make(chan struct{}, roomPeersFanout)
	var wg sync.WaitGroup
	for _, room := range rooms {
		mu.Lock()
		done := found
		mu.Unlock()
		if done {
			break
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(room string) {
			defer func() { <-sem; wg.Done() }()
			joined, err := joinedMembers(ctx, router, room, local)
			if err != nil {
				return
			}
			if _, ok := joined[remote]; ok {
				mu.Lock()
				found = true
				mu.Unlock()
				cancel()
			}
		}(room)
	}
	wg.Wait()
	return found
}

// ---- a remote user's cached keys ----

func (u *user) loadRemoteCache() (*remoteKeysCache, error) {
	c := &remoteKeysCache{}
	err := u.env.Partition.View(func(tx *bbolt.Tx) error {
		raw, err := storage.E2EE(tx, u.env.Identity).Get(remoteKeysStore, remoteCacheKey)
		if err != nil || raw == nil {
			return err
		}
		return json.Unmarshal(raw, c)
	})
	return c, err
}

func (u *user) saveRemoteCache(c *remoteKeysCache) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	if len(b) > maxRemoteCacheBytes+maxWatchers*256 {
		// Too big to keep the keys: keep only the watchers.
		c.Cached, c.Devices, c.Master, c.SelfSigning = false, nil, nil, nil
		c.Gen++
		if b, err = json.Marshal(c); err != nil {
			return err
		}
	}
	return u.write(func(ut storage.UserTx) error { return ut.E2EE().Put(remoteKeysStore, remoteCacheKey, b) })
}

func (u *user) remoteGet(requester string) acctResult {
	c, err := u.loadRemoteCache()
	if err != nil {
		return acctFail(err)
	}
	if requester != "" && !slices.Contains(c.Watchers, requester) {
		c.Watchers = append(c.Watchers, requester)
		if len(c.Watchers) > maxWatchers {
			c.Watchers = slices.Delete(c.Watchers, 0, len(c.Watchers)-maxWatchers)
		}
		if err := u.saveRemoteCache(c); err != nil {
			return acctFail(err)
		}
	}
	fresh := c.Cached && u.env.NowMillis()-c.FetchedMs < remoteCacheTTL.Milliseconds()
	out := map[string]any{"cached": fresh, "gen": c.Gen}
	if fresh {
		devices := c.Devices
		if devices == nil {
			devices = map[string]json.RawMessage{}
		}
		out["devices"] = devices
		if c.Master != nil {
			out["master_key"] = c.Master
		}
		if c.SelfSigning != nil {
			out["self_signing_key"] = c.SelfSigning
		}
	}
	return keysReply(out)
}

func (u *user) remotePut(body []byte) acctResult {
	var req struct {
		Gen         uint64                     `json:"gen"`
		Devices     map[string]json.RawMessage `json:"devices"`
		Master      json.RawMessage            `json:"master_key"`
		SelfSigning json.RawMessage            `json:"self_signing_key"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return acctFail(ErrBadJSON("malformed remote keys"))
	}
	if len(body) > maxRemoteCacheBytes || len(req.Devices) > MaxDevices {
		return keysReply(map[string]any{"stored": false})
	}
	c, err := u.loadRemoteCache()
	if err != nil {
		return acctFail(err)
	}
	if c.Gen != req.Gen {
		// Dropped since this answer was asked for: it may be stale.
		return keysReply(map[string]any{"stored": false})
	}
	c.Cached, c.Devices, c.Master, c.SelfSigning = true, req.Devices, nullToNil(req.Master), nullToNil(req.SelfSigning)
	c.FetchedMs = u.env.NowMillis()
	if err := u.saveRemoteCache(c); err != nil {
		return acctFail(err)
	}
	return keysReply(map[string]any{"stored": c.Cached})
}

func nullToNil(raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	return raw
}

func (u *user) remoteInvalidate() acctResult {
	c, err := u.loadRemoteCache()
	if err != nil {
		return acctFail(err)
	}
	if !c.Cached && len(c.Watchers) == 0 {
		// Nobody here asked for this user (a query in flight would have
		// made its requester a watcher): nothing to drop, nothing to store,
		// so updates about unknown users cost no storage.
		return keysReply(map[string]any{"watchers": []string{}})
	}
	c.Cached, c.Devices, c.Master, c.SelfSigning = false, nil, nil, nil
	// A new generation even when nothing was cached: a query in flight
	// must not store what it fetched before the change.
	c.Gen++
	if err := u.saveRemoteCache(c); err != nil {
		return acctFail(err)
	}
	return keysReply(map[string]any{"watchers": orEmptyStrings(c.Watchers)})
}

func (u *user) remoteUnwatch(body []byte) acctResult {
	var gone []string
	if err := json.Unmarshal(body, &gone); err != nil {
		return acctFail(ErrBadJSON("remote_unwatch takes a list of user IDs"))
	}
	c, err := u.loadRemoteCache()
	if err != nil {
		return acctFail(err)
	}
	n := len(c.Watchers)
	c.Watchers = slices.DeleteFunc(c.Watchers, func(w string) bool { return slices.Contains(gone, w) })
	if len(c.Watchers) != n {
		if err := u.saveRemoteCache(c); err != nil {
			return acctFail(err)
		}
	}
	return keysReply(map[string]any{})
}

func orEmptyStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
