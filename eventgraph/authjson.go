package eventgraph

import (
	"encoding/json"
	"errors"
	"unicode/utf8"
)

// A small scanner over JSON objects for the contents the auth rules read on
// every event (create, member, join rules, power levels). encoding/json's
// reflection made up most of the cost of authorising a message, and it grows
// with the size of power_levels.users. Unlike the canonical-JSON helpers it
// accepts any valid JSON (stored events of old rooms need not be canonical).
// Contents reach it through Event, whose constructor has already checked
// that they are valid JSON; it still fails cleanly on anything malformed.

var errAuthJSON = errors.New("malformed JSON object")

func authSkipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// authSkipString returns the index just after the string starting at b[i]
// (a '"'), or -1.
func authSkipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return -1
}

// authSkipValue returns the index just after the value starting at b[i],
// or -1. Nested values are skipped with a depth count, not recursion.
func authSkipValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return authSkipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				if i = authSkipString(b, i); i < 0 {
					return -1
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return -1
	}
	start := i
	for i < len(b) {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			if i == start {
				return -1
			}
			return i
		}
		i++
	}
	if i == start {
		return -1
	}
	return i
}

// authEachMember calls fn with the decoded key and the raw value of every
// member of the JSON object obj, in order, until fn returns false. It fails
// if obj is not an object.
func authEachMember(obj []byte, fn func(key []byte, val []byte) bool) error {
	i := authSkipWS(obj, 0)
	if i >= len(obj) || obj[i] != '{' {
		return errAuthJSON
	}
	i = authSkipWS(obj, i+1)
	if i < len(obj) && obj[i] == '}' {
		if authSkipWS(obj, i+1) != len(obj) {
			return errAuthJSON
		}
		return nil
	}
	for {
		if i >= len(obj) || obj[i] != '"' {
			return errAuthJSON
		}
		kEnd := authSkipString(obj, i)
		if kEnd < 0 {
			return errAuthJSON
		}
		key, ok := authDecodeStringBytes(obj[i:kEnd])
		if !ok {
			return errAuthJSON
		}
		i = authSkipWS(obj, kEnd)
		if i >= len(obj) || obj[i] != ':' {
			return errAuthJSON
		}
		vStart := authSkipWS(obj, i+1)
		vEnd := authSkipValue(obj, vStart)
		if vEnd < 0 {
			return errAuthJSON
		}
		if !fn(key, obj[vStart:vEnd]) {
			return nil
		}
		i = authSkipWS(obj, vEnd)
		if i >= len(obj) {
			return errAuthJSON
		}
		switch obj[i] {
		case ',':
			i = authSkipWS(obj, i+1)
		case '}':
			if authSkipWS(obj, i+1) != len(obj) {
				return errAuthJSON
			}
			return nil
		default:
			return errAuthJSON
		}
	}
}

// authDecodeStringBytes decodes the JSON string s (with its quotes). Plain
// ASCII without escapes is returned as a sub-slice; anything else goes
// through encoding/json so that escapes and invalid UTF-8 are handled exactly
// as everywhere else.
func authDecodeStringBytes(s []byte) ([]byte, bool) {
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' {
		return nil, false
	}
	body := s[1 : len(s)-1]
	plain := true
	for _, c := range body {
		if c == '\\' || c == '"' || c < 0x20 || c >= utf8.RuneSelf {
			plain = false
			break
		}
	}
	if plain {
		return body, true
	}
	var str string
	if json.Unmarshal(s, &str) != nil {
		return nil, false
	}
	return []byte(str), true
}

// authDecodeString decodes a JSON string value; ok is false for any other value.
func authDecodeString(val []byte) (string, bool) {
	if len(val) == 0 || val[0] != '"' {
		return "", false
	}
	b, ok := authDecodeStringBytes(val)
	return string(b), ok
}
