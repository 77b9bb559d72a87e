package actors

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/asynkron/protoactor-go/actor"
	"go.etcd.io/bbolt"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/protobuf/proto"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// Bounds on what one user may store. They keep every answer of the user
// actor (an initial sync, a device list) finite whatever a client does.
const (
	// MaxDevices is the most devices (logged-in sessions) a user may have.
	MaxDevices = 1000
	// MaxAccountDataEntries bounds global plus per-room account data types.
	MaxAccountDataEntries = 10_000
	// MaxAccountDataBytes bounds one account data event's content.
	MaxAccountDataBytes = 256 << 10
	// MaxFilters is how many filters are kept; the oldest is dropped beyond.
	MaxFilters = 1000
	// MaxProfileBytes bounds the whole profile (MSC4133: 64 KiB).
	MaxProfileBytes = 64 << 10
	// MaxProfileKeyBytes bounds a profile field name (MSC4133: 255 bytes).
	MaxProfileKeyBytes = 255
	// maxTags bounds the tags of one room.
	maxTags = 100
	// presenceWriteEvery is how often an unchanged presence's activity time
	// is written; in between it is only kept in memory.
	presenceWriteEvery = 60_000 // ms
	// currentlyActiveMs is how recent activity must be to count as current.
	currentlyActiveMs = 60_000
)

// user is the actor of one local user, identity user/<user_id>. It is the
// single writer of the account: password hash, flags, profile, account data,
// filters, presence, the index of the user's devices and the user's room
// memberships, and it plans the user's /sync (see user_sync.go).
//
// Reply shapes (AccountQueryReply.json / AccountUpdateReply.json), read only
// by the gateway:
//
//	AccountQuery exists            {"deactivated":bool,"guest":bool}; found = account exists
//	AccountQuery info              {"user_id","admin","guest","deactivated","created_ts","accepted_terms":{id:version}}
//	AccountQuery profile           the profile object {"displayname":..,"avatar_url":..,…}
//	AccountQuery joined_rooms      {"joined_rooms":[room IDs]}
//	AccountQuery rooms             {"!room":{"membership":m,"pos":p}}; key filters on one membership
//	AccountQuery devices           ["DEVICEID",…] sorted
//	AccountQuery filter            the filter JSON (key = filter ID); found = it exists
//	AccountQuery account_data      the content (key = type); found = it exists
//	AccountQuery room_account_data the content (room_id, key = type); found = it exists
//	AccountQuery presence          {"presence","last_active_ago","status_msg"?,"currently_active"?}
//	AccountQuery push_rules        {"global": PushRuleset}, as is account_data of type m.push_rules
//	AccountUpdate deactivate       {"devices":[IDs removed],"rooms":[rooms joined, invited or knocked]}
//	AccountUpdate profile          {"profile":{…},"changed":bool,"joined_rooms":[…]}
//	AccountUpdate filter           {"filter_id":"N"}
//	AccountUpdate add_device       {"locked":bool,"suspended":bool}
//	AccountUpdate moderation       {"locked","suspended","devices":[IDs]} (user_moderation.go)
//	AccountUpdate report           {} (user_reports.go); AccountQuery reports {"reports":[…]}
//	AccountUpdate (other kinds)    {}
//
// AccountUpdate kinds: password (value = bcrypt hash), deactivate, profile
// (key = field, value = JSON value or empty to remove), account_data and
// room_account_data (key = type, value = content), tag (room_id, key = tag,
// value = tag object or empty to remove), filter (value = filter JSON),
// presence (value = {"presence","status_msg"?,"from_sync"?}), add_device and
// remove_device (key = device ID), remove_devices (value = JSON array of
// device IDs), forget (room_id).
//
// PushRuleUpdate (user_pushrules.go) replies Empty.
//
// UserKeysOp (user_keys.go, user_keybackup.go) replies KeysReply; KeysNotice
// is fire-and-forget.
//
// CheckPassword replies Empty when the password is right, 403 M_FORBIDDEN
// when it is wrong or the account unknown, 403 M_USER_DEACTIVATED for a
// deactivated account. Register replies Empty, or 400 M_USER_IN_USE.
type user struct {
	env    *Env
	userID string

	// evaluators caches the user's compiled push rules.
	evaluators evaluatorCache

	st      *storage.UserState
	loadErr error

	sync userSync
	// push is the user's push rules, read on first use (user_pushrules.go).
	push *pushState
	// pushing is the user's pushers and notifications (user_push.go).
	pushing userPush
	// keys is what the actor keeps in memory for encryption (user_keys.go).
	keys userKeys
	// reportTimes are when the user's reports of the last minute were made
	// (user_reports.go).
	reportTimes []int64
	// pres is the presence fan-out, peers' presence and timers (user_presence.go).
	pres userPresence
}

// NewUser makes the actor of a user.
func NewUser(env *Env) actor.Actor {
	return &user{env: env, userID: strings.TrimPrefix(env.Identity, pb.KindUser+"/")}
}

func (u *user) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		u.load()
		u.presenceStart()
		ctx.SetReceiveTimeout(u.env.IdleTimeout)
	case *actor.ReceiveTimeout:
		// A pending automatic presence transition keeps the actor too
		// (at most presenceOfflineAfter after the last sync).
		if len(u.sync.parked) == 0 && !u.presenceTimerArmed() {
			ctx.Send(ctx.Parent(), &pb.Passivate{Identity: u.env.Identity})
		} else {
			// A long-poll is waiting: stay, and look again later (the
			// timer does not re-arm by itself once it has fired).
			ctx.SetReceiveTimeout(u.env.IdleTimeout)
		}
	case *actor.Stopping:
		u.presenceStop()
		u.stopPushing()
		u.releaseParked(ctx)
	case *actor.Restarting:
		u.releaseParked(ctx)
	case *pb.Register:
		u.reply(ctx, u.register(m))
	case *pb.AccountQuery:
		u.reply(ctx, u.query(m))
	case *pb.CheckPassword:
		u.reply(ctx, u.checkPassword(m))
	case *pb.AccountUpdate:
		u.reply(ctx, u.update(ctx, m))
	case *pb.PushRuleUpdate:
		u.reply(ctx, u.updatePushRule(ctx, m))
	case *pb.RoomNotice:
		u.roomNotice(ctx, m)
	case *pb.SyncPlan:
		u.presenceSynced()
		u.syncPlan(ctx, m)
	case *pb.SyncDone:
		u.presenceSynced()
		u.reply(ctx, u.syncDone(m))
	case *pb.PresenceNotice:
		u.presenceNotice(ctx, m)
	case *pb.PresenceTick:
		u.presenceTick(ctx, m)
	case *pb.SyncTimeout:
		u.syncTimeout(ctx, m)
	case *pb.UserKeysOp:
		u.reply(ctx, u.keysOp(ctx, m))
	case *pb.KeysNotice:
		u.keysNotice(ctx, m)
	case *pb.PushNotice:
		u.pushNotice(m)
	case *pb.PushResult:
		u.pushResult(m)
	}
}

// load reads the user's state on activation. A failure is kept and answered
// to every request, so that nothing acts on a partial state.
func (u *user) load() {
	u.sync = newUserSync(u.env)
	err := u.env.Partition.View(func(tx *bbolt.Tx) error {
		st, err := storage.User(tx, u.env.Identity).Load()
		u.st = st
		return err
	})
	if err != nil {
		u.loadErr = err
		u.st = nil
		u.env.Log.Error("user: load", slog.Any("err", err))
		return
	}
	u.sync.restore(u.st)
}

// acctResult is a reply or an error.
type acctResult struct {
	msg proto.Message
	err error
}

func acctOK(msg proto.Message) acctResult { return acctResult{msg: msg} }
func acctFail(err error) acctResult       { return acctResult{err: err} }

func (u *user) reply(ctx actor.Context, r acctResult) {
	if ctx.Sender() == nil {
		return
	}
	if r.err != nil {
		if _, isME := r.err.(*MatrixError); !isME {
			u.env.Log.Error("user: request failed", slog.Any("err", r.err))
		}
		ctx.Respond(ToPB(r.err))
		return
	}
	ctx.Respond(r.msg)
}

// write runs fn in one transaction of the user's partition.
func (u *user) write(fn func(ut storage.UserTx) error) error {
	return u.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
		return fn(storage.User(tx, u.env.Identity))
	})
}

func (u *user) view(fn func(ut storage.UserTx) error) error {
	return u.env.Partition.View(func(tx *bbolt.Tx) error {
		return fn(storage.User(tx, u.env.Identity))
	})
}

func (u *user) ready() error {
	if u.loadErr != nil {
		return ErrUnknown("account unavailable")
	}
	return nil
}

// account returns the account, refusing unknown and (unless allowed)
// deactivated ones.
func (u *user) account(allowDeactivated bool) (*storage.Account, error) {
	if err := u.ready(); err != nil {
		return nil, err
	}
	a := u.st.Account
	if a == nil {
		return nil, ErrNotFound("no such user")
	}
	if a.Deactivated && !allowDeactivated {
		return nil, Errorf(http.StatusForbidden, "M_USER_DEACTIVATED", "this account has been deactivated")
	}
	return a, nil
}

func acctJSONReply(v any) (*pb.AccountUpdateReply, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return &pb.AccountUpdateReply{Json: b}, nil
}

func (u *user) register(m *pb.Register) acctResult {
	if err := u.ready(); err != nil {
		return acctFail(err)
	}
	if m.UserId != u.userID {
		return acctFail(ErrInvalidParam("register for another user"))
	}
	if _, domain, _ := strings.Cut(u.userID, ":"); domain != u.env.Server.ServerName {
		return acctFail(ErrForbidden("cannot register a user of another server"))
	}
	if u.st.Account != nil {
		return acctFail(Errorf(http.StatusBadRequest, "M_USER_IN_USE", "user ID already taken"))
	}
	if len(m.PasswordHash) > 0 {
		if _, err := bcrypt.Cost(m.PasswordHash); err != nil {
			return acctFail(ErrInvalidParam("password hash is not a bcrypt hash"))
		}
	}
	acct := &storage.Account{PasswordHash: m.PasswordHash, Admin: m.Admin, Guest: m.Guest, CreatedTS: u.env.NowMillis()}
	if len(m.AcceptedTerms) > 0 {
		if err := json.Unmarshal(m.AcceptedTerms, &acct.AcceptedTerms); err != nil {
			return acctFail(ErrBadJSON("accepted_terms must map policy IDs to versions"))
		}
	}
	profile := map[string]json.RawMessage{}
	if len(m.Profile) > 0 {
		if err := json.Unmarshal(m.Profile, &profile); err != nil {
			return acctFail(ErrBadJSON("profile must be a JSON object"))
		}
		if err := checkProfileSize(profile); err != nil {
			return acctFail(err)
		}
	}
	if err := u.write(func(ut storage.UserTx) error {
		if err := ut.PutAccount(acct); err != nil {
			return err
		}
		return ut.PutProfile(profile)
	}); err != nil {
		return acctFail(err)
	}
	u.st.Account = acct
	u.st.Profile = profile
	return acctOK(&pb.Empty{})
}

func (u *user) checkPassword(m *pb.CheckPassword) acctResult {
	if err := u.ready(); err != nil {
		return acctFail(err)
	}
	var hash []byte
	if a := u.st.Account; a != nil {
		hash = a.PasswordHash
	}
	if !checkPassword(hash, m.Password) {
		return acctFail(ErrForbidden("invalid username or password"))
	}
	if u.st.Account.Deactivated {
		return acctFail(Errorf(http.StatusForbidden, "M_USER_DEACTIVATED", "this account has been deactivated"))
	}
	return acctOK(&pb.Empty{})
}

func (u *user) query(m *pb.AccountQuery) acctResult {
	if err := u.ready(); err != nil {
		return acctFail(err)
	}
	if m.Kind == "push_rules" || (m.Kind == "account_data" && m.Key == PushRulesEventType) {
		return u.queryPushRules()
	}
	if m.Kind == "reports" {
		return u.reports()
	}
	switch m.Kind {
	case "pushers":
		return u.queryPushers()
	case "notifications":
		return u.queryNotifications(m)
	}
	a := u.st.Account
	out := &pb.AccountQueryReply{Found: a != nil}
	var v any
	switch m.Kind {
	case "exists":
		if a != nil {
			v = map[string]bool{"deactivated": a.Deactivated, "guest": a.Guest}
		}
	case "info":
		if a != nil {
			terms := a.AcceptedTerms
			if terms == nil {
				terms = map[string]string{}
			}
			v = map[string]any{"user_id": u.userID, "admin": a.Admin, "guest": a.Guest, "deactivated": a.Deactivated,
				"created_ts": a.CreatedTS, "accepted_terms": terms, "suspended": a.Suspended, "locked": a.Locked}
		}
	case "profile":
		if a != nil {
			v = u.st.Profile
		}
	case "joined_rooms":
		v = map[string][]string{"joined_rooms": u.roomsWith("join")}
	case "rooms":
		rooms := map[string]any{}
		for id, r := range u.st.Rooms {
			if m.Key == "" || r.Membership == m.Key {
				rooms[id] = map[string]any{"membership": r.Membership, "pos": r.Pos}
			}
		}
		v = rooms
	case "devices":
		v = u.deviceList()
	case "filter":
		id, err := strconv.ParseUint(m.Key, 10, 64)
		if a == nil || err != nil {
			out.Found = false
			break
		}
		var f []byte
		if err := u.view(func(ut storage.UserTx) error {
			var err error
			f, err = ut.Filter(id)
			return err
		}); err != nil {
			return acctFail(err)
		}
		out.Found, out.Json = f != nil, f
		return acctOK(out)
	case "account_data", "room_account_data":
		room := ""
		if m.Kind == "room_account_data" {
			room = m.RoomId
			if room == "" {
				return acctFail(ErrInvalidParam("room_id is required"))
			}
		}
		if a == nil || m.Key == "" {
			out.Found = false
			break
		}
		var e *storage.AccountDataEntry
		if err := u.view(func(ut storage.UserTx) error {
			var err error
			e, err = ut.AccountData(room, m.Key)
			return err
		}); err != nil {
			return acctFail(err)
		}
		out.Found = e != nil
		if e != nil {
			out.Json = e.Content
		}
		return acctOK(out)
	case "presence":
		if a != nil {
			v = u.presenceContent()
		}
	default:
		return acctFail(ErrInvalidParam("unknown account query %q", m.Kind))
	}
	if v != nil {
		b, err := json.Marshal(v)
		if err != nil {
			return acctFail(err)
		}
		out.Json = b
	}
	return acctOK(out)
}

func (u *user) roomsWith(memberships ...string) []string {
	out := []string{}
	for id, r := range u.st.Rooms {
		if slices.Contains(memberships, r.Membership) {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

func (u *user) deviceList() []string {
	out := make([]string, 0, len(u.st.Devices))
	for d := range u.st.Devices {
		out = append(out, d)
	}
	slices.Sort(out)
	return out
}

func (u *user) update(ctx actor.Context, m *pb.AccountUpdate) acctResult {
	switch m.Kind {
	case "password":
		return u.setPassword(m)
	case "deactivate":
		return u.deactivate(ctx)
	case "profile":
		return u.setProfile(m)
	case "account_data":
		return u.setAccountData(ctx, "", m.Key, m.Value)
	case "room_account_data":
		if m.RoomId == "" {
			return acctFail(ErrInvalidParam("room_id is required"))
		}
		return u.setAccountData(ctx, m.RoomId, m.Key, m.Value)
	case "tag":
		return u.setTag(ctx, m)
	case "filter":
		return u.addFilter(m)
	case "pusher":
		return u.setPusher(m)
	case "presence":
		return u.setPresence(ctx, m)
	case "add_device":
		return u.addDevice(m)
	case "remove_device":
		return u.removeDevices([]string{m.Key})
	case "remove_devices":
		var ids []string
		if err := json.Unmarshal(m.Value, &ids); err != nil {
			return acctFail(ErrBadJSON("remove_devices takes a JSON array of device IDs"))
		}
		return u.removeDevices(ids)
	case "forget":
		return u.forget(m)
	case "moderation":
		return u.setModeration(m)
	case "report":
		return u.addReport(m)
	default:
		return acctFail(ErrInvalidParam("unknown account update %q", m.Kind))
	}
}

func (u *user) setPassword(m *pb.AccountUpdate) acctResult {
	a, err := u.account(false)
	if err != nil {
		return acctFail(err)
	}
	if _, err := bcrypt.Cost(m.Value); err != nil {
		return acctFail(ErrInvalidParam("password hash is not a bcrypt hash"))
	}
	na := *a
	na.PasswordHash = m.Value
	if err := u.write(func(ut storage.UserTx) error { return ut.PutAccount(&na) }); err != nil {
		return acctFail(err)
	}
	u.st.Account = &na
	return acctOK(&pb.AccountUpdateReply{Json: []byte("{}")})
}

// deactivate marks the account deactivated and erases what is not event
// data: profile, account data, filters, presence, the device index. The
// password hash is kept so that a login with the right password can be told
// that the account is deactivated (a wrong one still gets M_FORBIDDEN). The
// gateway then logs the devices out and leaves the rooms in the reply; a
// repeated deactivation answers the same way so an interrupted one can be
// finished.
func (u *user) deactivate(ctx actor.Context) acctResult {
	a, err := u.account(true)
	if err != nil {
		return acctFail(err)
	}
	devices := u.deviceList()
	rooms := u.roomsWith("join", "invite", "knock")
	na := *a
	na.Deactivated = true
	meta := u.st.Meta
	meta.Seq++
	meta.AccountData, meta.Filters = 0, 0
	pres := &storage.Presence{State: "offline", LastActiveTS: u.env.NowMillis(), Seq: meta.Seq}
	if err := u.write(func(ut storage.UserTx) error {
		if err := ut.PutAccount(&na); err != nil {
			return err
		}
		if err := ut.PutProfile(map[string]json.RawMessage{}); err != nil {
			return err
		}
		if err := ut.ClearAccountData(); err != nil {
			return err
		}
		if err := ut.DeletePushRules(); err != nil {
			return err
		}
		if err := ut.ClearFilters(); err != nil {
			return err
		}
		if err := ut.ClearDevices(); err != nil {
			return err
		}
		if err := ut.PutPresence(pres); err != nil {
			return err
		}
		return ut.PutMeta(meta)
	}); err != nil {
		return acctFail(err)
	}
	u.st.Account = &na
	u.st.Profile = map[string]json.RawMessage{}
	u.st.Devices = map[string]bool{}
	u.st.Presence = pres
	u.st.Meta = meta
	u.push = nil
	u.wakeAll(ctx)
	u.presenceChanged()
	r, err := acctJSONReply(map[string]any{"devices": devices, "rooms": rooms})
	if err != nil {
		return acctFail(err)
	}
	return acctOK(r)
}

// checkProfileSize enforces MSC4133's bounds on a whole profile.
func checkProfileSize(p map[string]json.RawMessage) error {
	for k := range p {
		if len(k) > MaxProfileKeyBytes {
			return Errorf(http.StatusBadRequest, "M_KEY_TOO_LARGE", "profile key longer than %d bytes", MaxProfileKeyBytes)
		}
	}
	b, err := json.Marshal(p)
	if err != nil {
		return ErrBadJSON("profile is not valid JSON")
	}
	if len(b) > MaxProfileBytes {
		return Errorf(http.StatusBadRequest, "M_PROFILE_TOO_LARGE", "profile would exceed %d bytes", MaxProfileBytes)
	}
	return nil
}

// setProfile sets (value non-empty) or removes (value empty) the profile
// field m.Key.
func (u *user) setProfile(m *pb.AccountUpdate) acctResult {
	if _, err := u.account(false); err != nil {
		return acctFail(err)
	}
	if m.Key == "" {
		return acctFail(ErrInvalidParam("profile key is required"))
	}
	if len(m.Value) > 0 && !json.Valid(m.Value) {
		return acctFail(ErrBadJSON("profile value is not valid JSON"))
	}
	next := make(map[string]json.RawMessage, len(u.st.Profile)+1)
	for k, v := range u.st.Profile {
		next[k] = v
	}
	old, had := next[m.Key]
	changed := false
	if len(m.Value) == 0 {
		delete(next, m.Key)
		changed = had
	} else {
		next[m.Key] = json.RawMessage(slices.Clone(m.Value))
		changed = !had || string(old) != string(m.Value)
	}
	if err := checkProfileSize(next); err != nil {
		return acctFail(err)
	}
	if changed {
		if err := u.write(func(ut storage.UserTx) error { return ut.PutProfile(next) }); err != nil {
			return acctFail(err)
		}
		u.st.Profile = next
	}
	r, err := acctJSONReply(map[string]any{"profile": u.st.Profile, "changed": changed, "joined_rooms": u.roomsWith("join")})
	if err != nil {
		return acctFail(err)
	}
	return acctOK(r)
}

// setAccountData writes one account data event (room "" for global data).
func (u *user) setAccountData(ctx actor.Context, room, typ string, content []byte) acctResult {
	if _, err := u.account(false); err != nil {
		return acctFail(err)
	}
	if typ == "" {
		return acctFail(ErrInvalidParam("account data type is required"))
	}
	if len(content) > MaxAccountDataBytes {
		return acctFail(Errorf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "account data larger than %d bytes", MaxAccountDataBytes))
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(content, &obj); err != nil || obj == nil {
		return acctFail(ErrBadJSON("account data content must be a JSON object"))
	}
	if err := u.putAccountData(room, typ, content); err != nil {
		return acctFail(err)
	}
	u.wakeAll(ctx)
	return acctOK(&pb.AccountUpdateReply{Json: []byte("{}")})
}

// putAccountData persists an entry at a new sequence and updates the
// counters in memory once it is durable.
func (u *user) putAccountData(room, typ string, content []byte) error {
	meta := u.st.Meta
	meta.Seq++
	var exists bool
	if err := u.view(func(ut storage.UserTx) error {
		e, err := ut.AccountData(room, typ)
		exists = e != nil
		return err
	}); err != nil {
		return err
	}
	if !exists {
		if meta.AccountData >= MaxAccountDataEntries {
			return ErrForbidden("too many account data entries (at most %d)", MaxAccountDataEntries)
		}
		meta.AccountData++
	}
	if err := u.write(func(ut storage.UserTx) error {
		if _, err := ut.PutAccountData(room, typ, meta.Seq, content); err != nil {
			return err
		}
		return ut.PutMeta(meta)
	}); err != nil {
		return err
	}
	u.st.Meta = meta
	return nil
}

// setTag adds (value = the tag's object) or removes (empty value) one tag of
// the room's m.tag account data, as one read-modify-write in the actor.
func (u *user) setTag(ctx actor.Context, m *pb.AccountUpdate) acctResult {
	if _, err := u.account(false); err != nil {
		return acctFail(err)
	}
	if m.RoomId == "" || m.Key == "" {
		return acctFail(ErrInvalidParam("room_id and tag are required"))
	}
	var cur *storage.AccountDataEntry
	if err := u.view(func(ut storage.UserTx) error {
		var err error
		cur, err = ut.AccountData(m.RoomId, "m.tag")
		return err
	}); err != nil {
		return acctFail(err)
	}
	content := map[string]json.RawMessage{}
	tags := map[string]json.RawMessage{}
	if cur != nil {
		_ = json.Unmarshal(cur.Content, &content)
		if content == nil {
			content = map[string]json.RawMessage{}
		}
		_ = json.Unmarshal(content["tags"], &tags)
		if tags == nil {
			tags = map[string]json.RawMessage{}
		}
	}
	if len(m.Value) == 0 {
		if _, had := tags[m.Key]; !had {
			return acctOK(&pb.AccountUpdateReply{Json: []byte("{}")})
		}
		delete(tags, m.Key)
	} else {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(m.Value, &obj); err != nil || obj == nil {
			return acctFail(ErrBadJSON("tag content must be a JSON object"))
		}
		if _, had := tags[m.Key]; !had && len(tags) >= maxTags {
			return acctFail(ErrForbidden("too many tags on this room (at most %d)", maxTags))
		}
		tags[m.Key] = json.RawMessage(slices.Clone(m.Value))
	}
	tb, err := json.Marshal(tags)
	if err != nil {
		return acctFail(err)
	}
	content["tags"] = tb
	cb, err := json.Marshal(content)
	if err != nil {
		return acctFail(err)
	}
	if len(cb) > MaxAccountDataBytes {
		return acctFail(Errorf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "tags larger than %d bytes", MaxAccountDataBytes))
	}
	if err := u.putAccountData(m.RoomId, "m.tag", cb); err != nil {
		return acctFail(err)
	}
	u.wakeAll(ctx)
	return acctOK(&pb.AccountUpdateReply{Json: []byte("{}")})
}

// addFilter stores a filter (already validated and canonicalised by the
// gateway) and answers its ID; an identical filter keeps its ID.
func (u *user) addFilter(m *pb.AccountUpdate) acctResult {
	if _, err := u.account(false); err != nil {
		return acctFail(err)
	}
	if len(m.Value) == 0 || len(m.Value) > bbolt.MaxValueSize {
		return acctFail(ErrBadJSON("filter is required"))
	}
	hash := storage.FilterHash(m.Value)
	var existing uint64
	var found bool
	if err := u.view(func(ut storage.UserTx) error {
		var err error
		existing, found, err = ut.FilterByHash(hash)
		return err
	}); err != nil {
		return acctFail(err)
	}
	if !found {
		meta := u.st.Meta
		meta.LastFilter++
		existing = meta.LastFilter
		evict := meta.Filters >= MaxFilters
		if !evict {
			meta.Filters++
		}
		filter := slices.Clone(m.Value)
		if err := u.write(func(ut storage.UserTx) error {
			if err := ut.PutFilter(existing, filter, evict); err != nil {
				return err
			}
			return ut.PutMeta(meta)
		}); err != nil {
			return acctFail(err)
		}
		u.st.Meta = meta
	}
	r, err := acctJSONReply(map[string]string{"filter_id": strconv.FormatUint(existing, 10)})
	if err != nil {
		return acctFail(err)
	}
	return acctOK(r)
}

// setPresence applies {"presence","status_msg"?,"from_sync"?}. A sync's
// implicit "online" does not override an explicit "unavailable" nor touch
// the status message. Activity alone is written at most once a minute.
func (u *user) setPresence(ctx actor.Context, m *pb.AccountUpdate) acctResult {
	if _, err := u.account(false); err != nil {
		return acctFail(err)
	}
	var req map[string]json.RawMessage
	if err := json.Unmarshal(m.Value, &req); err != nil || req == nil {
		return acctFail(ErrBadJSON("presence must be a JSON object"))
	}
	var state string
	var fromSync bool
	if err := json.Unmarshal(req["presence"], &state); err != nil {
		return acctFail(ErrBadJSON("presence must be a string"))
	}
	switch state {
	case "online", "offline", "unavailable":
	default:
		return acctFail(ErrInvalidParam("presence must be online, offline or unavailable"))
	}
	if raw, has := req["from_sync"]; has {
		_ = json.Unmarshal(raw, &fromSync)
	}
	now := u.env.NowMillis()
	prev := u.st.Presence
	next := storage.Presence{State: state, LastActiveTS: now}
	if prev != nil {
		next.Seq = prev.Seq
		next.StatusMsg = prev.StatusMsg
	}
	if fromSync {
		if prev != nil && prev.State == "unavailable" && state == "online" && !u.pres.auto {
			next.State = "unavailable"
		}
	} else if raw, has := req["status_msg"]; has && string(raw) != "null" {
		var msg string
		if err := json.Unmarshal(raw, &msg); err != nil {
			return acctFail(ErrBadJSON("status_msg must be a string"))
		}
		next.StatusMsg = &msg
	} else {
		next.StatusMsg = nil
	}
	changed := prev == nil || prev.State != next.State || !equalStrPtr(prev.StatusMsg, next.StatusMsg)
	meta := u.st.Meta
	if changed {
		meta.Seq++
		next.Seq = meta.Seq
	}
	if changed || now-u.sync.presenceWrittenTS >= presenceWriteEvery {
		if err := u.write(func(ut storage.UserTx) error {
			if err := ut.PutPresence(&next); err != nil {
				return err
			}
			return ut.PutMeta(meta)
		}); err != nil {
			return acctFail(err)
		}
		u.sync.presenceWrittenTS = now
		u.st.Meta = meta
	}
	u.st.Presence = &next
	u.pres.auto = false
	if changed {
		u.wakeAll(ctx)
	}
	u.presenceChanged()
	return acctOK(&pb.AccountUpdateReply{Json: []byte("{}")})
}

func equalStrPtr(a, b *string) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// presenceContent is the content of the user's m.presence event.
func (u *user) presenceContent() map[string]any {
	p := u.st.Presence
	if p == nil {
		return map[string]any{"presence": "offline"}
	}
	ago := max(0, u.env.NowMillis()-p.LastActiveTS)
	c := map[string]any{"presence": p.State, "last_active_ago": ago}
	if p.StatusMsg != nil {
		c["status_msg"] = *p.StatusMsg
	}
	if p.State == "online" {
		c["currently_active"] = ago < currentlyActiveMs
	}
	return c
}

func (u *user) addDevice(m *pb.AccountUpdate) acctResult {
	if _, err := u.account(false); err != nil {
		return acctFail(err)
	}
	if m.Key == "" {
		return acctFail(ErrInvalidParam("device ID is required"))
	}
	if !u.st.Devices[m.Key] {
		if len(u.st.Devices) >= MaxDevices {
			return acctFail(ErrForbidden("too many devices (at most %d): log some out first", MaxDevices))
		}
		if err := u.write(func(ut storage.UserTx) error { return ut.PutDevice(m.Key) }); err != nil {
			return acctFail(err)
		}
		u.st.Devices[m.Key] = true
	}
	return acctJSON(moderationFlags(u.st.Account))
}

// removeDevices drops devices from the user's index in one write (the
// gateway has already logged them out).
func (u *user) removeDevices(ids []string) acctResult {
	if _, err := u.account(true); err != nil {
		return acctFail(err)
	}
	var gone []string
	for _, id := range ids {
		if u.st.Devices[id] {
			gone = append(gone, id)
		}
	}
	if len(gone) > 0 {
		if err := u.write(func(ut storage.UserTx) error {
			for _, id := range gone {
				if err := ut.DeleteDevice(id); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return acctFail(err)
		}
		for _, id := range gone {
			delete(u.st.Devices, id)
		}
	}
	return acctOK(&pb.AccountUpdateReply{Json: []byte("{}")})
}

// forget drops a room the user has left from the user's rooms.
func (u *user) forget(m *pb.AccountUpdate) acctResult {
	if _, err := u.account(true); err != nil {
		return acctFail(err)
	}
	r, has := u.st.Rooms[m.RoomId]
	if !has {
		return acctOK(&pb.AccountUpdateReply{Json: []byte("{}")})
	}
	if r.Membership != "leave" && r.Membership != "ban" {
		return acctFail(Errorf(http.StatusBadRequest, "M_UNKNOWN", "user is still in the room"))
	}
	if err := u.write(func(ut storage.UserTx) error { return ut.DeleteRoom(m.RoomId) }); err != nil {
		return acctFail(err)
	}
	delete(u.st.Rooms, m.RoomId)
	return acctOK(&pb.AccountUpdateReply{Json: []byte("{}")})
}
