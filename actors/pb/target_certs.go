package pb

// KindCerts is the identity prefix of the certificate store actors.
const KindCerts = "certs"

// CertsIdentity is the identity of the certificate store actor named store
// ("acme" holds what certmagic keeps for the whole cluster).
func CertsIdentity(store string) string { return KindCerts + "/" + store }

func (m *CertStore) ActorIdentity() string  { return CertsIdentity(m.Store) }
func (m *CertLoad) ActorIdentity() string   { return CertsIdentity(m.Store) }
func (m *CertDelete) ActorIdentity() string { return CertsIdentity(m.Store) }
func (m *CertList) ActorIdentity() string   { return CertsIdentity(m.Store) }
func (m *CertStat) ActorIdentity() string   { return CertsIdentity(m.Store) }
func (m *CertLock) ActorIdentity() string   { return CertsIdentity(m.Store) }
func (m *CertUnlock) ActorIdentity() string { return CertsIdentity(m.Store) }
