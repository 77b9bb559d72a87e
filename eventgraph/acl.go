package eventgraph

import (
	"encoding/json"
	"net/netip"
	"strings"
	"unicode/utf8"
)

// TypeServerACL is the state event that keeps servers out of a room at the
// federation level (client-server API, "Server Access Control Lists").
const TypeServerACL = "m.room.server_acl"

// ServerACLAllows reports whether the m.room.server_acl content aclContent
// lets server take part in the room. An empty aclContent means the room has
// no ACL: every server is allowed. Otherwise, in the spec's order: an IP
// literal is denied when allow_ip_literals is false, a server matching a
// deny glob is denied, one matching an allow glob is allowed, anything else
// is denied. Globs (`*` any run of characters, `?` one character) match the
// server name without its port, case-insensitively.
//
// Malformed fields are read as the spec's defaults (allow_ip_literals true,
// allow and deny empty) and entries that are not strings are skipped, so a
// broken ACL fails closed rather than open, as a missing allow list does.
// The lead applies it to PDUs and federation reads; the EDU handlers
// (MSC4163) to typing notifications and receipts.
func ServerACLAllows(aclContent json.RawMessage, server string) bool {
	if len(aclContent) == 0 {
		return true
	}
	var c struct {
		AllowIPLiterals json.RawMessage   `json:"allow_ip_literals"`
		Allow           []json.RawMessage `json:"allow"`
		Deny            []json.RawMessage `json:"deny"`
	}
	if err := json.Unmarshal(aclContent, &c); err != nil {
		// Fields of the wrong shape: take each one that parses alone.
		var fields map[string]json.RawMessage
		if json.Unmarshal(aclContent, &fields) != nil {
			return false
		}
		c.AllowIPLiterals = fields["allow_ip_literals"]
		_ = json.Unmarshal(fields["allow"], &c.Allow)
		_ = json.Unmarshal(fields["deny"], &c.Deny)
	}
	host := aclHost(server)
	if host == "" {
		return false
	}
	if string(c.AllowIPLiterals) == "false" && isIPLiteral(host) {
		return false
	}
	host = strings.ToLower(host)
	if aclListMatches(c.Deny, host) {
		return false
	}
	return aclListMatches(c.Allow, host)
}

// aclListMatches reports whether any string glob of list matches host.
func aclListMatches(list []json.RawMessage, host string) bool {
	for _, raw := range list {
		var glob string
		if json.Unmarshal(raw, &glob) != nil {
			continue
		}
		if GlobMatch(strings.ToLower(glob), host) {
			return true
		}
	}
	return false
}

// aclHost is server's host without the port ("" when server is not a
// server name). IPv6 literals keep their brackets, as ACL entries write them.
func aclHost(server string) string {
	host, _, err := ParseServerName(server)
	if err != nil {
		return ""
	}
	return host
}

// isIPLiteral reports whether host (no port) is an IPv4 or a bracketed IPv6
// address.
func isIPLiteral(host string) bool {
	if strings.HasPrefix(host, "[") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Is4()
}

// GlobMatch reports whether s matches the whole glob pattern, where `*`
// matches any run of characters (none included) and `?` exactly one
// (appendices, "Glob-style matching"). It compares exactly: callers fold
// case first where matching is case-insensitive. It runs in
// O(len(pattern)·len(s)) at worst: on a mismatch it only ever backtracks
// to the latest `*`.
func GlobMatch(pattern, s string) bool {
	p, i := 0, 0
	starP, starI := -1, 0
	for i < len(s) {
		if p < len(pattern) {
			pc, pw := utf8.DecodeRuneInString(pattern[p:])
			sc, sw := utf8.DecodeRuneInString(s[i:])
			switch {
			case pc == '*':
				starP, starI = p, i
				p += pw
				continue
			case pc == '?' || pc == sc:
				p += pw
				i += sw
				continue
			}
		}
		if starP < 0 {
			return false
		}
		// Let the latest `*` swallow one more character and retry.
		_, sw := utf8.DecodeRuneInString(s[starI:])
		starI += sw
		p, i = starP+1, starI
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}
