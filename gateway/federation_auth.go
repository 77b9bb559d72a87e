package gateway

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/http"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/gateway/fedclient"
)

// Inbound request authentication (server-server API, "Request
// Authentication"): every /_matrix/federation request but /version carries
// an X-Matrix signature by its origin, checked against the origin's key as
// its server actor knows it (fetching it if needed).

func errFedUnauthorized(msg string) *actors.MatrixError {
	return errStatus(http.StatusUnauthorized, "M_UNAUTHORIZED", msg)
}

// fedAuthed wraps a federation handler: it reads the body (bounded by the
// listener's limit), checks the X-Matrix header and the signature, and
// hands the handler the origin's server name and the body.
func (s *Server) fedAuthed(h func(w http.ResponseWriter, r *http.Request, origin string, body []byte)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		origin, body, err := s.authenticateServer(r)
		if err != nil {
			writeError(w, r, err)
			return
		}
		h(w, r, origin, body)
	}
}

func (s *Server) authenticateServer(r *http.Request) (string, []byte, error) {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return "", nil, errFedUnauthorized("missing X-Matrix authorization")
	}
	x, err := fedclient.ParseXMatrix(auth)
	if err != nil {
		return "", nil, errFedUnauthorized("malformed X-Matrix authorization")
	}
	if x.Destination != "" && x.Destination != s.cfg.ServerName {
		return "", nil, errFedUnauthorized("request is not addressed to this server")
	}
	body, err := readBody(r, s.fedBodyLimit(r))
	if err != nil {
		return "", nil, err
	}
	var content []byte
	if len(body) > 0 {
		content = body
	}
	pub, err := s.requestKey(r.Context(), x.Origin, x.Key)
	if err != nil {
		return "", nil, err
	}
	if err := fedclient.VerifyRequest(x, pub, r.Method, r.RequestURI, s.cfg.ServerName, content); err != nil {
		return "", nil, errFedUnauthorized("invalid X-Matrix signature")
	}
	return x.Origin, body, nil
}

// requestKey returns origin's current key keyID: one from verify_keys,
// valid now (old keys sign events, never requests).
func (s *Server) requestKey(ctx context.Context, origin, keyID string) (ed25519.PublicKey, error) {
	if origin == s.server.ServerName {
		if keyID == s.server.KeyID {
			return s.server.PrivateKey.Public().(ed25519.PublicKey), nil
		}
		return nil, errFedUnauthorized("unknown key " + keyID + " of " + origin)
	}
	now := s.cfg.Now().UnixMilli()
	rep, err := s.serverKeys(ctx, &pb.ServerKeysQuery{ServerName: origin, KeyIds: []string{keyID}, MinValidUntilTs: now})
	if err != nil {
		var me *actors.MatrixError
		if errors.As(err, &me) && me.Status < 500 {
			return nil, errFedUnauthorized("cannot get the keys of " + origin)
		}
		return nil, err
	}
	for _, k := range rep.Keys {
		if k.KeyId == keyID && !k.Old && k.ValidUntilTs >= now && len(k.Key) == ed25519.PublicKeySize {
			return ed25519.PublicKey(k.Key), nil
		}
	}
	return nil, errFedUnauthorized("unknown or expired key " + keyID + " of " + origin)
}

func (s *Server) serverKeys(ctx context.Context, q *pb.ServerKeysQuery) (*pb.ServerKeysReply, error) {
	res, err := s.router.Request(ctx, q)
	if err != nil {
		return nil, err
	}
	rep, ok := res.(*pb.ServerKeysReply)
	if !ok {
		return nil, errors.New("gateway: unexpected server keys reply")
	}
	return rep, nil
}
