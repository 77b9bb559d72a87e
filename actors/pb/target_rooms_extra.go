package pb

// Targets of the relations, threads, spaces, upgrades, timestamp and user
// directory messages.

// KindUserDir is the identity prefix of the user directory actor.
const KindUserDir = "userdir"

// UserDirIdentity is the identity of the user directory actor.
const UserDirIdentity = KindUserDir + "/local"

func (m *RoomRelations) ActorIdentity() string    { return RoomIdentity(m.RoomId) }
func (m *RoomThreads) ActorIdentity() string      { return RoomIdentity(m.RoomId) }
func (m *RoomTimestamp) ActorIdentity() string    { return RoomIdentity(m.RoomId) }
func (m *RoomSpaceSummary) ActorIdentity() string { return RoomIdentity(m.RoomId) }
func (m *RoomUpgradeState) ActorIdentity() string { return RoomIdentity(m.RoomId) }
func (m *UserDirUpdate) ActorIdentity() string    { return UserDirIdentity }
func (m *UserDirSearch) ActorIdentity() string    { return UserDirIdentity }
func (m *RoomSearch) ActorIdentity() string       { return RoomIdentity(m.RoomId) }
