package pb

// KindServer is the identity prefix of the per-remote-server actors.
const KindServer = "server"

// ServerIdentity is the identity of the actor of the remote server name.
func ServerIdentity(name string) string { return KindServer + "/" + name }

func (m *ServerKeysQuery) ActorIdentity() string   { return ServerIdentity(m.ServerName) }
func (m *ServerKeysFetched) ActorIdentity() string { return ServerIdentity(m.ServerName) }
