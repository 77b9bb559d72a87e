package eventgraph

import (
	"encoding/json"
	"fmt"
)

// Typed views of the event contents the authorization rules read. They keep
// raw JSON where a rule must tell "absent" from "present but malformed".

// Event types and memberships the authorization rules name.
const (
	TypeCreate           = "m.room.create"
	TypeMember           = "m.room.member"
	TypeJoinRules        = "m.room.join_rules"
	TypePowerLevels      = "m.room.power_levels"
	TypeThirdPartyInvite = "m.room.third_party_invite"
	TypeAliases          = "m.room.aliases"
	TypeRedaction        = "m.room.redaction"

	MembershipJoin   = "join"
	MembershipInvite = "invite"
	MembershipLeave  = "leave"
	MembershipBan    = "ban"
	MembershipKnock  = "knock"

	JoinRulePublic          = "public"
	JoinRuleInvite          = "invite"
	JoinRuleKnock           = "knock"
	JoinRuleRestricted      = "restricted"
	JoinRuleKnockRestricted = "knock_restricted"
	JoinRulePrivate         = "private"
)

// authField returns the raw value of key in the JSON object obj (exact,
// case-sensitive match; the last one wins if repeated, as in encoding/json).
func authField(obj []byte, key string) (json.RawMessage, bool) {
	var val []byte
	found := false
	err := authEachMember(obj, func(k, v []byte) bool {
		if string(k) == key {
			val, found = v, true
		}
		return true
	})
	return val, found && err == nil
}

// createContent is the content of m.room.create; nil fields are absent.
type createContent struct {
	Creator            json.RawMessage
	RoomVersion        json.RawMessage
	Federate           json.RawMessage
	AdditionalCreators json.RawMessage
}

func parseCreateContent(ev *Event) (*createContent, error) {
	var c createContent
	err := authEachMember(ev.Content(), func(k, v []byte) bool {
		switch string(k) {
		case "creator":
			c.Creator = v
		case "room_version":
			c.RoomVersion = v
		case "m.federate":
			c.Federate = v
		case "additional_creators":
			c.AdditionalCreators = v
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("create event %s content: %w", ev.EventID(), err)
	}
	return &c, nil
}

// federates reports whether m.federate allows other servers: only an
// explicit false forbids them.
func (c *createContent) federates() bool {
	return string(c.Federate) != "false"
}

// Creators returns the room creators named by a create event: content.creator
// before v11, the sender from v11, and from v12 (PrivilegedCreators) the
// sender followed by content.additional_creators. Malformed entries are
// skipped; the create event's own auth rule refuses them.
func Creators(create *Event) ([]string, error) {
	if create == nil || create.Type() != TypeCreate {
		return nil, fmt.Errorf("eventgraph: creators: not a create event")
	}
	c, err := parseCreateContent(create)
	if err != nil {
		return nil, fmt.Errorf("eventgraph: %w", err)
	}
	return c.creators(create), nil
}

func (c *createContent) creators(create *Event) []string {
	rv := create.Version()
	if !rv.ImplicitCreator {
		if creator, ok := authDecodeString(c.Creator); ok && creator != "" {
			return []string{creator}
		}
		return nil
	}
	creators := []string{create.Sender()}
	if !rv.PrivilegedCreators || c.AdditionalCreators == nil {
		return creators
	}
	var extra []json.RawMessage
	if decodeAuthArray(c.AdditionalCreators, &extra) {
		for _, raw := range extra {
			if u, ok := authDecodeString(raw); ok && u != "" && !containsStr(creators, u) {
				creators = append(creators, u)
			}
		}
	}
	return creators
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// memberContent is the part of m.room.member content the rules read.
type memberContent struct {
	// Membership is the membership string; HasMembership is false when the
	// key is absent (and Membership is "" when it is not a string).
	Membership    string
	HasMembership bool
	// ThirdPartyInvite is content.third_party_invite (nil if absent).
	ThirdPartyInvite json.RawMessage
	// AuthorisedVia is content.join_authorised_via_users_server when it is a
	// string; HasAuthorisedVia tells whether the key is present at all.
	AuthorisedVia    string
	HasAuthorisedVia bool
}

func parseMemberContent(raw json.RawMessage) (*memberContent, error) {
	m := &memberContent{}
	err := authEachMember(raw, func(k, v []byte) bool {
		switch string(k) {
		case "membership":
			// Non-strings leave "", an unknown membership.
			m.Membership, _ = authDecodeString(v)
			m.HasMembership = true
		case "third_party_invite":
			m.ThirdPartyInvite = v
		case "join_authorised_via_users_server":
			m.AuthorisedVia, _ = authDecodeString(v)
			m.HasAuthorisedVia = true
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// thirdPartySigned returns content.third_party_invite.signed when it is an object.
func (m *memberContent) thirdPartySigned() (json.RawMessage, bool) {
	signed, ok := authField(m.ThirdPartyInvite, "signed")
	if !ok || authEachMember(signed, func(_, _ []byte) bool { return true }) != nil {
		return nil, false
	}
	return signed, true
}

// thirdPartyToken returns content.third_party_invite.signed.token when it is
// a string.
func (m *memberContent) thirdPartyToken() (string, bool) {
	signed, ok := m.thirdPartySigned()
	if !ok {
		return "", false
	}
	tok, ok := authField(signed, "token")
	if !ok {
		return "", false
	}
	return authDecodeString(tok)
}

// membershipOf returns the membership an m.room.member event records, or ""
// for nil (no membership at all) or an event whose content does not parse.
func membershipOf(ev *Event) string {
	if ev == nil {
		return ""
	}
	v, ok := authField(ev.Content(), "membership")
	if !ok {
		return ""
	}
	m, _ := authDecodeString(v)
	return m
}

// JoinRule returns the join rule an m.room.join_rules event sets. The spec
// names no default; a room without the event (nil), or whose event lacks a
// string join_rule, is treated as invite-only: that is the only reading under
// which the auth rules' own summary ("accepting … an invitation" is always
// possible) holds.
func JoinRule(joinRules *Event) string {
	if joinRules == nil {
		return JoinRuleInvite
	}
	v, ok := authField(joinRules.Content(), "join_rule")
	if !ok {
		return JoinRuleInvite
	}
	rule, ok := authDecodeString(v)
	if !ok {
		return JoinRuleInvite
	}
	return rule
}

// thirdPartyInviteKeys returns the public keys of an m.room.third_party_invite
// event: content.public_key and every content.public_keys[].public_key.
func thirdPartyInviteKeys(ev *Event) []string {
	var keys []string
	_ = authEachMember(ev.Content(), func(k, v []byte) bool {
		switch string(k) {
		case "public_key":
			if key, ok := authDecodeString(v); ok && key != "" {
				keys = append(keys, key)
			}
		case "public_keys":
			var list []json.RawMessage
			if !decodeAuthArray(v, &list) {
				break
			}
			for _, entry := range list {
				if pk, ok := authField(entry, "public_key"); ok {
					if key, ok := authDecodeString(pk); ok && key != "" {
						keys = append(keys, key)
					}
				}
			}
		}
		return true
	})
	return keys
}
