package actors_test

import (
	"fmt"
	"testing"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/eventgraph"
)

// BenchmarkFedIngest measures the room actor's side of inbound PDUs: one op
// is a transaction of 50 messages from another server, each checked against
// its auth events, the state before it and the current state, placed and
// committed (one fsync per transaction). Signature checks are the
// gateway's and not included.
func BenchmarkFedIngest(b *testing.B) {
	tn := startNode(b)
	alice := user("alice")
	room := tn.createRoom("11", alice, &pb.StateEvent{Type: "m.room.join_rules", Content: raw(map[string]string{"join_rule": "public"})})
	rs := newRemote(b, "remote.test", "11", room)
	join := rs.join(tn, "bob")
	bob := rs.user("bob")
	prev := join.EventID()
	const perTxn = 50
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		m := &pb.RoomFedIngest{RoomId: room, Origin: rs.name}
		for j := 0; j < perTxn; j++ {
			ev := rs.build(bob, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": fmt.Sprint(i, j)}, []string{prev})
			prev = ev.EventID()
			m.Pdus = append(m.Pdus, ev.CanonicalPDU())
		}
		b.StartTimer()
		rep := tn.must(m).(*pb.RoomFedIngestReply)
		if rep.Results[prev] != "" {
			b.Fatalf("refused: %v", rep.Results[prev])
		}
	}
	b.ReportMetric(float64(b.N*perTxn)/b.Elapsed().Seconds(), "pdus/s")
}

// BenchmarkFedJoin10kMembers measures how long a server takes to start a
// room from a send_join answer carrying the state of a room with 10,000
// members (state and auth chain are stored, each event checked against its
// auth events, the join checked against the state): one op is one fresh
// node's RoomFedJoin.
func BenchmarkFedJoin10kMembers(b *testing.B) {
	const members = 10000
	a := startNode(b)
	alice := user("alice")
	room := a.createRoom("11", alice, &pb.StateEvent{Type: "m.room.join_rules", Content: raw(map[string]string{"join_rule": "public"})})
	rs := newRemote(b, "remote.test", "11", room)
	first := rs.join(a, "u0")
	prev := first.EventID()
	batch := &pb.RoomFedIngest{RoomId: room, Origin: rs.name}
	for i := 1; i < members; i++ {
		u := rs.user(fmt.Sprintf("u%d", i))
		ev := rs.build(u, eventgraph.TypeMember, &u, map[string]string{"membership": "join"}, []string{prev})
		prev = ev.EventID()
		batch.Pdus = append(batch.Pdus, ev.CanonicalPDU())
		if len(batch.Pdus) == 50 || i == members-1 {
			rep := a.must(batch).(*pb.RoomFedIngestReply)
			if rep.Results[prev] != "" {
				b.Fatalf("member %d refused: %s", i, rep.Results[prev])
			}
			batch = &pb.RoomFedIngest{RoomId: room, Origin: rs.name}
		}
	}
	// A third server's user joins: its answer is what the benchmark replays.
	cs := newRemote(b, "third.test", "11", room)
	mk := a.must(&pb.RoomMakeMembership{RoomId: room, Origin: cs.name, UserId: cs.user("carol"), Membership: "join",
		Versions: []string{"11"}}).(*pb.RoomMakeMembershipReply)
	join := cs.sign(mk.Event)
	sj := a.must(&pb.RoomSendMembership{RoomId: room, Origin: cs.name, Membership: "join", Pdu: join.CanonicalPDU()}).(*pb.RoomSendMembershipReply)
	if len(sj.State) < members {
		b.Fatalf("send_join state has %d events, want ≥ %d", len(sj.State), members)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		c := startNamedNode(b, "third.test")
		b.StartTimer()
		c.must(&pb.RoomFedJoin{RoomId: room, RoomVersion: "11", JoinEvent: join.CanonicalPDU(), State: sj.State,
			AuthChain: sj.AuthChain, Origin: testServer})
		b.StopTimer()
		c.stop()
		b.StartTimer()
	}
	b.ReportMetric(float64(len(sj.State)), "state_events")
}
