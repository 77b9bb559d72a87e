package gateway

import (
	"context"

	"github.com/shoal-chat/shoal/actors/pb"
)

// syncPushRules reads the user's push ruleset once per /sync for the
// joined rooms to count unread notifications with (see the actors
// package's room_unread.go). Without a joined room it reads nothing; if
// the user actor cannot answer, the rooms report zero counts rather than
// fail the sync.
func (s *Server) syncPushRules(ctx context.Context, userID string, planned []*pb.PlannedRoom) []byte {
	joined := false
	for _, pr := range planned {
		if pr.Membership == "join" {
			joined = true
			break
		}
	}
	if !joined {
		return nil
	}
	rep, err := s.accountQuery(ctx, &pb.AccountQuery{UserId: userID, Kind: "push_rules"})
	if err != nil || !rep.Found {
		return nil
	}
	return rep.Json
}
