package pb

// Targets of the push notification messages.

func (m *PushNotice) ActorIdentity() string { return UserIdentity(m.UserId) }
func (m *PushResult) ActorIdentity() string { return UserIdentity(m.UserId) }
