package actors

import "testing"

// TestPresenceCoalescer: one fan-out at a time, changes during one become a
// single follow-up with the latest presence, and nothing is sent when peers
// already hold what is current.
func TestPresenceCoalescer(t *testing.T) {
	online := visiblePresence{state: "online"}
	away := visiblePresence{state: "unavailable", statusMsg: "lunch", hasStatus: true}
	offline := visiblePresence{state: "offline"}
	c := presenceCoalescer{sent: offline}

	if c.changed(offline) {
		t.Fatal("fan-out started although nothing visible changed")
	}
	if !c.changed(online) {
		t.Fatal("a visible change did not start a fan-out")
	}
	// Two changes while the first is in flight: no fan-out yet ...
	if c.changed(away) || c.changed(online) {
		t.Fatal("a second fan-out started while one is in flight")
	}
	// ... and, as the presence is back to what was sent, no follow-up.
	if c.done(online) {
		t.Fatal("follow-up sent although peers already hold the presence")
	}
	if !c.changed(away) {
		t.Fatal("change after the fan-out ended did not start one")
	}
	if c.changed(offline) {
		t.Fatal("fan-out started while one is in flight")
	}
	// One follow-up carrying the latest presence.
	if !c.done(offline) {
		t.Fatal("pending change not followed up")
	}
	if c.sent != offline {
		t.Fatalf("follow-up sent %+v, want the latest", c.sent)
	}
	if c.done(offline) {
		t.Fatal("a second follow-up without a change")
	}
	// An activity bump (same state and message) sends nothing.
	if c.changed(offline) {
		t.Fatal("fan-out for an unchanged presence")
	}
}
