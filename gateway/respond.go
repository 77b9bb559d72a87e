package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/shoal-chat/shoal/actors"
)

// maxBodyBytes bounds every JSON request body; event bodies are further
// bounded by the 65536-byte event limit.
const maxBodyBytes = 1 << 20

// writeJSON writes v (or raw JSON bytes) with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	var body []byte
	switch b := v.(type) {
	case []byte:
		body = b
	case json.RawMessage:
		body = b
	default:
		var err error
		body, err = json.Marshal(v)
		if err != nil {
			slog.Error("gateway: encode response", slog.Any("err", err))
			status, body = http.StatusInternalServerError, []byte(`{"errcode":"M_UNKNOWN","error":"internal error"}`)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// writeError writes err as a Matrix error: MatrixErrors keep their code and
// status, anything else becomes 500 M_UNKNOWN with the detail only in the log.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	var me *actors.MatrixError
	if !errors.As(err, &me) {
		slog.Error("gateway: internal error", slog.String("path", r.URL.Path), slog.Any("err", err))
		me = actors.ErrUnknown("internal error")
	}
	body := map[string]any{"errcode": me.ErrCode, "error": me.Message}
	for k, v := range me.Extra {
		body[k] = v
	}
	if me.Status == http.StatusTooManyRequests || me.Status == http.StatusServiceUnavailable {
		if ms, ok := me.Extra["retry_after_ms"].(float64); ok {
			w.Header().Set("Retry-After", strconv.Itoa(int((ms+999)/1000)))
		} else if ms, ok := me.Extra["retry_after_ms"].(int); ok {
			w.Header().Set("Retry-After", strconv.Itoa((ms+999)/1000))
		}
	}
	status := me.Status
	if status == 0 {
		status = http.StatusInternalServerError
	}
	writeJSON(w, status, body)
}

func errStatus(status int, errcode, msg string) *actors.MatrixError {
	return &actors.MatrixError{Status: status, ErrCode: errcode, Message: msg}
}

var (
	errNotJSON     = errStatus(http.StatusBadRequest, "M_NOT_JSON", "request body is not valid JSON")
	errTooLarge    = errStatus(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "request body too large")
	errMissingAuth = errStatus(http.StatusUnauthorized, "M_MISSING_TOKEN", "missing access token")
	errUnknownAuth = errStatus(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "unknown or expired access token")
)

// readBody reads a request body of at most limit bytes.
func readBody(r *http.Request, limit int64) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
		return nil, errTooLarge // over the listener's limit (Config.MaxBodyBytes)
	}
	if err != nil {
		return nil, errStatus(http.StatusBadRequest, "M_BAD_JSON", "could not read request body")
	}
	if int64(len(body)) > limit {
		return nil, errTooLarge
	}
	return body, nil
}

// decodeJSON reads and decodes a JSON object body into v. An empty body
// decodes as {}. Syntax errors are M_NOT_JSON, type errors M_BAD_JSON.
func decodeJSON(r *http.Request, v any) error {
	body, err := readBody(r, maxBodyBytes)
	if err != nil {
		return err
	}
	return unmarshalBody(body, v)
}

func unmarshalBody(body []byte, v any) error {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		body = []byte("{}")
	}
	if body[0] != '{' {
		if json.Valid(body) {
			return actors.ErrBadJSON("request body must be a JSON object")
		}
		return errNotJSON
	}
	if err := json.Unmarshal(body, v); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) || !json.Valid(body) {
			return errNotJSON
		}
		return actors.ErrBadJSON("%s", jsonTypeError(err))
	}
	return nil
}

func jsonTypeError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return "wrong type for field '" + te.Field + "'"
	}
	return "malformed request body"
}
