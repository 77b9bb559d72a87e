package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/gateway/fedclient"
)

// End-to-end encryption over federation (server-server API: "Device
// Management", "End-to-End Encryption", "Send-to-device messaging").
//
// Inbound, other servers read the devices and keys of local users and claim
// their one-time keys. Outbound, local clients' /keys/query and /keys/claim
// naming remote users are grouped per server and asked in parallel; remote
// device lists are cached in the remote user's actor (user/@bob:remote, see
// actors/user_keys_remote.go) until an m.device_list_update or
// m.signing_key_update drops them. Local device list changes are published
// by the local user's actor; to-device messages to remote users leave as
// m.direct_to_device EDUs through the outbound queues.
const (
	// maxRemoteKeysBytes bounds a remote server's answer to a keys query
	// or claim.
	maxRemoteKeysBytes = 8 << 20
	// defaultKeysTimeout and maxKeysTimeout bound the wait for remote
	// servers (the request's `timeout`; the spec recommends 10 seconds).
	defaultKeysTimeout = 10 * time.Second
	maxKeysTimeout     = 60 * time.Second
	// maxToDeviceEDUBytes is the size past which the to-device messages
	// for one server are split into several EDUs.
	maxToDeviceEDUBytes = 64 << 10
	// maxMessageIDLen is the spec's bound on message_id, in code points.
	maxMessageIDLen = 32
	// watcherCheckTimeout bounds the room lookups that tell which local
	// users still share a room with a remote user whose devices changed.
	watcherCheckTimeout = 10 * time.Second
)

func (s *Server) registerFederationE2EE() {
	const v1 = "/_matrix/federation/v1"
	s.handle("GET "+v1+"/user/devices/{userId}", s.fedAuthed(s.handleFedUserDevices))
	s.handle("POST "+v1+"/user/keys/query", s.fedAuthed(s.handleFedKeysQuery))
	s.handle("POST "+v1+"/user/keys/claim", s.fedAuthed(s.handleFedKeysClaim))
}

// ---- inbound ----

func (s *Server) handleFedUserDevices(w http.ResponseWriter, r *http.Request, origin string, _ []byte) {
	userID := r.PathValue("userId")
	if eventgraph.ValidateUserID(userID) != nil {
		writeError(w, r, actors.ErrInvalidParam("invalid user ID"))
		return
	}
	if !s.isLocalUser(userID) {
		writeError(w, r, actors.ErrForbidden("user %s is not local to this server", userID))
		return
	}
	ctx := r.Context()
	rep, err := s.accountQuery(ctx, &pb.AccountQuery{UserId: userID, Kind: "exists"})
	if err != nil {
		writeError(w, r, err)
		return
	}
	if len(rep.Json) == 0 || string(rep.Json) == "null" {
		writeError(w, r, actors.ErrNotFound("no such user"))
		return
	}
	var stream struct {
		StreamID uint64 `json:"stream_id"`
	}
	if err := s.userKeys(ctx, &pb.UserKeysOp{UserId: userID, Op: "fed_stream"}, &stream); err != nil {
		writeError(w, r, err)
		return
	}
	res := newKeysQueryResult()
	s.queryUserKeys(ctx, "", userID, nil, res)
	type device struct {
		DeviceID    string          `json:"device_id"`
		Keys        json.RawMessage `json:"keys"`
		DisplayName string          `json:"device_display_name,omitempty"`
	}
	devices := []device{}
	for id, raw := range res.deviceKeys[userID] {
		keys, name := withoutUnsigned(raw)
		devices = append(devices, device{DeviceID: id, Keys: keys, DisplayName: name})
	}
	slices.SortFunc(devices, func(a, b device) int { return strings.Compare(a.DeviceID, b.DeviceID) })
	out := map[string]any{"user_id": userID, "stream_id": stream.StreamID, "devices": devices}
	if k, ok := res.master[userID]; ok {
		out["master_key"] = k
	}
	if k, ok := res.selfSigning[userID]; ok {
		out["self_signing_key"] = k
	}
	writeJSON(w, http.StatusOK, out)
}

// withoutUnsigned splits device keys as stored (with the display name in
// unsigned) into the signed keys and the display name.
func withoutUnsigned(raw json.RawMessage) (json.RawMessage, string) {
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

func newKeysQueryResult() *keysQueryResult {
	return &keysQueryResult{deviceKeys: map[string]map[string]json.RawMessage{}, master: map[string]json.RawMessage{},
		selfSigning: map[string]json.RawMessage{}, userSigning: map[string]json.RawMessage{}, failures: map[string]any{}}
}

func (s *Server) handleFedKeysQuery(w http.ResponseWriter, r *http.Request, origin string, body []byte) {
	var req struct {
		DeviceKeys map[string][]string `json:"device_keys"`
	}
	if err := unmarshalBody(body, &req); err != nil {
		writeError(w, r, err)
		return
	}
	if req.DeviceKeys == nil {
		writeError(w, r, errMissingParam("device_keys is required"))
		return
	}
	n := 0
	var users []string
	for u, devs := range req.DeviceKeys {
		n += max(1, len(devs))
		// Users of other servers are not this server's to answer for.
		if s.isLocalUser(u) && eventgraph.ValidateUserID(u) == nil {
			users = append(users, u)
		}
	}
	if n > maxKeyTargets {
		writeError(w, r, actors.ErrInvalidParam("too many users or devices (at most %d)", maxKeyTargets))
		return
	}
	ctx := r.Context()
	res := newKeysQueryResult()
	// Another server sees only the signatures made by the key's owner.
	fanOut(users, func(u string) { s.queryUserKeys(ctx, "", u, req.DeviceKeys[u], res) })
	writeJSON(w, http.StatusOK, map[string]any{"device_keys": res.deviceKeys, "master_keys": res.master,
		"self_signing_keys": res.selfSigning})
}

func (s *Server) handleFedKeysClaim(w http.ResponseWriter, r *http.Request, origin string, body []byte) {
	var req struct {
		OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
	}
	if err := unmarshalBody(body, &req); err != nil {
		writeError(w, r, err)
		return
	}
	if req.OneTimeKeys == nil {
		writeError(w, r, errMissingParam("one_time_keys is required"))
		return
	}
	var targets []claimTarget
	n := 0
	for u, devs := range req.OneTimeKeys {
		n += len(devs)
		if !s.isLocalUser(u) {
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
	writeJSON(w, http.StatusOK, map[string]any{"one_time_keys": s.claimLocalKeys(r.Context(), targets)})
}

// ---- outbound: keys of remote users for local clients ----

// keysTimeout reads a client's `timeout` (milliseconds) for remote servers.
func keysTimeout(ms *int64) time.Duration {
	if ms == nil || *ms <= 0 {
		return defaultKeysTimeout
	}
	return min(time.Duration(*ms)*time.Millisecond, maxKeysTimeout)
}

// groupByServer groups user IDs by their server; invalid IDs are left out.
func groupByServer[V any](m map[string]V) map[string]map[string]V {
	out := map[string]map[string]V{}
	for u, v := range m {
		if eventgraph.ValidateUserID(u) != nil {
			continue
		}
		server, err := eventgraph.IDDomain(u)
		if err != nil {
			continue
		}
		if out[server] == nil {
			out[server] = map[string]V{}
		}
		out[server][u] = v
	}
	return out
}

func remoteFailure(err error) map[string]any {
	var he *fedclient.HTTPError
	if errors.As(err, &he) {
		return map[string]any{"status": he.Status, "errcode": "M_UNKNOWN", "error": "the server answered " + fmt.Sprint(he.Status)}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return map[string]any{"status": http.StatusGatewayTimeout, "errcode": "M_UNKNOWN", "error": "the server did not answer in time"}
	}
	return map[string]any{"status": http.StatusServiceUnavailable, "errcode": "M_UNAVAILABLE", "error": "the server could not be reached"}
}

// remoteCached is a remote user's keys as its actor keeps them.
type remoteCached struct {
	Cached      bool                       `json:"cached"`
	Gen         uint64                     `json:"gen"`
	Devices     map[string]json.RawMessage `json:"devices"`
	Master      json.RawMessage            `json:"master_key"`
	SelfSigning json.RawMessage            `json:"self_signing_key"`
}

// queryRemoteKeys answers the remote users of a client's /keys/query: from
// the cache where it holds them, else from their servers, one request per
// server, all in parallel. requester becomes a watcher of each user.
func (s *Server) queryRemoteKeys(ctx context.Context, requester string, remote map[string][]string, timeout time.Duration, res *keysQueryResult) {
	byServer := groupByServer(remote)
	servers := make([]string, 0, len(byServer))
	for srv := range byServer {
		servers = append(servers, srv)
	}
	fanOut(servers, func(server string) {
		users := byServer[server]
		gens := map[string]uint64{}
		need := map[string][]string{}
		ids := make([]string, 0, len(users))
		for u := range users {
			ids = append(ids, u)
		}
		var mu sync.Mutex
		fanOut(ids, func(u string) {
			var c remoteCached
			err := s.userKeys(ctx, &pb.UserKeysOp{UserId: u, Op: "remote_get", Requester: requester}, &c)
			if err == nil && c.Cached {
				res.add(u, users[u], c.Devices, c.Master, c.SelfSigning)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			need[u] = []string{} // all devices, so the answer can be cached
			if err != nil {
				s.log.Warn("gateway: remote keys cache", slog.String("user", u), slog.Any("err", err))
				return
			}
			gens[u] = c.Gen
		})
		if len(need) == 0 {
			return
		}
		c, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		body, _ := json.Marshal(map[string]any{"device_keys": need})
		raw, err := s.fed.client.Do(c, fedclient.Request{Method: http.MethodPost, Destination: server, Signed: true,
			URI: "/_matrix/federation/v1/user/keys/query", Content: body, Limit: maxRemoteKeysBytes})
		var resp struct {
			DeviceKeys      map[string]map[string]json.RawMessage `json:"device_keys"`
			MasterKeys      map[string]json.RawMessage            `json:"master_keys"`
			SelfSigningKeys map[string]json.RawMessage            `json:"self_signing_keys"`
		}
		if err == nil {
			if err = json.Unmarshal(raw, &resp); err != nil {
				err = fmt.Errorf("malformed answer: %w", err)
			}
		}
		if err != nil {
			s.log.Info("gateway: remote keys query", slog.String("server", server), slog.Any("err", err))
			res.mu.Lock()
			res.failures[server] = remoteFailure(err)
			res.mu.Unlock()
			return
		}
		for u := range need {
			devices := map[string]json.RawMessage{}
			for d, keys := range resp.DeviceKeys[u] {
				if validRemoteDeviceKeys(keys, u, d) {
					devices[d] = keys
				}
			}
			master := validRemoteCrossKey(resp.MasterKeys[u], u, "master")
			ssk := validRemoteCrossKey(resp.SelfSigningKeys[u], u, "self_signing")
			res.add(u, users[u], devices, master, ssk)
			if gen, ok := gens[u]; ok {
				put, _ := json.Marshal(map[string]any{"gen": gen, "devices": devices, "master_key": master, "self_signing_key": ssk})
				if err := s.userKeys(ctx, &pb.UserKeysOp{UserId: u, Op: "remote_put", Body: put}, nil); err != nil {
					s.log.Warn("gateway: caching remote keys", slog.String("user", u), slog.Any("err", err))
				}
			}
		}
	})
}

// add puts one user's keys into the result, only the devices asked for
// (all when want is empty).
func (res *keysQueryResult) add(userID string, want []string, devices map[string]json.RawMessage, master, ssk json.RawMessage) {
	found := map[string]json.RawMessage{}
	for d, k := range devices {
		if len(want) == 0 || slices.Contains(want, d) {
			found[d] = k
		}
	}
	res.mu.Lock()
	defer res.mu.Unlock()
	res.deviceKeys[userID] = found
	if len(master) > 0 {
		res.master[userID] = master
	}
	if len(ssk) > 0 {
		res.selfSigning[userID] = ssk
	}
}

// validRemoteDeviceKeys checks that device keys from a remote server are a
// bounded object for the user and device they are listed under (a server
// must not answer for another's users; the client checks signatures).
func validRemoteDeviceKeys(raw json.RawMessage, userID, deviceID string) bool {
	if len(raw) == 0 || len(raw) > actors.MaxKeyJSON || raw[0] != '{' {
		return false
	}
	var dk struct {
		UserID   string `json:"user_id"`
		DeviceID string `json:"device_id"`
	}
	return json.Unmarshal(raw, &dk) == nil && dk.UserID == userID && dk.DeviceID == deviceID
}

// validRemoteCrossKey answers a remote cross-signing key if it is for
// userID with the usage expected, else nil.
func validRemoteCrossKey(raw json.RawMessage, userID, usage string) json.RawMessage {
	if len(raw) == 0 || len(raw) > actors.MaxKeyJSON || raw[0] != '{' {
		return nil
	}
	var k struct {
		UserID string   `json:"user_id"`
		Usage  []string `json:"usage"`
	}
	if json.Unmarshal(raw, &k) != nil || k.UserID != userID || !slices.Contains(k.Usage, usage) {
		return nil
	}
	return raw
}

// claimRemoteKeys claims one-time keys of remote users from their servers,
// one request per server, in parallel; keys land in out (under mu),
// unreachable servers in failures.
func (s *Server) claimRemoteKeys(ctx context.Context, remote map[string]map[string]string, timeout time.Duration,
	out map[string]map[string]map[string]json.RawMessage, failures map[string]any, mu *sync.Mutex) {
	byServer := groupByServer(remote)
	servers := make([]string, 0, len(byServer))
	for srv := range byServer {
		servers = append(servers, srv)
	}
	fanOut(servers, func(server string) {
		asked := byServer[server]
		c, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		body, _ := json.Marshal(map[string]any{"one_time_keys": asked})
		raw, err := s.fed.client.Do(c, fedclient.Request{Method: http.MethodPost, Destination: server, Signed: true,
			URI: "/_matrix/federation/v1/user/keys/claim", Content: body, Limit: maxRemoteKeysBytes})
		var resp struct {
			OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
		}
		if err == nil {
			if err = json.Unmarshal(raw, &resp); err != nil {
				err = fmt.Errorf("malformed answer: %w", err)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			s.log.Info("gateway: remote keys claim", slog.String("server", server), slog.Any("err", err))
			failures[server] = remoteFailure(err)
			return
		}
		for u, devs := range resp.OneTimeKeys {
			for d, keys := range devs {
				// Only what was asked for: one key of the algorithm asked.
				alg, ok := asked[u][d]
				if !ok || len(keys) != 1 {
					continue
				}
				for id, k := range keys {
					if !strings.HasPrefix(id, alg+":") || len(k) == 0 || len(k) > actors.MaxKeyJSON {
						continue
					}
					if out[u] == nil {
						out[u] = map[string]map[string]json.RawMessage{}
					}
					out[u][d] = map[string]json.RawMessage{id: k}
				}
			}
		}
	})
}

// ---- outbound: to-device messages for remote users ----

// sendRemoteToDevice queues the messages for remote users as
// m.direct_to_device EDUs, one (or, when large, a few) per server. The
// message IDs derive from the sender's transaction, so a retried send
// carries the same IDs and the receiving server delivers it once.
func (s *Server) sendRemoteToDevice(sender, senderDevice, evType, txnID string, msgs map[string]map[string]json.RawMessage) {
	for server, users := range groupByServer(msgs) {
		ids := make([]string, 0, len(users))
		for u := range users {
			ids = append(ids, u)
		}
		slices.Sort(ids)
		var edus []*pb.FedEDU
		chunk := map[string]map[string]json.RawMessage{}
		size := 0
		flush := func() {
			if len(chunk) == 0 {
				return
			}
			h := sha256.Sum256([]byte(fmt.Sprintf("%s\x00%s\x00%s\x00%s\x00%s\x00%d", sender, senderDevice, evType, txnID, server, len(edus))))
			content, err := json.Marshal(map[string]any{"sender": sender, "type": evType,
				"message_id": base64.RawURLEncoding.EncodeToString(h[:18]), "messages": chunk})
			if err == nil {
				edus = append(edus, &pb.FedEDU{EduType: "m.direct_to_device", Content: content})
			}
			chunk, size = map[string]map[string]json.RawMessage{}, 0
		}
		for _, u := range ids {
			for d, content := range users[u] {
				n := len(u) + len(d) + len(content) + 8
				if size > 0 && size+n > maxToDeviceEDUBytes {
					flush()
				}
				if chunk[u] == nil {
					chunk[u] = map[string]json.RawMessage{}
				}
				chunk[u][d] = content
				size += n
			}
		}
		flush()
		if len(edus) > 0 {
			s.router.Send(&pb.FedEnqueue{Destination: server, Edus: edus})
		}
	}
}

// ---- inbound EDUs ----

// handleE2EEEDU applies an m.device_list_update, m.signing_key_update or
// m.direct_to_device EDU from origin (the transaction's authenticated
// sender).
func (s *Server) handleE2EEEDU(ctx context.Context, origin, eduType string, content json.RawMessage) error {
	switch eduType {
	case "m.device_list_update", "m.signing_key_update":
		var c struct {
			UserID string `json:"user_id"`
		}
		if err := json.Unmarshal(content, &c); err != nil {
			return fmt.Errorf("%s: malformed content: %w", eduType, err)
		}
		if err := s.checkRemoteUser(origin, c.UserID); err != nil {
			return fmt.Errorf("%s: %w", eduType, err)
		}
		return s.remoteDeviceListChanged(ctx, c.UserID)
	case "m.direct_to_device":
		return s.receiveToDevice(ctx, origin, content)
	default:
		return fmt.Errorf("not an encryption EDU: %q", eduType)
	}
}

// checkRemoteUser refuses a user ID that is not a valid user of origin.
func (s *Server) checkRemoteUser(origin, userID string) error {
	if eventgraph.ValidateUserID(userID) != nil {
		return fmt.Errorf("invalid user ID %q", userID)
	}
	if domain, err := eventgraph.IDDomain(userID); err != nil || domain != origin {
		return fmt.Errorf("user %s does not belong to %s", userID, origin)
	}
	return nil
}

// remoteDeviceListChanged drops the cached keys of a remote user and tells
// the local users tracking that user's devices, who still share a room
// with it, so their next /sync lists the user in device_lists.changed.
func (s *Server) remoteDeviceListChanged(ctx context.Context, userID string) error {
	var rep struct {
		Watchers []string `json:"watchers"`
	}
	if err := s.userKeys(ctx, &pb.UserKeysOp{UserId: userID, Op: "remote_invalidate"}, &rep); err != nil {
		return fmt.Errorf("dropping the keys of %s: %w", userID, err)
	}
	if len(rep.Watchers) == 0 {
		return nil
	}
	c, cancel := context.WithTimeout(ctx, watcherCheckTimeout)
	defer cancel()
	body, _ := json.Marshal(userID)
	var mu sync.Mutex
	var gone []string
	fanOut(rep.Watchers, func(w string) {
		rooms := s.joinedRooms(c, w)
		// Past the bound, assume a shared room: a needless notice is
		// harmless, a missed one is not.
		shared := len(rooms) > maxLeftCheckRooms || actors.SharesRoom(c, s.router, w, userID, rooms)
		if shared {
			s.router.Send(&pb.UserKeysOp{UserId: w, Op: "devlist_changed", Body: body})
			return
		}
		if c.Err() == nil {
			mu.Lock()
			gone = append(gone, w)
			mu.Unlock()
		}
	})
	if len(gone) > 0 {
		b, _ := json.Marshal(gone)
		if err := s.userKeys(ctx, &pb.UserKeysOp{UserId: userID, Op: "remote_unwatch", Body: b}, nil); err != nil {
			s.log.Warn("gateway: dropping watchers", slog.String("user", userID), slog.Any("err", err))
		}
	}
	return nil
}

func (s *Server) joinedRooms(ctx context.Context, userID string) []string {
	rep, err := s.accountQuery(ctx, &pb.AccountQuery{UserId: userID, Kind: "joined_rooms"})
	if err != nil {
		return nil
	}
	var jr struct {
		JoinedRooms []string `json:"joined_rooms"`
	}
	_ = json.Unmarshal(rep.Json, &jr)
	return jr.JoinedRooms
}

// receiveToDevice delivers an m.direct_to_device EDU to the local devices
// it names ("*": all of a user's devices), once per message ID.
func (s *Server) receiveToDevice(ctx context.Context, origin string, content json.RawMessage) error {
	var edu struct {
		Sender    string                                `json:"sender"`
		Type      string                                `json:"type"`
		MessageID string                                `json:"message_id"`
		Messages  map[string]map[string]json.RawMessage `json:"messages"`
	}
	if err := json.Unmarshal(content, &edu); err != nil {
		return fmt.Errorf("m.direct_to_device: malformed content: %w", err)
	}
	if err := s.checkRemoteUser(origin, edu.Sender); err != nil {
		return fmt.Errorf("m.direct_to_device: %w", err)
	}
	if edu.Type == "" || len(edu.Type) > 255 || edu.MessageID == "" || utf8.RuneCountInString(edu.MessageID) > maxMessageIDLen {
		return errors.New("m.direct_to_device: invalid type or message_id")
	}
	n := 0
	for _, devs := range edu.Messages {
		n += len(devs)
	}
	if n > maxKeyTargets {
		return fmt.Errorf("m.direct_to_device: too many devices (%d)", n)
	}
	var targets []deliverTarget
	bodies := map[deliverTarget][]byte{}
	for u, devs := range edu.Messages {
		if !s.isLocalUser(u) {
			continue
		}
		for d, c := range devs {
			if len(c) == 0 || c[0] != '{' {
				continue
			}
			msg, err := json.Marshal(map[string]any{"type": edu.Type, "sender": edu.Sender, "content": c})
			if err != nil || len(msg) > actors.MaxToDeviceBytes {
				continue
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
		return fmt.Errorf("m.direct_to_device: too many devices (%d)", len(targets))
	}
	var mu sync.Mutex
	var firstErr error
	fanOut(targets, func(t deliverTarget) {
		// No sending device over federation: the message ID, under a
		// prefix no local transaction has, makes a resent EDU land once.
		err := s.deviceKeys(ctx, &pb.DeviceKeysOp{UserId: t.user, DeviceId: t.device, Op: "deliver", Body: bodies[t],
			Sender: edu.Sender, TxnId: "m.direct_to_device\x00" + edu.MessageID}, nil)
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
		return fmt.Errorf("m.direct_to_device: delivering: %w", firstErr)
	}
	return nil
}
