package pb

// Targets of the presence fan-out messages.

func (m *PresenceNotice) ActorIdentity() string { return UserIdentity(m.UserId) }
func (m *PresenceTick) ActorIdentity() string   { return UserIdentity(m.UserId) }
