package pb

// KindFedQueue is the identity prefix of the outbound federation queues.
const KindFedQueue = "fedqueue"

// FedQueueIdentity is the identity of the outbound queue of destination.
func FedQueueIdentity(destination string) string { return KindFedQueue + "/" + destination }

func (m *FedEnqueue) ActorIdentity() string { return FedQueueIdentity(m.Destination) }

func (m *FedQueueWake) ActorIdentity() string   { return FedQueueIdentity(m.Destination) }
func (m *FedQueueResult) ActorIdentity() string { return FedQueueIdentity(m.Destination) }
