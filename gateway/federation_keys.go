package gateway

import (
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"sync"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
)

// The notary API (server-server API, "Querying Keys Through Another
// Server"): our own key response, and other servers' key responses as their
// server actors hold them (fetched on demand), each with our signature
// added.

// Bounds of one notary query.
const (
	maxNotaryServers   = 100
	maxNotaryKeyIDs    = 32
	notaryParallelism  = 8
	maxNotaryResponses = 8
)

type notaryQuery struct {
	server   string
	keyIDs   []string
	minValid int64
}

func (s *Server) handleKeyQueryGet(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("serverName")
	if _, _, err := eventgraph.ParseServerName(name); err != nil {
		writeError(w, r, actors.ErrInvalidParam("invalid server name"))
		return
	}
	var minValid int64
	if v := r.URL.Query().Get("minimum_valid_until_ts"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			writeError(w, r, actors.ErrInvalidParam("minimum_valid_until_ts must be an integer"))
			return
		}
		minValid = n
	}
	s.answerNotary(w, r, []notaryQuery{{server: name, minValid: minValid}})
}

func (s *Server) handleKeyQueryPost(w http.ResponseWriter, r *http.Request) {
	var body struct {
		ServerKeys map[string]map[string]struct {
			MinimumValidUntilTS int64 `json:"minimum_valid_until_ts"`
		} `json:"server_keys"`
	}
	if err := decodeJSON(r, &body); err != nil {
		writeError(w, r, err)
		return
	}
	if body.ServerKeys == nil {
		writeError(w, r, actors.ErrBadJSON("server_keys is required"))
		return
	}
	if len(body.ServerKeys) > maxNotaryServers {
		writeError(w, r, actors.ErrInvalidParam("at most %d servers per query", maxNotaryServers))
		return
	}
	var qs []notaryQuery
	for name, ids := range body.ServerKeys {
		if _, _, err := eventgraph.ParseServerName(name); err != nil {
			continue // nothing to say about a name that cannot exist
		}
		if len(ids) > maxNotaryKeyIDs {
			writeError(w, r, actors.ErrInvalidParam("at most %d key IDs per server", maxNotaryKeyIDs))
			return
		}
		q := notaryQuery{server: name}
		for id, c := range ids {
			q.keyIDs = append(q.keyIDs, id)
			q.minValid = max(q.minValid, c.MinimumValidUntilTS)
		}
		slices.Sort(q.keyIDs)
		qs = append(qs, q)
	}
	slices.SortFunc(qs, func(a, b notaryQuery) int {
		if a.server < b.server {
			return -1
		}
		if a.server > b.server {
			return 1
		}
		return 0
	})
	s.answerNotary(w, r, qs)
}

// answerNotary gathers the key responses of every queried server, a few
// servers at a time. A server whose keys cannot be had is left out, as the
// spec allows.
func (s *Server) answerNotary(w http.ResponseWriter, r *http.Request, qs []notaryQuery) {
	results := make([][]json.RawMessage, len(qs))
	sem := make(chan struct{}, notaryParallelism)
	var wg sync.WaitGroup
	for i, q := range qs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			results[i] = s.notaryResponses(r, q)
		})
	}
	wg.Wait()
	out := []json.RawMessage{}
	for _, rs := range results {
		out = append(out, rs...)
	}
	writeJSON(w, http.StatusOK, map[string]any{"server_keys": out})
}

func (s *Server) notaryResponses(r *http.Request, q notaryQuery) []json.RawMessage {
	if q.server == s.server.ServerName {
		own, err := s.ownKeyResponse()
		if err != nil {
			s.log.Error("gateway: own key response", "err", err)
			return nil
		}
		return []json.RawMessage{own}
	}
	minValid := q.minValid
	if minValid == 0 {
		minValid = s.cfg.Now().UnixMilli()
	}
	rep, err := s.serverKeys(r.Context(), &pb.ServerKeysQuery{ServerName: q.server, KeyIds: q.keyIDs, MinValidUntilTs: minValid})
	if err != nil {
		s.log.Debug("gateway: notary: keys unavailable", "server", q.server, "err", err)
		return nil
	}
	var out []json.RawMessage
	for _, raw := range rep.Responses {
		if len(out) == maxNotaryResponses {
			break
		}
		signed, err := eventgraph.SignJSON(raw, s.server.ServerName, s.server.KeyID, s.server.PrivateKey)
		if err != nil {
			s.log.Warn("gateway: notary: cannot sign a cached key response", "server", q.server, "err", err)
			continue
		}
		out = append(out, signed)
	}
	return out
}
