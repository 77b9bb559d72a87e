package pb

// KindFedTxn is the identity prefix of the per-origin inbound federation
// actors (transaction idempotency, remote presence routing).
const KindFedTxn = "fedtxn"

// FedTxnIdentity is the identity of the inbound actor of origin.
func FedTxnIdentity(origin string) string { return KindFedTxn + "/" + origin }

func (m *FedTxnClaim) ActorIdentity() string      { return FedTxnIdentity(m.Origin) }
func (m *FedTxnComplete) ActorIdentity() string   { return FedTxnIdentity(m.Origin) }
func (m *FedPresenceRooms) ActorIdentity() string { return FedTxnIdentity(m.Origin) }
func (m *FedPresenceIn) ActorIdentity() string    { return FedTxnIdentity(m.Origin) }
