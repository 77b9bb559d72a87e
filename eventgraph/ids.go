package eventgraph

import (
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"
)

// Identifier grammar (appendices, "Identifier Grammar"). Validators return
// errors wrapping ErrInvalidParam, or ErrTooLarge for identifiers over
// MaxIDBytes.

// MaxIDBytes is the length limit, sigil and domain included, of user IDs,
// room IDs, room aliases and event IDs.
const MaxIDBytes = 255

// hashIDLen is the length of unpadded base64 of a SHA-256 hash.
const hashIDLen = 43

// idDomain returns the server name of a "&localpart:domain" identifier: the
// text after the first colon (localparts never contain one).
func idDomain(id string) (string, bool) {
	_, d, ok := strings.Cut(id, ":")
	return d, ok && d != ""
}

// IDDomain returns the server name of a user ID, room alias, or room or
// event ID of the older "…:domain" forms.
func IDDomain(id string) (string, error) {
	d, ok := idDomain(id)
	if !ok {
		return "", invalidParam("", fmt.Sprintf("%q has no server name", id), nil)
	}
	return d, nil
}

// ParseServerName splits a server name into host and port (0 if absent),
// checking the grammar: a DNS name of [A-Za-z0-9.-], a dotted-quad IPv4
// literal with octets 0–255, or a bracketed IPv6 literal, then an optional
// port of 1–5 digits no larger than 65535. The host keeps its brackets.
func ParseServerName(s string) (host string, port int, err error) {
	bad := func(why string) (string, int, error) {
		return "", 0, invalidParam("server_name", fmt.Sprintf("%q: %s", s, why), nil)
	}
	if s == "" {
		return bad("empty")
	}
	rest := ""
	if s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return bad("unterminated IPv6 literal")
		}
		host, rest = s[:end+1], s[end+1:]
		lit := s[1:end]
		if len(lit) < 2 || len(lit) > 45 {
			return bad("IPv6 literal has wrong length")
		}
		for i := 0; i < len(lit); i++ {
			c := lit[i]
			if !(isASCIIDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == ':' || c == '.') {
				return bad("invalid character in IPv6 literal")
			}
		}
		if a, err := netip.ParseAddr(lit); err != nil || !a.Is6() {
			return bad("invalid IPv6 literal")
		}
	} else {
		host = s
		if i := strings.IndexByte(s, ':'); i >= 0 {
			host, rest = s[:i], s[i:]
		}
		if host == "" || len(host) > 255 {
			return bad("host name must be 1 to 255 characters")
		}
		for i := 0; i < len(host); i++ {
			c := host[i]
			if !(isASCIIDigit(c) || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '.') {
				return bad("invalid character in host name")
			}
		}
		if looksLikeIPv4(host) && !validDottedQuad(host) {
			return bad("IPv4 literal octet out of range")
		}
	}
	if rest == "" {
		return host, 0, nil
	}
	if rest[0] != ':' || len(rest) < 2 || len(rest) > 6 {
		return bad("invalid port")
	}
	for i := 1; i < len(rest); i++ {
		if !isASCIIDigit(rest[i]) {
			return bad("invalid port")
		}
		port = port*10 + int(rest[i]-'0')
	}
	if port > 65535 {
		return bad("port out of range")
	}
	return host, port, nil
}

// looksLikeIPv4 reports whether h is four dot-separated runs of digits.
func looksLikeIPv4(h string) bool {
	parts := strings.Split(h, ".")
	if len(parts) != 4 {
		return false
	}
	for _, p := range parts {
		if p == "" {
			return false
		}
		for i := 0; i < len(p); i++ {
			if !isASCIIDigit(p[i]) {
				return false
			}
		}
	}
	return true
}

// validDottedQuad accepts 1–3 digit octets up to 255, leading zeros
// included (the grammar's 1*3DIGIT, which netip refuses).
func validDottedQuad(h string) bool {
	for _, p := range strings.Split(h, ".") {
		if len(p) > 3 {
			return false
		}
		v := 0
		for i := 0; i < len(p); i++ {
			v = v*10 + int(p[i]-'0')
		}
		if v > 255 {
			return false
		}
	}
	return true
}

// ValidateServerName checks the server name grammar (see ParseServerName).
func ValidateServerName(s string) error {
	_, _, err := ParseServerName(s)
	return err
}

// validOpaqueLocalpart is the historical localpart rule shared by user IDs,
// room aliases and domain-bearing room and event IDs: any non-surrogate
// code points except ':' and NUL.
func validOpaqueLocalpart(s string) bool {
	return utf8.ValidString(s) && strings.IndexByte(s, ':') < 0 && strings.IndexByte(s, 0) < 0
}

// splitSigilID checks sigil and length and splits "&localpart:domain".
func splitSigilID(field, kind string, sigil byte, s string) (localpart, domain string, err error) {
	if len(s) > MaxIDBytes {
		return "", "", tooLarge(field, fmt.Sprintf("%s is longer than %d bytes", kind, MaxIDBytes))
	}
	if len(s) == 0 || s[0] != sigil {
		return "", "", invalidParam(field, fmt.Sprintf("%s %q does not start with %q", kind, s, sigil), nil)
	}
	localpart, domain, ok := strings.Cut(s[1:], ":")
	if !ok {
		return "", "", invalidParam(field, fmt.Sprintf("%s %q has no server name", kind, s), nil)
	}
	if err := ValidateServerName(domain); err != nil {
		return "", "", invalidParam(field, fmt.Sprintf("%s %q", kind, s), err)
	}
	return localpart, domain, nil
}

// ValidateUserID checks a user ID against the historical grammar, which
// servers must accept over federation: a localpart of any non-surrogate
// code points except ':' and NUL, possibly empty.
func ValidateUserID(s string) error {
	lp, _, err := splitSigilID("user_id", "user ID", '@', s)
	if err != nil {
		return err
	}
	if !validOpaqueLocalpart(lp) {
		return invalidParam("user_id", fmt.Sprintf("user ID %q has an invalid localpart", s), nil)
	}
	return nil
}

// ValidateUserIDStrict checks a user ID against the current grammar, which
// new registrations must follow: a non-empty localpart of [a-z0-9._=/+-].
func ValidateUserIDStrict(s string) error {
	lp, _, err := splitSigilID("user_id", "user ID", '@', s)
	if err != nil {
		return err
	}
	if err := ValidateLocalpartStrict(lp); err != nil {
		return invalidParam("user_id", fmt.Sprintf("user ID %q", s), err)
	}
	return nil
}

// ValidateLocalpartStrict checks a user ID localpart against the current
// grammar (1 or more of a-z, 0-9, '.', '_', '=', '-', '/', '+').
func ValidateLocalpartStrict(lp string) error {
	if lp == "" {
		return invalidParam("localpart", "empty", nil)
	}
	for i := 0; i < len(lp); i++ {
		if !strictLocalpartByte(lp[i]) {
			return invalidParam("localpart", fmt.Sprintf("%q has characters outside [a-z0-9._=/+-]", lp), nil)
		}
	}
	return nil
}

func strictLocalpartByte(c byte) bool {
	return c >= 'a' && c <= 'z' || isASCIIDigit(c) || c == '.' || c == '_' || c == '=' || c == '-' || c == '/' || c == '+'
}

// ValidateRoomAlias checks "#localpart:domain".
func ValidateRoomAlias(s string) error {
	lp, _, err := splitSigilID("room_alias", "room alias", '#', s)
	if err != nil {
		return err
	}
	if !validOpaqueLocalpart(lp) {
		return invalidParam("room_alias", fmt.Sprintf("room alias %q has an invalid localpart", s), nil)
	}
	return nil
}

// ValidateRoomID accepts a room ID of either form: "!opaque:domain" (room
// versions 1–11) or "!" + URL-safe hash (v12+).
func ValidateRoomID(s string) error {
	if strings.IndexByte(s, ':') < 0 && len(s) == 1+hashIDLen {
		return validHashID("room_id", "room ID", '!', s, true)
	}
	return validDomainRoomID(s)
}

// ValidateRoomIDForVersion checks a room ID in the form rv uses.
func ValidateRoomIDForVersion(s string, rv *RoomVersion) error {
	if rv.RoomIDFromCreateEvent {
		return validHashID("room_id", "room ID", '!', s, true)
	}
	return validDomainRoomID(s)
}

func validDomainRoomID(s string) error {
	lp, _, err := splitSigilID("room_id", "room ID", '!', s)
	if err != nil {
		return err
	}
	if !validOpaqueLocalpart(lp) {
		return invalidParam("room_id", fmt.Sprintf("room ID %q has an invalid localpart", s), nil)
	}
	return nil
}

// ValidateEventID checks an event ID in the form rv uses: "$opaque:domain"
// in v1–v2, "$" + 43 characters of standard base64 in v3, of URL-safe base64
// from v4.
func ValidateEventID(s string, rv *RoomVersion) error {
	switch rv.EventIDs {
	case EventIDFormatV1:
		lp, _, err := splitSigilID("event_id", "event ID", '$', s)
		if err != nil {
			return err
		}
		if !validOpaqueLocalpart(lp) {
			return invalidParam("event_id", fmt.Sprintf("event ID %q has an invalid opaque part", s), nil)
		}
		return nil
	case EventIDFormatV3:
		return validHashID("event_id", "event ID", '$', s, false)
	default:
		return validHashID("event_id", "event ID", '$', s, true)
	}
}

// validHashID checks sigil + unpadded base64 of a SHA-256 hash. The last
// character carries 2 unused bits, which must be zero in a real hash.
func validHashID(field, kind string, sigil byte, s string, urlSafe bool) error {
	if len(s) != 1+hashIDLen || s[0] != sigil {
		return invalidParam(field, fmt.Sprintf("%s %q is not %q + %d base64 characters", kind, s, sigil, hashIDLen), nil)
	}
	for i := 1; i < len(s); i++ {
		if base64Value(s[i], urlSafe) < 0 {
			return invalidParam(field, fmt.Sprintf("%s %q has a character outside the base64 alphabet", kind, s), nil)
		}
	}
	if base64Value(s[len(s)-1], urlSafe)&3 != 0 {
		return invalidParam(field, fmt.Sprintf("%s %q is not the encoding of a 32-byte hash", kind, s), nil)
	}
	return nil
}

func base64Value(c byte, urlSafe bool) int {
	switch {
	case c >= 'A' && c <= 'Z':
		return int(c - 'A')
	case c >= 'a' && c <= 'z':
		return int(c-'a') + 26
	case isASCIIDigit(c):
		return int(c-'0') + 52
	case c == '+' && !urlSafe, c == '-' && urlSafe:
		return 62
	case c == '/' && !urlSafe, c == '_' && urlSafe:
		return 63
	}
	return -1
}

// ValidateRoomVersionID checks the room version grammar: 1 to 32 characters
// of [a-z0-9.-].
func ValidateRoomVersionID(s string) error {
	if len(s) == 0 || len(s) > 32 {
		return invalidParam("room_version", fmt.Sprintf("%q must be 1 to 32 characters", s), nil)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || isASCIIDigit(c) || c == '.' || c == '-') {
			return invalidParam("room_version", fmt.Sprintf("%q has characters outside [a-z0-9.-]", s), nil)
		}
	}
	return nil
}

// MapToLocalpart maps an arbitrary name (a requested username, a bridged
// user's name) onto the strict localpart alphabet with the spec's suggested
// algorithm: upper-case letters are lower-cased (with preserveCase, escaped
// as "_" + lower case, and "_" doubled, so names differing only in case stay
// distinct) and every other byte outside the alphabet, and "=", becomes
// "=" + two lower-case hex digits. With preserveCase the mapping is
// injective; without it, names differing only in case collide.
func MapToLocalpart(name string, preserveCase bool) string {
	var b strings.Builder
	b.Grow(len(name))
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'A' && c <= 'Z':
			if preserveCase {
				b.WriteByte('_')
			}
			b.WriteByte(c + ('a' - 'A'))
		case c == '_' && preserveCase:
			b.WriteString("__")
		case c != '=' && strictLocalpartByte(c):
			b.WriteByte(c)
		default:
			b.WriteByte('=')
			b.WriteByte(lowerHex[c>>4])
			b.WriteByte(lowerHex[c&0xF])
		}
	}
	return b.String()
}
