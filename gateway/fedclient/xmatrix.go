package fedclient

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/eventgraph"
)

// Request authentication (server-server API, "Request Authentication"):
// the method, request target, both server names and the JSON body are
// wrapped in one object and signed with the JSON signing algorithm; the
// signature travels in an `Authorization: X-Matrix` header.

// maxXMatrixHeader bounds the header a peer can make us parse.
const maxXMatrixHeader = 4096

// requestObject builds the JSON object a request's signature covers.
func requestObject(method, uri, origin, destination string, content []byte) ([]byte, error) {
	obj := map[string]any{"method": method, "uri": uri, "origin": origin, "destination": destination}
	if content != nil {
		obj["content"] = json.RawMessage(content)
	}
	return json.Marshal(obj)
}

// SignRequest returns the Authorization header value for a request from
// id's server to destination.
func SignRequest(id *actors.ServerIdentity, method, uri, destination string, content []byte) (string, error) {
	obj, err := requestObject(method, uri, id.ServerName, destination, content)
	if err != nil {
		return "", fmt.Errorf("fedclient: sign request: %w", err)
	}
	signed, err := eventgraph.SignJSON(obj, id.ServerName, id.KeyID, id.PrivateKey)
	if err != nil {
		return "", fmt.Errorf("fedclient: sign request: %w", err)
	}
	var out struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if err := json.Unmarshal(signed, &out); err != nil {
		return "", fmt.Errorf("fedclient: sign request: %w", err)
	}
	sig := out.Signatures[id.ServerName][id.KeyID]
	return fmt.Sprintf(`X-Matrix origin="%s",destination="%s",key="%s",sig="%s"`,
		id.ServerName, destination, id.KeyID, sig), nil
}

// XMatrix is a parsed X-Matrix Authorization header.
type XMatrix struct {
	Origin      string
	Destination string // "" when the sender left it out (before v1.3)
	Key         string
	Sig         string
}

// ErrBadAuthorization reports an Authorization header that is not a
// well-formed X-Matrix header.
var ErrBadAuthorization = errors.New("fedclient: malformed X-Matrix authorization")

// ParseXMatrix parses an Authorization header of scheme X-Matrix: the
// scheme (case-insensitive), one or more spaces, then comma-separated
// name=value parameters, values quoted (with backslash escapes) or bare
// tokens (colons allowed, for older senders). Names are case-insensitive;
// unknown ones are ignored; origin, key and sig are required.
func ParseXMatrix(h string) (XMatrix, error) {
	var x XMatrix
	if len(h) > maxXMatrixHeader {
		return x, fmt.Errorf("%w: header too long", ErrBadAuthorization)
	}
	scheme, rest, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "X-Matrix") {
		return x, fmt.Errorf("%w: not the X-Matrix scheme", ErrBadAuthorization)
	}
	s := rest
	seen := map[string]bool{}
	for {
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			break
		}
		eq := strings.IndexByte(s, '=')
		if eq <= 0 {
			return x, fmt.Errorf("%w: parameter without a value", ErrBadAuthorization)
		}
		name := strings.ToLower(strings.TrimRight(s[:eq], " \t"))
		s = s[eq+1:]
		var val string
		if strings.HasPrefix(s, `"`) {
			var b strings.Builder
			i := 1
			closed := false
			for ; i < len(s); i++ {
				c := s[i]
				if c == '\\' && i+1 < len(s) {
					i++
					b.WriteByte(s[i])
					continue
				}
				if c == '"' {
					closed = true
					i++
					break
				}
				b.WriteByte(c)
			}
			if !closed {
				return x, fmt.Errorf("%w: unterminated quoted value", ErrBadAuthorization)
			}
			val, s = b.String(), s[i:]
		} else {
			end := strings.IndexAny(s, ", \t")
			if end < 0 {
				end = len(s)
			}
			val, s = s[:end], s[end:]
			for i := 0; i < len(val); i++ {
				if !tokenChar(val[i]) && val[i] != ':' {
					return x, fmt.Errorf("%w: bad character in unquoted value", ErrBadAuthorization)
				}
			}
		}
		s = strings.TrimLeft(s, " \t")
		if s != "" {
			if s[0] != ',' {
				return x, fmt.Errorf("%w: expected a comma", ErrBadAuthorization)
			}
			s = s[1:]
		}
		if seen[name] {
			return x, fmt.Errorf("%w: parameter %s repeated", ErrBadAuthorization, name)
		}
		seen[name] = true
		switch name {
		case "origin":
			x.Origin = val
		case "destination":
			x.Destination = val
		case "key":
			x.Key = val
		case "sig":
			x.Sig = val
		}
	}
	if x.Origin == "" || x.Key == "" || x.Sig == "" {
		return x, fmt.Errorf("%w: origin, key and sig are required", ErrBadAuthorization)
	}
	if _, _, err := eventgraph.ParseServerName(x.Origin); err != nil {
		return x, fmt.Errorf("%w: origin: %v", ErrBadAuthorization, err)
	}
	return x, nil
}

// tokenChar is RFC 9110's tchar.
func tokenChar(c byte) bool {
	if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// VerifyRequest checks the X-Matrix signature x on a request (method, uri
// as received, the receiving server's name, the raw JSON body or nil) with
// the origin's public key.
func VerifyRequest(x XMatrix, pub ed25519.PublicKey, method, uri, destination string, content []byte) error {
	obj := map[string]any{
		"method": method, "uri": uri, "origin": x.Origin, "destination": destination,
		"signatures": map[string]map[string]string{x.Origin: {x.Key: x.Sig}},
	}
	if content != nil {
		if !json.Valid(content) {
			return fmt.Errorf("%w: body is not JSON", eventgraph.ErrBadSignature)
		}
		obj["content"] = json.RawMessage(content)
	}
	raw, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	return eventgraph.VerifyJSON(raw, x.Origin, x.Key, pub)
}
