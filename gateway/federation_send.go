package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
)

// Inbound transactions (server-server API, "Transactions"):
// PUT /_matrix/federation/v1/send/{txnId} carries up to 50 PDUs and 100
// EDUs from one origin. A transaction is processed once: the origin's
// inbound actor (fedtxn/<origin>) hands out a claim before processing and
// stores the response after, so a retry — or a copy arriving while the
// first is processed, possibly on another node — gets the same response
// without the PDUs and EDUs being applied twice.
//
// PDUs go to the PDU pipeline (ingestPDUs); EDUs are dispatched by type and
// never fail the transaction: a bad or refused EDU is dropped.

const (
	maxTxnPDUs = 50
	maxTxnEDUs = 100
	// txnProcessTimeout bounds the processing of one transaction (fetching
	// missing events included); a copy waits as long for its outcome.
	txnProcessTimeout = 2 * time.Minute
	// maxTxnReceipts and maxTxnPresence bound the receipts and presence
	// updates one transaction may carry in all of its EDUs.
	maxTxnReceipts = 1000
	maxTxnPresence = 1000
	// maxPDUErrorBytes bounds each PDU's error in a response, which is
	// stored for the transaction's retries.
	maxPDUErrorBytes = 512
)

// registerFederationSend adds the transaction endpoint.
func (s *Server) registerFederationSend() {
	s.handle("PUT /_matrix/federation/v1/send/{txnId}", s.fedAuthed(s.handleFederationSend))
}

// fedTransaction is the body of PUT /send/{txnId}.
type fedTransaction struct {
	Origin         *string           `json:"origin"`
	OriginServerTS json.RawMessage   `json:"origin_server_ts"`
	PDUs           []json.RawMessage `json:"pdus"`
	EDUs           []json.RawMessage `json:"edus"`
}

func (s *Server) handleFederationSend(w http.ResponseWriter, r *http.Request, origin string, body []byte) {
	txnID := r.PathValue("txnId")
	if txnID == "" || len(txnID) > actors.MaxFedTxnIDBytes {
		writeError(w, r, actors.ErrInvalidParam("invalid transaction ID"))
		return
	}
	var txn fedTransaction
	if err := unmarshalBody(body, &txn); err != nil {
		writeError(w, r, err)
		return
	}
	switch {
	case txn.Origin == nil:
		writeError(w, r, actors.ErrBadJSON("origin is required"))
		return
	case *txn.Origin != origin:
		// The signature names the server speaking; a body claiming another
		// origin is not that server's to send.
		writeError(w, r, actors.ErrForbidden("transaction origin %q does not match the signing server", *txn.Origin))
		return
	case len(txn.PDUs) > maxTxnPDUs || len(txn.EDUs) > maxTxnEDUs:
		writeError(w, r, actors.ErrBadJSON("a transaction carries at most %d PDUs and %d EDUs", maxTxnPDUs, maxTxnEDUs))
		return
	}
	// origin is reachable: if our queue to it was backing off, it sends now.
	s.router.Send(&pb.FedQueueWake{Destination: origin, RetryNow: true})

	claimCtx, cancelClaim := context.WithTimeout(r.Context(), txnProcessTimeout+10*time.Second)
	claim, err := s.claimTxn(claimCtx, &pb.FedTxnClaim{Origin: origin, TxnId: txnID})
	cancelClaim()
	if err != nil {
		writeError(w, r, err)
		return
	}
	if claim.Done {
		writeJSON(w, http.StatusOK, claim.Response)
		return
	}

	// Processing outlives the request (a sender that gave up retries and
	// gets the stored outcome) but not the node.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), txnProcessTimeout)
	defer cancel()
	stop := context.AfterFunc(s.stopCtx, cancel)
	defer stop()
	resp := s.processTxn(ctx, origin, &txn)

	doneCtx, cancelDone := context.WithTimeout(context.WithoutCancel(r.Context()), 10*time.Second)
	defer cancelDone()
	if s.stopCtx.Err() != nil {
		// Interrupted: give the claim up so that the retry processes it.
		_, _ = s.router.Request(doneCtx, &pb.FedTxnComplete{Origin: origin, TxnId: txnID, Claim: claim.Claim})
		writeError(w, r, errStatus(http.StatusServiceUnavailable, "M_UNKNOWN", "server shutting down, retry"))
		return
	}
	raw, err := json.Marshal(resp)
	if err != nil {
		_, _ = s.router.Request(doneCtx, &pb.FedTxnComplete{Origin: origin, TxnId: txnID, Claim: claim.Claim})
		writeError(w, r, err)
		return
	}
	if _, err := s.router.Request(doneCtx, &pb.FedTxnComplete{Origin: origin, TxnId: txnID, Claim: claim.Claim, Response: raw}); err != nil {
		// Processed all the same: answer, and a retry processes it again
		// (PDUs already known are accepted as such).
		s.log.Warn("federation: store transaction response", slog.String("origin", origin), slog.Any("err", err))
	}
	writeJSON(w, http.StatusOK, raw)
}

func (s *Server) claimTxn(ctx context.Context, m *pb.FedTxnClaim) (*pb.FedTxnClaimReply, error) {
	res, err := s.router.Request(ctx, m)
	if err != nil {
		return nil, err
	}
	rep, ok := res.(*pb.FedTxnClaimReply)
	if !ok {
		return nil, errors.New("gateway: unexpected transaction claim reply")
	}
	return rep, nil
}

// txnResponse is the response body of a transaction: one entry per PDU
// that could be parsed, empty when it was accepted.
type txnResponse struct {
	PDUs map[string]pduResult `json:"pdus"`
}

type pduResult struct {
	Error string `json:"error,omitempty"`
}

// processTxn applies a transaction's PDUs and EDUs, side by side, and
// returns the response once both are done (to-device messages and device
// list updates must be stored before the sender hears they arrived).
// Receipts wait for the PDUs: one often points at an event of the same
// transaction, which the room must hold before it takes the receipt.
func (s *Server) processTxn(ctx context.Context, origin string, txn *fedTransaction) txnResponse {
	resp := txnResponse{PDUs: map[string]pduResult{}}
	var receipts []edu
	var wg sync.WaitGroup
	if len(txn.EDUs) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			receipts = s.handleEDUs(ctx, origin, txn.EDUs)
		}()
	}
	if len(txn.PDUs) > 0 {
		for id, reason := range s.ingestPDUs(ctx, origin, txn.PDUs) {
			resp.PDUs[id] = pduResult{Error: truncateUTF8(reason, maxPDUErrorBytes)}
		}
		s.notePDUSenders(origin, txn.PDUs)
	}
	wg.Wait()
	n := 0
	for _, e := range receipts {
		n = s.receiptEDU(origin, e.Content, n)
	}
	return resp
}

// notePDUSenders tells origin's inbound actor the rooms its users sent
// PDUs to, where their presence is then delivered (a room where the user
// turns out not to be joined refuses the delivery and is forgotten).
func (s *Server) notePDUSenders(origin string, pdus []json.RawMessage) {
	byUser := map[string]*pb.FedUserRooms{}
	m := &pb.FedPresenceRooms{Origin: origin}
	for _, raw := range pdus {
		var p struct {
			RoomID string `json:"room_id"`
			Sender string `json:"sender"`
		}
		if json.Unmarshal(raw, &p) != nil || !validRoomID(p.RoomID) || !fromOrigin(p.Sender, origin) {
			continue
		}
		ur := byUser[p.Sender]
		if ur == nil {
			ur = &pb.FedUserRooms{UserId: p.Sender}
			byUser[p.Sender] = ur
			m.Users = append(m.Users, ur)
		}
		if !slices.Contains(ur.RoomIds, p.RoomID) {
			ur.RoomIds = append(ur.RoomIds, p.RoomID)
		}
	}
	if len(m.Users) > 0 {
		s.router.Send(m)
	}
}

// edu is one EDU of a transaction.
type edu struct {
	EduType string          `json:"edu_type"`
	Content json.RawMessage `json:"content"`
}

// handleEDUs dispatches a transaction's EDUs by type, except receipts,
// which it returns for after the PDUs. Unknown types and EDUs that do not
// parse are ignored; presence updates are counted across the transaction
// and cut at their bound.
func (s *Server) handleEDUs(ctx context.Context, origin string, raws []json.RawMessage) (receipts []edu) {
	presence := &pb.FedPresenceIn{Origin: origin}
	for _, raw := range raws {
		var e edu
		if json.Unmarshal(raw, &e) != nil || len(e.Content) == 0 || e.Content[0] != '{' {
			continue
		}
		switch e.EduType {
		case "m.typing":
			s.typingEDU(origin, e.Content)
		case "m.receipt":
			receipts = append(receipts, e)
		case "m.presence":
			s.presenceEDU(origin, e.Content, presence)
		case "m.device_list_update", "m.signing_key_update", "m.direct_to_device":
			if err := s.handleE2EEEDU(ctx, origin, e.EduType, e.Content); err != nil {
				s.log.Debug("federation: EDU dropped", slog.String("origin", origin),
					slog.String("edu_type", e.EduType), slog.Any("err", err))
			}
		}
	}
	if len(presence.Notices) > 0 {
		s.router.Send(presence)
	}
	return receipts
}

// fromOrigin reports whether userID is a valid user ID of origin: servers
// speak only for their own users.
func fromOrigin(userID, origin string) bool {
	if !strings.HasPrefix(userID, "@") || len(userID) > eventgraph.MaxIDBytes {
		return false
	}
	_, srv, ok := strings.Cut(userID, ":")
	return ok && srv == origin
}

func validRoomID(roomID string) bool {
	return strings.HasPrefix(roomID, "!") && len(roomID) <= eventgraph.MaxIDBytes
}

// typingEDU hands an m.typing EDU to its room, which checks membership and
// the server ACL.
func (s *Server) typingEDU(origin string, content json.RawMessage) {
	var c struct {
		RoomID string `json:"room_id"`
		UserID string `json:"user_id"`
		Typing *bool  `json:"typing"`
	}
	if json.Unmarshal(content, &c) != nil || !validRoomID(c.RoomID) || !fromOrigin(c.UserID, origin) || c.Typing == nil {
		return
	}
	s.router.Send(&pb.Typing{RoomId: c.RoomID, UserId: c.UserID, Typing: *c.Typing, Origin: origin})
}

// receiptEDU hands each public read receipt of an m.receipt EDU to its
// room; n counts the receipts of the transaction so far, and the new count
// is returned.
func (s *Server) receiptEDU(origin string, content json.RawMessage, n int) int {
	var rooms map[string]map[string]map[string]struct {
		EventIDs []string `json:"event_ids"`
		Data     struct {
			TS       int64  `json:"ts"`
			ThreadID string `json:"thread_id"`
		} `json:"data"`
	}
	if json.Unmarshal(content, &rooms) != nil {
		return n
	}
	for roomID, types := range rooms {
		if !validRoomID(roomID) {
			continue
		}
		// Only m.read travels between servers (m.read.private never does).
		for userID, rc := range types["m.read"] {
			if n >= maxTxnReceipts {
				return n
			}
			if !fromOrigin(userID, origin) || len(rc.EventIDs) == 0 || len(rc.Data.ThreadID) > eventgraph.MaxIDBytes {
				continue
			}
			ev := rc.EventIDs[len(rc.EventIDs)-1]
			if !strings.HasPrefix(ev, "$") || len(ev) > eventgraph.MaxIDBytes {
				continue
			}
			n++
			s.router.Send(&pb.Receipt{RoomId: roomID, UserId: userID, ReceiptType: "m.read", EventId: ev,
				ThreadId: rc.Data.ThreadID, Ts: rc.Data.TS, Origin: origin})
		}
	}
	return n
}

// presenceEDU adds the updates of an m.presence EDU to out, for the
// origin's inbound actor to deliver to the local users sharing a room with
// each user.
func (s *Server) presenceEDU(origin string, content json.RawMessage, out *pb.FedPresenceIn) {
	var c struct {
		Push []struct {
			UserID          string  `json:"user_id"`
			Presence        string  `json:"presence"`
			StatusMsg       *string `json:"status_msg"`
			LastActiveAgo   int64   `json:"last_active_ago"`
			CurrentlyActive bool    `json:"currently_active"`
		} `json:"push"`
	}
	if json.Unmarshal(content, &c) != nil {
		return
	}
	now := s.cfg.Now().UnixMilli()
	for _, p := range c.Push {
		if len(out.Notices) >= maxTxnPresence {
			return
		}
		switch p.Presence {
		case "online", "offline", "unavailable":
		default:
			continue
		}
		// Remote status messages are held to the local users' limit.
		if !fromOrigin(p.UserID, origin) || p.StatusMsg != nil && len(*p.StatusMsg) > maxStatusMsgBytes {
			continue
		}
		n := &pb.PresenceNotice{Sender: p.UserID, Presence: p.Presence,
			LastActiveTs: now - min(max(p.LastActiveAgo, 0), now), CurrentlyActive: p.CurrentlyActive}
		if p.StatusMsg != nil {
			n.StatusMsg, n.HasStatusMsg = *p.StatusMsg, true
		}
		out.Notices = append(out.Notices, n)
	}
}

// truncateUTF8 cuts s to at most n bytes without splitting a character.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
