package actors_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
)

// pushRuleset reads a user's ruleset through AccountQuery push_rules.
func (n *acctNode) pushRuleset(userID string) actors.PushRuleset {
	n.t.Helper()
	rep := n.query(userID, "push_rules", "", "")
	if !rep.Found {
		n.t.Fatalf("push rules of %s not found", userID)
	}
	var c struct {
		Global actors.PushRuleset `json:"global"`
	}
	if err := json.Unmarshal(rep.Json, &c); err != nil {
		n.t.Fatalf("push rules %s: %v", rep.Json, err)
	}
	return c.Global
}

func (n *acctNode) pushUpdate(u *pb.PushRuleUpdate) {
	n.t.Helper()
	n.must(u)
}

func ruleIDs(rules []actors.PushRule) []string {
	out := []string{}
	for _, r := range rules {
		out = append(out, r.RuleID)
	}
	return out
}

// withoutPushRules drops m.push_rules from a plan's global account data,
// for tests about other account data.
func withoutPushRules(t *testing.T, raw []byte) string {
	t.Helper()
	var evs []json.RawMessage
	if err := json.Unmarshal(raw, &evs); err != nil {
		t.Fatalf("account data %s: %v", raw, err)
	}
	evs = slices.DeleteFunc(evs, func(e json.RawMessage) bool {
		var h struct{ Type string }
		_ = json.Unmarshal(e, &h)
		return h.Type == actors.PushRulesEventType
	})
	b, _ := json.Marshal(evs)
	return string(b)
}

// pushRulesIn returns the m.push_rules content of a plan's global account
// data, or nil.
func pushRulesIn(t *testing.T, raw []byte) *actors.PushRuleset {
	t.Helper()
	if len(raw) == 0 {
		return nil
	}
	var evs []struct {
		Type    string `json:"type"`
		Content struct {
			Global actors.PushRuleset `json:"global"`
		} `json:"content"`
	}
	if err := json.Unmarshal(raw, &evs); err != nil {
		t.Fatalf("account data %s: %v", raw, err)
	}
	for _, e := range evs {
		if e.Type == actors.PushRulesEventType {
			return &e.Content.Global
		}
	}
	return nil
}

func TestPushRulesDefaults(t *testing.T) {
	n := startAcctNode(t)
	alice := n.register("alice", "pw")
	rs := n.pushRuleset(alice)

	wantOverride := []string{".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me",
		".m.rule.member_event", ".m.rule.is_user_mention", ".m.rule.is_room_mention", ".m.rule.tombstone",
		".m.rule.reaction", ".m.rule.room.server_acl", ".m.rule.suppress_edits"}
	wantUnderride := []string{".m.rule.call", ".m.rule.encrypted_room_one_to_one", ".m.rule.room_one_to_one",
		".m.rule.message", ".m.rule.encrypted"}
	if got := ruleIDs(rs.Override); !slices.Equal(got, wantOverride) {
		t.Errorf("override = %v", got)
	}
	if got := ruleIDs(rs.Underride); !slices.Equal(got, wantUnderride) {
		t.Errorf("underride = %v", got)
	}
	// MSC4210 removed the body-matching defaults: no content defaults.
	if len(rs.Content) != 0 || len(rs.Room) != 0 || len(rs.Sender) != 0 {
		t.Errorf("content/room/sender = %v %v %v", rs.Content, rs.Room, rs.Sender)
	}
	for _, r := range slices.Concat(rs.Override, rs.Underride) {
		if !r.Default || r.Enabled != (r.RuleID != ".m.rule.master") || r.Conditions == nil {
			t.Errorf("default rule %s: default=%v enabled=%v conditions=%v", r.RuleID, r.Default, r.Enabled, r.Conditions)
		}
	}
	// The rules naming the user carry the user's ID.
	if !strings.Contains(string(rs.Override[2].Conditions[2]), alice) ||
		!strings.Contains(string(rs.Override[4].Conditions[0]), alice) {
		t.Errorf("invite_for_me / is_user_mention lack %s: %s %s", alice, rs.Override[2].Conditions, rs.Override[4].Conditions)
	}
	// MSC4010: the account data read answers the same ruleset.
	if a, b := n.query(alice, "account_data", actors.PushRulesEventType, ""), n.query(alice, "push_rules", "", ""); string(a.Json) != string(b.Json) || !a.Found {
		t.Errorf("account_data m.push_rules = %s", a.Json)
	}
	if rep := n.query("@nobody:"+acctServer, "push_rules", "", ""); rep.Found {
		t.Error("push rules of an unknown user found")
	}
}

func TestPushRulesOrderingAndStorage(t *testing.T) {
	n := startAcctNode(t)
	alice := n.register("alice", "pw")
	put := func(kind, id, before, after, body string) {
		t.Helper()
		n.pushUpdate(&pb.PushRuleUpdate{UserId: alice, Op: "put", Kind: kind, RuleId: id, Before: before, After: after, Body: []byte(body)})
	}
	rule := func(pattern string) string { return `{"pattern":"` + pattern + `","actions":["notify"]}` }
	contentIDs := func() []string { return ruleIDs(n.pushRuleset(alice).Content) }

	put("content", "a", "", "", rule("a"))
	put("content", "b", "", "", rule("b")) // new rules go first
	put("content", "c", "a", "", rule("c"))
	put("content", "d", "", "a", rule("d"))
	if got := contentIDs(); !slices.Equal(got, []string{"b", "c", "a", "d"}) {
		t.Fatalf("after puts: %v", got)
	}
	// before wins over after.
	put("content", "e", "b", "d", rule("e"))
	if got := contentIDs(); !slices.Equal(got, []string{"e", "b", "c", "a", "d"}) {
		t.Fatalf("before and after: %v", got)
	}
	// An update without before/after keeps its place and its enabled flag.
	n.pushUpdate(&pb.PushRuleUpdate{UserId: alice, Op: "enabled", Kind: "content", RuleId: "c", Body: []byte(`{"enabled":false}`)})
	put("content", "c", "", "", rule("cc"))
	rs := n.pushRuleset(alice)
	if got := ruleIDs(rs.Content); !slices.Equal(got, []string{"e", "b", "c", "a", "d"}) {
		t.Fatalf("after update: %v", got)
	}
	if c := rs.Content[2]; c.Enabled || c.Pattern == nil || *c.Pattern != "cc" || c.Default {
		t.Fatalf("updated rule = %+v", c)
	}
	// An update with after moves it.
	put("content", "e", "", "d", rule("e"))
	if got := contentIDs(); !slices.Equal(got, []string{"b", "c", "a", "d", "e"}) {
		t.Fatalf("after move: %v", got)
	}
	n.pushUpdate(&pb.PushRuleUpdate{UserId: alice, Op: "delete", Kind: "content", RuleId: "a"})
	if got := contentIDs(); !slices.Equal(got, []string{"b", "c", "d", "e"}) {
		t.Fatalf("after delete: %v", got)
	}

	// User override and underride rules sit between the master rule and the
	// other defaults, and above the default underrides.
	put("override", "mine", "", "", `{"conditions":[{"kind":"event_match","key":"type","pattern":"x.y"}],"actions":[]}`)
	put("underride", "low", "", "", `{"actions":["notify"]}`)
	put("room", "!r:"+acctServer, "", "", `{"actions":[],"conditions":[{"kind":"ignored"}],"pattern":"ignored"}`)
	rs = n.pushRuleset(alice)
	if got := ruleIDs(rs.Override)[:3]; !slices.Equal(got, []string{".m.rule.master", "mine", ".m.rule.suppress_notices"}) {
		t.Fatalf("override = %v", got)
	}
	if rs.Underride[0].RuleID != "low" || rs.Underride[0].Conditions == nil || len(rs.Underride[0].Conditions) != 0 {
		t.Fatalf("underride[0] = %+v", rs.Underride[0])
	}
	if r := rs.Room[0]; r.Conditions != nil || r.Pattern != nil || !r.Enabled {
		t.Fatalf("room rule = %+v", r)
	}

	// Defaults: disabled, enabled, actions changed; the historical
	// dont_notify is dropped.
	n.pushUpdate(&pb.PushRuleUpdate{UserId: alice, Op: "enabled", Kind: "override", RuleId: ".m.rule.master", Body: []byte(`{"enabled":true}`)})
	n.pushUpdate(&pb.PushRuleUpdate{UserId: alice, Op: "actions", Kind: "underride", RuleId: ".m.rule.message",
		Body: []byte(`{"actions":["dont_notify",{"set_tweak":"sound","value":"bing"}]}`)})

	// Everything survives a restart (the actor reloads from storage).
	n.restart()
	rs = n.pushRuleset(alice)
	if got := ruleIDs(rs.Content); !slices.Equal(got, []string{"b", "c", "d", "e"}) {
		t.Fatalf("content after restart: %v", got)
	}
	if !rs.Override[0].Enabled {
		t.Error("master not enabled after restart")
	}
	msg, err := rs.Find("underride", ".m.rule.message")
	if err != nil || len(msg.Actions) != 1 || string(msg.Actions[0]) != `{"set_tweak":"sound","value":"bing"}` || !msg.Default {
		t.Fatalf(".m.rule.message = %+v %v", msg, err)
	}
	// Setting a default back to its default value drops the change.
	n.pushUpdate(&pb.PushRuleUpdate{UserId: alice, Op: "actions", Kind: "underride", RuleId: ".m.rule.message", Body: []byte(`{"actions":["notify"]}`)})
	n.pushUpdate(&pb.PushRuleUpdate{UserId: alice, Op: "enabled", Kind: "override", RuleId: ".m.rule.master", Body: []byte(`{"enabled":false}`)})
	rs = n.pushRuleset(alice)
	def := actors.DefaultPushRules(alice)
	if got, _ := json.Marshal(rs.Override[0]); string(got) != string(must(json.Marshal(def.Override[0]))) {
		t.Errorf("master = %s", got)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func TestPushRulesRefused(t *testing.T) {
	n := startAcctNode(t)
	alice := n.register("alice", "pw")
	n.pushUpdate(&pb.PushRuleUpdate{UserId: alice, Op: "put", Kind: "sender", RuleId: "@spam:x", Body: []byte(`{"actions":[]}`)})
	up := func(op, kind, id, body string) *pb.PushRuleUpdate {
		return &pb.PushRuleUpdate{UserId: alice, Op: op, Kind: kind, RuleId: id, Body: []byte(body)}
	}
	long := strings.Repeat("x", 600)
	bigConds := bigConditions(10)
	for _, c := range []struct {
		name    string
		u       *pb.PushRuleUpdate
		errcode string
		status  int
	}{
		{"unknown kind", up("put", "global", "x", `{"actions":[]}`), "M_INVALID_PARAM", 400},
		{"dot rule ID", up("put", "override", ".mine", `{"actions":[]}`), "M_INVALID_PARAM", 400},
		{"replace a default", up("put", "override", ".m.rule.master", `{"actions":[]}`), "M_INVALID_PARAM", 400},
		{"slash in rule ID", up("put", "room", "a/b", `{"actions":[]}`), "M_INVALID_PARAM", 400},
		{"backslash in rule ID", up("put", "room", `a\b`, `{"actions":[]}`), "M_INVALID_PARAM", 400},
		{"empty rule ID", up("put", "room", "", `{"actions":[]}`), "M_INVALID_PARAM", 400},
		{"no actions", up("put", "room", "!r:x", `{}`), "M_BAD_JSON", 400},
		{"actions not an array", up("put", "room", "!r:x", `{"actions":"notify"}`), "M_BAD_JSON", 400},
		{"unknown action", up("put", "room", "!r:x", `{"actions":["not_an_action"]}`), "M_INVALID_PARAM", 400},
		{"tweak without name", up("put", "room", "!r:x", `{"actions":[{"value":1}]}`), "M_INVALID_PARAM", 400},
		{"highlight not a boolean", up("put", "room", "!r:x", `{"actions":[{"set_tweak":"highlight","value":"yes"}]}`), "M_INVALID_PARAM", 400},
		{"content without pattern", up("put", "content", "c", `{"actions":[]}`), "M_BAD_JSON", 400},
		{"condition without kind", up("put", "underride", "u", `{"actions":[],"conditions":[{}]}`), "M_BAD_JSON", 400},
		{"conditions not an array", up("put", "underride", "u", `{"actions":[],"conditions":{}}`), "M_BAD_JSON", 400},
		{"event_match without pattern", up("put", "override", "o", `{"actions":[],"conditions":[{"kind":"event_match","key":"type"}]}`), "M_INVALID_PARAM", 400},
		{"property_is with a float", up("put", "override", "o", `{"actions":[],"conditions":[{"kind":"event_property_is","key":"a","value":1.5}]}`), "M_INVALID_PARAM", 400},
		{"property_is with an object", up("put", "override", "o", `{"actions":[],"conditions":[{"kind":"event_property_is","key":"a","value":{}}]}`), "M_INVALID_PARAM", 400},
		{"property_contains without value", up("put", "override", "o", `{"actions":[],"conditions":[{"kind":"event_property_contains","key":"a"}]}`), "M_INVALID_PARAM", 400},
		{"bad member count", up("put", "override", "o", `{"actions":[],"conditions":[{"kind":"room_member_count","is":"=>2"}]}`), "M_INVALID_PARAM", 400},
		{"pattern too long", up("put", "content", "c", `{"actions":[],"pattern":"`+long+`"}`), "M_INVALID_PARAM", 400},
		{"condition pattern too long", up("put", "override", "o", `{"actions":[],"conditions":[{"kind":"event_match","key":"type","pattern":"`+long+`"}]}`), "M_INVALID_PARAM", 400},
		{"too many conditions", up("put", "override", "o", `{"actions":[],"conditions":[`+strings.Repeat(`{"kind":"x"},`, 32)+`{"kind":"x"}]}`), "M_INVALID_PARAM", 400},
		{"rule too large", up("put", "override", "o", `{"actions":[],"conditions":`+bigConds+`}`), "M_TOO_LARGE", 413},
		{"unknown before", &pb.PushRuleUpdate{UserId: alice, Op: "put", Kind: "sender", RuleId: "@b:x", Before: "nope", Body: []byte(`{"actions":[]}`)}, "M_UNKNOWN", 400},
		{"before a default", &pb.PushRuleUpdate{UserId: alice, Op: "put", Kind: "override", RuleId: "o", Before: ".m.rule.master", Body: []byte(`{"actions":[]}`)}, "M_INVALID_PARAM", 400},
		{"after itself", &pb.PushRuleUpdate{UserId: alice, Op: "put", Kind: "sender", RuleId: "@spam:x", After: "@spam:x", Body: []byte(`{"actions":[]}`)}, "M_UNKNOWN", 400},
		{"delete a default", up("delete", "override", ".m.rule.master", ""), "M_INVALID_PARAM", 400},
		{"delete unknown", up("delete", "override", "nope", ""), "M_NOT_FOUND", 404},
		{"delete in another kind", up("delete", "room", "@spam:x", ""), "M_NOT_FOUND", 404},
		{"enable unknown", up("enabled", "override", "nope", `{"enabled":true}`), "M_NOT_FOUND", 404},
		{"enable a default of another kind", up("enabled", "underride", ".m.rule.master", `{"enabled":true}`), "M_NOT_FOUND", 404},
		{"enabled not a boolean", up("enabled", "override", ".m.rule.master", `{"enabled":"yes"}`), "M_BAD_JSON", 400},
		{"enabled missing", up("enabled", "override", ".m.rule.master", `{}`), "M_BAD_JSON", 400},
		{"actions of unknown", up("actions", "sender", "nope", `{"actions":[]}`), "M_NOT_FOUND", 404},
		{"bad actions of a default", up("actions", "override", ".m.rule.master", `{"actions":[7]}`), "M_INVALID_PARAM", 400},
		{"unknown op", up("frobnicate", "override", "x", ""), "M_INVALID_PARAM", 400},
	} {
		_, err := n.req(c.u)
		var me *actors.MatrixError
		if !errors.As(err, &me) || me.ErrCode != c.errcode || me.Status != c.status {
			t.Errorf("%s: got %v, want %s (%d)", c.name, err, c.errcode, c.status)
		}
	}
	// None of it changed anything.
	rs := n.pushRuleset(alice)
	if got := ruleIDs(rs.Sender); !slices.Equal(got, []string{"@spam:x"}) || len(rs.Room) != 0 || len(rs.Content) != 0 {
		t.Fatalf("rules after refusals: %+v", rs)
	}
	// Unknown condition kinds are kept (and never match).
	n.pushUpdate(up("put", "override", "future", `{"actions":["notify"],"conditions":[{"kind":"org.example.future","x":[1]}]}`))
	if r, err := n.pushRuleset(alice).Find("override", "future"); err != nil || string(r.Conditions[0]) != `{"kind":"org.example.future","x":[1]}` {
		t.Fatalf("future rule = %+v %v", r, err)
	}
}

// bigConditions is a JSON array of n event_match conditions of about 500
// bytes each.
func bigConditions(n int) string {
	conds := make([]string, n)
	for i := range conds {
		conds[i] = `{"kind":"event_match","key":"content.k` + fmt.Sprint(i) + `","pattern":"` + strings.Repeat("p", 460) + `"}`
	}
	return "[" + strings.Join(conds, ",") + "]"
}

// The published ruleset is bounded: large rules run into the size bound
// long before the count bound (see TestPushSettingsCountBound).
func TestPushRulesBounded(t *testing.T) {
	n := startAcctNode(t)
	alice := n.register("alice", "pw")
	conds := bigConditions(7) // a rule of some 3.5 KB
	accepted := 0
	for i := range 2 * actors.MaxPushRulesetBytes / actors.MaxPushRuleBytes {
		_, err := n.req(&pb.PushRuleUpdate{UserId: alice, Op: "put", Kind: "override", RuleId: fmt.Sprint(i),
			Body: []byte(`{"actions":[],"conditions":` + conds + `}`)})
		if err == nil {
			accepted++
			continue
		}
		var me *actors.MatrixError
		if !errors.As(err, &me) || me.ErrCode != "M_FORBIDDEN" || me.Status != http.StatusForbidden {
			t.Fatalf("rule %d: %v", i, err)
		}
		break
	}
	if accepted == 0 || accepted*actors.MaxPushRuleBytes > 2*actors.MaxPushRulesetBytes {
		t.Fatalf("%d large rules accepted", accepted)
	}
	rep := n.query(alice, "push_rules", "", "")
	if len(rep.Json) > actors.MaxPushRulesetBytes {
		t.Fatalf("ruleset of %d bytes", len(rep.Json))
	}
	// Making room lets a rule in again.
	n.pushUpdate(&pb.PushRuleUpdate{UserId: alice, Op: "delete", Kind: "override", RuleId: "0"})
	n.pushUpdate(&pb.PushRuleUpdate{UserId: alice, Op: "put", Kind: "content", RuleId: "small", Body: []byte(`{"actions":[],"pattern":"s"}`)})
}

func TestPushRulesInSyncPlan(t *testing.T) {
	n := startAcctNode(t)
	alice := n.register("alice", "pw")

	// An initial sync carries the defaults, though nothing was ever written.
	first := n.plan(alice, "", 0)
	rs := pushRulesIn(t, first.AccountData)
	if rs == nil || len(rs.Override) == 0 || rs.Override[0].RuleID != ".m.rule.master" {
		t.Fatalf("initial account data = %s", first.AccountData)
	}
	tok := n.done(alice, first.Next, nil, nil)
	if second := n.plan(alice, tok, 0); len(second.AccountData) != 0 {
		t.Fatalf("unchanged sync carries %s", second.AccountData)
	}

	// A long-poll wakes on a rule change and carries the new ruleset.
	got := make(chan *pb.SyncPlanReply, 1)
	go func() {
		res, err := n.req(&pb.SyncPlan{UserId: alice, DeviceId: "D", Since: tok, TimeoutMs: 10_000})
		if err != nil {
			t.Error(err)
			got <- nil
			return
		}
		got <- res.(*pb.SyncPlanReply)
	}()
	time.Sleep(100 * time.Millisecond)
	n.pushUpdate(&pb.PushRuleUpdate{UserId: alice, Op: "put", Kind: "room", RuleId: "!quiet:x", Body: []byte(`{"actions":[]}`)})
	var woke *pb.SyncPlanReply
	select {
	case woke = <-got:
	case <-time.After(8 * time.Second):
		t.Fatal("long-poll did not wake on a push rule change")
	}
	if woke == nil {
		t.FailNow()
	}
	rs = pushRulesIn(t, woke.AccountData)
	if rs == nil || len(rs.Room) != 1 || rs.Room[0].RuleID != "!quiet:x" {
		t.Fatalf("woken sync account data = %s", woke.AccountData)
	}
	tok = n.done(alice, woke.Next, nil, nil)

	// A change to nothing (disabling twice) does not make a new event.
	n.pushUpdate(&pb.PushRuleUpdate{UserId: alice, Op: "enabled", Kind: "room", RuleId: "!quiet:x", Body: []byte(`{"enabled":false}`)})
	third := n.plan(alice, tok, 0)
	if rs := pushRulesIn(t, third.AccountData); rs == nil || rs.Room[0].Enabled {
		t.Fatalf("disable not reported: %s", third.AccountData)
	}
	tok = n.done(alice, third.Next, nil, nil)
	n.pushUpdate(&pb.PushRuleUpdate{UserId: alice, Op: "enabled", Kind: "room", RuleId: "!quiet:x", Body: []byte(`{"enabled":false}`)})
	if fourth := n.plan(alice, tok, 0); len(fourth.AccountData) != 0 {
		t.Fatalf("no-op change reported: %s", fourth.AccountData)
	}

	// Deactivation erases the user's rules with the rest of their account data.
	n.update(alice, "deactivate", "", "", "")
	if rs := n.pushRuleset(alice); len(rs.Room) != 0 {
		t.Fatalf("rules after deactivation: %+v", rs.Room)
	}
	n.mustFail(&pb.PushRuleUpdate{UserId: alice, Op: "put", Kind: "room", RuleId: "!r:x", Body: []byte(`{"actions":[]}`)},
		"M_USER_DEACTIVATED", http.StatusForbidden)
}
