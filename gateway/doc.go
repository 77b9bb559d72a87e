// Package gateway is every byte shoal puts on the wire: the listeners (plain
// HTTP for development, HTTPS with TLS, later HTTP/3), the routing of
// /_matrix/client, /_matrix/federation, /_matrix/key, /_matrix/media and
// /.well-known, the authentication of clients, JSON in and out with the
// spec's errors, and CORS.
//
// A handler decodes and bounds its input, turns it into messages to the
// actors that own the data (through actors.Router, so it never knows which
// node they live on) and turns their replies into the response. The gateway
// never touches storage.
package gateway
