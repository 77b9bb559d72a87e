package actors_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/cluster"
)

// acctServer is the server name of the account tests' node.
const acctServer = "acct.test"

// acctNode is a real node (bbolt files in a temp dir) running the user and
// device actor kinds, restartable on the same directory.
type acctNode struct {
	t    *testing.T
	dir  string
	idle time.Duration
	now  func() time.Time
	node *cluster.Node
}

func startAcctNode(t *testing.T) *acctNode {
	t.Helper()
	n := &acctNode{t: t, dir: t.TempDir()}
	n.start()
	t.Cleanup(n.stop)
	return n
}

func (n *acctNode) start() {
	n.t.Helper()
	node, err := cluster.Start(cluster.Config{
		DataDir:    n.dir,
		Partitions: 4,
		Kinds:      map[string]cluster.Producer{pb.KindUser: actors.NewUser, pb.KindDevice: actors.NewDevice},
		Server: &actors.ServerIdentity{ServerName: acctServer, KeyID: "ed25519:t",
			PrivateKey: ed25519.NewKeyFromSeed(make([]byte, 32))},
		RequestTimeout: 20 * time.Second,
		IdleTimeout:    n.idle,
		Now:            n.now,
	})
	if err != nil {
		n.t.Fatal(err)
	}
	n.node = node
}

func (n *acctNode) stop() {
	if n.node != nil {
		if err := n.node.Stop(context.Background()); err != nil {
			n.t.Errorf("stop node: %v", err)
		}
		n.node = nil
	}
}

// restart stops the node and starts it again on the same files: every
// actor comes back from storage only.
func (n *acctNode) restart() {
	n.t.Helper()
	n.stop()
	n.start()
}

func (n *acctNode) req(msg pb.Targeted) (proto.Message, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return n.node.Request(ctx, msg)
}

func (n *acctNode) must(msg pb.Targeted) proto.Message {
	n.t.Helper()
	res, err := n.req(msg)
	if err != nil {
		n.t.Fatalf("%T: %v", msg, err)
	}
	return res
}

// mustFail asserts a request fails with errcode and status.
func (n *acctNode) mustFail(msg pb.Targeted, errcode string, status int) {
	n.t.Helper()
	_, err := n.req(msg)
	var me *actors.MatrixError
	if !errors.As(err, &me) || me.ErrCode != errcode || me.Status != status {
		n.t.Fatalf("%T: got %v, want %s (%d)", msg, err, errcode, status)
	}
}

func (n *acctNode) register(localpart, password string) string {
	n.t.Helper()
	userID := "@" + localpart + ":" + acctServer
	hash, err := actors.HashPassword(password, 4)
	if err != nil {
		n.t.Fatal(err)
	}
	n.must(&pb.Register{UserId: userID, PasswordHash: hash, Profile: []byte(`{"displayname":"` + localpart + `"}`)})
	return userID
}

func (n *acctNode) query(userID, kind, key, room string) *pb.AccountQueryReply {
	n.t.Helper()
	return n.must(&pb.AccountQuery{UserId: userID, Kind: kind, Key: key, RoomId: room}).(*pb.AccountQueryReply)
}

func (n *acctNode) update(userID, kind, key, room string, value string) *pb.AccountUpdateReply {
	n.t.Helper()
	var v []byte
	if value != "" {
		v = []byte(value)
	}
	return n.must(&pb.AccountUpdate{UserId: userID, Kind: kind, Key: key, RoomId: room, Value: v}).(*pb.AccountUpdateReply)
}

func (n *acctNode) plan(userID, since string, timeout time.Duration) *pb.SyncPlanReply {
	n.t.Helper()
	return n.must(&pb.SyncPlan{UserId: userID, DeviceId: "D", Since: since, TimeoutMs: timeout.Milliseconds()}).(*pb.SyncPlanReply)
}

func (n *acctNode) done(userID, token string, pos, eph map[string]uint64) string {
	n.t.Helper()
	return n.must(&pb.SyncDone{UserId: userID, Token: token, Positions: pos, Ephemeral: eph}).(*pb.SyncDoneReply).NextBatch
}

func roomIDs(p *pb.SyncPlanReply) []string {
	var out []string
	for _, r := range p.Rooms {
		out = append(out, r.RoomId)
	}
	return out
}

func TestUserRegisterAndCheckPassword(t *testing.T) {
	n := startAcctNode(t)
	alice := n.register("alice", "correct horse")
	hash, _ := actors.HashPassword("other", 4)
	n.mustFail(&pb.Register{UserId: alice, PasswordHash: hash}, "M_USER_IN_USE", http.StatusBadRequest)

	if _, ok := n.must(&pb.CheckPassword{UserId: alice, Password: "correct horse"}).(*pb.Empty); !ok {
		t.Fatal("right password not accepted")
	}
	n.mustFail(&pb.CheckPassword{UserId: alice, Password: "wrong"}, "M_FORBIDDEN", http.StatusForbidden)
	n.mustFail(&pb.CheckPassword{UserId: "@nobody:" + acctServer, Password: "x"}, "M_FORBIDDEN", http.StatusForbidden)
	// A user of another server cannot be registered here.
	n.mustFail(&pb.Register{UserId: "@eve:elsewhere.test", PasswordHash: hash}, "M_FORBIDDEN", http.StatusForbidden)

	if rep := n.query(alice, "exists", "", ""); !rep.Found {
		t.Fatal("registered user does not exist")
	}
	if rep := n.query("@nobody:"+acctServer, "exists", "", ""); rep.Found {
		t.Fatal("unknown user exists")
	}
	var info struct {
		UserID string `json:"user_id"`
		Guest  bool   `json:"guest"`
	}
	if err := json.Unmarshal(n.query(alice, "info", "", "").Json, &info); err != nil || info.UserID != alice || info.Guest {
		t.Fatalf("info = %+v, %v", info, err)
	}
}

func TestUserPasswordChange(t *testing.T) {
	n := startAcctNode(t)
	alice := n.register("alice", "old password")
	hash, err := actors.HashPassword("new password", 4)
	if err != nil {
		t.Fatal(err)
	}
	n.must(&pb.AccountUpdate{UserId: alice, Kind: "password", Value: hash})
	n.mustFail(&pb.CheckPassword{UserId: alice, Password: "old password"}, "M_FORBIDDEN", http.StatusForbidden)
	n.must(&pb.CheckPassword{UserId: alice, Password: "new password"})
	// Not a bcrypt hash: refused, and the password is unchanged.
	n.mustFail(&pb.AccountUpdate{UserId: alice, Kind: "password", Value: []byte("plain")}, "M_INVALID_PARAM", http.StatusBadRequest)
	n.restart()
	n.must(&pb.CheckPassword{UserId: alice, Password: "new password"})
}

func TestUserDeactivate(t *testing.T) {
	n := startAcctNode(t)
	alice := n.register("alice", "pw")
	n.update(alice, "add_device", "DEV1", "", "")
	n.update(alice, "account_data", "m.custom", "", `{"a":1}`)
	n.node.Send(&pb.RoomNotice{UserId: alice, RoomId: "!r:" + acctServer, Pos: 3, Membership: "join"})

	var out struct {
		Devices []string `json:"devices"`
		Rooms   []string `json:"rooms"`
	}
	if err := json.Unmarshal(n.update(alice, "deactivate", "", "", "").Json, &out); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(out.Devices) != "[DEV1]" || fmt.Sprint(out.Rooms) != "[!r:"+acctServer+"]" {
		t.Fatalf("deactivate = %+v", out)
	}
	n.mustFail(&pb.CheckPassword{UserId: alice, Password: "pw"}, "M_USER_DEACTIVATED", http.StatusForbidden)
	n.mustFail(&pb.CheckPassword{UserId: alice, Password: "bad"}, "M_FORBIDDEN", http.StatusForbidden)
	n.mustFail(&pb.AccountUpdate{UserId: alice, Kind: "add_device", Key: "DEV2"}, "M_USER_DEACTIVATED", http.StatusForbidden)
	n.restart()
	if rep := n.query(alice, "profile", "", ""); string(rep.Json) != "{}" {
		t.Fatalf("profile after deactivation = %s", rep.Json)
	}
	if rep := n.query(alice, "account_data", "m.custom", ""); rep.Found {
		t.Fatal("account data survived deactivation")
	}
	if rep := n.query(alice, "devices", "", ""); string(rep.Json) != "[]" {
		t.Fatalf("devices after deactivation = %s", rep.Json)
	}
	// The user ID stays taken.
	if rep := n.query(alice, "exists", "", ""); !rep.Found {
		t.Fatal("deactivated account vanished")
	}
}

func TestDeviceLoginAuthLogout(t *testing.T) {
	n := startAcctNode(t)
	alice := n.register("alice", "pw")
	tok1 := []byte(strings.Repeat("a", 32))
	tok2 := []byte(strings.Repeat("b", 32))
	info := n.must(&pb.DeviceLogin{UserId: alice, DeviceId: "PHONE", TokenHash: tok1, DisplayName: "Phone", Ip: "10.0.0.1"}).(*pb.DeviceInfo)
	if !info.Exists || info.DisplayName != "Phone" || info.LastSeenIp != "10.0.0.1" || info.LastSeenTs == 0 {
		t.Fatalf("login info = %+v", info)
	}
	auth := func(h []byte) bool {
		t.Helper()
		return n.must(&pb.DeviceAuth{UserId: alice, DeviceId: "PHONE", TokenHash: h}).(*pb.DeviceAuthReply).Valid
	}
	if !auth(tok1) || auth(tok2) || auth(nil) {
		t.Fatal("token check wrong after first login")
	}
	// A new login on the same device replaces the token and keeps the name.
	info = n.must(&pb.DeviceLogin{UserId: alice, DeviceId: "PHONE", TokenHash: tok2, DisplayName: "Ignored"}).(*pb.DeviceInfo)
	if info.DisplayName != "Phone" {
		t.Fatalf("re-login renamed the device: %+v", info)
	}
	if auth(tok1) || !auth(tok2) {
		t.Fatal("old token still valid after re-login")
	}
	n.must(&pb.DeviceUpdate{UserId: alice, DeviceId: "PHONE", Kind: "display_name", DisplayName: "My phone"})
	n.restart()
	if !auth(tok2) {
		t.Fatal("token lost in restart")
	}
	if got := n.must(&pb.DeviceQuery{UserId: alice, DeviceId: "PHONE"}).(*pb.DeviceInfo); got.DisplayName != "My phone" {
		t.Fatalf("display name after restart = %q", got.DisplayName)
	}
	n.must(&pb.DeviceUpdate{UserId: alice, DeviceId: "PHONE", Kind: "logout"})
	if auth(tok2) {
		t.Fatal("token valid after logout")
	}
	if got := n.must(&pb.DeviceQuery{UserId: alice, DeviceId: "PHONE"}).(*pb.DeviceInfo); got.Exists {
		t.Fatal("device exists after logout")
	}
	n.mustFail(&pb.DeviceUpdate{UserId: alice, DeviceId: "PHONE", Kind: "display_name", DisplayName: "x"}, "M_NOT_FOUND", http.StatusNotFound)
	n.restart()
	if auth(tok2) {
		t.Fatal("token valid after logout and restart")
	}
	// '/' may appear in a localpart and in a device ID.
	odd := "@a/b:" + acctServer + ":8448"
	n.must(&pb.DeviceLogin{UserId: odd, DeviceId: "X/Y", TokenHash: tok1})
	if !n.must(&pb.DeviceAuth{UserId: odd, DeviceId: "X/Y", TokenHash: tok1}).(*pb.DeviceAuthReply).Valid {
		t.Fatal("device of a user ID with '/' refused its token")
	}
}

func TestUserAccountDataSequence(t *testing.T) {
	n := startAcctNode(t)
	alice := n.register("alice", "pw")
	room := "!room:" + acctServer
	n.update(alice, "account_data", "m.a", "", `{"v":1}`)
	n.update(alice, "room_account_data", "m.b", room, `{"v":2}`)
	n.update(alice, "account_data", "m.a", "", `{"v":3}`)

	first := n.plan(alice, "", 0)
	if !first.Initial {
		t.Fatal("first sync is not initial")
	}
	if withoutPushRules(t, first.AccountData) != `[{"type":"m.a","content":{"v":3}}]` {
		t.Fatalf("initial account data = %s", first.AccountData)
	}
	if string(first.RoomAccountData) != `{"!room:acct.test":[{"type":"m.b","content":{"v":2}}]}` {
		t.Fatalf("initial room account data = %s", first.RoomAccountData)
	}
	tok := n.done(alice, first.Next, nil, nil)

	// Nothing new: an incremental sync reports nothing.
	second := n.plan(alice, tok, 0)
	if second.Initial || len(second.AccountData) != 0 || len(second.RoomAccountData) != 0 {
		t.Fatalf("unchanged sync = %+v", second)
	}
	tok = n.done(alice, second.Next, nil, nil)

	// Only what changed since the token is reported, in sequence order.
	n.update(alice, "account_data", "m.c", "", `{"v":4}`)
	n.update(alice, "tag", "u.work", room, `{"order":0.5}`)
	third := n.plan(alice, tok, 0)
	if string(third.AccountData) != `[{"type":"m.c","content":{"v":4}}]` {
		t.Fatalf("incremental account data = %s", third.AccountData)
	}
	if string(third.RoomAccountData) != `{"!room:acct.test":[{"type":"m.tag","content":{"tags":{"u.work":{"order":0.5}}}}]}` {
		t.Fatalf("incremental room account data = %s", third.RoomAccountData)
	}
	if rep := n.query(alice, "account_data", "m.a", ""); string(rep.Json) != `{"v":3}` {
		t.Fatalf("m.a = %s", rep.Json)
	}
	// Removing the last tag leaves an empty tag map.
	n.update(alice, "tag", "u.work", room, "")
	if rep := n.query(alice, "room_account_data", "m.tag", room); string(rep.Json) != `{"tags":{}}` {
		t.Fatalf("m.tag after removal = %s", rep.Json)
	}
	// Account data is not JSON object: refused.
	n.mustFail(&pb.AccountUpdate{UserId: alice, Kind: "account_data", Key: "m.x", Value: []byte(`[1]`)}, "M_BAD_JSON", http.StatusBadRequest)
}

func TestUserFiltersAndProfile(t *testing.T) {
	n := startAcctNode(t)
	alice := n.register("alice", "pw")
	var f1, f2, f3 struct {
		ID string `json:"filter_id"`
	}
	_ = json.Unmarshal(n.update(alice, "filter", "", "", `{"room":{"timeline":{"limit":5}}}`).Json, &f1)
	_ = json.Unmarshal(n.update(alice, "filter", "", "", `{"presence":{"limit":0}}`).Json, &f2)
	_ = json.Unmarshal(n.update(alice, "filter", "", "", `{"room":{"timeline":{"limit":5}}}`).Json, &f3)
	if f1.ID == "" || f1.ID == f2.ID || f1.ID != f3.ID {
		t.Fatalf("filter IDs %q %q %q: identical filters must share an ID, others not", f1.ID, f2.ID, f3.ID)
	}
	var p struct {
		Profile map[string]string `json:"profile"`
		Changed bool              `json:"changed"`
	}
	_ = json.Unmarshal(n.update(alice, "profile", "displayname", "", `"Alice"`).Json, &p)
	if !p.Changed || p.Profile["displayname"] != "Alice" {
		t.Fatalf("profile update = %+v", p)
	}
	_ = json.Unmarshal(n.update(alice, "profile", "displayname", "", `"Alice"`).Json, &p)
	if p.Changed {
		t.Fatal("setting the same display name reported a change")
	}
	n.update(alice, "profile", "avatar_url", "", `"mxc://x/y"`)
	n.update(alice, "profile", "avatar_url", "", "")
	big := `"` + strings.Repeat("x", actors.MaxProfileBytes) + `"`
	n.mustFail(&pb.AccountUpdate{UserId: alice, Kind: "profile", Key: "m.big", Value: []byte(big)}, "M_PROFILE_TOO_LARGE", http.StatusBadRequest)

	n.restart()
	if rep := n.query(alice, "filter", f2.ID, ""); !rep.Found || string(rep.Json) != `{"presence":{"limit":0}}` {
		t.Fatalf("filter %s after restart = %v %s", f2.ID, rep.Found, rep.Json)
	}
	if rep := n.query(alice, "filter", "999999", ""); rep.Found {
		t.Fatal("unknown filter found")
	}
	if rep := n.query(alice, "profile", "", ""); string(rep.Json) != `{"displayname":"Alice"}` {
		t.Fatalf("profile after restart = %s", rep.Json)
	}
}

func TestUserPresence(t *testing.T) {
	n := startAcctNode(t)
	alice := n.register("alice", "pw")
	n.update(alice, "presence", "", "", `{"presence":"unavailable","status_msg":"lunch"}`)
	// A sync's implicit "online" keeps an explicit "unavailable" and its message.
	n.update(alice, "presence", "", "", `{"presence":"online","from_sync":true}`)
	var p map[string]any
	_ = json.Unmarshal(n.query(alice, "presence", "", "").Json, &p)
	if p["presence"] != "unavailable" || p["status_msg"] != "lunch" {
		t.Fatalf("presence = %v", p)
	}
	first := n.plan(alice, "", 0)
	if !strings.Contains(string(first.Presence), `"presence":"unavailable"`) {
		t.Fatalf("initial sync presence = %s", first.Presence)
	}
	tok := n.done(alice, first.Next, nil, nil)
	n.update(alice, "presence", "", "", `{"presence":"online"}`)
	next := n.plan(alice, tok, 0)
	if !strings.Contains(string(next.Presence), `"presence":"online"`) || strings.Contains(string(next.Presence), "lunch") {
		t.Fatalf("presence after change = %s", next.Presence)
	}
	n.mustFail(&pb.AccountUpdate{UserId: alice, Kind: "presence", Value: []byte(`{"presence":"busy"}`)}, "M_INVALID_PARAM", http.StatusBadRequest)
}

// TestSyncPlanParksAndWakes: a sync with nothing new waits; a room notice
// wakes it with that room; a quiet one ends at its timeout with a token
// for the same position.
func TestSyncPlanParksAndWakes(t *testing.T) {
	n := startAcctNode(t)
	alice := n.register("alice", "pw")
	room := "!r:" + acctServer
	n.node.Send(&pb.RoomNotice{UserId: alice, RoomId: room, Pos: 1, Membership: "join"})

	first := n.plan(alice, "", 0)
	if len(first.Rooms) != 1 || first.Rooms[0].RoomId != room || !first.Rooms[0].Newly || first.Rooms[0].From != 0 ||
		first.Rooms[0].Membership != "join" || first.Rooms[0].MembershipPos != 1 {
		t.Fatalf("initial plan rooms = %v", first.Rooms)
	}
	tok := n.done(alice, first.Next, map[string]uint64{room: 1}, map[string]uint64{room: 0})

	type answer struct {
		plan *pb.SyncPlanReply
		err  error
		at   time.Time
	}
	ch := make(chan answer, 1)
	go func() {
		res, err := n.req(&pb.SyncPlan{UserId: alice, Since: tok, TimeoutMs: 15_000})
		a := answer{err: err, at: time.Now()}
		if err == nil {
			a.plan = res.(*pb.SyncPlanReply)
		}
		ch <- a
	}()
	select {
	case a := <-ch:
		t.Fatalf("sync with nothing new answered at once: %+v", a)
	case <-time.After(300 * time.Millisecond):
	}
	woke := time.Now()
	n.node.Send(&pb.RoomNotice{UserId: alice, RoomId: room, Pos: 2})
	var a answer
	select {
	case a = <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("room notice did not wake the parked sync")
	}
	if a.err != nil {
		t.Fatal(a.err)
	}
	if got := a.plan.Rooms; len(got) != 1 || got[0].RoomId != room || got[0].From != 1 || got[0].Newly {
		t.Fatalf("woken plan rooms = %v", got)
	}
	if a.at.Before(woke) {
		t.Fatal("answered before the notice")
	}
	tok = n.done(alice, a.plan.Next, map[string]uint64{room: 2}, nil)

	// Typing (an ephemeral notice) wakes it too.
	go func() {
		res, err := n.req(&pb.SyncPlan{UserId: alice, Since: tok, TimeoutMs: 15_000})
		a := answer{err: err}
		if err == nil {
			a.plan = res.(*pb.SyncPlanReply)
		}
		ch <- a
	}()
	time.Sleep(200 * time.Millisecond)
	n.node.Send(&pb.RoomNotice{UserId: alice, RoomId: room, EphemeralPos: 7})
	if a = <-ch; a.err != nil || len(a.plan.Rooms) != 1 || a.plan.Rooms[0].EphemeralFrom != 0 {
		t.Fatalf("ephemeral wake = %+v", a)
	}
	tok = n.done(alice, a.plan.Next, map[string]uint64{room: 2}, map[string]uint64{room: 7})

	// Quiet: the timeout answers an empty plan whose token resumes at the
	// same place.
	start := time.Now()
	quiet := n.plan(alice, tok, 400*time.Millisecond)
	if len(quiet.Rooms) != 0 || quiet.Next == "" || quiet.Next == tok {
		t.Fatalf("timed-out plan = %+v", quiet)
	}
	if el := time.Since(start); el < 350*time.Millisecond {
		t.Fatalf("timed out after %v, want ~400ms", el)
	}
	tok = n.done(alice, quiet.Next, nil, nil)
	n.node.Send(&pb.RoomNotice{UserId: alice, RoomId: room, Pos: 3})
	after := n.plan(alice, tok, 0)
	if len(after.Rooms) != 1 || after.Rooms[0].From != 2 || after.Rooms[0].EphemeralFrom != 7 {
		t.Fatalf("plan after a quiet sync = %v", after.Rooms)
	}
}

// TestSyncMembershipChanges: joins, invites and leaves between two syncs
// are reported as such.
func TestSyncMembershipChanges(t *testing.T) {
	n := startAcctNode(t)
	alice := n.register("alice", "pw")
	joined, invited, left := "!j:"+acctServer, "!i:"+acctServer, "!l:"+acctServer
	n.node.Send(&pb.RoomNotice{UserId: alice, RoomId: joined, Pos: 5, Membership: "join"})
	n.node.Send(&pb.RoomNotice{UserId: alice, RoomId: left, Pos: 2, Membership: "join"})
	first := n.plan(alice, "", 0)
	tok := n.done(alice, first.Next, map[string]uint64{joined: 5, left: 2}, map[string]uint64{joined: 0, left: 0})

	n.node.Send(&pb.RoomNotice{UserId: alice, RoomId: invited, Pos: 9, Membership: "invite"})
	n.node.Send(&pb.RoomNotice{UserId: alice, RoomId: left, Pos: 4, Membership: "leave"})
	p := n.plan(alice, tok, 0)
	got := map[string]*pb.PlannedRoom{}
	for _, r := range p.Rooms {
		got[r.RoomId] = r
	}
	if len(got) != 2 {
		t.Fatalf("planned %v, want the invite and the leave", roomIDs(p))
	}
	if r := got[invited]; r == nil || r.Membership != "invite" || !r.Newly || r.From != 0 || r.MembershipPos != 9 {
		t.Fatalf("invite planned as %v", r)
	}
	if r := got[left]; r == nil || r.Membership != "leave" || !r.Newly || r.From != 2 || r.MembershipPos != 4 {
		t.Fatalf("leave planned as %v", r)
	}
	// The gateway did not reach the invite: it is reported again next time,
	// the leave is not.
	tok = n.done(alice, p.Next, map[string]uint64{left: 4}, nil)
	p = n.plan(alice, tok, 0)
	if ids := roomIDs(p); len(ids) != 1 || ids[0] != invited {
		t.Fatalf("after a partial sync planned %v, want only the invite", ids)
	}
	// Forgetting needs the user to have left.
	n.mustFail(&pb.AccountUpdate{UserId: alice, Kind: "forget", RoomId: joined}, "M_UNKNOWN", http.StatusBadRequest)
	n.update(alice, "forget", "", left, "")
	var rooms map[string]any
	_ = json.Unmarshal(n.query(alice, "rooms", "", "").Json, &rooms)
	if _, has := rooms[left]; has || len(rooms) != 2 {
		t.Fatalf("rooms after forget = %v", rooms)
	}
}

// TestSyncRecordsSurviveRestartAndPruning runs many syncs (so that records
// are written as deltas, in full every few, and old ones are pruned), then
// restarts the node and checks the last token still resumes where it was.
func TestSyncRecordsSurviveRestartAndPruning(t *testing.T) {
	n := startAcctNode(t)
	alice := n.register("alice", "pw")
	rooms := []string{"!a:" + acctServer, "!b:" + acctServer, "!c:" + acctServer}
	for _, r := range rooms {
		n.node.Send(&pb.RoomNotice{UserId: alice, RoomId: r, Pos: 1, Membership: "join"})
	}
	first := n.plan(alice, "", 0)
	pos := map[string]uint64{rooms[0]: 1, rooms[1]: 1, rooms[2]: 1}
	tok := n.done(alice, first.Next, pos, map[string]uint64{rooms[0]: 0, rooms[1]: 0, rooms[2]: 0})
	firstTok := tok
	for i := 2; i < 90; i++ {
		r := rooms[i%3]
		n.node.Send(&pb.RoomNotice{UserId: alice, RoomId: r, Pos: uint64(i)})
		p := n.plan(alice, tok, 0)
		if ids := roomIDs(p); len(ids) != 1 || ids[0] != r || p.Rooms[0].From != pos[r] {
			t.Fatalf("sync %d planned %v (from %v), want %s from %d", i, ids, p.Rooms, r, pos[r])
		}
		pos[r] = uint64(i)
		tok = n.done(alice, p.Next, map[string]uint64{r: uint64(i)}, nil)
	}
	n.restart()
	// After a restart every joined room may have moved: all are planned,
	// each from the position the last sync reached.
	p := n.plan(alice, tok, 0)
	if p.Initial || len(p.Rooms) != 3 {
		t.Fatalf("plan after restart = %+v", p)
	}
	for _, r := range p.Rooms {
		if r.From != pos[r.RoomId] || r.Newly {
			t.Fatalf("room %s planned from %d, want %d", r.RoomId, r.From, pos[r.RoomId])
		}
	}
	// The first token's record has been pruned: answered as an initial sync.
	if old := n.plan(alice, firstTok, 0); !old.Initial {
		t.Fatal("a pruned token was not answered as an initial sync")
	}
	if bad := n.plan(alice, "garbage", 0); !bad.Initial {
		t.Fatal("a malformed token was not answered as an initial sync")
	}
}

// TestUserPassivation: an idle user actor stops and comes back from
// storage; one holding a long-poll stays until the long-poll is answered.
func TestUserPassivation(t *testing.T) {
	n := &acctNode{t: t, dir: t.TempDir(), idle: 150 * time.Millisecond}
	n.start()
	t.Cleanup(n.stop)
	alice := n.register("alice", "pw")
	n.update(alice, "account_data", "m.a", "", `{"v":1}`)
	waitIdle := func() {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for n.node.ActiveActors() != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%d actors still active", n.node.ActiveActors())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitIdle()
	if rep := n.query(alice, "account_data", "m.a", ""); string(rep.Json) != `{"v":1}` {
		t.Fatalf("account data after passivation = %s", rep.Json)
	}
	tok := n.done(alice, n.plan(alice, "", 0).Next, nil, nil)
	start := time.Now()
	quiet := n.plan(alice, tok, 1200*time.Millisecond)
	if el := time.Since(start); el < time.Second || len(quiet.Rooms) != 0 || quiet.Next == "" {
		t.Fatalf("long-poll across idle timeouts ended after %v with %+v", el, quiet)
	}
	// The token of the answered long-poll still works after passivation.
	tok = n.done(alice, quiet.Next, nil, nil)
	waitIdle()
	n.update(alice, "account_data", "m.b", "", `{"v":2}`)
	if p := n.plan(alice, tok, 0); p.Initial || string(p.AccountData) != `[{"type":"m.b","content":{"v":2}}]` {
		t.Fatalf("plan after passivation = %+v", p)
	}
}

// TestDeviceLastSeen: authenticating refreshes the device's last-seen time
// at most once a minute (or when the address changes), never on every
// request.
func TestDeviceLastSeen(t *testing.T) {
	var clock atomic.Int64
	clock.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli())
	n := &acctNode{t: t, dir: t.TempDir(), now: func() time.Time { return time.UnixMilli(clock.Load()) }}
	n.start()
	t.Cleanup(n.stop)
	alice := n.register("alice", "pw")
	tok := []byte(strings.Repeat("t", 32))
	login := n.must(&pb.DeviceLogin{UserId: alice, DeviceId: "D", TokenHash: tok, Ip: "10.0.0.1"}).(*pb.DeviceInfo)
	seen := func() *pb.DeviceInfo {
		t.Helper()
		return n.must(&pb.DeviceQuery{UserId: alice, DeviceId: "D"}).(*pb.DeviceInfo)
	}
	auth := func(ip string) {
		t.Helper()
		if !n.must(&pb.DeviceAuth{UserId: alice, DeviceId: "D", TokenHash: tok, Ip: ip}).(*pb.DeviceAuthReply).Valid {
			t.Fatal("token refused")
		}
	}
	clock.Add(30_000)
	auth("10.0.0.1")
	if got := seen(); got.LastSeenTs != login.LastSeenTs {
		t.Fatalf("last seen moved after 30s: %d → %d", login.LastSeenTs, got.LastSeenTs)
	}
	auth("10.0.0.2")
	if got := seen(); got.LastSeenIp != "10.0.0.2" || got.LastSeenTs != clock.Load() {
		t.Fatalf("new address not recorded: %+v", got)
	}
	clock.Add(61_000)
	auth("10.0.0.2")
	if got := seen(); got.LastSeenTs != clock.Load() {
		t.Fatalf("last seen not refreshed after a minute: %+v", got)
	}
	// A refused token records nothing.
	clock.Add(120_000)
	if n.must(&pb.DeviceAuth{UserId: alice, DeviceId: "D", TokenHash: make([]byte, 32), Ip: "6.6.6.6"}).(*pb.DeviceAuthReply).Valid {
		t.Fatal("wrong token accepted")
	}
	if got := seen(); got.LastSeenIp != "10.0.0.2" {
		t.Fatalf("refused request recorded: %+v", got)
	}
}
