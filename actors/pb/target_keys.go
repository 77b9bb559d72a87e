package pb

// Targets of the end-to-end encryption messages.

func (m *DeviceKeysOp) ActorIdentity() string { return DeviceIdentity(m.UserId, m.DeviceId) }
func (m *UserKeysOp) ActorIdentity() string   { return UserIdentity(m.UserId) }
func (m *KeysNotice) ActorIdentity() string   { return UserIdentity(m.UserId) }
