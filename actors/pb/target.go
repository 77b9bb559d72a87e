package pb

import "google.golang.org/protobuf/proto"

// Targeted is a request that names the actor it is for.
type Targeted interface {
	proto.Message
	// ActorIdentity is the identity of the actor that must receive the message,
	// e.g. "room/!abc:example.org".
	ActorIdentity() string
}

// Identity prefixes of the actor kinds.
const (
	KindRoom      = "room"
	KindUser      = "user"
	KindDevice    = "device"
	KindAlias     = "alias"
	KindDirectory = "directory"
)

// RoomIdentity is the identity of the actor of room roomID.
func RoomIdentity(roomID string) string { return KindRoom + "/" + roomID }

// UserIdentity is the identity of the actor of user userID.
func UserIdentity(userID string) string { return KindUser + "/" + userID }

// DeviceIdentity is the identity of the actor of one device of a user.
func DeviceIdentity(userID, deviceID string) string {
	return KindDevice + "/" + userID + "/" + deviceID
}

// AliasIdentity is the identity of the actor owning a room alias.
func AliasIdentity(alias string) string { return KindAlias + "/" + alias }

// DirectoryIdentity is the identity of the public room directory actor.
const DirectoryIdentity = KindDirectory + "/public"

func (m *CreateRoom) ActorIdentity() string    { return RoomIdentity(m.RoomId) }
func (m *SendEvent) ActorIdentity() string     { return RoomIdentity(m.RoomId) }
func (m *Membership) ActorIdentity() string    { return RoomIdentity(m.RoomId) }
func (m *RoomQuery) ActorIdentity() string     { return RoomIdentity(m.RoomId) }
func (m *SyncRoom) ActorIdentity() string      { return RoomIdentity(m.RoomId) }
func (m *Typing) ActorIdentity() string        { return RoomIdentity(m.RoomId) }
func (m *Receipt) ActorIdentity() string       { return RoomIdentity(m.RoomId) }
func (m *Register) ActorIdentity() string      { return UserIdentity(m.UserId) }
func (m *AccountQuery) ActorIdentity() string  { return UserIdentity(m.UserId) }
func (m *CheckPassword) ActorIdentity() string { return UserIdentity(m.UserId) }
func (m *AccountUpdate) ActorIdentity() string { return UserIdentity(m.UserId) }
func (m *RoomNotice) ActorIdentity() string    { return UserIdentity(m.UserId) }
func (m *SyncPlan) ActorIdentity() string      { return UserIdentity(m.UserId) }
func (m *SyncDone) ActorIdentity() string      { return UserIdentity(m.UserId) }
func (m *DeviceLogin) ActorIdentity() string   { return DeviceIdentity(m.UserId, m.DeviceId) }
func (m *DeviceAuth) ActorIdentity() string    { return DeviceIdentity(m.UserId, m.DeviceId) }
func (m *DeviceQuery) ActorIdentity() string   { return DeviceIdentity(m.UserId, m.DeviceId) }
func (m *DeviceUpdate) ActorIdentity() string  { return DeviceIdentity(m.UserId, m.DeviceId) }
func (m *AliasOp) ActorIdentity() string       { return AliasIdentity(m.Alias) }
func (m *DirectoryOp) ActorIdentity() string   { return DirectoryIdentity }
func (m *Passivate) ActorIdentity() string     { return m.Identity }

func (m *SyncTimeout) ActorIdentity() string { return UserIdentity(m.UserId) }

func (m *PushRuleUpdate) ActorIdentity() string { return UserIdentity(m.UserId) }
