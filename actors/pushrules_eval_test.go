package actors_test

import (
	"encoding/json"
	"testing"

	"github.com/shoal-chat/shoal/actors"
)

const (
	evalUser = "@alice:example.org"
	evalRoom = "!room:example.org"
)

func pushEvent(t *testing.T, ev map[string]any) *actors.PushEvent {
	t.Helper()
	if _, ok := ev["room_id"]; !ok {
		ev["room_id"] = evalRoom
	}
	if _, ok := ev["sender"]; !ok {
		ev["sender"] = "@bob:example.org"
	}
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	pe, err := actors.NewPushEvent(b)
	if err != nil {
		t.Fatal(err)
	}
	return pe
}

func message(body string, extra map[string]any) map[string]any {
	content := map[string]any{"msgtype": "m.text", "body": body}
	for k, v := range extra {
		content[k] = v
	}
	return map[string]any{"type": "m.room.message", "content": content}
}

// oneRule is a ruleset of one override rule with the given conditions.
func oneRule(t *testing.T, conds ...string) *actors.PushEvaluator {
	t.Helper()
	rule := actors.PushRule{RuleID: "r", Enabled: true, Actions: []json.RawMessage{json.RawMessage(`"notify"`)}}
	for _, c := range conds {
		rule.Conditions = append(rule.Conditions, json.RawMessage(c))
	}
	return actors.NewPushEvaluator(evalUser, &actors.PushRuleset{Override: []actors.PushRule{rule}})
}

func TestPushConditions(t *testing.T) {
	topic := func(v any) map[string]any {
		return map[string]any{"type": "m.room.topic", "state_key": "", "content": map[string]any{"topic": v}}
	}
	body := func(v string) map[string]any { return message(v, nil) }
	create := func(v any) map[string]any {
		return map[string]any{"type": "m.room.create", "state_key": "", "content": map[string]any{"m.federate": v}}
	}
	aliases := func(v any) map[string]any {
		return map[string]any{"type": "m.room.canonical_alias", "state_key": "", "content": map[string]any{"alt_aliases": v}}
	}
	ctx := actors.PushContext{MemberCount: 5, SenderPowerLevel: 50, DisplayName: "Alice Liddell"}
	for _, c := range []struct {
		name string
		cond string
		ev   map[string]any
		pctx *actors.PushContext
		want bool
	}{
		// event_match: the whole value, case-insensitively, * and ?.
		{"match exact", `{"kind":"event_match","key":"type","pattern":"m.room.message"}`, body("x"), nil, true},
		{"match case", `{"kind":"event_match","key":"type","pattern":"M.Room.MESSAGE"}`, body("x"), nil, true},
		{"match star", `{"kind":"event_match","key":"type","pattern":"m.room.*"}`, body("x"), nil, true},
		{"match whole value only", `{"kind":"event_match","key":"type","pattern":"m.room"}`, body("x"), nil, false},
		{"match spec topic", `{"kind":"event_match","key":"content.topic","pattern":"lunc?*"}`, topic("Lunch plans"), nil, true},
		{"match spec LUNCH", `{"kind":"event_match","key":"content.topic","pattern":"lunc?*"}`, topic("LUNCH"), nil, true},
		{"match leading space", `{"kind":"event_match","key":"content.topic","pattern":"lunc?*"}`, topic(" lunch"), nil, false},
		{"match ? needs a char", `{"kind":"event_match","key":"content.topic","pattern":"lunc?*"}`, topic("lunc"), nil, false},
		{"match null", `{"kind":"event_match","key":"content.topic","pattern":"*"}`, topic(nil), nil, false},
		{"match number", `{"kind":"event_match","key":"content.topic","pattern":"*"}`, topic(7), nil, false},
		{"match absent", `{"kind":"event_match","key":"content.nope","pattern":"*"}`, topic("x"), nil, false},
		{"match regexp chars literal", `{"kind":"event_match","key":"content.topic","pattern":"a.b(c)+"}`, topic("a.b(c)+"), nil, true},
		{"match regexp chars not special", `{"kind":"event_match","key":"content.topic","pattern":"a.b"}`, topic("axb"), nil, false},
		{"match empty state_key", `{"kind":"event_match","key":"state_key","pattern":""}`, topic("x"), nil, true},
		// content.body: any run of words.
		{"body spec example", `{"kind":"event_match","key":"content.body","pattern":"ex*ple"}`, body("An example event."), nil, true},
		{"body whole", `{"kind":"event_match","key":"content.body","pattern":"ex*ple"}`, body("exple"), nil, true},
		{"body spans words", `{"kind":"event_match","key":"content.body","pattern":"ex*ple"}`, body("An exciting triple-whammy"), nil, true},
		{"body word", `{"kind":"event_match","key":"content.body","pattern":"cake"}`, body("I like CAKE!"), nil, true},
		{"body not a suffix", `{"kind":"event_match","key":"content.body","pattern":"cake"}`, body("pancake"), nil, false},
		{"body not a prefix", `{"kind":"event_match","key":"content.body","pattern":"cake"}`, body("cakes"), nil, false},
		{"body underscore is a word char", `{"kind":"event_match","key":"content.body","pattern":"cake"}`, body("cake_shop"), nil, false},
		{"body across lines", `{"kind":"event_match","key":"content.body","pattern":"a*b"}`, body("a\nb"), nil, true},
		// Dotted paths with escapes.
		{"escaped dot", `{"kind":"event_match","key":"content.m\\.relates_to.rel_type","pattern":"m.thread"}`,
			message("x", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.thread"}}), nil, true},
		{"unescaped dot is a path", `{"kind":"event_match","key":"content.m.relates_to.rel_type","pattern":"m.thread"}`,
			message("x", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.thread"}}), nil, false},
		{"escaped backslash", `{"kind":"event_match","key":"content.m\\\\foo","pattern":"yes"}`,
			message("x", map[string]any{`m\foo`: "yes"}), nil, true},
		{"other escapes kept", `{"kind":"event_match","key":"content.m\\x","pattern":"yes"}`,
			message("x", map[string]any{`m\x`: "yes"}), nil, true},
		// event_property_is: exact, typed.
		{"is true", `{"kind":"event_property_is","key":"content.m\\.federate","value":true}`, create(true), nil, true},
		{"is not the string", `{"kind":"event_property_is","key":"content.m\\.federate","value":true}`, create("true"), nil, false},
		{"is not 1", `{"kind":"event_property_is","key":"content.m\\.federate","value":true}`, create(1), nil, false},
		{"is integer", `{"kind":"event_property_is","key":"content.m\\.federate","value":42}`, create(42), nil, true},
		{"is null", `{"kind":"event_property_is","key":"content.m\\.federate","value":null}`, create(nil), nil, true},
		{"is absent is not null", `{"kind":"event_property_is","key":"content.nope","value":null}`, create(nil), nil, false},
		{"is string", `{"kind":"event_property_is","key":"type","value":"m.room.create"}`, create(true), nil, true},
		// event_property_contains.
		{"contains spec", `{"kind":"event_property_contains","key":"content.alt_aliases","value":"#myroom:example.com"}`,
			aliases([]any{"#somewhere:example.org", "#myroom:example.com"}), nil, true},
		{"contains partial", `{"kind":"event_property_contains","key":"content.alt_aliases","value":":example.com"}`,
			aliases([]any{"#myroom:example.com"}), nil, false},
		{"contains not an array", `{"kind":"event_property_contains","key":"content.alt_aliases","value":"#a:b"}`,
			aliases("#a:b"), nil, false},
		{"contains skips compound", `{"kind":"event_property_contains","key":"content.alt_aliases","value":2}`,
			aliases([]any{map[string]any{"a": 2}, []any{2}, 2}), nil, true},
		// contains_display_name.
		{"display name", `{"kind":"contains_display_name"}`, body("hello alice liddell!"), nil, true},
		{"display name word bound", `{"kind":"contains_display_name"}`, body("hello Alice Liddells"), nil, false},
		{"display name empty", `{"kind":"contains_display_name"}`, body("hello"), &actors.PushContext{}, false},
		{"display name no body", `{"kind":"contains_display_name"}`, topic("Alice Liddell"), nil, false},
		// room_member_count.
		{"count bare", `{"kind":"room_member_count","is":"5"}`, body("x"), nil, true},
		{"count ==", `{"kind":"room_member_count","is":"==4"}`, body("x"), nil, false},
		{"count <", `{"kind":"room_member_count","is":"<6"}`, body("x"), nil, true},
		{"count < strict", `{"kind":"room_member_count","is":"<5"}`, body("x"), nil, false},
		{"count >", `{"kind":"room_member_count","is":">4"}`, body("x"), nil, true},
		{"count >=", `{"kind":"room_member_count","is":">=5"}`, body("x"), nil, true},
		{"count <=", `{"kind":"room_member_count","is":"<=4"}`, body("x"), nil, false},
		{"count malformed", `{"kind":"room_member_count","is":"five"}`, body("x"), nil, false},
		// sender_notification_permission.
		{"permission default 50", `{"kind":"sender_notification_permission","key":"room"}`, body("x"), nil, true},
		{"permission too low", `{"kind":"sender_notification_permission","key":"room"}`, body("x"),
			&actors.PushContext{SenderPowerLevel: 49}, false},
		{"permission from power levels", `{"kind":"sender_notification_permission","key":"room"}`, body("x"),
			&actors.PushContext{SenderPowerLevel: 50, NotificationLevels: map[string]int64{"room": 100}}, false},
		{"permission lowered", `{"kind":"sender_notification_permission","key":"room"}`, body("x"),
			&actors.PushContext{SenderPowerLevel: 0, NotificationLevels: map[string]int64{"room": 0}}, true},
		// Unknown conditions never match.
		{"unknown kind", `{"kind":"org.example.future"}`, body("x"), nil, false},
	} {
		pctx := ctx
		if c.pctx != nil {
			pctx = *c.pctx
		}
		got := oneRule(t, c.cond).Evaluate(pushEvent(t, c.ev), pctx)
		if got.Notify != c.want {
			t.Errorf("%s: notify = %v, want %v", c.name, got.Notify, c.want)
		}
	}
	// Numbers compare as integers only: 42.0 is not 42, nor is 1e1 10.
	for _, c := range []struct{ cond, ev string }{
		{`{"kind":"event_property_is","key":"content.n","value":42}`, `{"type":"x","sender":"@b:x","content":{"n":42.0}}`},
		{`{"kind":"event_property_is","key":"content.n","value":10}`, `{"type":"x","sender":"@b:x","content":{"n":1e1}}`},
		{`{"kind":"event_property_contains","key":"content.n","value":42}`, `{"type":"x","sender":"@b:x","content":{"n":[42.0]}}`},
	} {
		ev, err := actors.NewPushEvent([]byte(c.ev))
		if err != nil {
			t.Fatal(err)
		}
		if oneRule(t, c.cond).Evaluate(ev, ctx).Notify {
			t.Errorf("%s matched %s", c.cond, c.ev)
		}
	}
}

func TestPushDefaultRules(t *testing.T) {
	rs := actors.DefaultPushRules(evalUser)
	def := actors.NewPushEvaluator(evalUser, &rs)
	group := actors.PushContext{MemberCount: 5, SenderPowerLevel: 0}
	oneToOne := actors.PushContext{MemberCount: 2}
	moderator := actors.PushContext{MemberCount: 5, SenderPowerLevel: 50}
	member := func(target, membership string) map[string]any {
		return map[string]any{"type": "m.room.member", "state_key": target, "content": map[string]any{"membership": membership}}
	}
	for _, c := range []struct {
		name      string
		ev        map[string]any
		pctx      actors.PushContext
		rule      string
		notify    bool
		highlight bool
		sound     string
	}{
		{"message in a 1:1 room", message("hi", nil), oneToOne, ".m.rule.room_one_to_one", true, false, `"default"`},
		{"message in a group", message("hi", nil), group, ".m.rule.message", true, false, ""},
		{"user mention", message("hi", map[string]any{"m.mentions": map[string]any{"user_ids": []any{evalUser}}}), group,
			".m.rule.is_user_mention", true, true, `"default"`},
		{"someone else's mention", message("hi", map[string]any{"m.mentions": map[string]any{"user_ids": []any{"@carol:x"}}}), group,
			".m.rule.message", true, false, ""},
		{"room mention with power", message("hi", map[string]any{"m.mentions": map[string]any{"room": true}}), moderator,
			".m.rule.is_room_mention", true, true, ""},
		{"room mention without power", message("hi", map[string]any{"m.mentions": map[string]any{"room": true}}), group,
			".m.rule.message", true, false, ""},
		{"legacy body mention does not highlight", message("alice: hi @room", nil), actors.PushContext{MemberCount: 5, SenderPowerLevel: 100, DisplayName: "alice"},
			".m.rule.message", true, false, ""},
		{"notice from a bot", map[string]any{"type": "m.room.message", "content": map[string]any{"msgtype": "m.notice", "body": "beep"}}, oneToOne,
			".m.rule.suppress_notices", false, false, ""},
		{"someone joins", member("@carol:x", "join"), oneToOne, ".m.rule.member_event", false, false, ""},
		{"invite for me", member(evalUser, "invite"), group, ".m.rule.invite_for_me", true, false, `"default"`},
		{"invite for someone else", member("@carol:x", "invite"), group, ".m.rule.member_event", false, false, ""},
		{"encrypted in a 1:1 room", map[string]any{"type": "m.room.encrypted", "content": map[string]any{"ciphertext": "x"}}, oneToOne,
			".m.rule.encrypted_room_one_to_one", true, false, `"default"`},
		{"encrypted in a group", map[string]any{"type": "m.room.encrypted", "content": map[string]any{"ciphertext": "x"}}, group,
			".m.rule.encrypted", true, false, ""},
		{"call", map[string]any{"type": "m.call.invite", "content": map[string]any{}}, group, ".m.rule.call", true, false, `"ring"`},
		{"tombstone", map[string]any{"type": "m.room.tombstone", "state_key": "", "content": map[string]any{}}, group,
			".m.rule.tombstone", true, true, ""},
		{"reaction", map[string]any{"type": "m.reaction", "content": map[string]any{}}, oneToOne, ".m.rule.reaction", false, false, ""},
		{"edit", message("* hi", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.replace", "event_id": "$e"}}), oneToOne,
			".m.rule.suppress_edits", false, false, ""},
		{"server ACL", map[string]any{"type": "m.room.server_acl", "state_key": "", "content": map[string]any{}}, group,
			".m.rule.room.server_acl", false, false, ""},
		{"other state", map[string]any{"type": "m.room.name", "state_key": "", "content": map[string]any{"name": "n"}}, group, "", false, false, ""},
		{"own message", map[string]any{"type": "m.room.message", "sender": evalUser, "content": map[string]any{"body": "hi"}}, oneToOne, "", false, false, ""},
	} {
		got := def.Evaluate(pushEvent(t, c.ev), c.pctx)
		if got.RuleID != c.rule || got.Notify != c.notify || got.Highlight != c.highlight || string(got.Tweaks["sound"]) != c.sound {
			t.Errorf("%s: got rule %q notify %v highlight %v sound %s; want %q %v %v %s",
				c.name, got.RuleID, got.Notify, got.Highlight, got.Tweaks["sound"], c.rule, c.notify, c.highlight, c.sound)
		}
	}
}

// User rules come before the defaults of their kind, in kind order, and
// the master rule before everything.
func TestPushUserRules(t *testing.T) {
	rs := actors.DefaultPushRules(evalUser)
	pattern := "cake"
	none := []json.RawMessage{}
	rs.Content = append(rs.Content, actors.PushRule{RuleID: "cake", Enabled: true, Pattern: &pattern,
		Actions: []json.RawMessage{json.RawMessage(`"notify"`), json.RawMessage(`{"set_tweak":"highlight","value":true}`),
			json.RawMessage(`{"set_tweak":"org.example.colour","value":"red"}`)}})
	rs.Room = append(rs.Room, actors.PushRule{RuleID: "!muted:x", Enabled: true, Actions: none})
	rs.Sender = append(rs.Sender, actors.PushRule{RuleID: "@spam:x", Enabled: true,
		Actions: []json.RawMessage{json.RawMessage(`"dont_notify"`), json.RawMessage(`"coalesce"`)}})
	rs.Sender = append(rs.Sender, actors.PushRule{RuleID: "@off:x", Enabled: false, Actions: none})
	eval := actors.NewPushEvaluator(evalUser, &rs)
	pctx := actors.PushContext{MemberCount: 5}

	got := eval.Evaluate(pushEvent(t, message("I want cake", nil)), pctx)
	if got.RuleID != "cake" || got.Kind != "content" || !got.Notify || !got.Highlight || string(got.Tweaks["org.example.colour"]) != `"red"` {
		t.Errorf("content rule: %+v", got)
	}
	// The content rule comes before the room rule.
	muted := message("hi", nil)
	muted["room_id"] = "!muted:x"
	if got := eval.Evaluate(pushEvent(t, muted), pctx); got.RuleID != "!muted:x" || got.Notify {
		t.Errorf("room rule: %+v", got)
	}
	muted = message("cake!", nil)
	muted["room_id"] = "!muted:x"
	if got := eval.Evaluate(pushEvent(t, muted), pctx); got.RuleID != "cake" {
		t.Errorf("content before room: %+v", got)
	}
	// Historical actions do nothing: the rule matches, nothing is notified.
	spam := message("hi", nil)
	spam["sender"] = "@spam:x"
	if got := eval.Evaluate(pushEvent(t, spam), pctx); got.RuleID != "@spam:x" || got.Notify || got.Tweaks != nil {
		t.Errorf("sender rule: %+v", got)
	}
	// A disabled rule never matches.
	off := message("hi", nil)
	off["sender"] = "@off:x"
	if got := eval.Evaluate(pushEvent(t, off), pctx); got.RuleID != ".m.rule.message" {
		t.Errorf("disabled rule: %+v", got)
	}
	// A user override beats the defaults; the master rule beats it.
	rs.Override = append(rs.Override[:1], append([]actors.PushRule{{RuleID: "all", Enabled: true, Conditions: none,
		Actions: []json.RawMessage{json.RawMessage(`"notify"`)}}}, rs.Override[1:]...)...)
	notice := map[string]any{"type": "m.room.message", "content": map[string]any{"msgtype": "m.notice", "body": "x"}}
	if got := actors.NewPushEvaluator(evalUser, &rs).Evaluate(pushEvent(t, notice), pctx); got.RuleID != "all" || !got.Notify {
		t.Errorf("user override: %+v", got)
	}
	rs.Override[0].Enabled = true
	if got := actors.NewPushEvaluator(evalUser, &rs).Evaluate(pushEvent(t, notice), pctx); got.RuleID != ".m.rule.master" || got.Notify {
		t.Errorf("master: %+v", got)
	}
	if _, err := actors.NewPushEvent([]byte(`[1]`)); err == nil {
		t.Error("a non-object event was accepted")
	}
}
