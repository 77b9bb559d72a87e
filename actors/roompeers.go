package actors

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/shoal-chat/shoal/actors/pb"
)

// roomPeersFanout bounds how many rooms LocalRoomPeers asks at once.
const roomPeersFanout = 16

// LocalRoomPeers returns the local users (server serverName) joined to any
// of rooms, as asked of each room's actor on behalf of userID (who must be
// joined to see the members). A room that cannot answer is skipped and its
// error passed to onErr (which may be nil). It blocks on the rooms' replies,
// so an actor calls it only from a goroutine of its own, never in Receive.
// It is shared by the gateway's device-list and presence fan-outs and the
// user actor's presence fan-out, so that "who shares a room" is asked one way.
func LocalRoomPeers(ctx context.Context, router Router, serverName, userID string, rooms []string,
	onErr func(room string, err error)) map[string]bool {
	peers := map[string]bool{}
	for _, users := range roomJoinedMembers(ctx, router, userID, rooms, onErr) {
		for _, u := range users {
			if _, domain, ok := strings.Cut(u, ":"); ok && domain == serverName {
				peers[u] = true
			}
		}
	}
	return peers
}

// RemoteRoomServers returns the servers other than serverName with a user
// joined to any of rooms, sorted, asked like LocalRoomPeers (and, like it,
// from a goroutine only).
func RemoteRoomServers(ctx context.Context, router Router, serverName, userID string, rooms []string,
	onErr func(room string, err error)) []string {
	set := map[string]bool{}
	for _, users := range roomJoinedMembers(ctx, router, userID, rooms, onErr) {
		for _, u := range users {
			if _, domain, ok := strings.Cut(u, ":"); ok && domain != serverName && domain != "" {
				set[domain] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(set))
}

// roomJoinedMembers returns the joined members of each of rooms, asked of
// each room on behalf of userID (who must be joined). A room that cannot
// answer is left out and its error passed to onErr, called from the
// lookups' goroutines. It blocks on the rooms: call it from a goroutine.
func roomJoinedMembers(ctx context.Context, router Router, userID string, rooms []string,
	onErr func(room string, err error)) map[string][]string {
	out := map[string][]string{}
	var mu sync.Mutex
	sem := make(chan struct{}, roomPeersFanout)
	var wg sync.WaitGroup
	for _, room := range rooms {
		wg.Add(1)
		sem <- struct{}{}
		go func(room string) {
			defer func() { <-sem; wg.Done() }()
			joined, err := joinedMembers(ctx, router, room, userID)
			if err != nil {
				if onErr != nil {
					onErr(room, err)
				}
				return
			}
			users := slices.Sorted(maps.Keys(joined))
			mu.Lock()
			out[room] = users
			mu.Unlock()
		}(room)
	}
	wg.Wait()
	return out
}

func joinedMembers(ctx context.Context, router Router, room, userID string) (map[string]json.RawMessage, error) {
	res, err := router.Request(ctx, &pb.RoomQuery{RoomId: room, UserId: userID, Kind: "joined_members"})
	if err != nil {
		return nil, err
	}
	rep, ok := res.(*pb.RoomQueryReply)
	if !ok {
		return nil, errors.New("actors: unexpected room reply")
	}
	var jm struct {
		Joined map[string]json.RawMessage `json:"joined"`
	}
	if err := json.Unmarshal(rep.Json, &jm); err != nil {
		return nil, err
	}
	return jm.Joined, nil
}
