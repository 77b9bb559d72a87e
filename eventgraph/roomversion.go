package eventgraph

import "sort"

// RoomVersionID is the opaque string naming a room version ("1" … "12").
type RoomVersionID string

// EventIDFormat says how a room version names its events.
type EventIDFormat int

const (
	// EventIDFormatV1 is "$opaque:server", carried in the event itself (v1, v2).
	EventIDFormatV1 EventIDFormat = iota + 1
	// EventIDFormatV3 is "$" + unpadded standard base64 of the reference hash (v3).
	EventIDFormatV3
	// EventIDFormatV4 is "$" + unpadded URL-safe base64 of the reference hash (v4+).
	EventIDFormatV4
)

// StateResAlgorithm names a state resolution algorithm.
type StateResAlgorithm int

const (
	StateResV1  StateResAlgorithm = iota + 1 // room version 1
	StateResV2                               // room versions 2–11
	StateResV21                              // room version 12 (MSC4297)
)

// RedactionAlgorithm names a family of redaction rules.
type RedactionAlgorithm int

const (
	RedactionV1  RedactionAlgorithm = iota + 1 // v1–v5
	RedactionV6                                // v6–v7: m.room.aliases content no longer kept
	RedactionV8                                // v8: join_rules keeps allow
	RedactionV9                                // v9–v10: member keeps join_authorised_via_users_server
	RedactionV11                               // v11–v12: rewritten rules
)

// RoomVersion holds everything that varies between room versions. Code asks
// these fields rather than comparing version strings, so that a new version
// is one table entry.
type RoomVersion struct {
	ID        RoomVersionID
	EventIDs  EventIDFormat
	StateRes  StateResAlgorithm
	Redaction RedactionAlgorithm

	// StrictCanonicalJSON (v6+): floats and integers outside [-(2^53)+1, 2^53-1] are refused.
	StrictCanonicalJSON bool
	// EnforceKeyValidity (v5+): a signing key's valid_until_ts must cover the event.
	EnforceKeyValidity bool
	// MaxDepth is the largest allowed depth (2^63-1 before v6, 2^53-1 from v6).
	MaxDepth int64

	// AliasesAuthRule (v1–v5): m.room.aliases state_key must be the sender's domain.
	AliasesAuthRule bool
	// RedactionAuthRule (v1–v2): m.room.redaction needs the redact level or same event ID domain.
	RedactionAuthRule bool
	// EventIDDomainSignature (v1–v2): the server in the event ID must sign too.
	EventIDDomainSignature bool
	// NotificationsPowerLevels (v6+): changes to power_levels.notifications are checked like events.
	NotificationsPowerLevels bool
	// Knock (v7+): knock membership and join rule.
	Knock bool
	// Restricted (v8+): restricted join rule and join_authorised_via_users_server.
	Restricted bool
	// KnockRestricted (v10+): knock_restricted join rule.
	KnockRestricted bool
	// IntegerPowerLevels (v10+): power level values must be JSON integers.
	IntegerPowerLevels bool
	// LegacyStringPowerLevels (v1–v9): power levels may be strings of integers;
	// floats are accepted where canonical JSON is not strict (v1–v5).
	LegacyStringPowerLevels bool
	// ImplicitCreator (v11+): the create event has no creator; its sender is the creator.
	ImplicitCreator bool
	// RedactsInContent (v11+): redacts lives in content, not at the top level.
	RedactsInContent bool
	// RoomIDFromCreateEvent (v12+): room ID = "!" + create event's reference hash;
	// the create event carries no room_id and is not an auth event.
	RoomIDFromCreateEvent bool
	// PrivilegedCreators (v12+, MSC4289): creators (sender + additional_creators)
	// have infinite power and cannot appear in power_levels.users.
	PrivilegedCreators bool
	// ServerACLProtected (MSC2870): redaction keeps m.room.server_acl's allow,
	// deny and allow_ip_literals. No stable room version adopts it yet.
	ServerACLProtected bool
}

const (
	maxDepthV1 = int64(1<<63 - 1)
	maxDepthV6 = int64(1<<53 - 1)
)

// DefaultRoomVersion is used for new rooms (MSC4304).
const DefaultRoomVersion RoomVersionID = "12"

var roomVersions = func() map[RoomVersionID]*RoomVersion {
	v1 := RoomVersion{
		ID: "1", EventIDs: EventIDFormatV1, StateRes: StateResV1, Redaction: RedactionV1,
		MaxDepth: maxDepthV1, AliasesAuthRule: true, RedactionAuthRule: true,
		EventIDDomainSignature: true, LegacyStringPowerLevels: true,
	}
	v2 := v1
	v2.ID, v2.StateRes = "2", StateResV2
	v3 := v2
	v3.ID, v3.EventIDs, v3.RedactionAuthRule, v3.EventIDDomainSignature = "3", EventIDFormatV3, false, false
	v4 := v3
	v4.ID, v4.EventIDs = "4", EventIDFormatV4
	v5 := v4
	v5.ID, v5.EnforceKeyValidity = "5", true
	v6 := v5
	v6.ID, v6.Redaction, v6.StrictCanonicalJSON, v6.MaxDepth = "6", RedactionV6, true, maxDepthV6
	v6.AliasesAuthRule, v6.NotificationsPowerLevels = false, true
	v7 := v6
	v7.ID, v7.Knock = "7", true
	v8 := v7
	v8.ID, v8.Restricted, v8.Redaction = "8", true, RedactionV8
	v9 := v8
	v9.ID, v9.Redaction = "9", RedactionV9
	v10 := v9
	v10.ID, v10.KnockRestricted, v10.IntegerPowerLevels, v10.LegacyStringPowerLevels = "10", true, true, false
	v11 := v10
	v11.ID, v11.Redaction, v11.ImplicitCreator, v11.RedactsInContent = "11", RedactionV11, true, true
	v12 := v11
	v12.ID, v12.StateRes, v12.RoomIDFromCreateEvent, v12.PrivilegedCreators = "12", StateResV21, true, true
	m := map[RoomVersionID]*RoomVersion{}
	for _, v := range []RoomVersion{v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12} {
		v := v
		m[v.ID] = &v
	}
	return m
}()

// GetRoomVersion returns the room version with the given ID, if shoal supports it.
// The returned value must not be modified.
func GetRoomVersion(id RoomVersionID) (*RoomVersion, bool) {
	v, ok := roomVersions[id]
	return v, ok
}

// MustRoomVersion is GetRoomVersion for IDs known at compile time; it panics
// on an unknown ID and must never be given client or peer input.
func MustRoomVersion(id RoomVersionID) *RoomVersion {
	v, ok := roomVersions[id]
	if !ok {
		panic("eventgraph: unknown room version " + string(id))
	}
	return v
}

// SupportedRoomVersions lists every supported version ID in numeric order.
func SupportedRoomVersions() []RoomVersionID {
	ids := make([]RoomVersionID, 0, len(roomVersions))
	for id := range roomVersions {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool {
		if len(ids[i]) != len(ids[j]) {
			return len(ids[i]) < len(ids[j])
		}
		return ids[i] < ids[j]
	})
	return ids
}
