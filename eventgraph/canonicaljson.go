package eventgraph

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// MaxJSONDepth is the deepest nesting of objects and arrays the canonical
// JSON scanner accepts (the top-level value is depth 1). A bound keeps the
// recursive scanner's stack small on hostile input; no legitimate event comes
// near it.
const MaxJSONDepth = 100

// maxSafeInteger is 2^53-1, the largest integer canonical JSON allows.
const maxSafeInteger = 1<<53 - 1

// CanonicalJSON re-encodes raw as Matrix canonical JSON (appendices, "Canonical
// JSON") under the strict rules: numbers must be integers in
// [-(2^53)+1, 2^53-1] written without fraction or exponent. Use it for
// everything shoal emits and for rooms of version 6 and later.
//
// Regardless of mode the scanner refuses duplicate keys, invalid UTF-8, lone
// UTF-16 surrogate escapes, nesting deeper than MaxJSONDepth and trailing
// data. The output has no insignificant whitespace, object keys sorted by
// Unicode code point (byte order of their UTF-8), and only the escapes the
// canonical grammar requires (`"`, `\`, and control characters).
func CanonicalJSON(raw []byte) ([]byte, error) {
	return AppendCanonicalJSON(make([]byte, 0, len(raw)), raw, true)
}

// CanonicalJSONLenient is CanonicalJSON under the rules for room versions
// 1–5, which must not be enforced strictly: integers of any size are kept
// digit for digit, and numbers with a fraction or exponent are read as IEEE
// doubles and written the shortest way that round-trips, without exponent
// when the value is an integer below 10^21 (so `1e10` becomes `10000000000`
// and `-0` becomes `0`, as in the spec's examples).
func CanonicalJSONLenient(raw []byte) ([]byte, error) {
	return AppendCanonicalJSON(make([]byte, 0, len(raw)), raw, false)
}

// CanonicalJSONForVersion canonicalises raw strictly if rv enforces canonical
// JSON (v6+) and leniently otherwise.
func CanonicalJSONForVersion(raw []byte, rv *RoomVersion) ([]byte, error) {
	return AppendCanonicalJSON(make([]byte, 0, len(raw)), raw, rv.StrictCanonicalJSON)
}

// AppendCanonicalJSON appends the canonical form of raw to dst. Errors are
// *JSONError, which wraps ErrBadJSON; on error dst is returned unchanged.
//
// The scanner is iterative, with its scratch state in local slices backed by
// stack arrays, so that a typical event costs one allocation (the output).
func AppendCanonicalJSON(dst, raw []byte, strict bool) ([]byte, error) {
	var (
		frameBuf  [16]frame
		memberBuf [32]memberSpan
		keyBuf    [512]byte
		frames    = frameBuf[:0]
		members   = memberBuf[:0] // members of all open objects, innermost last
		keys      = keyBuf[:0]    // their unescaped keys, stacked likewise
		tmp       []byte          // scratch for reordering an object
		out       = dst
		pos       = skipWS(raw, 0)
		err       error
	)
	// Locals only (no closures capturing them) keep the hot state in
	// registers and out of the write barrier.
	needKey := false // an object member (key and colon) must be read first
value:
	for {
		if needKey {
			needKey = false
			if pos >= len(raw) || raw[pos] != '"' {
				return dst, jsonErr(pos, "expected object key")
			}
			f := &frames[len(frames)-1]
			f.mStart, f.kStart = len(out), len(keys)
			if out, keys, pos, err = scanString(out, keys, raw, pos, true); err != nil {
				return dst, err
			}
			f.kEnd = len(keys)
			pos = skipWS(raw, pos)
			if pos >= len(raw) || raw[pos] != ':' {
				return dst, jsonErr(pos, "expected ':' after object key")
			}
			out = append(out, ':')
			pos = skipWS(raw, pos+1)
		}
		// A value starts at pos.
		if pos >= len(raw) {
			return dst, jsonErr(pos, "unexpected end of input")
		}
		switch ch := raw[pos]; {
		case ch == '{' || ch == '[':
			if len(frames) >= MaxJSONDepth {
				return dst, jsonErr(pos, "nesting deeper than "+strconv.Itoa(MaxJSONDepth))
			}
			out = append(out, ch)
			frames = append(frames, frame{object: ch == '{', bodyStart: len(out), memberBase: len(members), keyBase: len(keys)})
			pos = skipWS(raw, pos+1)
			closer := byte(']')
			if ch == '{' {
				closer = '}'
			}
			if pos < len(raw) && raw[pos] == closer {
				break // empty container: closed below
			}
			needKey = ch == '{'
			continue value
		case ch == '"':
			if out, _, pos, err = scanString(out, nil, raw, pos, false); err != nil {
				return dst, err
			}
		case ch == 't' || ch == 'f' || ch == 'n':
			lit := "null"
			if ch == 't' {
				lit = "true"
			} else if ch == 'f' {
				lit = "false"
			}
			if len(raw)-pos < len(lit) || string(raw[pos:pos+len(lit)]) != lit {
				return dst, jsonErr(pos, "invalid literal")
			}
			out = append(out, lit...)
			pos += len(lit)
		case ch == '-' || isASCIIDigit(ch):
			if out, pos, err = scanNumber(out, raw, pos, strict); err != nil {
				return dst, err
			}
		default:
			return dst, jsonErr(pos, "unexpected character")
		}

		// A value ended at pos: close members and containers until one
		// continues with a comma.
		for {
			if len(frames) == 0 {
				if pos = skipWS(raw, pos); pos != len(raw) {
					return dst, jsonErr(pos, "trailing data after JSON value")
				}
				return out, nil
			}
			f := &frames[len(frames)-1]
			if f.object && len(out) > f.bodyStart {
				// The value ending here completes the object's current member
				// (an empty object has none).
				members = append(members, memberSpan{start: f.mStart, end: len(out), kStart: f.kStart, kEnd: f.kEnd})
			}
			pos = skipWS(raw, pos)
			if pos >= len(raw) {
				return dst, jsonErr(pos, "unterminated object or array")
			}
			c := raw[pos]
			if c == ',' {
				out = append(out, ',')
				pos = skipWS(raw, pos+1)
				needKey = f.object
				continue value
			}
			if f.object && c == '}' {
				if tmp, err = sortObject(out, members[f.memberBase:], keys, f.bodyStart, tmp); err != nil {
					err.(*JSONError).Offset = pos
					return dst, err
				}
				members, keys = members[:f.memberBase], keys[:f.keyBase]
			} else if f.object || c != ']' {
				return dst, jsonErr(pos, "expected ',' or closing bracket")
			}
			out = append(out, c)
			pos++
			// The closed container is itself a value of its parent.
			frames = frames[:len(frames)-1]
		}
	}
}

// CanonicalMarshal encodes v with encoding/json and canonicalises the result
// strictly, so Go floats are refused rather than silently emitted.
func CanonicalMarshal(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("eventgraph: marshal: %w", err)
	}
	return CanonicalJSON(b)
}

// memberSpan locates one object member while its object is being scanned:
// [start, end) is `"key":value` in the output, [kStart, kEnd) the unescaped
// key in the key arena (keys compare by code point, not by their escapes).
type memberSpan struct {
	start, end   int
	kStart, kEnd int
}

// frame is an open object or array.
type frame struct {
	object     bool
	bodyStart  int // output offset just after the opening bracket
	memberBase int // first entry of this object in the members stack
	keyBase    int
	// The member being read: output offset of its key, and its unescaped
	// key in the key arena.
	mStart, kStart, kEnd int
}

func jsonErr(at int, reason string) error { return &JSONError{Offset: at, Reason: reason} }

func skipWS(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// sortObject puts the members of the object whose body starts at bodyStart
// in out into code point order of their keys, refusing duplicates. Input
// that is already canonical (the common case) is only compared, not moved.
// The returned error is a *JSONError without offset.
func sortObject(out []byte, ms []memberSpan, keys []byte, bodyStart int, tmp []byte) ([]byte, error) {
	key := func(m memberSpan) []byte { return keys[m.kStart:m.kEnd] }
	sorted := true
	for i := 1; i < len(ms); i++ {
		switch bytes.Compare(key(ms[i-1]), key(ms[i])) {
		case 0:
			return tmp, dupKeyError(key(ms[i]))
		case 1:
			sorted = false
		}
	}
	if sorted {
		return tmp, nil
	}
	slices.SortFunc(ms, func(a, b memberSpan) int { return bytes.Compare(key(a), key(b)) })
	for i := 1; i < len(ms); i++ {
		if bytes.Equal(key(ms[i-1]), key(ms[i])) {
			return tmp, dupKeyError(key(ms[i]))
		}
	}
	tmp = append(tmp[:0], out[bodyStart:]...)
	w := bodyStart
	for i, m := range ms {
		if i > 0 {
			out[w] = ','
			w++
		}
		w += copy(out[w:], tmp[m.start-bodyStart:m.end-bodyStart])
	}
	return tmp, nil
}

func dupKeyError(k []byte) error {
	return &JSONError{Reason: "duplicate object key " + strconv.Quote(string(k))}
}

// plainByte marks the bytes a string can copy through unchanged: printable
// ASCII other than `"` and `\`.
var plainByte = func() (t [256]bool) {
	for b := 0x20; b < 0x80; b++ {
		t[b] = b != '"' && b != '\\'
	}
	return t
}()

// plainWord reports whether all eight bytes of x are plainByte: none is a
// control character, '"', '\\' or non-ASCII. (SWAR: a byte b of v is zero
// iff the high bit of (b-1) & ^b is set, borrows aside, which only arise
// after an earlier zero byte.)
func plainWord(x uint64) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	hasZero := func(v uint64) uint64 { return (v - ones) & ^v & highs }
	ctrl := (x - 0x20*ones) & ^x & highs // some byte < 0x20 (given none ≥ 0x80)
	return (x&highs)|ctrl|hasZero(x^('"'*ones))|hasZero(x^('\\'*ones)) == 0
}

// scanString scans the string whose opening quote is at src[pos], appending
// its canonical form to out and, for keys, its unescaped bytes to keys. It
// returns the position after the closing quote.
func scanString(out, keys, src []byte, pos int, isKey bool) ([]byte, []byte, int, error) {
	pos++
	out = append(out, '"')
	for {
		start := pos
		// Eight bytes at a time while none needs attention, then bytewise.
		for pos+8 <= len(src) && plainWord(binary.LittleEndian.Uint64(src[pos:])) {
			pos += 8
		}
		for pos < len(src) && plainByte[src[pos]] {
			pos++
		}
		if pos > start {
			out = append(out, src[start:pos]...)
			if isKey {
				keys = append(keys, src[start:pos]...)
			}
		}
		if pos >= len(src) {
			return out, keys, pos, &JSONError{Offset: pos, Reason: "unterminated string"}
		}
		switch ch := src[pos]; {
		case ch == '"':
			return append(out, '"'), keys, pos + 1, nil
		case ch == '\\':
			r, n, err := scanEscape(src, pos)
			if err != nil {
				return out, keys, pos, err
			}
			pos += n
			out = appendStringRune(out, r)
			if isKey {
				keys = utf8.AppendRune(keys, r)
			}
		case ch < 0x20:
			return out, keys, pos, &JSONError{Offset: pos, Reason: "unescaped control character in string"}
		default:
			r, size := utf8.DecodeRune(src[pos:])
			if r == utf8.RuneError && size == 1 {
				return out, keys, pos, &JSONError{Offset: pos, Reason: "invalid UTF-8 in string"}
			}
			out = append(out, src[pos:pos+size]...)
			if isKey {
				keys = append(keys, src[pos:pos+size]...)
			}
			pos += size
		}
	}
}

// scanEscape decodes the escape sequence at src[pos] (a backslash),
// returning the rune and the sequence's length.
func scanEscape(src []byte, pos int) (rune, int, error) {
	if pos+1 >= len(src) {
		return 0, 0, &JSONError{Offset: pos, Reason: "unterminated escape"}
	}
	switch src[pos+1] {
	case '"':
		return '"', 2, nil
	case '\\':
		return '\\', 2, nil
	case '/':
		return '/', 2, nil
	case 'b':
		return '\b', 2, nil
	case 'f':
		return '\f', 2, nil
	case 'n':
		return '\n', 2, nil
	case 'r':
		return '\r', 2, nil
	case 't':
		return '\t', 2, nil
	case 'u':
		r1, ok := hex4(src[pos+2:])
		if !ok {
			return 0, 0, &JSONError{Offset: pos, Reason: "invalid \\u escape"}
		}
		if !utf16.IsSurrogate(r1) {
			return r1, 6, nil
		}
		// A surrogate must be a high one followed by an escaped low one:
		// anything else has no UTF-8 encoding.
		if r1 < 0xDC00 && len(src) >= pos+12 && src[pos+6] == '\\' && src[pos+7] == 'u' {
			if r2, ok := hex4(src[pos+8:]); ok && r2 >= 0xDC00 && r2 <= 0xDFFF {
				return utf16.DecodeRune(r1, r2), 12, nil
			}
		}
		return 0, 0, &JSONError{Offset: pos, Reason: "lone UTF-16 surrogate in \\u escape"}
	}
	return 0, 0, &JSONError{Offset: pos, Reason: "invalid escape character"}
}

func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, ch := range b[:4] {
		var v byte
		switch {
		case ch >= '0' && ch <= '9':
			v = ch - '0'
		case ch >= 'a' && ch <= 'f':
			v = ch - 'a' + 10
		case ch >= 'A' && ch <= 'F':
			v = ch - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(v)
	}
	return r, true
}

const lowerHex = "0123456789abcdef"

// appendStringRune writes r inside a canonical JSON string: `"` and `\`
// escaped, control characters as their short escape or \u00xx (lower-case
// hex, as the grammar spells it), everything else as literal UTF-8.
func appendStringRune(dst []byte, r rune) []byte {
	switch {
	case r == '"':
		return append(dst, '\\', '"')
	case r == '\\':
		return append(dst, '\\', '\\')
	case r >= 0x20:
		return utf8.AppendRune(dst, r)
	case r == '\b':
		return append(dst, '\\', 'b')
	case r == '\t':
		return append(dst, '\\', 't')
	case r == '\n':
		return append(dst, '\\', 'n')
	case r == '\f':
		return append(dst, '\\', 'f')
	case r == '\r':
		return append(dst, '\\', 'r')
	}
	return append(dst, '\\', 'u', '0', '0', lowerHex[r>>4], lowerHex[r&0xF])
}

// appendCanonicalString writes s as a canonical JSON string. s must be valid
// UTF-8 (callers pass identifiers and strings they decoded themselves).
func appendCanonicalString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		if ch := s[i]; ch < 0x20 || ch == '"' || ch == '\\' {
			dst = append(dst, s[start:i]...)
			dst = appendStringRune(dst, rune(ch))
			start = i + 1
		}
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

func isASCIIDigit(b byte) bool { return b >= '0' && b <= '9' }

// scanNumber scans the number at src[pos] and appends its canonical form.
func scanNumber(out, src []byte, pos int, strict bool) ([]byte, int, error) {
	start := pos
	fail := func(reason string) ([]byte, int, error) {
		return out, pos, &JSONError{Offset: start, Reason: reason}
	}
	if src[pos] == '-' {
		pos++
	}
	intStart := pos
	switch {
	case pos < len(src) && src[pos] == '0':
		pos++
	case pos < len(src) && src[pos] >= '1' && src[pos] <= '9':
		for pos < len(src) && isASCIIDigit(src[pos]) {
			pos++
		}
	default:
		return fail("invalid number")
	}
	intEnd := pos
	integral := true
	if pos < len(src) && src[pos] == '.' {
		pos++
		d := pos
		for pos < len(src) && isASCIIDigit(src[pos]) {
			pos++
		}
		if pos == d {
			return fail("invalid number: no digits after '.'")
		}
		integral = false
	}
	if pos < len(src) && (src[pos] == 'e' || src[pos] == 'E') {
		pos++
		if pos < len(src) && (src[pos] == '+' || src[pos] == '-') {
			pos++
		}
		d := pos
		for pos < len(src) && isASCIIDigit(src[pos]) {
			pos++
		}
		if pos == d {
			return fail("invalid number: no digits in exponent")
		}
		integral = false
	}
	if integral {
		digits := src[intStart:intEnd]
		if len(digits) == 1 && digits[0] == '0' {
			return append(out, '0'), pos, nil // "-0" is written "0"
		}
		if strict && !safeIntegerDigits(digits) {
			return fail("integer outside [-(2^53)+1, 2^53-1]")
		}
		return append(out, src[start:intEnd]...), pos, nil
	}
	if strict {
		return fail("fraction or exponent in number (canonical JSON allows integers only)")
	}
	f, err := strconv.ParseFloat(string(src[start:pos]), 64)
	if err != nil {
		return fail("number out of range of IEEE double")
	}
	return appendShortestNumber(out, f), pos, nil
}

// safeIntegerDigits reports whether the decimal digits (no sign, no leading
// zero) are at most 2^53-1.
func safeIntegerDigits(d []byte) bool {
	if len(d) > 16 {
		return false
	}
	var v uint64
	for _, ch := range d {
		v = v*10 + uint64(ch-'0')
	}
	return v <= maxSafeInteger
}

// appendShortestNumber writes a finite double the way ECMAScript's
// Number::toString does: shortest round-trip digits, plain notation for
// magnitudes in [1e-6, 1e21), exponent notation otherwise. This keeps
// integral values (1e10, 50.0) as integers, as the spec's examples require.
func appendShortestNumber(dst []byte, f float64) []byte {
	if f == 0 {
		return append(dst, '0')
	}
	if f < 0 {
		dst = append(dst, '-')
		f = -f
	}
	var buf [32]byte
	b := strconv.AppendFloat(buf[:0], f, 'e', -1, 64) // d[.ddd]e±XX
	e := bytes.IndexByte(b, 'e')
	var digits [24]byte
	k := 0
	for _, ch := range b[:e] {
		if ch != '.' {
			digits[k] = ch
			k++
		}
	}
	exp := 0
	expNeg := b[e+1] == '-'
	for _, ch := range b[e+2:] {
		exp = exp*10 + int(ch-'0')
	}
	if expNeg {
		exp = -exp
	}
	n := exp + 1 // the value is 0.d1d2…dk × 10^n
	ds := digits[:k]
	switch {
	case k <= n && n <= 21:
		dst = append(dst, ds...)
		for i := k; i < n; i++ {
			dst = append(dst, '0')
		}
	case 0 < n && n <= 21:
		dst = append(dst, ds[:n]...)
		dst = append(dst, '.')
		dst = append(dst, ds[n:]...)
	case -6 < n && n <= 0:
		dst = append(dst, '0', '.')
		for i := 0; i < -n; i++ {
			dst = append(dst, '0')
		}
		dst = append(dst, ds...)
	default:
		dst = append(dst, ds[0])
		if k > 1 {
			dst = append(dst, '.')
			dst = append(dst, ds[1:]...)
		}
		dst = append(dst, 'e')
		if n-1 >= 0 {
			dst = append(dst, '+')
		}
		dst = strconv.AppendInt(dst, int64(n-1), 10)
	}
	return dst
}
