package gateway

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"sync"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
)

// maxInitialPresence bounds how many other users' presence an initial sync
// carries (and so how many user actors it asks).
const maxInitialPresence = 500

// addPeerPresence adds to an initial sync the presence of the local users
// sharing a joined room with userID: the first maxInitialPresence of them
// by user ID, those not offline. Incremental syncs get changes from the
// user actor instead (actors/user_presence.go). Presence of remote users is
// not known (no federation EDUs yet).
func (s *Server) addPeerPresence(ctx context.Context, userID string, resp *syncResponse, filter *syncFilter) {
	peers := s.localRoomPeers(ctx, userID)
	delete(peers, userID)
	ids := slices.Sorted(maps.Keys(peers))
	if len(ids) > maxInitialPresence {
		ids = ids[:maxInitialPresence]
	}
	var mu sync.Mutex
	var evs []json.RawMessage
	fanOut(ids, func(id string) {
		rep, err := s.accountQuery(ctx, &pb.AccountQuery{UserId: id, Kind: "presence"})
		if err != nil || !rep.Found {
			return
		}
		var c map[string]json.RawMessage
		if json.Unmarshal(rep.Json, &c) != nil || string(c["presence"]) == `"offline"` {
			return
		}
		ev, err := json.Marshal(map[string]any{"type": "m.presence", "sender": id, "content": json.RawMessage(rep.Json)})
		if err != nil {
			return
		}
		mu.Lock()
		evs = append(evs, ev)
		mu.Unlock()
	})
	slices.SortFunc(evs, func(a, b json.RawMessage) int { return slices.Compare(a, b) })
	if evs = filterRaw(evs, filter.Presence); len(evs) == 0 {
		return
	}
	if resp.Presence == nil {
		resp.Presence = &eventsWrapper{}
	}
	resp.Presence.Events = append(resp.Presence.Events, evs...)
}

// sharesRoom reports whether a and b (local users) are both joined to some
// room: who may see whose presence.
func (s *Server) sharesRoom(ctx context.Context, a, b string) (bool, error) {
	joined := func(u string) ([]string, error) {
		rep, err := s.accountQuery(ctx, &pb.AccountQuery{UserId: u, Kind: "joined_rooms"})
		if err != nil {
			return nil, err
		}
		var jr struct {
			JoinedRooms []string `json:"joined_rooms"`
		}
		if err := json.Unmarshal(rep.Json, &jr); err != nil {
			return nil, actors.ErrUnknown("unexpected joined rooms reply")
		}
		return jr.JoinedRooms, nil
	}
	ra, err := joined(a)
	if err != nil {
		return false, err
	}
	rb, err := joined(b)
	if err != nil {
		return false, err
	}
	for _, r := range rb {
		if slices.Contains(ra, r) {
			return true, nil
		}
	}
	return false, nil
}
