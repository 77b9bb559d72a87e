package gateway

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"sync"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
)

// Server-side search (POST /search, category room_events). The gateway asks
// each of the user's joined rooms (at most maxSearchRooms, the filter's
// rooms when given) for its best hits, merges them by rank or recency and
// pages with an offset token. Each room searches its own index (see
// actors/room_search.go) and applies history visibility. Not supported:
// event_context, include_state and groupings are ignored; rooms the user
// left are not searched.

const (
	maxSearchRooms       = 100
	searchParallel       = 8
	defaultSearchLimit   = 10
	maxSearchLimit       = 100
	maxSearchOffset      = 400
	maxSearchTermLength  = 1024
	maxSearchFilterRooms = 500
)

type searchRequest struct {
	SearchCategories struct {
		RoomEvents *struct {
			SearchTerm *string  `json:"search_term"`
			Keys       []string `json:"keys"`
			OrderBy    string   `json:"order_by"`
			Filter     *struct {
				Rooms    *[]string `json:"rooms"`
				NotRooms []string  `json:"not_rooms"`
				Limit    *int      `json:"limit"`
			} `json:"filter"`
		} `json:"room_events"`
	} `json:"search_categories"`
}

type searchHit struct {
	Rank  float64         `json:"rank"`
	TS    int64           `json:"ts"`
	Event json.RawMessage `json:"event"`
}

func (s *Server) handleSearch(w http.ResponseWriter, r *http.Request, sess *Session) {
	var req searchRequest
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	re := req.SearchCategories.RoomEvents
	if re == nil {
		writeJSON(w, http.StatusOK, map[string]any{"search_categories": map[string]any{}})
		return
	}
	if re.SearchTerm == nil || *re.SearchTerm == "" {
		writeError(w, r, errMissingParam("search_term is required"))
		return
	}
	if len(*re.SearchTerm) > maxSearchTermLength {
		writeError(w, r, actors.ErrInvalidParam("search_term is too long"))
		return
	}
	for _, k := range re.Keys {
		switch k {
		case "content.body", "content.name", "content.topic":
		default:
			writeError(w, r, actors.ErrInvalidParam("unknown search key %q", k))
			return
		}
	}
	switch re.OrderBy {
	case "", "rank", "recent":
	default:
		writeError(w, r, actors.ErrInvalidParam("order_by must be rank or recent"))
		return
	}
	limit := defaultSearchLimit
	if re.Filter != nil && re.Filter.Limit != nil {
		if *re.Filter.Limit <= 0 {
			writeError(w, r, actors.ErrInvalidParam("filter limit must be positive"))
			return
		}
		limit = min(*re.Filter.Limit, maxSearchLimit)
	}
	offset := 0
	if nb := r.URL.Query().Get("next_batch"); nb != "" {
		b, err := base64.RawURLEncoding.DecodeString(nb)
		n, err2 := strconv.Atoi(string(b))
		if err != nil || err2 != nil || n < 0 || n > maxSearchOffset {
			writeError(w, r, actors.ErrInvalidParam("invalid next_batch"))
			return
		}
		offset = n
	}
	ctx := r.Context()
	rep, err := s.accountQuery(ctx, &pb.AccountQuery{UserId: sess.UserID, Kind: "joined_rooms"})
	if err != nil {
		writeError(w, r, err)
		return
	}
	var joined struct {
		JoinedRooms []string `json:"joined_rooms"`
	}
	if len(rep.Json) > 0 {
		_ = json.Unmarshal(rep.Json, &joined)
	}
	rooms := joined.JoinedRooms
	if re.Filter != nil {
		if re.Filter.Rooms != nil {
			if len(*re.Filter.Rooms) > maxSearchFilterRooms {
				writeError(w, r, actors.ErrInvalidParam("too many rooms in the filter"))
				return
			}
			var only []string
			for _, id := range rooms {
				if containsString(*re.Filter.Rooms, id) {
					only = append(only, id)
				}
			}
			rooms = only
		}
		var kept []string
		for _, id := range rooms {
			if !containsString(re.Filter.NotRooms, id) {
				kept = append(kept, id)
			}
		}
		rooms = kept
	}
	sort.Strings(rooms)
	if len(rooms) > maxSearchRooms {
		rooms = rooms[:maxSearchRooms]
	}
	want := offset + limit + 1
	var (
		mu    sync.Mutex
		hits  []searchHit
		count int64
		first error
		wg    sync.WaitGroup
	)
	sem := make(chan struct{}, searchParallel)
	for _, id := range rooms {
		wg.Add(1)
		sem <- struct{}{}
		go func(roomID string) {
			defer wg.Done()
			defer func() { <-sem }()
			rep, err := roomRequest[*pb.RoomQueryReply](ctx, s, &pb.RoomSearch{RoomId: roomID, UserId: sess.UserID,
				Term: *re.SearchTerm, Keys: re.Keys, Limit: int32(want), OrderBy: re.OrderBy})
			var res struct {
				Results []searchHit `json:"results"`
				Count   int64       `json:"count"`
			}
			if err == nil {
				err = json.Unmarshal(rep.Json, &res)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if isForbidden(err) {
					return // left since the user actor's list was read
				}
				if first == nil {
					first = err
				}
				return
			}
			hits = append(hits, res.Results...)
			count += res.Count
		}(id)
	}
	wg.Wait()
	if first != nil {
		writeError(w, r, first)
		return
	}
	sort.SliceStable(hits, func(i, j int) bool {
		if re.OrderBy == "recent" {
			return hits[i].TS > hits[j].TS
		}
		return hits[i].Rank > hits[j].Rank
	})
	results := []map[string]any{}
	for i := offset; i < len(hits) && i < offset+limit; i++ {
		results = append(results, map[string]any{"rank": hits[i].Rank, "result": hits[i].Event})
	}
	out := map[string]any{"results": results, "count": count, "highlights": []string{*re.SearchTerm}}
	if len(hits) > offset+limit && offset+limit <= maxSearchOffset {
		out["next_batch"] = base64.RawURLEncoding.EncodeToString([]byte(strconv.Itoa(offset + limit)))
	}
	writeJSON(w, http.StatusOK, map[string]any{"search_categories": map[string]any{"room_events": out}})
}
