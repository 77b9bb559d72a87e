package gateway

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/gateway/fedclient"
)

// Membership handshakes, joining side: a local user joins, knocks on, or
// rejects an invite to a room this server is not in, so another server
// that is in it builds the membership event's template (make_*) and
// accepts the event we sign (send_*); and a local user invites a remote
// user, whose server counter-signs the invite (/invite v2).

const (
	// maxJoinCandidates bounds the servers tried for one handshake.
	maxJoinCandidates = 16
	// sendJoinTimeout bounds a send_join: the resident server of a large
	// room sends its whole state, which can take minutes.
	sendJoinTimeout = 5 * time.Minute
	// maxSendJoinBytes bounds a send_join answer (the room's whole state
	// and auth chain) and maxSendJoinEvents the events in it.
	maxSendJoinBytes  = 256 << 20
	maxSendJoinEvents = 200_000
	// maxTemplateBytes bounds a make_* or invite answer: one event.
	maxTemplateBytes = 256 << 10
	// verifyWorkers is how many PDUs of a send_join answer are verified at
	// once.
	verifyWorkers = 8
)

// joinServersKey carries, in a request's context, the servers a remote
// alias's directory named as join candidates.
type joinServersKey struct{}

// viaServers are the via (and the older server_name) query parameters of a
// join or knock request: the servers the client suggests.
func viaServers(r *http.Request) []string {
	q := r.URL.Query()
	if via := q["via"]; len(via) > 0 {
		return via
	}
	return q["server_name"]
}

// resolveRemoteAlias asks an alias's server for the room it names and the
// servers in it (federation query/directory).
func (s *Server) resolveRemoteAlias(ctx context.Context, alias string) (string, []string, error) {
	_, domain, _ := cutColon(alias)
	body, err := s.fed.client.Do(ctx, fedclient.Request{Method: http.MethodGet, Destination: domain, Signed: true,
		URI: "/_matrix/federation/v1/query/directory?room_alias=" + url.QueryEscape(alias), Limit: maxTemplateBytes})
	if err != nil {
		var he *fedclient.HTTPError
		if errors.As(err, &he) && he.Status == http.StatusNotFound {
			return "", nil, actors.ErrNotFound("room alias %s not found", alias)
		}
		return "", nil, membershipFailure(domain, err)
	}
	var out struct {
		RoomID  string   `json:"room_id"`
		Servers []string `json:"servers"`
	}
	if json.Unmarshal(body, &out) != nil || eventgraph.ValidateRoomID(out.RoomID) != nil {
		return "", nil, errStatus(http.StatusBadGateway, "M_UNKNOWN", "bad directory answer from "+domain)
	}
	return out.RoomID, out.Servers, nil
}

// remoteAlias returns the path's {roomIdOrAlias} when it is an alias of
// another server.
func (s *Server) remoteAlias(r *http.Request) (string, bool) {
	a := r.PathValue("roomIdOrAlias")
	if !strings.HasPrefix(a, "#") || len(a) > 255 || eventgraph.ValidateRoomAlias(a) != nil {
		return "", false
	}
	_, domain, _ := cutColon(a)
	return a, domain != s.server.ServerName
}

// joinByRemoteAlias serves POST /join/{roomIdOrAlias} for an alias of
// another server: the alias's server names the room and the servers to
// join through. It reports whether it handled the request.
func (s *Server) joinByRemoteAlias(w http.ResponseWriter, r *http.Request, sess *Session) bool {
	alias, ok := s.remoteAlias(r)
	if !ok {
		return false
	}
	roomID, servers, err := s.resolveRemoteAlias(r.Context(), alias)
	if err != nil {
		writeError(w, r, err)
		return true
	}
	s.joinRoom(w, r.WithContext(context.WithValue(r.Context(), joinServersKey{}, servers)), sess, roomID)
	return true
}

// remoteRoomInfo decides whether a local user's membership change in
// roomID needs a handshake through another server: yes when this server
// has no state for the room, or has some but no joined member any more
// while other servers do. A room that cannot answer is left to the local
// path, which reports the error.
func (s *Server) remoteRoomInfo(ctx context.Context, roomID string) (*pb.RoomFedInfoReply, bool) {
	info, err := s.fedRoomInfo(ctx, roomID)
	if err != nil {
		return nil, false
	}
	if info.Exists && (len(info.Servers) == 0 || containsString(info.Servers, s.server.ServerName)) {
		return info, false
	}
	return info, true
}

// candidateServers lists the servers to try for a handshake into roomID,
// best first: the client's via servers, the alias's servers, the server
// that invited the user (or took their knock), the servers known to be in
// the room, and the server in the room ID (v1–v11).
func (s *Server) candidateServers(ctx context.Context, r *http.Request, roomID, userID string, info *pb.RoomFedInfoReply) []string {
	var cands []string
	add := func(names ...string) {
		for _, n := range names {
			if len(cands) == maxJoinCandidates {
				return
			}
			if n == s.server.ServerName || eventgraph.ValidateServerName(n) != nil || containsString(cands, n) {
				continue
			}
			cands = append(cands, n)
		}
	}
	if r != nil {
		add(viaServers(r)...)
		if servers, ok := r.Context().Value(joinServersKey{}).([]string); ok {
			add(servers...)
		}
	}
	_, senders := s.ownMembership(ctx, roomID, userID)
	for _, sender := range senders {
		if d, err := eventgraph.IDDomain(sender); err == nil {
			add(d)
		}
	}
	if info != nil {
		add(info.Servers...)
	}
	if d, err := eventgraph.IDDomain(roomID); err == nil {
		add(d)
	}
	return cands
}

// ownMembership is userID's membership in roomID and the users whose
// servers may help with a handshake into it: read from the room's state
// when this server has it (the sender of the membership event), else from
// the outsider membership (an invite or knock received over federation)
// the room keeps for the user's /sync (the sender of the invite, then the
// senders of the stripped state: the room's creator, whoever set its join
// rules, ...), which is all this server knows of a v12 room it is not in.
func (s *Server) ownMembership(ctx context.Context, roomID, userID string) (membership string, senders []string) {
	raw, err := s.roomQuery(ctx, &pb.RoomQuery{RoomId: roomID, UserId: userID, Kind: "membership"})
	if err == nil {
		var m struct {
			Membership string `json:"membership"`
			EventID    string `json:"event_id"`
		}
		if json.Unmarshal(raw, &m) != nil || m.EventID == "" {
			return m.Membership, nil
		}
		evRaw, err := s.roomQuery(ctx, &pb.RoomQuery{RoomId: roomID, UserId: userID, Kind: "event", EventId: m.EventID})
		if err != nil {
			return m.Membership, nil
		}
		var ev struct {
			Sender string `json:"sender"`
		}
		_ = json.Unmarshal(evRaw, &ev)
		return m.Membership, []string{ev.Sender}
	}
	rep, err := roomRequest[*pb.SyncRoomReply](ctx, s, &pb.SyncRoom{RoomId: roomID, UserId: userID, FullState: true})
	if err != nil || rep.Empty || len(rep.Json) == 0 {
		return "", nil
	}
	var sync map[string]struct {
		Events []strippedEvent `json:"events"`
	}
	if json.Unmarshal(rep.Json, &sync) != nil {
		return "", nil
	}
	for key, membership := range map[string]string{"invite_state": "invite", "knock_state": "knock"} {
		section, ok := sync[key]
		if !ok {
			continue
		}
		for _, ev := range section.Events {
			if ev.Type == eventgraph.TypeMember && ev.StateKey == userID {
				senders = append([]string{ev.Sender}, senders...)
			} else if ev.Sender != "" {
				senders = append(senders, ev.Sender)
			}
		}
		return membership, senders
	}
	return "", nil
}

// membershipFailure turns the failure of a request to server into the error
// the client sees: the remote server's own refusals keep their code (the
// spec asks that they be passed through), except M_MISSING_PARAM and
// M_INVALID_PARAM, which mean our request was wrong and are a 502 for the
// client; anything else is 502 as well.
func membershipFailure(server string, err error) error {
	var he *fedclient.HTTPError
	if errors.As(err, &he) {
		switch {
		case he.ErrCode == "M_MISSING_PARAM" || he.ErrCode == "M_INVALID_PARAM":
			return errStatus(http.StatusBadGateway, "M_UNKNOWN", fmt.Sprintf("%s refused the request (%s: %s)", server, he.ErrCode, he.Message))
		case he.Status == http.StatusForbidden || he.Status == http.StatusNotFound ||
			(he.Status == http.StatusBadRequest && strings.HasPrefix(he.ErrCode, "M_")):
			code := he.ErrCode
			if code == "" {
				code = "M_FORBIDDEN"
			}
			return errStatus(he.Status, code, server+": "+he.Message)
		}
	}
	return errStatus(http.StatusBadGateway, "M_UNKNOWN", fmt.Sprintf("could not reach %s: %v", server, err))
}

// keepFailure picks which of two failed attempts the client hears of: the
// first, unless a later server gave an actual answer (a refusal) where the
// first could not be reached.
func keepFailure(prev, next error) error {
	var p, n *actors.MatrixError
	if prev == nil || (errors.As(prev, &p) && p.Status >= 500 && errors.As(next, &n) && n.Status < 500) {
		return next
	}
	return prev
}

// retryElsewhere reports whether a failed handshake step with one server
// is worth trying with the next one.
func retryElsewhere(err error) bool {
	var he *fedclient.HTTPError
	if !errors.As(err, &he) {
		return true // unreachable, bad answer
	}
	switch he.ErrCode {
	case "M_INCOMPATIBLE_ROOM_VERSION", "M_USER_SUSPENDED":
		return false
	}
	return true
}

// supportedVersionsQuery is ver=… for every room version shoal supports
// (restricted to those with knocking for make_knock).
func supportedVersionsQuery(knock bool) string {
	var b strings.Builder
	for _, v := range eventgraph.SupportedRoomVersions() {
		if rv, _ := eventgraph.GetRoomVersion(v); knock && !rv.Knock {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString("ver=" + url.QueryEscape(string(v)))
	}
	return b.String()
}

// makeMembership asks dest for the template of userID's membership event
// in roomID and checks it is what we asked for.
func (s *Server) makeMembership(ctx context.Context, dest, membership, roomID, userID string) (map[string]json.RawMessage, *eventgraph.RoomVersion, error) {
	uri := "/_matrix/federation/v1/make_" + membership + "/" + url.PathEscape(roomID) + "/" + url.PathEscape(userID)
	switch membership {
	case "join":
		uri += "?" + supportedVersionsQuery(false)
	case "knock":
		uri += "?" + supportedVersionsQuery(true)
	}
	body, err := s.fed.client.Do(ctx, fedclient.Request{Method: http.MethodGet, Destination: dest, URI: uri, Signed: true, Limit: maxTemplateBytes})
	if err != nil {
		return nil, nil, err
	}
	var resp struct {
		RoomVersion string          `json:"room_version"`
		Event       json.RawMessage `json:"event"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		return nil, nil, fmt.Errorf("make_%s answer of %s: %w", membership, dest, err)
	}
	if resp.RoomVersion == "" {
		resp.RoomVersion = "1" // "assumed to be either 1 or 2"
	}
	rv, ok := eventgraph.GetRoomVersion(eventgraph.RoomVersionID(resp.RoomVersion))
	if !ok {
		return nil, nil, &fedclient.HTTPError{Status: http.StatusBadRequest, ErrCode: "M_INCOMPATIBLE_ROOM_VERSION",
			Message: "room version " + resp.RoomVersion + " is not supported here"}
	}
	var tmpl map[string]json.RawMessage
	if err := json.Unmarshal(resp.Event, &tmpl); err != nil || tmpl == nil {
		return nil, nil, fmt.Errorf("make_%s answer of %s: event is not an object", membership, dest)
	}
	str := func(k string) string {
		var v string
		_ = json.Unmarshal(tmpl[k], &v)
		return v
	}
	var content struct {
		Membership string `json:"membership"`
	}
	_ = json.Unmarshal(tmpl["content"], &content)
	if str("room_id") != roomID || str("sender") != userID || str("state_key") != userID ||
		str("type") != eventgraph.TypeMember || content.Membership != membership {
		return nil, nil, fmt.Errorf("make_%s answer of %s: the template is not %s's %s in %s", membership, dest, userID, membership, roomID)
	}
	return tmpl, rv, nil
}

// signTemplate completes a membership template into our event: our origin
// and timestamp, for v1–v2 an event ID of ours, the extra content (profile,
// reason), the content hash and our signature.
func (s *Server) signTemplate(tmpl map[string]json.RawMessage, rv *eventgraph.RoomVersion, extra map[string]json.RawMessage) (*eventgraph.Event, error) {
	var content map[string]json.RawMessage
	if err := json.Unmarshal(tmpl["content"], &content); err != nil {
		return nil, fmt.Errorf("template content: %w", err)
	}
	for k, v := range extra {
		content[k] = v
	}
	c, err := json.Marshal(content)
	if err != nil {
		return nil, err
	}
	tmpl["content"] = c
	delete(tmpl, "signatures")
	delete(tmpl, "hashes")
	delete(tmpl, "unsigned")
	delete(tmpl, "event_id")
	origin, _ := json.Marshal(s.server.ServerName)
	tmpl["origin"] = origin
	tmpl["origin_server_ts"] = json.RawMessage(strconv.FormatInt(s.cfg.Now().UnixMilli(), 10))
	if rv.EventIDs == eventgraph.EventIDFormatV1 {
		var rnd [18]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return nil, err
		}
		id, _ := json.Marshal("$" + eventgraph.EncodeBase64URL(rnd[:]) + ":" + s.server.ServerName)
		tmpl["event_id"] = id
	}
	raw, err := json.Marshal(tmpl)
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

// memberExtra is the content a local user's join or knock adds to the
// template: their profile and the reason given.
func (s *Server) memberExtra(ctx context.Context, userID, reason string, profile bool) map[string]json.RawMessage {
	extra := map[string]json.RawMessage{}
	if profile {
		var p map[string]json.RawMessage
		if json.Unmarshal(s.memberProfile(ctx, userID), &p) == nil {
			for k, v := range p {
				extra[k] = v
			}
		}
	}
	if reason != "" {
		extra["reason"], _ = json.Marshal(reason)
	}
	return extra
}

// sendJoinResponse is the answer of send_join v2.
type sendJoinResponse struct {
	State          []json.RawMessage `json:"state"`
	AuthChain      []json.RawMessage `json:"auth_chain"`
	Event          json.RawMessage   `json:"event"`
	MembersOmitted bool              `json:"members_omitted"`
	ServersInRoom  []string          `json:"servers_in_room"`
}

// joinRemote serves a local user's join to a room this server is not in
// (hooked into joinRoom). It reports whether it handled the request.
func (s *Server) joinRemote(w http.ResponseWriter, r *http.Request, sess *Session, roomID, reason string) bool {
	ctx := r.Context()
	info, remote := s.remoteRoomInfo(ctx, roomID)
	if !remote {
		return false
	}
	cands := s.candidateServers(ctx, r, roomID, sess.UserID, info)
	if len(cands) == 0 {
		writeError(w, r, actors.ErrNotFound("no server to join room %s through", roomID))
		return true
	}
	if err := s.remoteJoin(ctx, roomID, sess.UserID, s.memberExtra(ctx, sess.UserID, reason, true), cands); err != nil {
		writeError(w, r, err)
		return true
	}
	writeJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
	return true
}

// remoteJoin runs the join handshake with the candidates in turn until one
// lets userID in, then has the room bootstrap itself from the answer.
func (s *Server) remoteJoin(ctx context.Context, roomID, userID string, extra map[string]json.RawMessage, cands []string) error {
	var firstErr error
	fail := func(dest string, err error) {
		s.log.Info("gateway: remote join", "room", roomID, "via", dest, "err", err)
		firstErr = keepFailure(firstErr, membershipFailure(dest, err))
	}
	for _, dest := range cands {
		tmpl, rv, err := s.makeMembership(ctx, dest, "join", roomID, userID)
		if err != nil {
			fail(dest, err)
			if !retryElsewhere(err) {
				break
			}
			continue
		}
		ev, err := s.signTemplate(tmpl, rv, extra)
		if err != nil {
			fail(dest, err)
			continue
		}
		resp, err := s.sendJoin(ctx, dest, roomID, ev)
		if err != nil {
			fail(dest, err)
			continue
		}
		join, state, authChain, err := s.checkSendJoin(ctx, rv, roomID, ev, resp)
		if err != nil {
			fail(dest, err)
			continue
		}
		_, err = roomRequest[*pb.SendEventReply](ctx, s, &pb.RoomFedJoin{RoomId: roomID, RoomVersion: string(rv.ID),
			JoinEvent: join, State: state, AuthChain: authChain, Origin: dest})
		if err != nil {
			return fmt.Errorf("gateway: join %s through %s: %w", roomID, dest, err)
		}
		return nil
	}
	if firstErr == nil {
		firstErr = errStatus(http.StatusBadGateway, "M_UNKNOWN", "no server could be reached to join "+roomID)
	}
	return firstErr
}

// sendJoin sends our join event to dest (send_join v2) and reads the
// answer, bounded in bytes and events.
func (s *Server) sendJoin(ctx context.Context, dest, roomID string, ev *eventgraph.Event) (*sendJoinResponse, error) {
	body, err := s.fed.client.Do(ctx, fedclient.Request{Method: http.MethodPut, Destination: dest, Signed: true,
		URI:     "/_matrix/federation/v2/send_join/" + url.PathEscape(roomID) + "/" + url.PathEscape(ev.EventID()),
		Content: ev.JSON(), Limit: maxSendJoinBytes, Timeout: sendJoinTimeout})
	if err != nil {
		return nil, err
	}
	var resp sendJoinResponse
	if err := json.Unmarshal(body, &resp); err != nil {
		return nil, fmt.Errorf("send_join answer of %s: %w", dest, err)
	}
	if len(resp.State)+len(resp.AuthChain) > maxSendJoinEvents {
		return nil, fmt.Errorf("send_join answer of %s: more than %d events", dest, maxSendJoinEvents)
	}
	return &resp, nil
}

// checkSendJoin verifies a send_join answer: the join as the resident
// returned it (it may have added its signature, for a restricted join) must
// be our event; every state and auth chain event is verified (signatures,
// hashes) concurrently and must be of the room; those that fail are left
// out. The state must hold the room's create event.
func (s *Server) checkSendJoin(ctx context.Context, rv *eventgraph.RoomVersion, roomID string, ours *eventgraph.Event, resp *sendJoinResponse) (join []byte, state, authChain [][]byte, err error) {
	join = ours.JSON()
	if len(resp.Event) > 0 && string(resp.Event) != "null" {
		ev, err := s.verifyPDU(ctx, rv, resp.Event)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("returned join event: %w", err)
		}
		if ev.EventID() != ours.EventID() {
			return nil, nil, nil, fmt.Errorf("returned join event %s is not ours (%s)", ev.EventID(), ours.EventID())
		}
		join = ev.JSON()
	}
	stateEvs := s.verifyRoomPDUs(ctx, rv, roomID, resp.State)
	authEvs := s.verifyRoomPDUs(ctx, rv, roomID, resp.AuthChain)
	haveCreate := false
	for _, ev := range stateEvs {
		if ev.Type() == eventgraph.TypeCreate && ev.StateKeyEquals("") {
			haveCreate = true
		}
		state = append(state, ev.JSON())
	}
	if !haveCreate {
		return nil, nil, nil, errors.New("the room state has no valid m.room.create event")
	}
	for _, ev := range authEvs {
		authChain = append(authChain, ev.JSON())
	}
	return join, state, authChain, nil
}

// verifyRoomPDUs verifies raws (signatures, hashes: verifyPDUs) in
// chunks, several at once, and returns the events that pass and belong to
// roomID, each once, in their original order.
func (s *Server) verifyRoomPDUs(ctx context.Context, rv *eventgraph.RoomVersion, roomID string, raws []json.RawMessage) []*eventgraph.Event {
	const chunk = 500
	evs := make([]*eventgraph.Event, len(raws))
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	for range min(verifyWorkers, (len(raws)+chunk-1)/chunk) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				start := int(next.Add(chunk) - chunk)
				if start >= len(raws) {
					return
				}
				end := min(start+chunk, len(raws))
				batch := make([][]byte, end-start)
				for i := range batch {
					batch[i] = raws[start+i]
				}
				for i, v := range s.verifyPDUs(ctx, rv, batch) {
					if v.err != nil || v.ev == nil || v.ev.RoomID() != roomID {
						failed.Add(1)
						continue
					}
					evs[start+i] = v.ev
				}
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		s.log.Info("gateway: dropped events that do not verify", "room", roomID, "count", n)
	}
	seen := make(map[string]bool, len(evs))
	out := evs[:0]
	for _, ev := range evs {
		if ev != nil && !seen[ev.EventID()] {
			seen[ev.EventID()] = true
			out = append(out, ev)
		}
	}
	return out
}

// knockRemote serves POST /knock/{roomIdOrAlias} when this server is not in
// the room (hooked at the top of handleKnock): make_knock, send_knock, and
// the knock recorded with the room's stripped state. It reports whether it
// handled the request.
func (s *Server) knockRemote(w http.ResponseWriter, r *http.Request, sess *Session) bool {
	ctx := r.Context()
	var roomID string
	var aliasServers []string
	if alias, ok := s.remoteAlias(r); ok {
		var err error
		if roomID, aliasServers, err = s.resolveRemoteAlias(ctx, alias); err != nil {
			writeError(w, r, err)
			return true
		}
		r = r.WithContext(context.WithValue(ctx, joinServersKey{}, aliasServers))
	} else {
		var err error
		if roomID, err = s.resolveRoom(ctx, r.PathValue("roomIdOrAlias")); err != nil {
			return false // handleKnock reports it
		}
	}
	info, remote := s.remoteRoomInfo(ctx, roomID)
	if !remote {
		return false
	}
	b, err := readReasonBody(r)
	if err != nil {
		writeError(w, r, err)
		return true
	}
	cands := s.candidateServers(ctx, r, roomID, sess.UserID, info)
	if len(cands) == 0 {
		writeError(w, r, actors.ErrNotFound("no server to knock on room %s through", roomID))
		return true
	}
	if err := s.remoteKnock(ctx, roomID, sess.UserID, s.memberExtra(ctx, sess.UserID, b.Reason, true), cands); err != nil {
		writeError(w, r, err)
		return true
	}
	writeJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
	return true
}

func (s *Server) remoteKnock(ctx context.Context, roomID, userID string, extra map[string]json.RawMessage, cands []string) error {
	var firstErr error
	for _, dest := range cands {
		ev, rv, body, err := s.membershipHandshake(ctx, dest, "knock", roomID, userID, extra)
		if err != nil {
			s.log.Info("gateway: remote knock", "room", roomID, "via", dest, "err", err)
			firstErr = keepFailure(firstErr, membershipFailure(dest, err))
			if !retryElsewhere(err) {
				break
			}
			continue
		}
		var resp struct {
			KnockRoomState []json.RawMessage `json:"knock_room_state"`
		}
		_ = json.Unmarshal(body, &resp)
		stripped := s.checkKnockRoomState(ctx, rv, roomID, resp.KnockRoomState)
		_, err = roomRequest[*pb.SendEventReply](ctx, s, &pb.RoomFedOutsider{RoomId: roomID, RoomVersion: string(rv.ID),
			UserId: userID, Membership: "knock", Event: ev.JSON(), StrippedState: stripped})
		return err
	}
	if firstErr == nil {
		firstErr = errStatus(http.StatusBadGateway, "M_UNKNOWN", "no server could be reached to knock on "+roomID)
	}
	return firstErr
}

// membershipHandshake runs make_<membership> and send_<membership> with
// dest for a knock or a leave, returning our signed event and the body of
// the send answer.
func (s *Server) membershipHandshake(ctx context.Context, dest, membership, roomID, userID string, extra map[string]json.RawMessage) (*eventgraph.Event, *eventgraph.RoomVersion, []byte, error) {
	tmpl, rv, err := s.makeMembership(ctx, dest, membership, roomID, userID)
	if err != nil {
		return nil, nil, nil, err
	}
	ev, err := s.signTemplate(tmpl, rv, extra)
	if err != nil {
		return nil, nil, nil, err
	}
	version := "v2"
	if membership == "knock" {
		version = "v1"
	}
	body, err := s.fed.client.Do(ctx, fedclient.Request{Method: http.MethodPut, Destination: dest, Signed: true,
		URI:     "/_matrix/federation/" + version + "/send_" + membership + "/" + url.PathEscape(roomID) + "/" + url.PathEscape(ev.EventID()),
		Content: ev.JSON(), Limit: maxTemplateBytes * 4})
	if err != nil {
		return nil, nil, nil, err
	}
	return ev, rv, body, nil
}

// checkKnockRoomState keeps the entries of a knock_room_state that are
// PDUs of the room with valid signatures (MSC4311: the others SHOULD be
// removed) and returns them as stripped state for the client.
func (s *Server) checkKnockRoomState(ctx context.Context, rv *eventgraph.RoomVersion, roomID string, entries []json.RawMessage) []byte {
	if len(entries) > maxInviteRoomState {
		entries = entries[:maxInviteRoomState]
	}
	stripped := []json.RawMessage{}
	for _, ev := range s.verifyRoomPDUs(ctx, rv, roomID, entries) {
		if !ev.IsState() {
			continue
		}
		b, err := json.Marshal(strippedEvent{Type: ev.Type(), StateKey: *ev.StateKey(), Content: ev.Content(), Sender: ev.Sender()})
		if err == nil {
			stripped = append(stripped, b)
		}
	}
	out, _ := json.Marshal(stripped)
	return out
}

// leaveRemote serves a local user's leave of a room this server is not in:
// the rejection of an invite or the retraction of a knock received over
// federation, through make_leave/send_leave (hooked into handleLeave). It
// reports whether it handled the request.
func (s *Server) leaveRemote(w http.ResponseWriter, r *http.Request, sess *Session, roomID, reason string) bool {
	ctx := r.Context()
	info, remote := s.remoteRoomInfo(ctx, roomID)
	if !remote || (!info.Exists && !info.Outsider) {
		return false
	}
	if m, _ := s.ownMembership(ctx, roomID, sess.UserID); m != "invite" && m != "knock" {
		return false
	}
	cands := s.candidateServers(ctx, r, roomID, sess.UserID, info)
	extra := s.memberExtra(ctx, sess.UserID, reason, false)
	var firstErr error
	for _, dest := range cands {
		ev, rv, _, err := s.membershipHandshake(ctx, dest, "leave", roomID, sess.UserID, extra)
		if err != nil {
			s.log.Info("gateway: remote leave", "room", roomID, "via", dest, "err", err)
			firstErr = keepFailure(firstErr, membershipFailure(dest, err))
			continue
		}
		if _, err := roomRequest[*pb.SendEventReply](ctx, s, &pb.RoomFedOutsider{RoomId: roomID, RoomVersion: string(rv.ID),
			UserId: sess.UserID, Membership: "leave", Event: ev.JSON()}); err != nil {
			writeError(w, r, err)
			return true
		}
		writeJSON(w, http.StatusOK, map[string]any{})
		return true
	}
	if !info.Exists {
		// No server in the room would take the leave (the inviter is gone,
		// or refuses): the invite or knock is dropped here alone, with a
		// leave event that no other server sees, so that the user is not
		// stuck with it.
		s.log.Info("gateway: rejecting locally", "room", roomID, "user", sess.UserID, "err", firstErr)
		if err := s.localOutsiderLeave(ctx, roomID, sess.UserID, info.RoomVersion, extra); err != nil {
			writeError(w, r, err)
			return true
		}
		writeJSON(w, http.StatusOK, map[string]any{})
		return true
	}
	if firstErr == nil {
		firstErr = errStatus(http.StatusBadGateway, "M_UNKNOWN", "no server could be reached to leave "+roomID)
	}
	writeError(w, r, firstErr)
	return true
}

// localOutsiderLeave records, for a room this server is not in, a leave of
// userID built and signed here with no place in the room's graph: it only
// ends the user's outsider invite or knock.
func (s *Server) localOutsiderLeave(ctx context.Context, roomID, userID, version string, extra map[string]json.RawMessage) error {
	rv, ok := eventgraph.GetRoomVersion(eventgraph.RoomVersionID(version))
	if !ok {
		return fmt.Errorf("gateway: outsider room %s has unknown version %q", roomID, version)
	}
	content := map[string]json.RawMessage{"membership": json.RawMessage(`"leave"`)}
	for k, v := range extra {
		content[k] = v
	}
	c, err := json.Marshal(content)
	if err != nil {
		return err
	}
	ev, err := eventgraph.BuildEvent(eventgraph.ProtoEvent{RoomID: roomID, Sender: userID, Type: eventgraph.TypeMember,
		StateKey: &userID, Content: c, Depth: 1, OriginServerTS: s.cfg.Now().UnixMilli()},
		rv, s.server.ServerName, s.server.KeyID, s.server.PrivateKey, eventgraph.WithRandom(rand.Reader))
	if err != nil {
		return fmt.Errorf("gateway: local leave of %s: %w", roomID, err)
	}
	_, err = roomRequest[*pb.SendEventReply](ctx, s, &pb.RoomFedOutsider{RoomId: roomID, RoomVersion: string(rv.ID),
		UserId: userID, Membership: "leave", Event: ev.JSON()})
	return err
}

// inviteRemote serves a local user's invite of a user of another server
// (hooked into handleInvite): the room prepares the invite, the invitee's
// server counter-signs it (/invite v2, with the create event as a PDU in
// invite_room_state: MSC4311), and the room takes the signed event. It
// reports whether it handled the request.
func (s *Server) inviteRemote(w http.ResponseWriter, r *http.Request, sess *Session, roomID string, b *reasonBody) bool {
	if s.isLocalUser(b.UserID) {
		return false
	}
	ctx := r.Context()
	if err := s.inviteRemoteUser(ctx, roomID, sess.UserID, b.UserID, b.Reason); err != nil {
		writeError(w, r, err)
		return true
	}
	writeJSON(w, http.StatusOK, map[string]any{})
	return true
}

func (s *Server) inviteRemoteUser(ctx context.Context, roomID, sender, invitee, reason string) error {
	prep, rv, ev, err := s.prepareInvite(ctx, roomID, sender, invitee, reason)
	if err != nil {
		return err
	}
	return s.deliverInvite(ctx, roomID, rv, ev, prep)
}

// prepareInvite has the room build (not commit) sender's invite of invitee.
func (s *Server) prepareInvite(ctx context.Context, roomID, sender, invitee, reason string) (*pb.RoomPrepareMembershipReply, *eventgraph.RoomVersion, *eventgraph.Event, error) {
	prep, err := roomRequest[*pb.RoomPrepareMembershipReply](ctx, s, &pb.RoomPrepareMembership{RoomId: roomID,
		Sender: sender, Target: invitee, Membership: "invite", Reason: reason})
	if err != nil {
		return nil, nil, nil, err
	}
	rv, ok := eventgraph.GetRoomVersion(eventgraph.RoomVersionID(prep.RoomVersion))
	if !ok {
		return nil, nil, nil, fmt.Errorf("gateway: room %s has unknown version %q", roomID, prep.RoomVersion)
	}
	ev, err := eventgraph.ParseEvent(prep.Pdu, rv)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("gateway: prepared invite: %w", err)
	}
	return prep, rv, ev, nil
}

// deliverInvite has the invitee's server counter-sign the invite ev (not
// for a local invitee) and gives the room the signed event.
func (s *Server) deliverInvite(ctx context.Context, roomID string, rv *eventgraph.RoomVersion, ev *eventgraph.Event, prep *pb.RoomPrepareMembershipReply) error {
	invitee := *ev.StateKey()
	signed := ev
	if !s.isLocalUser(invitee) {
		dest, err := eventgraph.IDDomain(invitee)
		if err != nil {
			return actors.ErrInvalidParam("%q is not a valid user ID", invitee)
		}
		irs, err := inviteRoomState(prep.InviteRoomState, prep.CreateEvent)
		if err != nil {
			return fmt.Errorf("gateway: invite_room_state of %s: %w", roomID, err)
		}
		body, err := json.Marshal(map[string]any{"event": json.RawMessage(ev.JSON()), "room_version": string(rv.ID), "invite_room_state": irs})
		if err != nil {
			return err
		}
		resp, err := s.fed.client.Do(ctx, fedclient.Request{Method: http.MethodPut, Destination: dest, Signed: true,
			URI:     "/_matrix/federation/v2/invite/" + url.PathEscape(roomID) + "/" + url.PathEscape(ev.EventID()),
			Content: body, Limit: maxTemplateBytes})
		if err != nil {
			s.log.Info("gateway: remote invite", "room", roomID, "invitee", invitee, "err", err)
			return membershipFailure(dest, err)
		}
		var out struct {
			Event json.RawMessage `json:"event"`
		}
		if err := json.Unmarshal(resp, &out); err != nil {
			return errStatus(http.StatusBadGateway, "M_UNKNOWN", "bad invite answer from "+dest)
		}
		signed, err = eventgraph.ParseEvent(out.Event, rv)
		if err != nil || signed.EventID() != ev.EventID() {
			return errStatus(http.StatusBadGateway, "M_UNKNOWN", dest+" returned another event than the invite")
		}
		if err := s.checkSignedBy(ctx, signed, dest); err != nil {
			s.log.Info("gateway: remote invite signature", "room", roomID, "invitee", invitee, "err", err)
			return errStatus(http.StatusBadGateway, "M_UNKNOWN", dest+" did not sign the invite")
		}
	}
	rep, err := roomRequest[*pb.RoomFedIngestReply](ctx, s, &pb.RoomFedIngest{RoomId: roomID, Origin: s.server.ServerName,
		Pdus: [][]byte{signed.JSON()}})
	if err != nil {
		return err
	}
	if reason := rep.Results[signed.EventID()]; reason != "" {
		return actors.ErrForbidden("invite not accepted: %s", reason)
	}
	return nil
}

// inviteRoomState is the invite_room_state sent with an invite: the
// room's stripped state with the create event in full (MSC4311) in place
// of its stripped form.
func inviteRoomState(stripped, create []byte) ([]json.RawMessage, error) {
	var entries []json.RawMessage
	if len(stripped) > 0 {
		if err := json.Unmarshal(stripped, &entries); err != nil {
			return nil, err
		}
	}
	out := make([]json.RawMessage, 0, len(entries)+1)
	for _, e := range entries {
		if se, ok := parseStripped(e); ok && se.Type == eventgraph.TypeCreate && se.StateKey == "" {
			continue
		}
		out = append(out, e)
	}
	if len(create) == 0 {
		return nil, errors.New("no create event")
	}
	return append(out, json.RawMessage(create)), nil
}

// checkSignedBy checks that ev carries a valid signature of server (one of
// its current keys), over the redacted event as event signatures are.
func (s *Server) checkSignedBy(ctx context.Context, ev *eventgraph.Event, server string) error {
	sigs, err := ev.Signatures()
	if err != nil {
		return err
	}
	var keyIDs []string
	for id := range sigs[server] {
		if strings.HasPrefix(id, "ed25519:") {
			keyIDs = append(keyIDs, id)
		}
	}
	if len(keyIDs) == 0 {
		return fmt.Errorf("no signature of %s", server)
	}
	keys, err := s.serverKeys(ctx, &pb.ServerKeysQuery{ServerName: server, KeyIds: keyIDs})
	if err != nil {
		return err
	}
	red, err := ev.Redact(nil)
	if err != nil {
		return err
	}
	lookup := actors.KeyLookupFrom(map[string]*pb.ServerKeysReply{server: keys})
	for _, id := range keyIDs {
		k, ok := lookup(server, id)
		if !ok {
			continue
		}
		if err := eventgraph.VerifyJSON(red.JSON(), server, id, k.Key); err != nil {
			return err
		}
		return nil
	}
	return fmt.Errorf("no known key of %s signed the event", server)
}
