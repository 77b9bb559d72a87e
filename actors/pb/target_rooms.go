package pb

// Targets of the room-side messages added after target.go was written.

func (m *RoomPublish) ActorIdentity() string     { return RoomIdentity(m.RoomId) }
func (m *RoomAliasUpdate) ActorIdentity() string { return RoomIdentity(m.RoomId) }
