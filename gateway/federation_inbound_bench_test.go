package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// BenchmarkFederationInboundPDUs measures inbound PDUs end to end: one op is
// a transaction of 50 messages from a peer in the room, PUT over TLS with
// X-Matrix, every PDU's signature and hash checked, placed by the room
// actor and committed. Building and signing on the peer's side is not timed.
func BenchmarkFederationInboundPDUs(b *testing.B) {
	ctx := context.Background()
	fed := shoaltest.NewFederation(b)
	a := fed.Start(b, "a.test")
	peer := startFakePeer(b, fed, "peer.test")
	alice := a.Register("alice")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "11"})
	if err != nil {
		b.Fatal(err)
	}
	h := &hostile{t: b, fed: fed, peer: peer, node: a, rv: eventgraph.MustRoomVersion("11"), room: created.RoomID.String(),
		state: eventgraph.StateMap{}, evs: map[string]*eventgraph.Event{}}
	h.join("sender")
	sender := h.user("sender")
	const perTxn = 50
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		pdus := make([]json.RawMessage, 0, perTxn)
		for j := 0; j < perTxn; j++ {
			ev := h.build(sender, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": fmt.Sprint(i, " ", j)}, nil)
			h.last = ev.EventID()
			pdus = append(pdus, ev.CanonicalPDU())
		}
		b.StartTimer()
		st, res := h.send(pdus...)
		if e, found := pduResult(res, h.last); st != 200 || !found || e != "" {
			b.Fatalf("transaction %d: %d %v", i, st, res)
		}
	}
	b.ReportMetric(float64(b.N*perTxn)/b.Elapsed().Seconds(), "pdus/s")
}
