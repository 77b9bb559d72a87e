package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// Rooms shared by two shoal deployments (a.test and b.test, each with a
// certificate of the test CA) through the real federation path: discovery,
// TLS, X-Matrix, make_join/send_join, transactions from the outbound
// queues, the PDU checks and the room actors on both sides.

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, d time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	last := ""
	for time.Now().Before(deadline) {
		ok, detail := cond()
		if ok {
			return
		}
		last = detail
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s (last: %s)", what, d, last)
}

// bodies lists the message bodies of a room's timeline as cli sees it,
// oldest first (up to 100).
func bodies(ctx context.Context, cli *mautrix.Client, room id.RoomID) ([]string, error) {
	resp, err := cli.Messages(ctx, room, "", "", mautrix.DirectionBackward, nil, 100)
	if err != nil {
		return nil, err
	}
	var out []string
	for i := len(resp.Chunk) - 1; i >= 0; i-- {
		ev := resp.Chunk[i]
		if ev.Type != event.EventMessage {
			continue
		}
		var c struct {
			Body string `json:"body"`
		}
		_ = json.Unmarshal(ev.Content.VeryRaw, &c)
		out = append(out, c.Body)
	}
	return out, nil
}

func waitBodies(t *testing.T, ctx context.Context, cli *mautrix.Client, room id.RoomID, want ...string) {
	t.Helper()
	eventually(t, fmt.Sprintf("%s sees %v", cli.UserID, want), 30*time.Second, func() (bool, string) {
		got, err := bodies(ctx, cli, room)
		if err != nil {
			return false, err.Error()
		}
		return slices.Equal(got, want), strings.Join(got, "|")
	})
}

func joinedOf(ctx context.Context, cli *mautrix.Client, room id.RoomID) []string {
	jm, err := cli.JoinedMembers(ctx, room)
	if err != nil {
		return []string{"error: " + err.Error()}
	}
	var out []string
	for u := range jm.Joined {
		out = append(out, u.String())
	}
	sort.Strings(out)
	return out
}

// stateIDs is a room's current state as "type|state_key=event_id" lines.
func stateIDs(ctx context.Context, cli *mautrix.Client, room id.RoomID) (string, error) {
	var evs []json.RawMessage
	_, err := cli.MakeRequest(ctx, "GET", cli.BuildClientURL("v3", "rooms", room, "state"), nil, &evs)
	if err != nil {
		return "", err
	}
	var lines []string
	for _, raw := range evs {
		var e struct {
			Type     string `json:"type"`
			StateKey string `json:"state_key"`
			EventID  string `json:"event_id"`
		}
		_ = json.Unmarshal(raw, &e)
		lines = append(lines, e.Type+"|"+e.StateKey+"="+e.EventID)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n"), nil
}

func TestFederationRoomLifecycle(t *testing.T) {
	for _, version := range []string{"1", "3", "6", "9", "10", "11", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			ctx := context.Background()
			_, a, b := twoNodes(t)
			alice, bob := a.Register("alice"), b.Register("bob")

			created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: id.RoomVersion(version), Name: "shared"})
			if err != nil {
				t.Fatal(err)
			}
			room := created.RoomID
			if _, err := alice.SendText(ctx, room, "before bob"); err != nil {
				t.Fatal(err)
			}
			// bob's server resolves alice's alias by asking a.test.
			alias := id.RoomAlias("#shared" + version + ":a.test")
			if _, err := alice.CreateAlias(ctx, alias, room); err != nil {
				t.Fatal(err)
			}
			resolved, err := bob.ResolveAlias(ctx, alias)
			if err != nil || resolved.RoomID != room || !slices.Contains(resolved.Servers, "a.test") {
				t.Fatalf("bob resolves %s: %+v %v", alias, resolved, err)
			}
			if _, err := bob.ResolveAlias(ctx, "#nothing:a.test"); err == nil || !strings.Contains(err.Error(), "M_NOT_FOUND") {
				t.Fatalf("unknown remote alias: %v", err)
			}
			if _, err := bob.JoinRoom(ctx, room.String(), &mautrix.ReqJoinRoom{Via: []string{"a.test"}}); err != nil {
				t.Fatalf("bob joins through a.test: %v", err)
			}
			want := []string{alice.UserID.String(), bob.UserID.String()}
			eventually(t, "both servers list both members", 30*time.Second, func() (bool, string) {
				ja, jb := joinedOf(ctx, alice, room), joinedOf(ctx, bob, room)
				return slices.Equal(ja, want) && slices.Equal(jb, want), fmt.Sprint(ja, jb)
			})
			// History from before bob joined comes with /backfill.
			waitBodies(t, ctx, bob, room, "before bob")

			if _, err := alice.SendText(ctx, room, "hello bob"); err != nil {
				t.Fatal(err)
			}
			// Each server orders events as they arrive: bob answers once he
			// has the message, so both timelines have one order.
			waitBodies(t, ctx, bob, room, "before bob", "hello bob")
			if _, err := bob.SendText(ctx, room, "hello alice"); err != nil {
				t.Fatal(err)
			}
			waitBodies(t, ctx, alice, room, "before bob", "hello bob", "hello alice")
			waitBodies(t, ctx, bob, room, "before bob", "hello bob", "hello alice")

			// State and redactions cross over.
			if _, err := alice.SendStateEvent(ctx, room, event.StateTopic, "", map[string]string{"topic": "federated"}); err != nil {
				t.Fatal(err)
			}
			eventually(t, "bob sees the topic", 30*time.Second, func() (bool, string) {
				var c struct {
					Topic string `json:"topic"`
				}
				err := bob.StateEvent(ctx, room, event.StateTopic, "", &c)
				return err == nil && c.Topic == "federated", fmt.Sprint(c.Topic, err)
			})
			secret, err := bob.SendText(ctx, room, "oops")
			if err != nil {
				t.Fatal(err)
			}
			waitBodies(t, ctx, alice, room, "before bob", "hello bob", "hello alice", "oops")
			if _, err := bob.RedactEvent(ctx, room, secret.EventID); err != nil {
				t.Fatal(err)
			}
			eventually(t, "alice's copy is redacted", 30*time.Second, func() (bool, string) {
				ev, err := alice.GetEvent(ctx, room, secret.EventID)
				if err != nil {
					return false, err.Error()
				}
				return len(ev.Content.Raw) == 0 && ev.Unsigned.RedactedBecause != nil, string(ev.Content.VeryRaw)
			})

			// Both servers agree on the state.
			eventually(t, "same state on both servers", 30*time.Second, func() (bool, string) {
				sa, err1 := stateIDs(ctx, alice, room)
				sb, err2 := stateIDs(ctx, bob, room)
				return err1 == nil && err2 == nil && sa == sb, sa + "\n---\n" + sb
			})

			if _, err := bob.LeaveRoom(ctx, room); err != nil {
				t.Fatal(err)
			}
			eventually(t, "alice sees bob leave", 30*time.Second, func() (bool, string) {
				ja := joinedOf(ctx, alice, room)
				return slices.Equal(ja, []string{alice.UserID.String()}), fmt.Sprint(ja)
			})
		})
	}
}

// One server is down while the other's users talk: when it is back, the
// outbound queue delivers what it missed, in order, and both sides keep
// talking; events sent concurrently on both sides (forks) resolve to the
// same state on both.
func TestFederationDowntimeAndForks(t *testing.T) {
	ctx := context.Background()
	_, a, b := twoNodes(t)
	alice, bob := a.Register("alice"), b.Register("bob")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "11"})
	if err != nil {
		t.Fatal(err)
	}
	room := created.RoomID
	if _, err := bob.JoinRoom(ctx, room.String(), &mautrix.ReqJoinRoom{Via: []string{"a.test"}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "alice sees bob", 30*time.Second, func() (bool, string) {
		ja := joinedOf(ctx, alice, room)
		return len(ja) == 2, fmt.Sprint(ja)
	})

	b.Stop()
	var sent []string
	for i := range 5 {
		msg := fmt.Sprintf("while b was down %d", i)
		if _, err := alice.SendText(ctx, room, msg); err != nil {
			t.Fatal(err)
		}
		sent = append(sent, msg)
	}
	if _, err := alice.SendStateEvent(ctx, room, event.StateTopic, "", map[string]string{"topic": "set while b was down"}); err != nil {
		t.Fatal(err)
	}
	b.Restart()
	// Straight after the restart b has not heard of the topic: bob's
	// display name change builds on the old state, a fork the two servers
	// must resolve.
	if _, err := bob.SendStateEvent(ctx, room, event.StateMember, bob.UserID.String(), map[string]string{"membership": "join", "displayname": "Bob on b"}); err != nil {
		t.Fatal(err)
	}
	waitBodies(t, ctx, bob, room, sent...)
	eventually(t, "both sides resolve to the same state with both changes", 60*time.Second, func() (bool, string) {
		sa, err1 := stateIDs(ctx, alice, room)
		sb, err2 := stateIDs(ctx, bob, room)
		if err1 != nil || err2 != nil {
			return false, fmt.Sprint(err1, err2)
		}
		return sa == sb && strings.Contains(sa, "m.room.topic|"), sa + "\n---\n" + sb
	})
	var member struct {
		DisplayName string `json:"displayname"`
	}
	if err := alice.StateEvent(ctx, room, event.StateMember, bob.UserID.String(), &member); err != nil || member.DisplayName != "Bob on b" {
		t.Fatalf("bob's name as alice sees it %q (%v)", member.DisplayName, err)
	}
	var topic struct {
		Topic string `json:"topic"`
	}
	if err := bob.StateEvent(ctx, room, event.StateTopic, "", &topic); err != nil || topic.Topic != "set while b was down" {
		t.Fatalf("topic as bob sees it %q (%v)", topic.Topic, err)
	}
	if _, err := bob.SendText(ctx, room, "after the merge"); err != nil {
		t.Fatal(err)
	}
	waitBodies(t, ctx, alice, room, append(append([]string{}, sent...), "after the merge")...)
}

// Three servers: the resident server passes a join it accepted through
// send_join on to the other servers in the room, and everyone's messages
// reach everyone.
func TestFederationThreeServers(t *testing.T) {
	ctx := context.Background()
	fed := shoaltest.NewFederation(t)
	a, b, c := fed.Start(t, "a.test"), fed.Start(t, "b.test"), fed.Start(t, "c.test")
	alice, bob, carol := a.Register("alice"), b.Register("bob"), c.Register("carol")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "12"})
	if err != nil {
		t.Fatal(err)
	}
	room := created.RoomID
	for _, cli := range []*mautrix.Client{bob, carol} {
		if _, err := cli.JoinRoom(ctx, room.String(), &mautrix.ReqJoinRoom{Via: []string{"a.test"}}); err != nil {
			t.Fatalf("%s joins: %v", cli.UserID, err)
		}
	}
	want := []string{alice.UserID.String(), bob.UserID.String(), carol.UserID.String()}
	slices.Sort(want)
	eventually(t, "every server lists all three members", 30*time.Second, func() (bool, string) {
		ja, jb, jc := joinedOf(ctx, alice, room), joinedOf(ctx, bob, room), joinedOf(ctx, carol, room)
		return slices.Equal(ja, want) && slices.Equal(jb, want) && slices.Equal(jc, want), fmt.Sprint(ja, jb, jc)
	})
	var sent []string
	for _, cli := range []*mautrix.Client{alice, bob, carol} {
		msg := "from " + cli.UserID.String()
		if _, err := cli.SendText(ctx, room, msg); err != nil {
			t.Fatal(err)
		}
		sent = append(sent, msg)
		for _, other := range []*mautrix.Client{alice, bob, carol} {
			waitBodies(t, ctx, other, room, sent...)
		}
	}
}

// A server that joins a room is sent the current presence of the room's
// users: alice set hers before bob's server was in the room and does not
// change it, yet bob sees it.
func TestFederationPresenceToNewServer(t *testing.T) {
	ctx := context.Background()
	_, a, b := twoNodes(t)
	alice, bob := a.Register("alice"), b.Register("bob")
	if err := alice.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: "set before b joined"}); err != nil {
		t.Fatal(err)
	}
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "11"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoom(ctx, created.RoomID.String(), &mautrix.ReqJoinRoom{Via: []string{"a.test"}}); err != nil {
		t.Fatal(err)
	}
	syncUntilPresence(t, bob, "", alice.UserID, "online", "set before b joined")
}
