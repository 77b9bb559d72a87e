package eventgraph

import (
	"bytes"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Helpers over JSON that is already canonical (the output of
// AppendCanonicalJSON). Canonical input has no whitespace, sorted unique
// keys and only the short escapes, so objects can be split, filtered and
// re-joined by slicing, without decoding values: this is what keeps hashing,
// redaction and signing cheap. They never panic on other input; they report
// failure instead.

// jmember is one `"key":value` pair of a canonical object. key is the raw
// (canonically escaped) text between the quotes; for the ASCII keys the
// protocol names it equals the key itself.
type jmember struct {
	key []byte
	val []byte
}

// splitObject appends the members of the canonical object obj to dst, in
// their (sorted) order. ok is false if obj is not a well-formed object.
func splitObject(obj []byte, dst []jmember) (ms []jmember, ok bool) {
	if len(obj) < 2 || obj[0] != '{' || obj[len(obj)-1] != '}' {
		return dst, false
	}
	i := 1
	if obj[i] == '}' {
		return dst, i == len(obj)-1
	}
	for {
		if i >= len(obj) || obj[i] != '"' {
			return dst, false
		}
		kEnd := jskipString(obj, i)
		if kEnd < 0 || kEnd >= len(obj) || obj[kEnd] != ':' {
			return dst, false
		}
		vEnd := jskipValue(obj, kEnd+1)
		if vEnd < 0 || vEnd >= len(obj) {
			return dst, false
		}
		dst = append(dst, jmember{key: obj[i+1 : kEnd-1], val: obj[kEnd+1 : vEnd]})
		switch obj[vEnd] {
		case ',':
			i = vEnd + 1
		case '}':
			return dst, vEnd == len(obj)-1
		default:
			return dst, false
		}
	}
}

// splitArray appends the elements of the canonical array arr to dst.
func splitArray(arr []byte, dst [][]byte) ([][]byte, bool) {
	if len(arr) < 2 || arr[0] != '[' || arr[len(arr)-1] != ']' {
		return dst, false
	}
	i := 1
	if arr[i] == ']' {
		return dst, i == len(arr)-1
	}
	for {
		end := jskipValue(arr, i)
		if end < 0 || end >= len(arr) {
			return dst, false
		}
		dst = append(dst, arr[i:end])
		switch arr[end] {
		case ',':
			i = end + 1
		case ']':
			return dst, end == len(arr)-1
		default:
			return dst, false
		}
	}
}

// jskipString returns the index just past the string whose opening quote is
// at b[i], or -1.
func jskipString(b []byte, i int) int {
	i++
	for {
		j := bytes.IndexByte(b[i:], '"')
		if j < 0 {
			return -1
		}
		q := i + j
		// The quote is escaped iff an odd number of backslashes precede it.
		n := 0
		for k := q - 1; k >= i && b[k] == '\\'; k-- {
			n++
		}
		if n%2 == 0 {
			return q + 1
		}
		i = q + 1
	}
}

// jskipValue returns the index just past the value starting at b[i], or -1.
func jskipValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return jskipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = jskipString(b, i)
				if i < 0 {
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
	default:
		start := i
		for i < len(b) && b[i] != ',' && b[i] != '}' && b[i] != ']' {
			i++
		}
		if i == start {
			return -1
		}
		return i
	}
}

// lookup returns the value of key in ms.
func jget(ms []jmember, key string) ([]byte, bool) {
	for _, m := range ms {
		if string(m.key) == key {
			return m.val, true
		}
	}
	return nil, false
}

// appendObject writes ms (which must be in key order) as a canonical object.
func appendObject(dst []byte, ms []jmember) []byte {
	dst = append(dst, '{')
	for i, m := range ms {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendMember(dst, m)
	}
	return append(dst, '}')
}

func appendMember(dst []byte, m jmember) []byte {
	dst = append(dst, '"')
	dst = append(dst, m.key...)
	dst = append(dst, '"', ':')
	return append(dst, m.val...)
}

// setMember returns ms with key set to val, keeping code point order. key
// is the unescaped key and must need no escaping (no `"`, `\` or control
// characters; callers check names they did not write themselves). ms may be
// modified in place.
func setMember(ms []jmember, key string, val []byte) []jmember {
	for i, m := range ms {
		switch compareKey(m.key, key) {
		case 0:
			ms[i].val = val
			return ms
		case 1:
			ms = append(ms, jmember{})
			copy(ms[i+1:], ms[i:])
			ms[i] = jmember{key: []byte(key), val: val}
			return ms
		}
	}
	return append(ms, jmember{key: []byte(key), val: val})
}

// compareKey compares a raw (canonically escaped) key with an unescaped one
// by code point, the order canonical JSON sorts keys in.
func compareKey(raw []byte, key string) int {
	if bytes.IndexByte(raw, '\\') >= 0 {
		var q []byte
		q = append(append(append(q, '"'), raw...), '"')
		if s, ok := decodeString(q); ok {
			return strings.Compare(s, key)
		}
	}
	// Comparison operators on string(raw) do not copy; strings.Compare would.
	switch {
	case string(raw) == key:
		return 0
	case string(raw) < key:
		return -1
	}
	return 1
}

// needsEscape reports whether s contains a byte canonical JSON escapes.
func needsEscape(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' {
			return true
		}
	}
	return false
}

// removeMembers returns ms without the named keys (filtering in place).
func removeMembers(ms []jmember, keys ...string) []jmember {
	out := ms[:0]
next:
	for _, m := range ms {
		for _, k := range keys {
			if string(m.key) == k {
				continue next
			}
		}
		out = append(out, m)
	}
	return out
}

// decodeString decodes a canonical JSON string value.
func decodeString(val []byte) (string, bool) {
	if len(val) < 2 || val[0] != '"' || val[len(val)-1] != '"' {
		return "", false
	}
	body := val[1 : len(val)-1]
	if bytes.IndexByte(body, '\\') < 0 {
		return string(body), true
	}
	out := make([]byte, 0, len(body))
	for i := 0; i < len(body); i++ {
		ch := body[i]
		if ch != '\\' {
			out = append(out, ch)
			continue
		}
		if i+1 >= len(body) {
			return "", false
		}
		i++
		switch body[i] {
		case '"', '\\', '/':
			out = append(out, body[i])
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, ok := hex4(body[i+1:])
			if !ok {
				return "", false
			}
			out = utf8.AppendRune(out, r)
			i += 4
		default:
			return "", false
		}
	}
	return string(out), true
}

// decodeInt decodes a canonical JSON integer that fits an int64.
func decodeInt(val []byte) (int64, bool) {
	if len(val) == 0 || (val[0] != '-' && !isASCIIDigit(val[0])) {
		return 0, false
	}
	n, err := strconv.ParseInt(string(val), 10, 64)
	return n, err == nil
}

// jsonKind names the JSON type of a canonical value by its first byte.
func jsonKind(val []byte) byte {
	if len(val) == 0 {
		return 0
	}
	switch c := val[0]; c {
	case '{', '[', '"', 't', 'f', 'n':
		return c
	}
	return '0' // number
}
