// Package gateway is every byte shoal puts on the wire: the listeners (plain
// HTTP for development; HTTPS over TCP and HTTP/3 over QUIC on the same
// port, advertised by Alt-Svc; an admin listener for metrics, pprof and the
// cluster's status and leave endpoints),
// certificates (the operator's, self-signed, or certmagic's by ACME, kept
// in the certs actor so a cluster shares them), the routing of
// /_matrix/client, /_matrix/federation, /_matrix/key, /_matrix/media and
// /.well-known, the authentication of clients and of other servers
// (X-Matrix), JSON in and out with the spec's errors, CORS, and the limits:
// rate, concurrency, sizes, timeouts. Federation's network side is here
// too: the outbound client (package fedclient), the inbound PDU pipeline
// that checks signatures and hashes and fetches what a room lacks
// (fedin.go) before handing verified events to the room actor, and the
// handshakes, reads and queries other servers make (federation_*.go).
//
// A handler decodes and bounds its input, turns it into messages to the
// actors that own the data (through actors.Router, so it never knows which
// node they live on) and turns their replies into the response. The gateway
// never touches storage, with one exception: media bytes are streamed to and
// from files their media actor names (see client_media.go), so that no file
// passes through an actor message.
package gateway
