package actors

import (
	"bytes"
	"cmp"
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Push rules (client-server API, "Push Rules"): the model shared by the user
// actor, which keeps a user's rules, and the evaluator (pushrules_eval.go).
//
// A user's ruleset is the server-default rules merged with what the user
// changed: their own rules, and the enabled flag and actions of default
// rules. Only the changes are stored, so that defaults a later version of
// shoal adds, drops or corrects reach every user; the merged ruleset is
// what clients see (GET /pushrules/, m.push_rules account data).

// PushRulesEventType is the global account data type the ruleset is
// published as (the server manages it; clients cannot set it, MSC4010).
const PushRulesEventType = "m.push_rules"

// Bounds on a user's push rules, so that the ruleset a sync carries and
// the work of evaluating it per event stay finite.
const (
	// MaxPushRules is the most rules a user may define (defaults aside).
	MaxPushRules = 1000
	// MaxPushRuleBytes bounds one rule as stored (rule ID, actions,
	// conditions, pattern).
	MaxPushRuleBytes = 4096
	// MaxPushRulesetBytes bounds the whole published ruleset, as any
	// account data event is bounded.
	MaxPushRulesetBytes = MaxAccountDataBytes
	// maxPushRuleIDBytes matches the longest room or user ID.
	maxPushRuleIDBytes = 255
	// maxPushPatternBytes bounds a glob: matching costs its length times
	// the length of the value matched.
	maxPushPatternBytes = 512
	maxPushConditions   = 32
	maxPushActions      = 32
	// maxSafeInteger is the canonical JSON integer range's bound (2^53-1).
	maxSafeInteger = 1<<53 - 1
	// defaultNotificationLevel is the power needed for a notification key
	// the power levels do not list ("room" defaults to 50).
	defaultNotificationLevel = 50
)

// PushRuleKinds are the kinds of rule in the order they are evaluated.
var PushRuleKinds = []string{"override", "content", "room", "sender", "underride"}

// PushRule is one rule in the spec's PushRule shape. Conditions and
// actions are kept as JSON so that unknown condition kinds and custom
// tweaks survive as the client wrote them.
type PushRule struct {
	RuleID  string            `json:"rule_id"`
	Default bool              `json:"default"`
	Enabled bool              `json:"enabled"`
	Actions []json.RawMessage `json:"actions"`
	// Conditions is set (possibly empty) for override and underride rules
	// only; omitzero drops it for the other kinds but keeps an empty list.
	Conditions []json.RawMessage `json:"conditions,omitzero"`
	// Pattern is set for content rules only.
	Pattern *string `json:"pattern,omitempty"`
}

// PushRuleset is the spec's PushRuleset: each kind's rules, most
// important first.
type PushRuleset struct {
	Override  []PushRule `json:"override"`
	Content   []PushRule `json:"content"`
	Room      []PushRule `json:"room"`
	Sender    []PushRule `json:"sender"`
	Underride []PushRule `json:"underride"`
}

// Kind returns the rules of kind, and false for an unknown kind.
func (rs PushRuleset) Kind(kind string) ([]PushRule, bool) {
	switch kind {
	case "override":
		return rs.Override, true
	case "content":
		return rs.Content, true
	case "room":
		return rs.Room, true
	case "sender":
		return rs.Sender, true
	case "underride":
		return rs.Underride, true
	}
	return nil, false
}

// Find returns the rule kind/ruleID: 400 M_INVALID_PARAM for an unknown
// kind, 404 M_NOT_FOUND for a rule that does not exist.
func (rs PushRuleset) Find(kind, ruleID string) (*PushRule, error) {
	rules, ok := rs.Kind(kind)
	if !ok {
		return nil, errUnknownPushKind(kind)
	}
	for i := range rules {
		if rules[i].RuleID == ruleID {
			return &rules[i], nil
		}
	}
	return nil, errPushRuleNotFound()
}

func errUnknownPushKind(kind string) error {
	return ErrInvalidParam("unknown push rule kind %q (override, underride, sender, room or content)", kind)
}

func errPushRuleNotFound() error { return ErrNotFound("push rule not found") }

func validPushKind(kind string) bool { return slices.Contains(PushRuleKinds, kind) }

// hasConditions reports whether rules of kind carry explicit conditions;
// content, room and sender rules have implied ones.
func hasConditions(kind string) bool { return kind == "override" || kind == "underride" }

// ---- server-default rules ----

func rawJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic("actors: push rule literal: " + err.Error())
	}
	return b
}

func condEventMatch(key, pattern string) json.RawMessage {
	return rawJSON(map[string]string{"kind": "event_match", "key": key, "pattern": pattern})
}

func condPropertyIs(key string, value any) json.RawMessage {
	return rawJSON(map[string]any{"kind": "event_property_is", "key": key, "value": value})
}

func condPropertyContains(key string, value any) json.RawMessage {
	return rawJSON(map[string]any{"kind": "event_property_contains", "key": key, "value": value})
}

func condMemberCount(is string) json.RawMessage {
	return rawJSON(map[string]string{"kind": "room_member_count", "is": is})
}

func condSenderPermission(key string) json.RawMessage {
	return rawJSON(map[string]string{"kind": "sender_notification_permission", "key": key})
}

var (
	actNotify    = json.RawMessage(`"notify"`)
	actHighlight = json.RawMessage(`{"set_tweak":"highlight"}`)
)

func actSound(sound string) json.RawMessage {
	return rawJSON(map[string]string{"set_tweak": "sound", "value": sound})
}

func defaultRule(id string, enabled bool, actions []json.RawMessage, conds ...json.RawMessage) PushRule {
	if actions == nil {
		actions = []json.RawMessage{}
	}
	if conds == nil {
		conds = []json.RawMessage{}
	}
	return PushRule{RuleID: id, Default: true, Enabled: enabled, Actions: actions, Conditions: conds}
}

// DefaultPushRules are the spec's server-default rules for userID, in the
// spec's order. The legacy body-matching rules (.m.rule.contains_display_name,
// .m.rule.contains_user_name, .m.rule.roomnotif) were removed in v1.17
// (MSC4210), which leaves no default content rules.
func DefaultPushRules(userID string) PushRuleset {
	none := []json.RawMessage{}
	return PushRuleset{
		Override: []PushRule{
			defaultRule(".m.rule.master", false, none),
			defaultRule(".m.rule.suppress_notices", true, none,
				condEventMatch("content.msgtype", "m.notice")),
			defaultRule(".m.rule.invite_for_me", true, []json.RawMessage{actNotify, actSound("default")},
				condEventMatch("type", "m.room.member"),
				condEventMatch("content.membership", "invite"),
				condEventMatch("state_key", userID)),
			defaultRule(".m.rule.member_event", true, none,
				condEventMatch("type", "m.room.member")),
			defaultRule(".m.rule.is_user_mention", true, []json.RawMessage{actNotify, actSound("default"), actHighlight},
				condPropertyContains(`content.m\.mentions.user_ids`, userID)),
			defaultRule(".m.rule.is_room_mention", true, []json.RawMessage{actNotify, actHighlight},
				condPropertyIs(`content.m\.mentions.room`, true),
				condSenderPermission("room")),
			defaultRule(".m.rule.tombstone", true, []json.RawMessage{actNotify, actHighlight},
				condEventMatch("type", "m.room.tombstone"),
				condEventMatch("state_key", "")),
			defaultRule(".m.rule.reaction", true, none,
				condEventMatch("type", "m.reaction")),
			defaultRule(".m.rule.room.server_acl", true, none,
				condEventMatch("type", "m.room.server_acl"),
				condEventMatch("state_key", "")),
			defaultRule(".m.rule.suppress_edits", true, none,
				condPropertyIs(`content.m\.relates_to.rel_type`, "m.replace")),
		},
		Content: []PushRule{},
		Room:    []PushRule{},
		Sender:  []PushRule{},
		Underride: []PushRule{
			defaultRule(".m.rule.call", true, []json.RawMessage{actNotify, actSound("ring")},
				condEventMatch("type", "m.call.invite")),
			defaultRule(".m.rule.encrypted_room_one_to_one", true, []json.RawMessage{actNotify, actSound("default")},
				condMemberCount("2"),
				condEventMatch("type", "m.room.encrypted")),
			defaultRule(".m.rule.room_one_to_one", true, []json.RawMessage{actNotify, actSound("default")},
				condMemberCount("2"),
				condEventMatch("type", "m.room.message")),
			defaultRule(".m.rule.message", true, []json.RawMessage{actNotify},
				condEventMatch("type", "m.room.message")),
			defaultRule(".m.rule.encrypted", true, []json.RawMessage{actNotify},
				condEventMatch("type", "m.room.encrypted")),
		},
	}
}

// defaultKinds maps each server-default rule ID to its kind.
var defaultKinds = func() map[string]string {
	out := map[string]string{}
	rs := DefaultPushRules("@x:x")
	for _, kind := range PushRuleKinds {
		rules, _ := rs.Kind(kind)
		for _, r := range rules {
			out[r.RuleID] = kind
		}
	}
	return out
}()

// ---- a user's changes ----

// pushSettings is what a user changed, as stored: their own rules and
// their changes to server-default rules.
type pushSettings struct {
	// Rules are the user's rules by kind, most important first.
	Rules map[string][]PushRule `json:"rules,omitempty"`
	// Defaults are changes to server-default rules by rule ID.
	Defaults map[string]defaultChange `json:"defaults,omitempty"`
}

// defaultChange is a user's setting for a server-default rule; unset
// fields follow the default.
type defaultChange struct {
	Enabled *bool             `json:"enabled,omitempty"`
	Actions []json.RawMessage `json:"actions,omitzero"`
}

func (s *pushSettings) clone() *pushSettings {
	out := &pushSettings{Rules: map[string][]PushRule{}, Defaults: maps.Clone(s.Defaults)}
	for k, v := range s.Rules {
		out.Rules[k] = slices.Clone(v)
	}
	if out.Defaults == nil {
		out.Defaults = map[string]defaultChange{}
	}
	return out
}

func (s *pushSettings) count() int {
	n := 0
	for _, rules := range s.Rules {
		n += len(rules)
	}
	return n
}

// ruleset merges the defaults for userID with the settings. The master
// rule stays above every other rule; the other defaults come after the
// user's rules of their kind.
func (s *pushSettings) ruleset(userID string) PushRuleset {
	def := DefaultPushRules(userID)
	apply := func(rules []PushRule) []PushRule {
		for i := range rules {
			if c, ok := s.Defaults[rules[i].RuleID]; ok {
				if c.Enabled != nil {
					rules[i].Enabled = *c.Enabled
				}
				if c.Actions != nil {
					rules[i].Actions = c.Actions
				}
			}
		}
		return rules
	}
	merge := func(kind string, defaults []PushRule) []PushRule {
		out := make([]PushRule, 0, len(s.Rules[kind])+len(defaults))
		out = append(out, s.Rules[kind]...)
		return append(out, apply(defaults)...)
	}
	override := apply(def.Override[:1:1])
	return PushRuleset{
		Override:  append(override, merge("override", def.Override[1:])...),
		Content:   merge("content", def.Content),
		Room:      merge("room", nil),
		Sender:    merge("sender", nil),
		Underride: merge("underride", def.Underride),
	}
}

// checkPushRuleID checks a rule ID from a path. Server-default rule IDs
// start with "." and clients may not create such rules.
func checkPushRuleID(id string, creating bool) error {
	if id == "" || len(id) > maxPushRuleIDBytes || !utf8.ValidString(id) {
		return ErrInvalidParam("a push rule ID must be 1 to %d bytes of UTF-8", maxPushRuleIDBytes)
	}
	if strings.ContainsAny(id, `/\`) {
		return ErrInvalidParam("a push rule ID may not contain slashes or backslashes")
	}
	if creating && strings.HasPrefix(id, ".") {
		return ErrInvalidParam("push rule IDs starting with '.' are reserved for server-default rules")
	}
	return nil
}

func userRuleIndex(rules []PushRule, id string) int {
	return slices.IndexFunc(rules, func(r PushRule) bool { return r.RuleID == id })
}

// put creates or replaces the user rule kind/id from a PUT body. A new
// rule goes first among the user's rules of its kind unless placed with
// before/after; a replaced one keeps its place and its enabled flag.
func (s *pushSettings) put(kind, id, before, after string, body []byte) error {
	if !validPushKind(kind) {
		return errUnknownPushKind(kind)
	}
	if err := checkPushRuleID(id, true); err != nil {
		return err
	}
	rule, err := parsePushRuleBody(kind, id, body)
	if err != nil {
		return err
	}
	rules := s.Rules[kind]
	at := userRuleIndex(rules, id)
	if at >= 0 {
		rule.Enabled = rules[at].Enabled
		rules = slices.Delete(rules, at, at+1)
	} else {
		if s.count() >= MaxPushRules {
			return ErrForbidden("too many push rules (at most %d)", MaxPushRules)
		}
		at = 0
	}
	if anchor := cmp.Or(before, after); anchor != "" {
		if strings.HasPrefix(anchor, ".") {
			return ErrInvalidParam("a rule cannot be placed relative to a server-default rule")
		}
		j := userRuleIndex(rules, anchor)
		if j < 0 {
			return Errorf(http.StatusBadRequest, "M_UNKNOWN", "before/after rule not found: %s", anchor)
		}
		at = j
		if before == "" {
			at = j + 1
		}
	}
	s.Rules[kind] = slices.Insert(rules, at, rule)
	return nil
}

// remove deletes the user rule kind/id; server-default rules cannot be
// deleted (only disabled).
func (s *pushSettings) remove(kind, id string) error {
	if !validPushKind(kind) {
		return errUnknownPushKind(kind)
	}
	if err := checkPushRuleID(id, false); err != nil {
		return err
	}
	if defaultKinds[id] == kind {
		return ErrInvalidParam("server-default push rules cannot be deleted; disable them instead")
	}
	rules := s.Rules[kind]
	at := userRuleIndex(rules, id)
	if at < 0 {
		return errPushRuleNotFound()
	}
	s.Rules[kind] = slices.Delete(rules, at, at+1)
	if len(s.Rules[kind]) == 0 {
		delete(s.Rules, kind)
	}
	return nil
}

// setEnabled applies {"enabled": bool} to a user or server-default rule.
func (s *pushSettings) setEnabled(userID, kind, id string, body []byte) error {
	var req struct {
		Enabled *bool `json:"enabled"`
	}
	if err := json.Unmarshal(body, &req); err != nil || req.Enabled == nil {
		return ErrBadJSON("the body must be {\"enabled\": true or false}")
	}
	return s.change(userID, kind, id, func(r *PushRule) { r.Enabled = *req.Enabled },
		func(c *defaultChange, def *PushRule) {
			c.Enabled = nil
			if *req.Enabled != def.Enabled {
				c.Enabled = req.Enabled
			}
		})
}

// setActions applies {"actions": [...]} to a user or server-default rule.
func (s *pushSettings) setActions(userID, kind, id string, body []byte) error {
	var req map[string]json.RawMessage
	if err := json.Unmarshal(body, &req); err != nil || req == nil {
		return ErrBadJSON("the body must be a JSON object")
	}
	actions, err := parsePushActions(req["actions"])
	if err != nil {
		return err
	}
	return s.change(userID, kind, id, func(r *PushRule) { r.Actions = actions },
		func(c *defaultChange, def *PushRule) {
			c.Actions = nil
			if !equalRaw(actions, def.Actions) {
				c.Actions = actions
			}
		})
}

// change finds kind/id among the user's rules (then applies user) or the
// server defaults (then applies def to the user's change of it).
func (s *pushSettings) change(userID, kind, id string, user func(*PushRule), def func(*defaultChange, *PushRule)) error {
	if !validPushKind(kind) {
		return errUnknownPushKind(kind)
	}
	if err := checkPushRuleID(id, false); err != nil {
		return err
	}
	if defaultKinds[id] == kind {
		defaults := DefaultPushRules(userID)
		d, err := defaults.Find(kind, id)
		if err != nil {
			return err
		}
		c := s.Defaults[id]
		def(&c, d)
		if c.Enabled == nil && c.Actions == nil {
			delete(s.Defaults, id)
		} else {
			s.Defaults[id] = c
		}
		return nil
	}
	at := userRuleIndex(s.Rules[kind], id)
	if at < 0 {
		return errPushRuleNotFound()
	}
	user(&s.Rules[kind][at])
	return nil
}

func equalRaw(a, b []json.RawMessage) bool {
	return slices.EqualFunc(a, b, func(x, y json.RawMessage) bool { return bytes.Equal(x, y) })
}

// ---- validation of client input ----

// parsePushRuleBody checks a PUT body and builds the (enabled) rule.
func parsePushRuleBody(kind, id string, body []byte) (PushRule, error) {
	var req map[string]json.RawMessage
	if err := json.Unmarshal(body, &req); err != nil || req == nil {
		return PushRule{}, ErrBadJSON("the body must be a JSON object")
	}
	actions, err := parsePushActions(req["actions"])
	if err != nil {
		return PushRule{}, err
	}
	rule := PushRule{RuleID: id, Enabled: true, Actions: actions}
	switch {
	case hasConditions(kind):
		rule.Conditions = []json.RawMessage{}
		if raw, ok := req["conditions"]; ok && string(raw) != "null" {
			var conds []json.RawMessage
			if err := json.Unmarshal(raw, &conds); err != nil {
				return PushRule{}, ErrBadJSON("conditions must be an array")
			}
			if len(conds) > maxPushConditions {
				return PushRule{}, ErrInvalidParam("at most %d conditions", maxPushConditions)
			}
			for _, c := range conds {
				cc, err := checkPushCondition(c)
				if err != nil {
					return PushRule{}, err
				}
				rule.Conditions = append(rule.Conditions, cc)
			}
		}
	case kind == "content":
		var pattern string
		if err := json.Unmarshal(req["pattern"], &pattern); err != nil || pattern == "" {
			return PushRule{}, ErrBadJSON("content rules need a non-empty string pattern")
		}
		if len(pattern) > maxPushPatternBytes {
			return PushRule{}, ErrInvalidParam("a pattern may be at most %d bytes", maxPushPatternBytes)
		}
		rule.Pattern = &pattern
	}
	if b, err := json.Marshal(rule); err != nil || len(b) > MaxPushRuleBytes {
		return PushRule{}, Errorf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "a push rule may be at most %d bytes", MaxPushRuleBytes)
	}
	return rule, nil
}

// parsePushActions checks an actions array and returns it compacted. The
// historical dont_notify and coalesce actions are dropped, as the spec
// asks (a rule of only dont_notify is one with no actions).
func parsePushActions(raw json.RawMessage) ([]json.RawMessage, error) {
	if len(raw) == 0 {
		return nil, ErrBadJSON("actions is required")
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil || items == nil {
		return nil, ErrBadJSON("actions must be an array")
	}
	if len(items) > maxPushActions {
		return nil, ErrInvalidParam("at most %d actions", maxPushActions)
	}
	out := []json.RawMessage{}
	for _, it := range items {
		var name string
		if json.Unmarshal(it, &name) == nil {
			switch name {
			case "notify":
				out = append(out, actNotify)
			case "dont_notify", "coalesce":
			default:
				return nil, ErrInvalidParam("unknown push rule action %q", name)
			}
			continue
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(it, &obj); err != nil || obj == nil {
			return nil, ErrInvalidParam("an action is a string or an object")
		}
		var tweak string
		if err := json.Unmarshal(obj["set_tweak"], &tweak); err != nil || tweak == "" {
			return nil, ErrInvalidParam("an object action needs a set_tweak name")
		}
		if v, has := obj["value"]; has {
			var ok bool
			switch tweak {
			case "highlight":
				var b bool
				ok = json.Unmarshal(v, &b) == nil
			case "sound":
				var s string
				ok = json.Unmarshal(v, &s) == nil
			default:
				ok = true
			}
			if !ok {
				return nil, ErrInvalidParam("bad value for the %s tweak", tweak)
			}
		}
		out = append(out, compactJSON(it))
	}
	return out, nil
}

// checkPushCondition checks a condition: its kind must be a string, and
// the parameters of the kinds the spec defines must be well formed.
// Conditions of other kinds are kept (they never match, as the spec asks).
func checkPushCondition(raw json.RawMessage) (json.RawMessage, error) {
	var c map[string]json.RawMessage
	if err := json.Unmarshal(raw, &c); err != nil || c == nil {
		return nil, ErrBadJSON("a condition must be an object")
	}
	var kind string
	if err := json.Unmarshal(c["kind"], &kind); err != nil || kind == "" {
		return nil, ErrBadJSON("a condition needs a kind")
	}
	str := func(field string, allowEmpty bool) error {
		var s string
		if err := json.Unmarshal(c[field], &s); err != nil || (s == "" && !allowEmpty) {
			return ErrInvalidParam("a %s condition needs a string %s", kind, field)
		}
		if len(s) > maxPushPatternBytes {
			return ErrInvalidParam("a condition's %s may be at most %d bytes", field, maxPushPatternBytes)
		}
		return nil
	}
	var err error
	switch kind {
	case "event_match":
		if err = str("key", false); err == nil {
			err = str("pattern", true)
		}
	case "event_property_is", "event_property_contains":
		if err = str("key", false); err == nil {
			if _, ok := pushScalar(c["value"]); !ok {
				err = ErrInvalidParam("a %s condition needs a value: a string, an integer, a boolean or null", kind)
			}
		}
	case "room_member_count":
		if err = str("is", false); err == nil {
			var is string
			_ = json.Unmarshal(c["is"], &is)
			if _, _, ok := parseMemberCount(is); !ok {
				err = ErrInvalidParam("room_member_count needs is: an integer optionally after ==, <, >, >= or <=")
			}
		}
	case "sender_notification_permission":
		err = str("key", false)
	}
	if err != nil {
		return nil, err
	}
	return compactJSON(raw), nil
}

func compactJSON(raw json.RawMessage) json.RawMessage {
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return slices.Clone(raw)
	}
	return buf.Bytes()
}

// pushScalar decodes a value event_property_is/contains may compare: a
// string, a boolean, null or an integer in canonical JSON's range (as
// int64). Anything else (absent, a float, an object, an array) is not one.
func pushScalar(raw json.RawMessage) (any, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return nil, false
	}
	switch raw[0] {
	case 'n':
		return nil, string(raw) == "null"
	case 't', 'f':
		var b bool
		if json.Unmarshal(raw, &b) != nil {
			return nil, false
		}
		return b, true
	case '"':
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return nil, false
		}
		return s, true
	}
	return pushInteger(string(raw))
}

// pushInteger parses a JSON number that is an integer within ±(2^53-1).
func pushInteger(s string) (any, bool) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n > maxSafeInteger || n < -maxSafeInteger {
		return nil, false
	}
	return n, true
}

// parseMemberCount parses room_member_count's "is": an optional operator
// (==, <, >, >=, <=; == when absent) and a decimal integer.
func parseMemberCount(is string) (op string, n int64, ok bool) {
	op = "=="
	for _, p := range []string{"==", ">=", "<=", "<", ">"} {
		if rest, found := strings.CutPrefix(is, p); found {
			op, is = p, rest
			break
		}
	}
	if is == "" || strings.Trim(is, "0123456789") != "" {
		return "", 0, false
	}
	n, err := strconv.ParseInt(is, 10, 64)
	if err != nil {
		return "", 0, false
	}
	return op, n, true
}
