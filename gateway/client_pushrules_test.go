package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/pushrules"

	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

const pushBase = "/_matrix/client/v3/pushrules/"

func pushRuleIDs(rules pushrules.PushRuleArray) []string {
	var out []string
	for _, r := range rules {
		out = append(out, r.RuleID)
	}
	return out
}

// rawGet returns the body of a GET that must succeed.
func rawGet(t *testing.T, node *shoaltest.Node, token, path string) []byte {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, node.BaseURL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
	}
	return body
}

func TestPushRulesOverHTTP(t *testing.T) {
	node := shoaltest.Start(t)
	ctx := context.Background()
	alice := node.Register("alice")

	rs, err := alice.GetPushRules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs.Override) == 0 || rs.Override[0].RuleID != ".m.rule.master" || rs.Override[0].Enabled || !rs.Override[0].Default {
		t.Fatalf("override = %v", pushRuleIDs(rs.Override))
	}
	if !slices.Contains(pushRuleIDs(rs.Underride), ".m.rule.room_one_to_one") || len(rs.Content) != 0 {
		t.Fatalf("underride = %v, content = %v", pushRuleIDs(rs.Underride), pushRuleIDs(rs.Content))
	}

	// Content rules, placed with before.
	sound := &pushrules.PushAction{Action: pushrules.ActionSetTweak, Tweak: pushrules.TweakSound, Value: "cakealarm.wav"}
	notify := &pushrules.PushAction{Action: pushrules.ActionNotify}
	if err := alice.PutPushRule(ctx, "global", pushrules.ContentRule, "cake", &mautrix.ReqPutPushRule{
		Pattern: "cake", Actions: []*pushrules.PushAction{notify, sound}}); err != nil {
		t.Fatal(err)
	}
	if err := alice.PutPushRule(ctx, "global", pushrules.ContentRule, "cakelie", &mautrix.ReqPutPushRule{
		Before: "cake", Pattern: "cake*lie", Actions: []*pushrules.PushAction{notify}}); err != nil {
		t.Fatal(err)
	}
	if err := alice.PutPushRule(ctx, "global", pushrules.ContentRule, "tea", &mautrix.ReqPutPushRule{
		After: "cake", Pattern: "tea", Actions: []*pushrules.PushAction{}}); err != nil {
		t.Fatal(err)
	}
	rule, err := alice.GetPushRule(ctx, "global", pushrules.ContentRule, "cake")
	if err != nil {
		t.Fatal(err)
	}
	if rule.Pattern != "cake" || !rule.Enabled || rule.Default || len(rule.Actions) != 2 || rule.Actions[1].Value != "cakealarm.wav" {
		t.Fatalf("cake rule = %+v", rule)
	}
	// Room and sender rules are named by the room or user ID (escaped in
	// the path).
	room := "!abc:" + node.ServerName()
	if err := alice.PutPushRule(ctx, "global", pushrules.RoomRule, room, &mautrix.ReqPutPushRule{Actions: []*pushrules.PushAction{}}); err != nil {
		t.Fatal(err)
	}
	if err := alice.PutPushRule(ctx, "global", pushrules.SenderRule, "@spam:example.org", &mautrix.ReqPutPushRule{Actions: []*pushrules.PushAction{}}); err != nil {
		t.Fatal(err)
	}
	// Defaults: enabled and actions can be changed.
	if err := alice.SetPushRuleEnabled(ctx, "global", pushrules.OverrideRule, ".m.rule.suppress_notices", false); err != nil {
		t.Fatal(err)
	}
	if err := alice.PutPushRuleActions(ctx, "global", pushrules.UnderrideRule, ".m.rule.message",
		[]*pushrules.PushAction{notify, {Action: pushrules.ActionSetTweak, Tweak: pushrules.TweakHighlight, Value: false}}); err != nil {
		t.Fatal(err)
	}

	rs, err = alice.GetPushRules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := pushRuleIDs(rs.Content); !slices.Equal(got, []string{"cakelie", "cake", "tea"}) {
		t.Fatalf("content = %v", got)
	}
	if _, ok := rs.Room.Map[room]; !ok {
		t.Fatalf("room rules = %+v", rs.Room.Map)
	}
	if _, ok := rs.Sender.Map["@spam:example.org"]; !ok {
		t.Fatalf("sender rules = %+v", rs.Sender.Map)
	}
	enabled := rawGet(t, node, alice.AccessToken, pushBase+"global/override/.m.rule.suppress_notices/enabled")
	if string(enabled) != `{"enabled":false}` {
		t.Fatalf("enabled = %s", enabled)
	}
	actions := rawGet(t, node, alice.AccessToken, pushBase+"global/underride/.m.rule.message/actions")
	if string(actions) != `{"actions":["notify",{"set_tweak":"highlight","value":false}]}` {
		t.Fatalf("actions = %s", actions)
	}

	// GET /pushrules/ wraps the global ruleset; MSC4010's account data read
	// answers the same.
	var all struct {
		Global json.RawMessage `json:"global"`
	}
	if err := json.Unmarshal(rawGet(t, node, alice.AccessToken, pushBase), &all); err != nil || len(all.Global) == 0 {
		t.Fatalf("GET /pushrules/: %v", err)
	}
	if global := rawGet(t, node, alice.AccessToken, pushBase+"global/"); string(global) != string(all.Global) {
		t.Fatalf("GET /pushrules/global/ = %s", global)
	}
	var ad struct {
		Global json.RawMessage `json:"global"`
	}
	if err := alice.GetAccountData(ctx, "m.push_rules", &ad); err != nil || string(ad.Global) != string(all.Global) {
		t.Fatalf("account data m.push_rules: %v\n%s\nwant %s", err, ad.Global, all.Global)
	}
	// Clients cannot write it through /account_data (MSC4010).
	expectErr(t, node, alice.AccessToken, http.MethodPut, "/_matrix/client/v3/user/"+esc(alice.UserID.String())+"/account_data/m.push_rules",
		[]byte(`{"global":{}}`), http.StatusMethodNotAllowed, "M_BAD_JSON")

	// Delete, then the rule is gone.
	if err := alice.DeletePushRule(ctx, "global", pushrules.ContentRule, "cake"); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.GetPushRule(ctx, "global", pushrules.ContentRule, "cake"); !errors.Is(err, mautrix.MNotFound) {
		t.Fatalf("deleted rule: %v", err)
	}
	// Another user's rules are their own.
	bob := node.Register("bob")
	if rs, err := bob.GetPushRules(ctx); err != nil || len(rs.Content) != 0 {
		t.Fatalf("bob's rules: %v %v", err, rs)
	}
}

func TestPushRulesErrorTable(t *testing.T) {
	node := shoaltest.Start(t)
	alice := node.Register("alice")
	tok := alice.AccessToken
	if st, out := rawCall(t, node, tok, http.MethodPut, pushBase+"global/sender/@x:y", []byte(`{"actions":[]}`)); st != http.StatusOK {
		t.Fatalf("PUT sender rule: %d %v", st, out)
	}
	big := `{"actions":[],"pattern":"` + strings.Repeat("x", 20<<10) + `"}`
	for _, c := range []struct {
		method, path, body string
		status             int
		errcode            string
	}{
		{"GET", pushBase, "", 401, "M_MISSING_TOKEN"},
		{"GET", pushBase + "global/room/!r:x", "", 404, "M_NOT_FOUND"},
		{"GET", pushBase + "global/nope/x", "", 400, "M_INVALID_PARAM"},
		{"GET", pushBase + "global/override/nope/enabled", "", 404, "M_NOT_FOUND"},
		{"GET", pushBase + "global/override/nope/actions", "", 404, "M_NOT_FOUND"},
		{"GET", pushBase + "global/override/.m.rule.master/not_an_attr", "", 404, "M_UNRECOGNIZED"},
		{"GET", pushBase + "device/", "", 404, "M_UNRECOGNIZED"},
		{"POST", pushBase + "global/override/x", "{}", 405, "M_UNRECOGNIZED"},
		{"PUT", pushBase + "global/nope/x", `{"actions":[]}`, 400, "M_INVALID_PARAM"},
		{"PUT", pushBase + "global/override/.mine", `{"actions":[]}`, 400, "M_INVALID_PARAM"},
		{"PUT", pushBase + "global/override/.m.rule.master", `{"actions":[]}`, 400, "M_INVALID_PARAM"},
		{"PUT", pushBase + "global/room/a%2Fb", `{"actions":[]}`, 400, "M_INVALID_PARAM"},
		{"PUT", pushBase + "global/room/a%5Cb", `{"actions":[]}`, 400, "M_INVALID_PARAM"},
		{"PUT", pushBase + "global/room/!r:x", `{"actions":`, 400, "M_NOT_JSON"},
		{"PUT", pushBase + "global/room/!r:x", `[]`, 400, "M_BAD_JSON"},
		{"PUT", pushBase + "global/room/!r:x", `{}`, 400, "M_BAD_JSON"},
		{"PUT", pushBase + "global/room/!r:x", `{"actions":["not_an_action"]}`, 400, "M_INVALID_PARAM"},
		{"PUT", pushBase + "global/content/c", `{"actions":[]}`, 400, "M_BAD_JSON"},
		{"PUT", pushBase + "global/underride/u", `{"actions":[],"conditions":[{}]}`, 400, "M_BAD_JSON"},
		{"PUT", pushBase + "global/override/o", `{"actions":[],"conditions":[{"kind":"room_member_count","is":"lots"}]}`, 400, "M_INVALID_PARAM"},
		{"PUT", pushBase + "global/content/c", big, 413, "M_TOO_LARGE"},
		{"PUT", pushBase + "global/sender/@y:y?before=nope", `{"actions":[]}`, 400, "M_UNKNOWN"},
		{"PUT", pushBase + "global/override/o?after=.m.rule.master", `{"actions":[]}`, 400, "M_INVALID_PARAM"},
		{"DELETE", pushBase + "global/override/.m.rule.master", "", 400, "M_INVALID_PARAM"},
		{"DELETE", pushBase + "global/override/nope", "", 404, "M_NOT_FOUND"},
		{"PUT", pushBase + "global/override/.m.rule.master/enabled", `{"enabled":"not a boolean"}`, 400, "M_BAD_JSON"},
		{"PUT", pushBase + "global/override/nope/enabled", `{"enabled":true}`, 404, "M_NOT_FOUND"},
		{"PUT", pushBase + "global/override/nope/actions", `{"actions":[]}`, 404, "M_NOT_FOUND"},
		{"PUT", pushBase + "global/override/.m.rule.master/actions", `{"actions":{}}`, 400, "M_BAD_JSON"},
	} {
		token := tok
		if c.status == 401 {
			token = ""
		}
		var body []byte
		if c.body != "" {
			body = []byte(c.body)
		}
		expectErr(t, node, token, c.method, c.path, body, c.status, c.errcode)
	}
	// Nothing was written by any of it.
	rs, err := alice.GetPushRules(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(rs.Content) != 0 || len(rs.Room.Map) != 0 || len(rs.Sender.Map) != 1 || len(rs.Override) != 10 {
		t.Fatalf("ruleset after refusals: content %d room %d sender %d override %d",
			len(rs.Content), len(rs.Room.Map), len(rs.Sender.Map), len(rs.Override))
	}
}

// A rule change wakes a long-poll and arrives as m.push_rules account data;
// an initial sync always carries the ruleset.
func TestPushRulesReachSync(t *testing.T) {
	node := shoaltest.Start(t)
	ctx := context.Background()
	alice := node.Register("alice")
	pushRulesOf := func(resp *mautrix.RespSync) *pushrules.PushRuleset {
		t.Helper()
		for _, ev := range resp.AccountData.Events {
			if ev.Type == event.AccountDataPushRules {
				var c struct {
					Global *pushrules.PushRuleset `json:"global"`
				}
				if err := json.Unmarshal(ev.Content.VeryRaw, &c); err != nil || c.Global == nil {
					t.Fatalf("m.push_rules content %s: %v", ev.Content.VeryRaw, err)
				}
				return c.Global
			}
		}
		return nil
	}
	first, err := alice.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if rs := pushRulesOf(first); rs == nil || len(rs.Override) == 0 {
		t.Fatalf("initial sync lacks m.push_rules: %+v", first.AccountData.Events)
	}
	done := make(chan *mautrix.RespSync, 1)
	go func() {
		resp, err := alice.SyncRequest(ctx, 20_000, first.NextBatch, "", false, "")
		if err != nil {
			t.Error(err)
		}
		done <- resp
	}()
	time.Sleep(300 * time.Millisecond)
	if err := alice.PutPushRule(ctx, "global", pushrules.SenderRule, "@bot:example.org",
		&mautrix.ReqPutPushRule{Actions: []*pushrules.PushAction{}}); err != nil {
		t.Fatal(err)
	}
	select {
	case resp := <-done:
		if resp == nil {
			t.FailNow()
		}
		rs := pushRulesOf(resp)
		if rs == nil || rs.Sender.Map["@bot:example.org"] == nil {
			t.Fatalf("woken sync account data = %+v", resp.AccountData.Events)
		}
		// Nothing else changed: the next incremental sync has no push rules.
		next, err := alice.SyncRequest(ctx, 0, resp.NextBatch, "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		if pushRulesOf(next) != nil {
			t.Fatal("unchanged push rules reported again")
		}
	case <-time.After(15 * time.Second):
		t.Fatal("a push rule change did not wake the long-poll")
	}
}
