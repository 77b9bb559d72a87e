package pb

// KindMedia is the identity prefix of the media actors.
const KindMedia = "media"

// MediaIdentity is the identity of the media actor of one uploader of
// server: media/<server>/<owner key>.
func MediaIdentity(server, ownerKey string) string {
	return KindMedia + "/" + server + "/" + ownerKey
}

func (m *MediaBegin) ActorIdentity() string     { return MediaIdentity(m.Server, m.OwnerKey) }
func (m *MediaCommit) ActorIdentity() string    { return MediaIdentity(m.Server, m.OwnerKey) }
func (m *MediaCreate) ActorIdentity() string    { return MediaIdentity(m.Server, m.OwnerKey) }
func (m *MediaGet) ActorIdentity() string       { return MediaIdentity(m.Server, m.OwnerKey) }
func (m *MediaThumbnail) ActorIdentity() string { return MediaIdentity(m.Server, m.OwnerKey) }
func (m *MediaAppend) ActorIdentity() string    { return MediaIdentity(m.Server, m.OwnerKey) }
func (m *MediaRead) ActorIdentity() string      { return MediaIdentity(m.Server, m.OwnerKey) }
