package eventgraph

import (
	"encoding/base64"
	"fmt"
	"strings"
)

// Matrix writes binary values (hashes, keys, signatures) as unpadded base64
// (appendices, "Unpadded Base64"); event IDs from room v4 and v12 room IDs
// use the URL-safe alphabet.

// EncodeBase64 encodes b as unpadded standard base64.
func EncodeBase64(b []byte) string { return base64.RawStdEncoding.EncodeToString(b) }

// EncodeBase64URL encodes b as unpadded URL-safe base64.
func EncodeBase64URL(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// AppendBase64 appends the unpadded standard base64 of src to dst.
func AppendBase64(dst, src []byte) []byte { return base64.RawStdEncoding.AppendEncode(dst, src) }

// AppendBase64URL appends the unpadded URL-safe base64 of src to dst.
func AppendBase64URL(dst, src []byte) []byte { return base64.RawURLEncoding.AppendEncode(dst, src) }

// DecodeBase64 decodes standard base64, padded or not, as the spec asks
// decoders to accept both.
func DecodeBase64(s string) ([]byte, error) {
	return decodeBase64(s, base64.RawStdEncoding, base64.StdEncoding)
}

// DecodeBase64URL decodes URL-safe base64, padded or not.
func DecodeBase64URL(s string) ([]byte, error) {
	return decodeBase64(s, base64.RawURLEncoding, base64.URLEncoding)
}

func decodeBase64(s string, raw, padded *base64.Encoding) ([]byte, error) {
	// encoding/base64 silently skips CR and LF; a Matrix value never has
	// them, and accepting them would give one value many spellings.
	if strings.ContainsAny(s, "\r\n") {
		return nil, fmt.Errorf("eventgraph: base64: line break in value")
	}
	enc := raw
	if strings.HasSuffix(s, "=") {
		enc = padded
	}
	b, err := enc.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("eventgraph: base64: %w", err)
	}
	return b, nil
}
