package gateway

import (
	"encoding/json"
	"net/http"

	"github.com/shoal-chat/shoal/actors/pb"
)

// Guest access (client-server API, "Guest Access"): a guest may use only
// the endpoints the spec lists for guests, and join only rooms whose
// m.room.guest_access is can_join. Beyond the spec's list guests may log
// out, read capabilities, keep filters (clients make one before their first
// sync) and join through /join/{roomIdOrAlias}, which the same room rule
// guards. Not done: leaving guests out of a room when its guest access is
// withdrawn (the room would have to know which members are guests).

var errGuestForbidden = errStatus(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "guests cannot use this endpoint")

var guestRoutes = map[string]bool{
	// Reading rooms and media.
	"GET /_matrix/client/v3/rooms/{roomId}/state":                             true,
	"GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}":                 true,
	"GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}":                   true,
	"GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}":                 true,
	"GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey...}":   true,
	"GET /_matrix/client/v3/rooms/{roomId}/messages":                          true,
	"GET /_matrix/client/v3/rooms/{roomId}/members":                           true,
	"GET /_matrix/client/v3/rooms/{roomId}/initialSync":                       true,
	"GET /_matrix/client/v3/sync":                                             true,
	"GET /_matrix/client/v3/events":                                           true,
	"GET /_matrix/client/v1/media/download/{serverName}/{mediaId}":            true,
	"GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}": true,
	"GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}":           true,
	// Sending.
	"POST /_matrix/client/v3/rooms/{roomId}/join":                           true,
	"POST /_matrix/client/v3/join/{roomIdOrAlias}":                          true,
	"POST /_matrix/client/v3/rooms/{roomId}/leave":                          true,
	"PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}":        true,
	"PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}":               true,
	"PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey...}": true,
	"PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}":               true,
	// The account (profile: the display name only, checked below).
	"PUT /_matrix/client/v3/profile/{userId}/{keyName}":      true,
	"DELETE /_matrix/client/v3/profile/{userId}/{keyName}":   true,
	"GET /_matrix/client/v3/devices":                         true,
	"GET /_matrix/client/v3/devices/{deviceId}":              true,
	"PUT /_matrix/client/v3/devices/{deviceId}":              true,
	"GET /_matrix/client/v3/account/whoami":                  true,
	"POST /_matrix/client/v3/logout":                         true,
	"POST /_matrix/client/v3/logout/all":                     true,
	"GET /_matrix/client/v3/capabilities":                    true,
	"POST /_matrix/client/v3/user/{userId}/filter":           true,
	"GET /_matrix/client/v3/user/{userId}/filter/{filterId}": true,
	// Encryption.
	"POST /_matrix/client/v3/keys/upload": true,
	"POST /_matrix/client/v3/keys/query":  true,
	"POST /_matrix/client/v3/keys/claim":  true,
}

// checkGuest refuses a guest what the spec does not let guests do.
func (s *Server) checkGuest(r *http.Request) error {
	if !guestRoutes[r.Pattern] {
		return errGuestForbidden
	}
	switch r.Pattern {
	case "PUT /_matrix/client/v3/profile/{userId}/{keyName}", "DELETE /_matrix/client/v3/profile/{userId}/{keyName}":
		if r.PathValue("keyName") != "displayname" {
			return errGuestForbidden
		}
	case "POST /_matrix/client/v3/rooms/{roomId}/join", "POST /_matrix/client/v3/join/{roomIdOrAlias}":
		idOrAlias := r.PathValue("roomId")
		if idOrAlias == "" {
			idOrAlias = r.PathValue("roomIdOrAlias")
		}
		roomID, err := s.resolveRoom(r.Context(), idOrAlias)
		if err != nil {
			return err
		}
		raw, err := s.roomQuery(r.Context(), &pb.RoomQuery{RoomId: roomID, Kind: "summary"})
		if err != nil {
			return err
		}
		var sum struct {
			GuestCanJoin bool `json:"guest_can_join"`
		}
		if json.Unmarshal(raw, &sum) != nil || !sum.GuestCanJoin {
			return errStatus(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "guests cannot join this room")
		}
	}
	return nil
}
