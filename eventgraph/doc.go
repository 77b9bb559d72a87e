// Package eventgraph is the Matrix event model as pure code: canonical JSON,
// unpadded base64, content and reference hashes, ed25519 signatures, event and
// room identifiers, redaction, event format validation, the room versions 1–12,
// their authorization rules and the state resolution algorithms v1, v2 and
// v2.1.
//
// It does no I/O and starts no goroutines: everything a homeserver must
// compute about events is a function of its inputs here, so that rooms behave
// identically on shoal and on every other server, and so that the rest of
// shoal (storage, actors, gateway) can trust what it is given.
//
// The central types are RoomVersion (what varies between versions), Event (a
// parsed, immutable PDU) and StateMap (room state as (type, state_key) →
// event ID).
package eventgraph
