package gateway

import (
	"encoding/json"
	"net/http"
	"time"
	// Time zone names are checked against the IANA database built into the
	// binary, so validation does not depend on the host's zoneinfo.
	_ "time/tzdata"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
)

// validTimeZone says whether tz names an IANA time zone (MSC4175's m.tz).
// "" and "Local" load in Go but name no zone.
func validTimeZone(tz string) bool {
	if tz == "" || tz == "Local" || len(tz) > 255 {
		return false
	}
	_, err := time.LoadLocation(tz)
	return err == nil
}

// profileLookupAllowed applies MSC4170 when RestrictProfileLookups is on:
// the caller must be authenticated, and sees its own profile and those of
// users the user directory shows it (who share a room with it or are in a
// public room, the minimum MSC4170 requires); others get 403 M_FORBIDDEN.
func (s *Server) profileLookupAllowed(r *http.Request, userID string) error {
	if !s.cfg.RestrictProfileLookups {
		return nil
	}
	sess, err := s.authenticate(r)
	if err != nil {
		return err
	}
	if sess.UserID == userID {
		return nil
	}
	rep, err := roomRequest[*pb.RoomQueryReply](r.Context(), s, &pb.UserDirSearch{Searcher: sess.UserID,
		Term: userID, Limit: maxUserDirLimit})
	if err != nil {
		return err
	}
	var found struct {
		Results []struct {
			UserID string `json:"user_id"`
		} `json:"results"`
	}
	if err := json.Unmarshal(rep.Json, &found); err != nil {
		return err
	}
	for _, u := range found.Results {
		if u.UserID == userID {
			return nil
		}
	}
	return actors.ErrForbidden("you may not look up this user's profile")
}
