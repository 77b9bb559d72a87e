package pb

import "strconv"

// Targets of the room federation messages (federation.proto).

func (m *RoomFedInfo) ActorIdentity() string           { return RoomIdentity(m.RoomId) }
func (m *RoomFedIngest) ActorIdentity() string         { return RoomIdentity(m.RoomId) }
func (m *RoomFedRead) ActorIdentity() string           { return RoomIdentity(m.RoomId) }
func (m *RoomMakeMembership) ActorIdentity() string    { return RoomIdentity(m.RoomId) }
func (m *RoomSendMembership) ActorIdentity() string    { return RoomIdentity(m.RoomId) }
func (m *RoomFedJoin) ActorIdentity() string           { return RoomIdentity(m.RoomId) }
func (m *RoomPrepareMembership) ActorIdentity() string { return RoomIdentity(m.RoomId) }
func (m *RoomFedOutsider) ActorIdentity() string       { return RoomIdentity(m.RoomId) }

// KindEventIndex is the identity prefix of the event index shards.
const KindEventIndex = "eventidx"

// EventIndexShards is how many shards the event index has.
const EventIndexShards = 8

// EventIndexShard is the shard of the event index holding eventID: a hash
// of the ID (FNV-1a), so every node computes the same shard.
func EventIndexShard(eventID string) string {
	h := uint32(2166136261)
	for i := 0; i < len(eventID); i++ {
		h ^= uint32(eventID[i])
		h *= 16777619
	}
	return strconv.Itoa(int(h % EventIndexShards))
}

// EventIndexIdentity is the identity of one event index shard.
func EventIndexIdentity(shard string) string { return KindEventIndex + "/" + shard }

func (m *EventIndexAdd) ActorIdentity() string    { return EventIndexIdentity(m.Shard) }
func (m *EventIndexLookup) ActorIdentity() string { return EventIndexIdentity(m.Shard) }
