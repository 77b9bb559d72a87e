package gateway

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/gateway/fedclient"
)

// Membership handshakes, resident side (server-server API, "Joining Rooms",
// "Knocking upon a room", "Inviting to a room", "Leaving Rooms"): another
// server asks this one for a membership event template (make_join,
// make_leave, make_knock), sends back the event it signed (send_join,
// send_leave, send_knock), or has an invite of one of our users
// counter-signed (invite v2). The gateway checks who is asking and the
// PDU's signatures and shape; the room actor builds templates and accepts
// the events into its graph.

const (
	// maxVersionsParam bounds the ver= query parameters of make_join and
	// make_knock (there are a dozen room versions).
	maxVersionsParam = 64
	// maxInviteRoomState bounds the stripped state of an invite or knock a
	// peer hands us.
	maxInviteRoomState = 64
	// maxOnBindInvites bounds the invites one /3pid/onbind relays.
	maxOnBindInvites = 32
)

// registerFederationMembership adds the membership handshake endpoints.
func (s *Server) registerFederationMembership() {
	const v1, v2 = "/_matrix/federation/v1", "/_matrix/federation/v2"
	s.handle("GET "+v1+"/make_join/{roomId}/{userId}", s.fedAuthed(s.handleMakeMembership("join")))
	s.handle("GET "+v1+"/make_leave/{roomId}/{userId}", s.fedAuthed(s.handleMakeMembership("leave")))
	s.handle("GET "+v1+"/make_knock/{roomId}/{userId}", s.fedAuthed(s.handleMakeMembership("knock")))
	s.handle("PUT "+v2+"/send_join/{roomId}/{eventId}", s.fedAuthed(s.handleSendMembership("join", false)))
	s.handle("PUT "+v2+"/send_leave/{roomId}/{eventId}", s.fedAuthed(s.handleSendMembership("leave", false)))
	s.handle("PUT "+v1+"/send_knock/{roomId}/{eventId}", s.fedAuthed(s.handleSendMembership("knock", false)))
	// The deprecated v1 send_join and send_leave, for older servers: the
	// same with the answer wrapped as [200, answer].
	s.handle("PUT "+v1+"/send_join/{roomId}/{eventId}", s.fedAuthed(s.handleSendMembership("join", true)))
	s.handle("PUT "+v1+"/send_leave/{roomId}/{eventId}", s.fedAuthed(s.handleSendMembership("leave", true)))
	s.handle("PUT "+v2+"/invite/{roomId}/{eventId}", s.fedAuthed(s.handleFedInvite))
	// Identity servers call onbind without signing; what it relays is
	// checked by the room's server (the signed block against the keys of
	// the room's m.room.third_party_invite).
	s.handle("PUT "+v1+"/3pid/onbind", s.handleThirdPartyOnBind)
	s.handle("PUT "+v1+"/exchange_third_party_invite/{roomId}", s.fedAuthed(s.handleExchangeThirdPartyInvite))
}

// fedRoomInfo asks a room what it knows (whether it has state here, its
// version, the servers in it).
func (s *Server) fedRoomInfo(ctx context.Context, roomID string, eventIDs ...string) (*pb.RoomFedInfoReply, error) {
	return roomRequest[*pb.RoomFedInfoReply](ctx, s, &pb.RoomFedInfo{RoomId: roomID, EventIds: eventIDs})
}

// inRoom reports whether this server has a joined member in the room info
// describes: only then is its view of the room's state current.
func (s *Server) inRoom(info *pb.RoomFedInfoReply) bool {
	return info.Exists && containsString(info.Servers, s.server.ServerName)
}

func errIncompatibleVersion(version string) *actors.MatrixError {
	return &actors.MatrixError{Status: http.StatusBadRequest, ErrCode: "M_INCOMPATIBLE_ROOM_VERSION",
		Message: "room version " + version + " is not supported", Extra: map[string]any{"room_version": version}}
}

// handleMakeMembership serves make_join, make_leave and make_knock: the
// template of the membership event of a user of the asking server.
func (s *Server) handleMakeMembership(membership string) func(http.ResponseWriter, *http.Request, string, []byte) {
	return func(w http.ResponseWriter, r *http.Request, origin string, _ []byte) {
		roomID, err := pathRoomID(r)
		if err != nil {
			writeError(w, r, err)
			return
		}
		userID := r.PathValue("userId")
		if eventgraph.ValidateUserID(userID) != nil {
			writeError(w, r, actors.ErrInvalidParam("%q is not a valid user ID", userID))
			return
		}
		if domain, _ := eventgraph.IDDomain(userID); domain != origin {
			writeError(w, r, actors.ErrForbidden("user %s does not belong to %s", userID, origin))
			return
		}
		versions := r.URL.Query()["ver"]
		if len(versions) > maxVersionsParam {
			writeError(w, r, actors.ErrInvalidParam("too many ver parameters"))
			return
		}
		switch {
		case membership == "join" && len(versions) == 0:
			versions = []string{"1"} // the spec's default
		case membership == "knock" && len(versions) == 0:
			writeError(w, r, errMissingParam("ver is required"))
			return
		case membership == "leave":
			versions = nil
		}
		ctx := r.Context()
		msg := &pb.RoomMakeMembership{RoomId: roomID, Origin: origin, UserId: userID, Membership: membership, Versions: versions}
		if membership == "join" {
			if msg.RestrictedVia, err = s.restrictedJoinVia(ctx, roomID, userID); err != nil {
				writeError(w, r, err)
				return
			}
		}
		rep, err := roomRequest[*pb.RoomMakeMembershipReply](ctx, s, msg)
		var me *actors.MatrixError
		if msg.RestrictedVia != "" && errors.As(err, &me) && me.ErrCode == "M_FORBIDDEN" &&
			strings.HasPrefix(me.Message, "no user of this server can authorise") {
			// The user qualifies, but nobody here may invite: the joining
			// server should try another server (spec, "Restricted rooms").
			err = actors.Errorf(http.StatusBadRequest, "M_UNABLE_TO_GRANT_JOIN", "%s", me.Message)
		}
		if err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"room_version": rep.RoomVersion, "event": json.RawMessage(rep.Event)})
	}
}

// restrictedJoinVia decides, for a join of the remote user userID to a
// restricted room, which room of the join rule's allow list admits the
// user (server-server API, "Restricted rooms"). It returns "" when no
// authorisation is needed (the room is not restricted, the user is invited
// or joined already, or the room is unknown: the room actor answers
// those), 400 M_UNABLE_TO_AUTHORISE_JOIN when this server is in none of
// the allowed rooms and so cannot tell, and 403 M_FORBIDDEN when it can
// tell that the user is in none of them.
func (s *Server) restrictedJoinVia(ctx context.Context, roomID, userID string) (string, error) {
	raw, err := s.roomQuery(ctx, &pb.RoomQuery{RoomId: roomID, UserId: userID, Kind: "join_rules"})
	if err != nil {
		return "", nil
	}
	var jr struct {
		JoinRule string   `json:"join_rule"`
		Allow    []string `json:"allow"`
	}
	if json.Unmarshal(raw, &jr) != nil || (jr.JoinRule != "restricted" && jr.JoinRule != "knock_restricted") {
		return "", nil
	}
	switch s.membershipIn(ctx, roomID, userID) {
	case "join", "invite":
		return "", nil
	case "ban":
		return "", actors.ErrForbidden("user %s is banned from %s", userID, roomID)
	}
	known := false
	for i, allowed := range jr.Allow {
		if i == maxRestrictedAllow {
			break
		}
		info, err := s.fedRoomInfo(ctx, allowed)
		if err != nil || !s.inRoom(info) {
			continue
		}
		known = true
		if s.membershipIn(ctx, allowed, userID) == "join" {
			return allowed, nil
		}
	}
	if !known {
		return "", actors.Errorf(http.StatusBadRequest, "M_UNABLE_TO_AUTHORISE_JOIN",
			"this server is in none of the rooms that grant access to %s", roomID)
	}
	return "", actors.ErrForbidden("user %s is in none of the rooms that grant access to %s", userID, roomID)
}

// membershipIn is userID's membership in roomID as the room knows it ("" if
// none or the room cannot tell).
func (s *Server) membershipIn(ctx context.Context, roomID, userID string) string {
	raw, err := s.roomQuery(ctx, &pb.RoomQuery{RoomId: roomID, UserId: userID, Kind: "membership"})
	if err != nil {
		return ""
	}
	var m struct {
		Membership string `json:"membership"`
	}
	_ = json.Unmarshal(raw, &m)
	return m.Membership
}

// invalidPDU turns a verification failure into the 400 M_INVALID_PARAM the
// spec asks for; MatrixErrors (a room the gateway cannot check, a server
// down) keep their code.
func invalidPDU(err error) error {
	var me *actors.MatrixError
	if errors.As(err, &me) {
		return me
	}
	return actors.ErrInvalidParam("event does not verify: %v", err)
}

// checkMembershipPDU checks what every membership handshake's PDU must be:
// the event the URL names, in the room the URL names, an m.room.member event
// of the given membership sent by a user of origin; and, unless it is an
// invite, about its sender.
func checkMembershipPDU(ev *eventgraph.Event, roomID, eventID, membership, origin string) error {
	if ev.EventID() != eventID {
		return actors.ErrInvalidParam("event ID %s does not match the URL's %s", ev.EventID(), eventID)
	}
	if ev.RoomID() != roomID {
		return actors.ErrInvalidParam("event is for room %s, not %s", ev.RoomID(), roomID)
	}
	if ev.Type() != eventgraph.TypeMember || ev.StateKey() == nil {
		return actors.ErrInvalidParam("event is not an m.room.member event")
	}
	if m, err := ev.Membership(); err != nil || m != membership {
		return actors.ErrInvalidParam("membership is not %s", membership)
	}
	if domain, _ := eventgraph.IDDomain(ev.Sender()); domain != origin {
		return actors.ErrInvalidParam("sender %s is not a user of %s", ev.Sender(), origin)
	}
	if membership != "invite" && *ev.StateKey() != ev.Sender() {
		return actors.ErrInvalidParam("state_key is not the sender")
	}
	return nil
}

// handleSendMembership serves send_join, send_leave and send_knock: the
// signed membership event built from our template. legacy is the v1 form
// of send_join and send_leave, whose answer is [200, answer].
func (s *Server) handleSendMembership(membership string, legacy bool) func(http.ResponseWriter, *http.Request, string, []byte) {
	return func(w http.ResponseWriter, r *http.Request, origin string, body []byte) {
		roomID, err := pathRoomID(r)
		if err != nil {
			writeError(w, r, err)
			return
		}
		eventID, err := pathEventID(r)
		if err != nil {
			writeError(w, r, err)
			return
		}
		ctx := r.Context()
		info, err := s.fedRoomInfo(ctx, roomID)
		if err != nil {
			writeError(w, r, err)
			return
		}
		if !s.inRoom(info) {
			writeError(w, r, actors.ErrNotFound("this server is not in room %s", roomID))
			return
		}
		rv, ok := eventgraph.GetRoomVersion(eventgraph.RoomVersionID(info.RoomVersion))
		if !ok {
			writeError(w, r, errIncompatibleVersion(info.RoomVersion))
			return
		}
		if membership == "join" && rv.Restricted {
			body = s.signAuthorisedJoin(rv, body)
		}
		ev, err := s.verifyPDU(ctx, rv, body)
		if err != nil {
			writeError(w, r, invalidPDU(err))
			return
		}
		if err := checkMembershipPDU(ev, roomID, eventID, membership, origin); err != nil {
			writeError(w, r, err)
			return
		}
		rep, err := roomRequest[*pb.RoomSendMembershipReply](ctx, s, &pb.RoomSendMembership{RoomId: roomID, Origin: origin,
			Membership: membership, Pdu: ev.JSON(), OmitMembers: r.URL.Query().Get("omit_members") == "true"})
		if err != nil {
			writeError(w, r, err)
			return
		}
		var out any = map[string]any{}
		switch membership {
		case "join":
			j := map[string]any{"origin": s.server.ServerName, "state": rawList(rep.State),
				"auth_chain": rawList(rep.AuthChain), "members_omitted": rep.MembersOmitted,
				"servers_in_room": nonNil(rep.ServersInRoom)}
			if len(rep.Event) > 0 {
				j["event"] = json.RawMessage(rep.Event)
			}
			out = j
		case "knock":
			krs := json.RawMessage(rep.KnockRoomState)
			if len(krs) == 0 {
				krs = json.RawMessage(`[]`)
			}
			out = map[string]any{"knock_room_state": krs}
		}
		if legacy {
			out = []any{http.StatusOK, out}
		}
		writeJSON(w, http.StatusOK, out)
	}
}

// signAuthorisedJoin adds our signature to a restricted join that one of
// our users authorises (join_authorised_via_users_server): the signature
// checks require it, and this server gives it when it accepts the join
// (the room checks the authorising user). Anything else is returned as is.
func (s *Server) signAuthorisedJoin(rv *eventgraph.RoomVersion, pdu []byte) []byte {
	ev, err := eventgraph.ParseEvent(pdu, rv)
	if err != nil || ev.Type() != eventgraph.TypeMember {
		return pdu
	}
	var c struct {
		Via string `json:"join_authorised_via_users_server"`
	}
	if json.Unmarshal(ev.Content(), &c) != nil || !s.isLocalUser(c.Via) {
		return pdu
	}
	signed, err := eventgraph.SignEvent(ev.JSON(), rv, s.server.ServerName, s.server.KeyID, s.server.PrivateKey)
	if err != nil {
		return pdu
	}
	return signed
}

func rawList(items [][]byte) []json.RawMessage {
	out := make([]json.RawMessage, len(items))
	for i, b := range items {
		out[i] = b
	}
	return out
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// fedInviteRequest is the body of PUT /_matrix/federation/v2/invite.
type fedInviteRequest struct {
	RoomVersion     string            `json:"room_version"`
	Event           json.RawMessage   `json:"event"`
	InviteRoomState []json.RawMessage `json:"invite_room_state"`
}

// handleFedInvite serves invite v2: a remote user invites one of ours. The
// invite is checked (signature, shape, a local invitee, a supported room
// version, MSC4311's create event in invite_room_state), counter-signed
// with our key, recorded so the invitee's /sync shows it, and returned.
func (s *Server) handleFedInvite(w http.ResponseWriter, r *http.Request, origin string, body []byte) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	eventID, err := pathEventID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	var req fedInviteRequest
	if err := unmarshalBody(body, &req); err != nil {
		writeError(w, r, err)
		return
	}
	if req.RoomVersion == "" {
		writeError(w, r, errMissingParam("room_version is required"))
		return
	}
	if len(req.Event) == 0 || string(req.Event) == "null" {
		writeError(w, r, errMissingParam("event is required"))
		return
	}
	rv, ok := eventgraph.GetRoomVersion(eventgraph.RoomVersionID(req.RoomVersion))
	if !ok {
		writeError(w, r, errIncompatibleVersion(req.RoomVersion))
		return
	}
	if len(req.InviteRoomState) > maxInviteRoomState {
		writeError(w, r, actors.ErrInvalidParam("invite_room_state has more than %d entries", maxInviteRoomState))
		return
	}
	ctx := r.Context()
	ev, err := s.verifyPDU(ctx, rv, req.Event)
	if err != nil {
		writeError(w, r, invalidPDU(err))
		return
	}
	if err := checkMembershipPDU(ev, roomID, eventID, "invite", origin); err != nil {
		writeError(w, r, err)
		return
	}
	invitee := *ev.StateKey()
	if !s.isLocalUser(invitee) {
		writeError(w, r, actors.ErrInvalidParam("invitee %s is not a user of this server", invitee))
		return
	}
	if exists, err := s.userExists(ctx, invitee); err != nil {
		writeError(w, r, err)
		return
	} else if !exists {
		writeError(w, r, actors.ErrNotFound("user %s does not exist", invitee))
		return
	}
	stripped, err := s.checkInviteRoomState(ctx, rv, roomID, req.InviteRoomState)
	if err != nil {
		writeError(w, r, err)
		return
	}
	signed, err := eventgraph.SignEvent(ev.JSON(), rv, s.server.ServerName, s.server.KeyID, s.server.PrivateKey)
	if err != nil {
		writeError(w, r, err)
		return
	}
	info, err := s.fedRoomInfo(ctx, roomID)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if s.inRoom(info) {
		// The room is here: the invite is one more event of its graph
		// (the inviting server also sends it in a transaction).
		rep, err := roomRequest[*pb.RoomFedIngestReply](ctx, s, &pb.RoomFedIngest{RoomId: roomID, Origin: origin, Pdus: [][]byte{signed}})
		if err != nil {
			writeError(w, r, err)
			return
		}
		if reason := rep.Results[eventID]; reason != "" {
			writeError(w, r, actors.ErrForbidden("invite refused: %s", reason))
			return
		}
	} else {
		if _, err := roomRequest[*pb.SendEventReply](ctx, s, &pb.RoomFedOutsider{RoomId: roomID, RoomVersion: string(rv.ID),
			UserId: invitee, Membership: "invite", Event: signed, StrippedState: stripped}); err != nil {
			writeError(w, r, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"event": json.RawMessage(signed)})
}

// checkInviteRoomState validates an invite's invite_room_state (MSC4311,
// server-server API "Inviting to a room") and returns it as stripped state
// for the invitee's client. The m.room.create event must be there as a PDU
// of the room (from v12 the room ID is derived from it), with valid signatures: missing → 400 M_MISSING_PARAM; of
// another room or badly signed → 400 M_INVALID_PARAM. Other entries given
// as PDUs must be of the room too; entries still in the old stripped form
// are accepted, as the spec's migration note asks, and logged.
func (s *Server) checkInviteRoomState(ctx context.Context, rv *eventgraph.RoomVersion, roomID string, entries []json.RawMessage) ([]byte, error) {
	var create *eventgraph.Event
	stripped := make([]json.RawMessage, 0, len(entries))
	legacy := 0
	// MSC4311: servers MAY refuse invites without the full create event,
	// and SHOULD from room version 12 (whose room ID is the create event's
	// hash). Before it, an invite from a server that predates the MSC
	// (Dendrite 0.13, older Synapse) is taken with a warning.
	strict := rv.RoomIDFromCreateEvent
	for _, raw := range entries {
		se, ok := parseStripped(raw)
		if !ok {
			return nil, actors.ErrInvalidParam("invite_room_state entry is not a state event")
		}
		ev, perr := eventgraph.ParseEvent(raw, rv)
		if se.Type == eventgraph.TypeCreate && se.StateKey == "" && (perr == nil || strict) {
			if perr != nil {
				return nil, errMissingParam("invite_room_state lacks the m.room.create event as a PDU of room version " + string(rv.ID))
			}
			create = ev
		} else if perr != nil {
			legacy++
		} else if ev.RoomID() != roomID {
			return nil, actors.ErrInvalidParam("invite_room_state holds an event of room %s", ev.RoomID())
		}
		b, err := json.Marshal(se)
		if err != nil {
			return nil, err
		}
		stripped = append(stripped, b)
	}
	if create == nil && !strict {
		s.log.Warn("gateway: invite_room_state without the m.room.create event as a PDU (MSC4311)", "room", roomID)
		return json.Marshal(stripped)
	}
	if create == nil {
		return nil, errMissingParam("invite_room_state lacks the m.room.create event")
	}
	if got := create.RoomID(); got != roomID {
		return nil, actors.ErrInvalidParam("the m.room.create event in invite_room_state is of room %s, not %s", got, roomID)
	}
	if _, err := s.verifyPDU(ctx, rv, create.JSON()); err != nil {
		return nil, actors.ErrInvalidParam("the m.room.create event in invite_room_state does not verify: %v", err)
	}
	if legacy > 0 {
		s.log.Warn("gateway: invite_room_state entries are not PDUs (MSC4311)", "room", roomID, "entries", legacy)
	}
	return json.Marshal(stripped)
}

// strippedEvent is a stripped state event (client-server API, "Stripped
// state").
type strippedEvent struct {
	Type     string          `json:"type"`
	StateKey string          `json:"state_key"`
	Content  json.RawMessage `json:"content"`
	Sender   string          `json:"sender"`
}

// parseStripped reads the stripped-state fields of a state event given as
// a PDU or in stripped form.
func parseStripped(raw json.RawMessage) (strippedEvent, bool) {
	var e struct {
		Type     *string         `json:"type"`
		StateKey *string         `json:"state_key"`
		Content  json.RawMessage `json:"content"`
		Sender   string          `json:"sender"`
	}
	if json.Unmarshal(raw, &e) != nil || e.Type == nil || e.StateKey == nil || len(e.Content) == 0 ||
		!strings.HasPrefix(strings.TrimSpace(string(e.Content)), "{") || len(*e.Type) > eventgraph.MaxEventTypeBytes ||
		len(*e.StateKey) > eventgraph.MaxStateKeyBytes {
		return strippedEvent{}, false
	}
	return strippedEvent{Type: *e.Type, StateKey: *e.StateKey, Content: e.Content, Sender: e.Sender}, true
}

// onBindRequest is the body of PUT /_matrix/federation/v1/3pid/onbind.
type onBindRequest struct {
	Medium  string `json:"medium"`
	Address string `json:"address"`
	MXID    string `json:"mxid"`
	Invites []struct {
		Medium  string          `json:"medium"`
		Address string          `json:"address"`
		MXID    string          `json:"mxid"`
		RoomID  string          `json:"room_id"`
		Sender  string          `json:"sender"`
		Signed  json.RawMessage `json:"signed"`
	} `json:"invites"`
}

// handleThirdPartyOnBind serves /3pid/onbind: an identity server says that
// a third-party identifier with pending room invites is now bound to one
// of our users. For each invite, the server of the user who made it is
// asked to turn it into a real invite (exchange_third_party_invite); it
// then invites our user through /invite. Invites made by users of this
// server are exchanged here directly.
func (s *Server) handleThirdPartyOnBind(w http.ResponseWriter, r *http.Request) {
	var req onBindRequest
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	switch {
	case req.Medium == "" || req.Address == "" || req.MXID == "":
		writeError(w, r, errMissingParam("medium, address and mxid are required"))
		return
	case eventgraph.ValidateUserID(req.MXID) != nil || !s.isLocalUser(req.MXID):
		writeError(w, r, actors.ErrInvalidParam("%q is not a user of this server", req.MXID))
		return
	case len(req.Invites) > maxOnBindInvites:
		writeError(w, r, actors.ErrInvalidParam("more than %d invites", maxOnBindInvites))
		return
	}
	type exchange struct {
		dests          []string // nil: the invite was made here
		roomID, sender string
		signed         json.RawMessage
		body           []byte
	}
	var exchanges []exchange
	for _, inv := range req.Invites {
		var signed struct {
			MXID  string `json:"mxid"`
			Token string `json:"token"`
		}
		if inv.MXID != req.MXID || eventgraph.ValidateRoomID(inv.RoomID) != nil || eventgraph.ValidateUserID(inv.Sender) != nil ||
			json.Unmarshal(inv.Signed, &signed) != nil || signed.MXID != req.MXID || signed.Token == "" {
			writeError(w, r, actors.ErrInvalidParam("invalid invite for room %q", inv.RoomID))
			return
		}
		if s.isLocalUser(inv.Sender) {
			exchanges = append(exchanges, exchange{roomID: inv.RoomID, sender: inv.Sender, signed: inv.Signed})
			continue
		}
		var dests []string
		for _, id := range []string{inv.Sender, inv.RoomID} {
			if d, err := eventgraph.IDDomain(id); err == nil && d != s.server.ServerName && !containsString(dests, d) {
				dests = append(dests, d)
			}
		}
		body, err := json.Marshal(map[string]any{"type": eventgraph.TypeMember, "room_id": inv.RoomID, "sender": inv.Sender,
			"state_key": req.MXID, "content": map[string]any{"membership": "invite",
				"third_party_invite": map[string]any{"signed": inv.Signed}}})
		if err != nil {
			writeError(w, r, err)
			return
		}
		exchanges = append(exchanges, exchange{dests: dests, roomID: inv.RoomID, body: body})
	}
	var wg sync.WaitGroup
	for _, x := range exchanges {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if x.dests == nil {
				// The invite was made here: no exchange over the network.
				if err := s.exchangeThirdPartyInvite(r.Context(), x.roomID, x.sender, req.MXID, x.signed); err != nil {
					s.log.Info("gateway: third-party invite", "room", x.roomID, "sender", x.sender, "err", err)
				}
				return
			}
			for _, dest := range x.dests {
				_, err := s.fed.client.Do(r.Context(), fedclient.Request{Method: http.MethodPut, Destination: dest, Signed: true,
					URI:     "/_matrix/federation/v1/exchange_third_party_invite/" + url.PathEscape(x.roomID),
					Content: x.body, Limit: maxTemplateBytes})
				if err == nil {
					return
				}
				s.log.Info("gateway: exchange_third_party_invite", "room", x.roomID, "via", dest, "err", err)
			}
		}()
	}
	wg.Wait()
	writeJSON(w, http.StatusOK, map[string]any{})
}

// thirdPartyExchange is the body of exchange_third_party_invite: the
// invite the invitee's server wants the inviter's server to make.
type thirdPartyExchange struct {
	Type     string `json:"type"`
	RoomID   string `json:"room_id"`
	Sender   string `json:"sender"`
	StateKey string `json:"state_key"`
	Content  struct {
		Membership       string `json:"membership"`
		ThirdPartyInvite struct {
			Signed json.RawMessage `json:"signed"`
		} `json:"third_party_invite"`
	} `json:"content"`
}

// handleExchangeThirdPartyInvite serves exchange_third_party_invite: the
// server of a user who bound a third-party identifier asks us, as the
// server of the user who invited that identifier, to make the invite.
func (s *Server) handleExchangeThirdPartyInvite(w http.ResponseWriter, r *http.Request, origin string, body []byte) {
	roomID, err := pathRoomID(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	var x thirdPartyExchange
	if err := unmarshalBody(body, &x); err != nil {
		writeError(w, r, err)
		return
	}
	switch {
	case x.Type != eventgraph.TypeMember || x.RoomID != roomID || x.Content.Membership != "invite":
		writeError(w, r, actors.ErrInvalidParam("not an m.room.member invite of room %s", roomID))
		return
	case eventgraph.ValidateUserID(x.StateKey) != nil:
		writeError(w, r, actors.ErrInvalidParam("state_key is not a user ID"))
		return
	case eventgraph.ValidateUserID(x.Sender) != nil || !s.isLocalUser(x.Sender):
		writeError(w, r, actors.ErrInvalidParam("sender %q is not a user of this server", x.Sender))
		return
	}
	if domain, _ := eventgraph.IDDomain(x.StateKey); domain != origin {
		writeError(w, r, actors.ErrForbidden("user %s does not belong to %s", x.StateKey, origin))
		return
	}
	if err := s.exchangeThirdPartyInvite(r.Context(), roomID, x.Sender, x.StateKey, x.Content.ThirdPartyInvite.Signed); err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

// exchangeThirdPartyInvite turns the third-party invite that sender (a
// local user) made in roomID into an invite of target, the user the
// identity server's signed object names (client-server API, "Third-party
// invites"; server-server API, "Verifying the invite"): the room's
// m.room.third_party_invite for the token must be sender's and one of its
// public keys must have signed the object. The invite then goes out like
// any other (counter-signed by target's server).
func (s *Server) exchangeThirdPartyInvite(ctx context.Context, roomID, sender, target string, signed json.RawMessage) error {
	var sg struct {
		MXID  string `json:"mxid"`
		Token string `json:"token"`
	}
	if len(signed) == 0 || json.Unmarshal(signed, &sg) != nil || sg.MXID != target || sg.Token == "" {
		return actors.ErrInvalidParam("third_party_invite.signed must name %s and a token", target)
	}
	info, err := s.fedRoomInfo(ctx, roomID)
	if err != nil {
		return err
	}
	if !s.inRoom(info) {
		return actors.ErrNotFound("this server is not in room %s", roomID)
	}
	raw, err := s.roomQuery(ctx, &pb.RoomQuery{RoomId: roomID, UserId: sender, Kind: "state_event",
		Type: eventgraph.TypeThirdPartyInvite, StateKey: sg.Token})
	if err != nil {
		return actors.ErrForbidden("room %s has no third-party invite with that token", roomID)
	}
	var tpi struct {
		EventID string `json:"event_id"`
		Sender  string `json:"sender"`
		Content struct {
			DisplayName string `json:"display_name"`
			PublicKey   string `json:"public_key"`
			PublicKeys  []struct {
				PublicKey string `json:"public_key"`
			} `json:"public_keys"`
		} `json:"content"`
	}
	if err := json.Unmarshal(raw, &tpi); err != nil || tpi.EventID == "" {
		return actors.ErrForbidden("room %s has no third-party invite with that token", roomID)
	}
	if tpi.Sender != sender {
		return actors.ErrForbidden("the third-party invite was made by %s, not %s", tpi.Sender, sender)
	}
	keys := []string{tpi.Content.PublicKey}
	for _, k := range tpi.Content.PublicKeys {
		keys = append(keys, k.PublicKey)
	}
	if !thirdPartySigned(signed, keys) {
		return actors.ErrForbidden("the signed object does not verify with the third-party invite's keys")
	}
	prep, rv, ev, err := s.prepareInvite(ctx, roomID, sender, target, "")
	if err != nil {
		return err
	}
	if rv.EventIDs == eventgraph.EventIDFormatV1 {
		return actors.Errorf(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION",
			"third-party invites are not supported in rooms of version %s", rv.ID)
	}
	third, err := json.Marshal(map[string]any{"display_name": tpi.Content.DisplayName, "signed": signed})
	if err != nil {
		return err
	}
	if ev, err = s.withThirdPartyInvite(ev, rv, tpi.EventID, third); err != nil {
		return err
	}
	return s.deliverInvite(ctx, roomID, rv, ev, prep)
}

// withThirdPartyInvite rewrites a prepared invite into a third-party one:
// content.third_party_invite set and the m.room.third_party_invite among
// its auth events, hashed and signed anew.
func (s *Server) withThirdPartyInvite(ev *eventgraph.Event, rv *eventgraph.RoomVersion, tpiEventID string, third json.RawMessage) (*eventgraph.Event, error) {
	var pdu, content map[string]json.RawMessage
	if err := json.Unmarshal(ev.JSON(), &pdu); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(pdu["content"], &content); err != nil {
		return nil, err
	}
	content["third_party_invite"] = third
	var auth []string
	if err := json.Unmarshal(pdu["auth_events"], &auth); err != nil {
		return nil, err
	}
	if !containsString(auth, tpiEventID) {
		auth = append(auth, tpiEventID)
	}
	var err error
	if pdu["content"], err = json.Marshal(content); err != nil {
		return nil, err
	}
	if pdu["auth_events"], err = json.Marshal(auth); err != nil {
		return nil, err
	}
	delete(pdu, "hashes")
	delete(pdu, "signatures")
	delete(pdu, "unsigned")
	raw, err := json.Marshal(pdu)
	if err != nil {
		return nil, err
	}
	if raw, err = eventgraph.AddContentHash(raw); err != nil {
		return nil, err
	}
	if raw, err = eventgraph.SignEvent(raw, rv, s.server.ServerName, s.server.KeyID, s.server.PrivateKey); err != nil {
		return nil, err
	}
	return eventgraph.ParseEvent(raw, rv)
}

// thirdPartySigned reports whether an ed25519 signature of the identity
// server's signed object verifies with one of keys (unpadded base64,
// standard or URL-safe).
func thirdPartySigned(signed json.RawMessage, keys []string) bool {
	var obj struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if json.Unmarshal(signed, &obj) != nil {
		return false
	}
	for server, byKey := range obj.Signatures {
		for keyID := range byKey {
			if !strings.HasPrefix(keyID, "ed25519:") {
				continue
			}
			for _, k := range keys {
				pub, err := eventgraph.DecodeBase64(k)
				if err != nil {
					pub, err = eventgraph.DecodeBase64URL(k)
				}
				if err == nil && len(pub) == ed25519.PublicKeySize && eventgraph.VerifyJSON(signed, server, keyID, pub) == nil {
					return true
				}
			}
		}
	}
	return false
}
