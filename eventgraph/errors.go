package eventgraph

import (
	"errors"
	"strconv"
)

// Error classes. Every error returned by the parsing, canonicalisation and
// event-format code in this package wraps exactly one of them, so that the
// client-server gateway can pick the Matrix error code with errors.Is and the
// federation layer can simply drop the event.
var (
	// ErrBadJSON: the input is not (canonicalisable) JSON, or breaks the
	// PDU schema: a key missing, of the wrong JSON type, or an array longer
	// than the schema's maxItems (prev_events, auth_events). Maps to
	// M_BAD_JSON.
	ErrBadJSON = errors.New("bad JSON")
	// ErrTooLarge: the event or one of its size-limited fields is too big.
	// Maps to M_TOO_LARGE.
	ErrTooLarge = errors.New("too large")
	// ErrInvalidParam: a value is well-typed but violates a grammar or range
	// (user ID, room ID, depth, number of prev_events, …). Maps to
	// M_INVALID_PARAM.
	ErrInvalidParam = errors.New("invalid parameter")
)

// Errcode returns the Matrix error code ("M_BAD_JSON", "M_TOO_LARGE",
// "M_INVALID_PARAM") for an error of this package, or "" if err is of none of
// the three classes.
func Errcode(err error) string {
	switch {
	case errors.Is(err, ErrTooLarge):
		return "M_TOO_LARGE"
	case errors.Is(err, ErrInvalidParam):
		return "M_INVALID_PARAM"
	case errors.Is(err, ErrBadJSON):
		return "M_BAD_JSON"
	}
	return ""
}

// FormatError says which rule of the event format an event broke.
type FormatError struct {
	Class error  // ErrBadJSON, ErrTooLarge or ErrInvalidParam
	Field string // the offending key, e.g. "sender" or "content.redacts"; may be empty
	Rule  string // human-readable description of the rule that failed
	Err   error  // underlying cause, if any
}

func (e *FormatError) Error() string {
	s := "eventgraph: " + e.Class.Error()
	if e.Field != "" {
		s += ": " + e.Field
	}
	s += ": " + e.Rule
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap exposes both the class and the cause to errors.Is/As.
func (e *FormatError) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Class}
	}
	return []error{e.Class, e.Err}
}

func badJSON(field, rule string) error {
	return &FormatError{Class: ErrBadJSON, Field: field, Rule: rule}
}

func tooLarge(field, rule string) error {
	return &FormatError{Class: ErrTooLarge, Field: field, Rule: rule}
}

func invalidParam(field, rule string, cause error) error {
	return &FormatError{Class: ErrInvalidParam, Field: field, Rule: rule, Err: cause}
}

// JSONError reports where and why the canonical JSON scanner refused its
// input. It wraps ErrBadJSON.
type JSONError struct {
	Offset int    // byte offset in the input
	Reason string // what was wrong there
}

func (e *JSONError) Error() string {
	return "eventgraph: invalid JSON at offset " + strconv.Itoa(e.Offset) + ": " + e.Reason
}

// Unwrap makes errors.Is(err, ErrBadJSON) hold.
func (e *JSONError) Unwrap() error { return ErrBadJSON }
