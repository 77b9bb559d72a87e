package eventgraph

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// PowerLevel is a user's power level. Room creators in room versions with
// PrivilegedCreators (v12+) have an infinite level, which no integer reaches;
// everyone else has a finite Value.
type PowerLevel struct {
	Value    int64
	Infinite bool
}

// FinitePowerLevel is the power level n.
func FinitePowerLevel(n int64) PowerLevel { return PowerLevel{Value: n} }

// InfinitePowerLevel is the level of v12 room creators.
func InfinitePowerLevel() PowerLevel { return PowerLevel{Infinite: true} }

// Compare returns -1, 0 or +1 as p is less than, equal to or greater than q.
// Two infinite levels are equal.
func (p PowerLevel) Compare(q PowerLevel) int {
	switch {
	case p.Infinite && q.Infinite:
		return 0
	case p.Infinite:
		return 1
	case q.Infinite:
		return -1
	case p.Value < q.Value:
		return -1
	case p.Value > q.Value:
		return 1
	}
	return 0
}

// AtLeast reports whether p >= n.
func (p PowerLevel) AtLeast(n int64) bool { return p.Infinite || p.Value >= n }

// Exceeds reports whether p > n.
func (p PowerLevel) Exceeds(n int64) bool { return p.Infinite || p.Value > n }

func (p PowerLevel) String() string {
	if p.Infinite {
		return "infinite"
	}
	return strconv.FormatInt(p.Value, 10)
}

// plField names the integer-valued top-level properties of power levels.
type plField int

const (
	plUsersDefault plField = iota
	plEventsDefault
	plStateDefault
	plBan
	plKick
	plRedact
	plInvite
	numPLFields
)

func (f plField) name() string {
	switch f {
	case plUsersDefault:
		return "users_default"
	case plEventsDefault:
		return "events_default"
	case plStateDefault:
		return "state_default"
	case plBan:
		return "ban"
	case plKick:
		return "kick"
	case plRedact:
		return "redact"
	case plInvite:
		return "invite"
	}
	return ""
}

// defaultLevel is the value a property takes when the content lacks it
// (m.room.power_levels schema, server-server "Definitions"). With no power
// levels event at all the same defaults apply: the schema says state_default
// is 50 "if there is no state_default in the m.room.power_levels event, or
// there is no m.room.power_levels event".
func (f plField) defaultLevel() int64 {
	switch f {
	case plStateDefault, plBan, plKick, plRedact:
		return 50
	}
	return 0 // users_default, events_default, invite
}

// defaultNotificationLevel is notifications.room's default; it is the only
// notification key the spec defines.
const defaultNotificationLevel = 50

// PowerLevels are the effective power levels of a room: an
// m.room.power_levels content parsed under the room version's rules, with the
// defaults for absent properties and the room creators' levels.
type PowerLevels struct {
	rv     *RoomVersion
	exists bool // built from an m.room.power_levels event

	top    [numPLFields]int64
	topSet [numPLFields]bool // property present in the content
	events map[string]int64
	notifs map[string]int64
	users  map[string]int64

	// creators: in v12+ (PrivilegedCreators) they have infinite power; before
	// v12 the single creator has 100 while the room has no power levels event.
	creators []string
}

// PowerLevelsError says which part of an m.room.power_levels content is
// invalid under the room version's rules.
type PowerLevelsError struct {
	// Field is the top-level property: "ban", "events", "users", …
	Field string
	// Key is the entry inside events/notifications/users, if any.
	Key    string
	Reason string
}

func (e *PowerLevelsError) Error() string {
	if e.Key != "" {
		return fmt.Sprintf("power levels %s[%q]: %s", e.Field, e.Key, e.Reason)
	}
	return fmt.Sprintf("power levels %s: %s", e.Field, e.Reason)
}

// ParsePowerLevelsContent parses an m.room.power_levels content under the
// rules of rv: v10+ (IntegerPowerLevels) accept JSON integers only; v1–v9
// (LegacyStringPowerLevels) also accept strings of integers; v1–v5 (where
// canonical JSON is not strict) also accept floats, truncated toward zero.
// Any value that does not parse is an error (*PowerLevelsError), as are users
// keys that are not user IDs. The result has no creators; see NewPowerLevels.
func ParsePowerLevelsContent(content json.RawMessage, rv *RoomVersion) (*PowerLevels, error) {
	pl := &PowerLevels{rv: rv, exists: true}
	for f := plField(0); f < numPLFields; f++ {
		pl.top[f] = f.defaultLevel()
	}
	var perr *PowerLevelsError
	fail := func(e *PowerLevelsError) bool { perr = e; return false }
	err := authEachMember(content, func(k, v []byte) bool {
		switch key := string(k); key {
		case "events":
			m, e := parsePowerMap(key, v, rv, false)
			if e != nil {
				return fail(e)
			}
			pl.events = m
		case "notifications":
			m, e := parsePowerMap(key, v, rv, false)
			if e != nil {
				if rv.NotificationsPowerLevels {
					return fail(e)
				}
				// Before v6 the auth rules ignore notifications: keep what parses.
				m = parseLenientPowerMap(v, rv)
			}
			pl.notifs = m
		case "users":
			m, e := parsePowerMap(key, v, rv, true)
			if e != nil {
				return fail(e)
			}
			pl.users = m
		default:
			f, ok := plFieldByName(key)
			if !ok {
				return true
			}
			n, e := parsePowerValue(v, rv)
			if e != nil {
				return fail(&PowerLevelsError{Field: key, Reason: e.Error()})
			}
			pl.top[f], pl.topSet[f] = n, true
		}
		return true
	})
	if err != nil {
		return nil, &PowerLevelsError{Field: "content", Reason: "not a JSON object"}
	}
	if perr != nil {
		return nil, perr
	}
	return pl, nil
}

func plFieldByName(name string) (plField, bool) {
	for f := plField(0); f < numPLFields; f++ {
		if f.name() == name {
			return f, true
		}
	}
	return 0, false
}

// parsePowerMap parses the object value v of the power levels property name
// into a map of levels; userKeys requires every key to be a user ID.
func parsePowerMap(name string, v []byte, rv *RoomVersion, userKeys bool) (map[string]int64, *PowerLevelsError) {
	var m map[string]int64
	var perr *PowerLevelsError
	err := authEachMember(v, func(k, raw []byte) bool {
		key := string(k)
		if userKeys && !validUserIDForAuth(key) {
			perr = &PowerLevelsError{Field: name, Key: key, Reason: "key is not a valid user ID"}
			return false
		}
		n, err := parsePowerValue(raw, rv)
		if err != nil {
			perr = &PowerLevelsError{Field: name, Key: key, Reason: err.Error()}
			return false
		}
		if m == nil {
			m = make(map[string]int64, 4)
		}
		m[key] = n
		return true
	})
	if err != nil {
		return nil, &PowerLevelsError{Field: name, Reason: "not an object"}
	}
	if perr != nil {
		return nil, perr
	}
	return m, nil
}

// parseLenientPowerMap parses the entries of an object that parse and
// drops the rest.
func parseLenientPowerMap(v []byte, rv *RoomVersion) map[string]int64 {
	m := map[string]int64{}
	_ = authEachMember(v, func(k, raw []byte) bool {
		if n, err := parsePowerValue(raw, rv); err == nil {
			m[string(k)] = n
		}
		return true
	})
	return m
}

// parsePowerValue parses one power level value as rv allows it. Values that
// do not fit in an int64 but are legal in the version (huge strings before
// v10, huge numbers before v6) saturate: a level beyond ±2^63 compares with
// every realistic level as the exact number would.
func parsePowerValue(raw json.RawMessage, rv *RoomVersion) (int64, error) {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 {
		return 0, fmt.Errorf("empty value")
	}
	switch c := t[0]; {
	case c == '"':
		if !rv.LegacyStringPowerLevels {
			return 0, fmt.Errorf("value %s is a string, room version %s needs an integer", t, rv.ID)
		}
		var s string
		if err := json.Unmarshal(t, &s); err != nil {
			return 0, fmt.Errorf("value %s: %w", t, err)
		}
		n, ok := parseLegacyIntString(s)
		if !ok {
			return 0, fmt.Errorf("string %q is not an integer", s)
		}
		return n, nil
	case c == '-' || (c >= '0' && c <= '9'):
		return parsePowerNumber(string(t), rv)
	}
	return 0, fmt.Errorf("value %s is not an integer", t)
}

// maxCanonicalInt is the largest magnitude canonical JSON allows (2^53-1).
const maxCanonicalInt = 1<<53 - 1

func parsePowerNumber(s string, rv *RoomVersion) (int64, error) {
	if isJSONInteger(s) {
		n, err := strconv.ParseInt(s, 10, 64)
		if err == nil {
			if rv.StrictCanonicalJSON && (n > maxCanonicalInt || n < -maxCanonicalInt) {
				return 0, fmt.Errorf("integer %s is outside the canonical JSON range", s)
			}
			return n, nil
		}
		if rv.StrictCanonicalJSON {
			return 0, fmt.Errorf("integer %s is outside the canonical JSON range", s)
		}
		if s[0] == '-' {
			return math.MinInt64, nil
		}
		return math.MaxInt64, nil
	}
	// A fraction or an exponent: a float, legal only where canonical JSON is
	// not enforced (v1–v5, fragment v1-floaty-power-levels).
	if !rv.LegacyStringPowerLevels || rv.StrictCanonicalJSON {
		return 0, fmt.Errorf("value %s is not an integer", s)
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, fmt.Errorf("value %s is outside the range of a double", s)
	}
	f = math.Trunc(f)
	switch {
	case f >= math.MaxInt64:
		return math.MaxInt64, nil
	case f <= math.MinInt64:
		return math.MinInt64, nil
	}
	return int64(f), nil
}

// isJSONInteger reports whether s is a JSON number without fraction or exponent.
func isJSONInteger(s string) bool {
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	if i == len(s) {
		return false
	}
	for ; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// parseLegacyIntString parses a power level written as a string (fragment
// v1-stringy-power-levels): optional surrounding whitespace, an optional
// single + or -, then base-10 digits (leading zeroes allowed).
func parseLegacyIntString(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	neg := false
	if s != "" && (s[0] == '+' || s[0] == '-') {
		neg = s[0] == '-'
		s = s[1:]
	}
	if s == "" {
		return 0, false
	}
	var n int64
	saturated := false
	for i := 0; i < len(s); i++ {
		d := s[i]
		if d < '0' || d > '9' {
			return 0, false
		}
		if !saturated {
			if n > (math.MaxInt64-int64(d-'0'))/10 {
				saturated = true
			} else {
				n = n*10 + int64(d-'0')
			}
		}
	}
	switch {
	case saturated && neg:
		return math.MinInt64, true
	case saturated:
		return math.MaxInt64, true
	case neg:
		return -n, true
	}
	return n, true
}

// NewPowerLevels returns the effective power levels of a room of version rv
// whose create event is create and whose m.room.power_levels event is
// powerLevels (nil when the room has none). create may be nil only when the
// caller needs no creator levels; without it nobody has creator power.
func NewPowerLevels(rv *RoomVersion, create, powerLevels *Event) (*PowerLevels, error) {
	var creators []string
	if create != nil {
		var err error
		if creators, err = Creators(create); err != nil {
			return nil, err
		}
	}
	return newPowerLevels(rv, creators, powerLevels)
}

func newPowerLevels(rv *RoomVersion, creators []string, powerLevels *Event) (*PowerLevels, error) {
	var pl *PowerLevels
	if powerLevels != nil {
		var err error
		if pl, err = ParsePowerLevelsContent(powerLevels.Content(), rv); err != nil {
			return nil, fmt.Errorf("eventgraph: power levels event %s: %w", powerLevels.EventID(), err)
		}
	} else {
		pl = &PowerLevels{rv: rv}
		for f := plField(0); f < numPLFields; f++ {
			pl.top[f] = f.defaultLevel()
		}
	}
	pl.creators = creators
	return pl, nil
}

// Exists reports whether the levels come from an m.room.power_levels event
// (false: the room has none and only defaults apply).
func (pl *PowerLevels) Exists() bool { return pl.exists }

// IsCreator reports whether userID is a room creator.
func (pl *PowerLevels) IsCreator(userID string) bool { return containsStr(pl.creators, userID) }

// UserLevel is userID's power level: infinite for v12+ creators; otherwise
// users[userID] or users_default; and in a pre-v12 room without a power
// levels event, 100 for the creator and 0 for everyone else.
func (pl *PowerLevels) UserLevel(userID string) PowerLevel {
	if pl.rv.PrivilegedCreators && pl.IsCreator(userID) {
		return InfinitePowerLevel()
	}
	if !pl.exists {
		if !pl.rv.PrivilegedCreators && pl.IsCreator(userID) {
			return FinitePowerLevel(100)
		}
		return FinitePowerLevel(0)
	}
	if n, ok := pl.users[userID]; ok {
		return FinitePowerLevel(n)
	}
	return FinitePowerLevel(pl.top[plUsersDefault])
}

// EventLevel is the level required to send an event of type evType: its
// entry in events, else state_default or events_default.
func (pl *PowerLevels) EventLevel(evType string, isState bool) int64 {
	if n, ok := pl.events[evType]; ok {
		return n
	}
	if isState {
		return pl.top[plStateDefault]
	}
	return pl.top[plEventsDefault]
}

// NotificationLevel is the level required to trigger the notification key
// (e.g. "room" for @room); absent keys take notifications.room's default 50.
func (pl *PowerLevels) NotificationLevel(key string) int64 {
	if n, ok := pl.notifs[key]; ok {
		return n
	}
	return defaultNotificationLevel
}

// Ban is the ban level.
func (pl *PowerLevels) Ban() int64 { return pl.top[plBan] }

// Kick is the kick level.
func (pl *PowerLevels) Kick() int64 { return pl.top[plKick] }

// Redact is the redact level.
func (pl *PowerLevels) Redact() int64 { return pl.top[plRedact] }

// Invite is the invite level.
func (pl *PowerLevels) Invite() int64 { return pl.top[plInvite] }

// UsersDefault is users_default.
func (pl *PowerLevels) UsersDefault() int64 { return pl.top[plUsersDefault] }

// EventsDefault is events_default.
func (pl *PowerLevels) EventsDefault() int64 { return pl.top[plEventsDefault] }

// StateDefault is state_default.
func (pl *PowerLevels) StateDefault() int64 { return pl.top[plStateDefault] }

// Users returns a copy of the explicit users entries.
func (pl *PowerLevels) Users() map[string]int64 { return copyLevels(pl.users) }

// Events returns a copy of the explicit events entries.
func (pl *PowerLevels) Events() map[string]int64 { return copyLevels(pl.events) }

// Notifications returns a copy of the explicit notifications entries.
func (pl *PowerLevels) Notifications() map[string]int64 { return copyLevels(pl.notifs) }

func copyLevels(m map[string]int64) map[string]int64 {
	c := make(map[string]int64, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// SenderPowerLevel is the power level of ev's sender as ev's own auth events
// define it (the ordering of state resolution v2 compares senders this way):
// the power levels event among them, the create event among them (in v12,
// the create event named by the room ID). A create event is its own create
// event. Auth events the lookup lacks (nil, nil) are treated as absent.
func SenderPowerLevel(ev *Event, lookup func(eventID string) (*Event, error)) (PowerLevel, error) {
	rv := ev.Version()
	var create, pl *Event
	if ev.Type() == TypeCreate && ev.StateKeyEquals("") {
		create = ev
	}
	for _, id := range ev.AuthEventIDs() {
		a, err := lookup(id)
		if err != nil {
			return PowerLevel{}, fmt.Errorf("eventgraph: sender power level of %s: look up auth event %s: %w", ev.EventID(), id, err)
		}
		if a == nil || !a.StateKeyEquals("") {
			continue
		}
		switch a.Type() {
		case TypeCreate:
			if create == nil {
				create = a
			}
		case TypePowerLevels:
			pl = a
		}
	}
	if create == nil && rv.RoomIDFromCreateEvent {
		if id, ok := createEventIDFromRoomID(ev.RoomID()); ok {
			c, err := lookup(id)
			if err != nil {
				return PowerLevel{}, fmt.Errorf("eventgraph: sender power level of %s: look up create event %s: %w", ev.EventID(), id, err)
			}
			if c != nil && c.Type() == TypeCreate {
				create = c
			}
		}
	}
	levels, err := NewPowerLevels(rv, create, pl)
	if err != nil {
		return PowerLevel{}, fmt.Errorf("eventgraph: sender power level of %s: %w", ev.EventID(), err)
	}
	return levels.UserLevel(ev.Sender()), nil
}

// createEventIDFromRoomID maps a v12 room ID "!x" to its create event ID "$x".
func createEventIDFromRoomID(roomID string) (string, bool) {
	if len(roomID) < 2 || roomID[0] != '!' {
		return "", false
	}
	return "$" + roomID[1:], true
}
