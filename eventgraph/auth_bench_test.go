package eventgraph

import "testing"

// BenchmarkAllowedMessage: authorising an m.room.message in a typical v12
// room, as the room actor does for every message: against its own auth
// events (the receipt check, including the checks on the auth_events list),
// against the current state (soft failure), and the bare rules over auth
// events already loaded.
func BenchmarkAllowedMessage(b *testing.B) {
	r := newBaseRoom(b, MustRoomVersion("12"), JoinRulePublic)
	msg := r.store(atMessage(r, atBob))
	b.Run("auth_events", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := AllowedByAuthEvents(msg, r.lookup, r.isRejected); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("state", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := AllowedByState(msg, r.state, r.lookup); err != nil {
				b.Fatal(err)
			}
		}
	})
	auth, err := LoadAuthEvents(msg, r.lookup, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("loaded", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := Allowed(msg, auth); err != nil {
				b.Fatal(err)
			}
		}
	})
}
