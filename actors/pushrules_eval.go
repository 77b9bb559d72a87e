package actors

import (
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"regexp"
	"strings"
)

// Push rule evaluation, as pure code: a user's ruleset is compiled once
// (patterns become regular expressions) and then evaluated against each
// event the user should be told about. The room actor that sends an event
// knows what the conditions need besides the event: the member count, the
// sender's power level and the power levels' notification levels, and the
// user's display name in the room (PushContext).
//
// Go's regexp runs in time linear in its input (times the expression's
// size), so neither a client's pattern nor an event's body can make
// evaluation blow up; both are bounded (maxPushPatternBytes, the 64 KiB
// event limit).

// PushContext is what evaluation needs to know about the room at the event.
type PushContext struct {
	// MemberCount is the number of joined members (room_member_count).
	MemberCount int
	// SenderPowerLevel is the sender's power level in the room.
	SenderPowerLevel int64
	// NotificationLevels is the power levels' "notifications" object; a
	// key it lacks needs level 50 (sender_notification_permission).
	NotificationLevels map[string]int64
	// DisplayName is the user's display name in the room; empty never
	// matches (contains_display_name).
	DisplayName string
}

// PushOutcome is what the ruleset decided for one event.
type PushOutcome struct {
	Notify    bool
	Highlight bool
	// Tweaks holds every set_tweak of the matched rule (sound, highlight
	// and any custom tweak), value as given (read-only); a tweak without a
	// value is JSON true.
	Tweaks map[string]json.RawMessage
	// Kind and RuleID name the rule that matched; empty when none did.
	Kind, RuleID string
}

// PushEvent is an event prepared for evaluation: decoded once, evaluated
// for every user it concerns.
type PushEvent struct {
	root   map[string]any
	sender string
	roomID string
	// body is content.body when it is a string.
	body    string
	hasBody bool
}

// NewPushEvent decodes an event (client or federation format: type,
// content, sender, state_key and room_id are where rules look).
func NewPushEvent(eventJSON []byte) (*PushEvent, error) {
	dec := json.NewDecoder(bytes.NewReader(eventJSON))
	dec.UseNumber()
	var root map[string]any
	if err := dec.Decode(&root); err != nil || root == nil {
		return nil, errors.New("actors: push event is not a JSON object")
	}
	ev := &PushEvent{root: root}
	ev.sender, _ = root["sender"].(string)
	ev.roomID, _ = root["room_id"].(string)
	if content, ok := root["content"].(map[string]any); ok {
		ev.body, ev.hasBody = content["body"].(string)
	}
	return ev, nil
}

// lookup follows a dot-separated property path; found is false when a
// step is missing or not an object.
func (ev *PushEvent) lookup(path []string) (any, bool) {
	var cur any = ev.root
	for _, p := range path {
		obj, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = obj[p]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// splitPropertyPath splits a dot-separated property path: `\.` is a
// literal dot and `\\` a literal backslash; any other backslash is kept
// as it is.
func splitPropertyPath(key string) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case c == '\\' && i+1 < len(key) && (key[i+1] == '.' || key[i+1] == '\\'):
			cur.WriteByte(key[i+1])
			i++
		case c == '.':
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	return append(parts, cur.String())
}

// globRegexp turns a glob (* any run of characters, ? one character) into
// a case-insensitive regular expression: of the whole value, or (words)
// of any part of it that starts and ends at a word boundary, where a
// boundary is the value's start or end or a character outside
// [A-Za-z0-9_] (which is exactly RE2's \W).
func globRegexp(glob string, words bool) (*regexp.Regexp, error) {
	var b strings.Builder
	b.WriteString(`(?is)`)
	if words {
		b.WriteString(`(?:^|\W)(?:`)
	} else {
		b.WriteString(`^(?:`)
	}
	prevStar := false
	for _, r := range glob {
		// A run of stars matches what one does; collapsing it keeps the
		// expression (and so the cost of matching) small.
		if r == '*' && prevStar {
			continue
		}
		prevStar = r == '*'
		switch r {
		case '*':
			b.WriteString(`.*`)
		case '?':
			b.WriteString(`.`)
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	if words {
		b.WriteString(`)(?:\W|$)`)
	} else {
		b.WriteString(`)$`)
	}
	return regexp.Compile(b.String())
}

// pushCond is one compiled condition.
type pushCond struct {
	kind  string
	path  []string
	re    *regexp.Regexp
	value any // event_property_is/contains: string, bool, nil or int64
	op    string
	count int64
	key   string
	// never is set for conditions that cannot match: unknown kinds and
	// malformed parameters.
	never bool
}

func compilePushCond(raw json.RawMessage) pushCond {
	var c struct {
		Kind    string          `json:"kind"`
		Key     string          `json:"key"`
		Pattern *string         `json:"pattern"`
		Is      string          `json:"is"`
		Value   json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return pushCond{never: true}
	}
	pc := pushCond{kind: c.Kind, key: c.Key, path: splitPropertyPath(c.Key)}
	switch c.Kind {
	case "event_match":
		if c.Pattern == nil || c.Key == "" {
			pc.never = true
			break
		}
		re, err := globRegexp(*c.Pattern, c.Key == "content.body")
		pc.re, pc.never = re, err != nil
	case "event_property_is", "event_property_contains":
		v, ok := pushScalar(c.Value)
		pc.value, pc.never = v, !ok || c.Key == ""
	case "room_member_count":
		op, n, ok := parseMemberCount(c.Is)
		pc.op, pc.count, pc.never = op, n, !ok
	case "sender_notification_permission":
		pc.never = c.Key == ""
	case "contains_display_name":
	default:
		pc.never = true
	}
	return pc
}

func (c *pushCond) match(ev *PushEvent, pctx *PushContext) bool {
	if c.never {
		return false
	}
	switch c.kind {
	case "event_match":
		v, ok := ev.lookup(c.path)
		s, isStr := v.(string)
		return ok && isStr && c.re.MatchString(s)
	case "event_property_is":
		v, ok := ev.lookup(c.path)
		return ok && scalarEqual(v, c.value)
	case "event_property_contains":
		v, ok := ev.lookup(c.path)
		arr, isArr := v.([]any)
		if !ok || !isArr {
			return false
		}
		for _, item := range arr {
			if scalarEqual(item, c.value) {
				return true
			}
		}
		return false
	case "contains_display_name":
		return ev.hasBody && containsWord(ev.body, pctx.DisplayName)
	case "room_member_count":
		n := int64(pctx.MemberCount)
		switch c.op {
		case "<":
			return n < c.count
		case ">":
			return n > c.count
		case "<=":
			return n <= c.count
		case ">=":
			return n >= c.count
		default:
			return n == c.count
		}
	case "sender_notification_permission":
		need := int64(defaultNotificationLevel)
		if lvl, ok := pctx.NotificationLevels[c.key]; ok {
			need = lvl
		}
		return pctx.SenderPowerLevel >= need
	}
	return false
}

// scalarEqual compares an event value (decoded with UseNumber) with a
// condition's value: same type and value; numbers only as integers.
func scalarEqual(ev, want any) bool {
	switch w := want.(type) {
	case nil:
		return ev == nil
	case string:
		s, ok := ev.(string)
		return ok && s == w
	case bool:
		b, ok := ev.(bool)
		return ok && b == w
	case int64:
		n, ok := ev.(json.Number)
		if !ok {
			return false
		}
		got, isInt := pushInteger(n.String())
		return isInt && got.(int64) == w
	}
	return false
}

// containsWord reports whether text contains name, case-insensitively,
// with a word boundary on each side.
func containsWord(text, name string) bool {
	if name == "" {
		return false
	}
	text, name = strings.ToLower(text), strings.ToLower(name)
	for from := 0; from <= len(text)-len(name); {
		i := strings.Index(text[from:], name)
		if i < 0 {
			return false
		}
		i += from
		end := i + len(name)
		if (i == 0 || !isWordByte(text[i-1])) && (end == len(text) || !isWordByte(text[end])) {
			return true
		}
		from = i + 1
	}
	return false
}

func isWordByte(c byte) bool {
	return c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// pushRuleC is one compiled rule.
type pushRuleC struct {
	kind, id string
	conds    []pushCond
	// content rules match the body against pattern; room and sender rules
	// compare the rule ID.
	pattern *regexp.Regexp
	outcome PushOutcome
}

func (r *pushRuleC) match(ev *PushEvent, pctx *PushContext) bool {
	switch r.kind {
	case "content":
		return r.pattern != nil && ev.hasBody && r.pattern.MatchString(ev.body)
	case "room":
		return ev.roomID == r.id
	case "sender":
		return ev.sender == r.id
	}
	for i := range r.conds {
		if !r.conds[i].match(ev, pctx) {
			return false
		}
	}
	return true
}

// pushActionsOutcome reads a rule's actions: notify, and the tweaks.
// dont_notify and coalesce (historical) and anything unknown do nothing.
func pushActionsOutcome(actions []json.RawMessage) PushOutcome {
	var out PushOutcome
	for _, a := range actions {
		var name string
		if json.Unmarshal(a, &name) == nil {
			out.Notify = out.Notify || name == "notify"
			continue
		}
		var t struct {
			SetTweak string          `json:"set_tweak"`
			Value    json.RawMessage `json:"value"`
		}
		if json.Unmarshal(a, &t) != nil || t.SetTweak == "" {
			continue
		}
		v := t.Value
		if len(v) == 0 {
			v = json.RawMessage("true")
		}
		if out.Tweaks == nil {
			out.Tweaks = map[string]json.RawMessage{}
		}
		out.Tweaks[t.SetTweak] = v
		if t.SetTweak == "highlight" {
			var h bool
			out.Highlight = json.Unmarshal(v, &h) == nil && h
		}
	}
	return out
}

// PushEvaluator is a user's ruleset compiled for evaluation. It is
// immutable once built and safe to share between goroutines.
type PushEvaluator struct {
	userID string
	rules  []pushRuleC
}

// NewPushEvaluator compiles userID's ruleset; disabled rules are left out.
func NewPushEvaluator(userID string, rs *PushRuleset) *PushEvaluator {
	e := &PushEvaluator{userID: userID}
	for _, kind := range PushRuleKinds {
		rules, _ := rs.Kind(kind)
		for _, r := range rules {
			if !r.Enabled {
				continue
			}
			c := pushRuleC{kind: kind, id: r.RuleID, outcome: pushActionsOutcome(r.Actions)}
			c.outcome.Kind, c.outcome.RuleID = kind, r.RuleID
			switch {
			case kind == "content":
				if r.Pattern != nil {
					c.pattern, _ = globRegexp(*r.Pattern, true)
				}
			case hasConditions(kind):
				for _, raw := range r.Conditions {
					c.conds = append(c.conds, compilePushCond(raw))
				}
			}
			e.rules = append(e.rules, c)
		}
	}
	return e
}

// Evaluate finds the first enabled rule, in priority order, that matches
// ev and returns its outcome. No rule matching, or an event the user sent
// themselves, means no notification.
func (e *PushEvaluator) Evaluate(ev *PushEvent, pctx PushContext) PushOutcome {
	if ev.sender == e.userID {
		return PushOutcome{}
	}
	for i := range e.rules {
		if e.rules[i].match(ev, &pctx) {
			out := e.rules[i].outcome
			out.Tweaks = maps.Clone(out.Tweaks)
			return out
		}
	}
	return PushOutcome{}
}
