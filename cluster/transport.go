package cluster

import (
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/remote"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	// Messages travel by protobuf full name, looked up in the global
	// registry: importing the generated packages registers their file
	// descriptors, which is all Proto.Actor's remote needs to decode them.
	_ "github.com/shoal-chat/shoal/actors/pb"
	_ "github.com/shoal-chat/shoal/cluster/clusterpb"
)

// Limits of the actor transport.
const (
	// maxTransportMessage bounds one gRPC message: a batch of actor messages
	// or one handoff chunk. Replies carrying pages of events can be large.
	maxTransportMessage = 64 << 20
	// transportBatch is how many actor messages the transport packs into
	// one gRPC message.
	transportBatch = 64
)

// startTransport starts Proto.Actor's gRPC remote on listen with mutual TLS
// and returns the address other nodes reach it at. advertiseHost, when set,
// replaces the host of that address (for a node listening on all
// interfaces).
func startTransport(system *actor.ActorSystem, listen, advertiseHost string, tlsConf *transportTLS) (*remote.Remote, string, error) {
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, "", fmt.Errorf("cluster: actor transport address %q: %w", listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, "", fmt.Errorf("cluster: actor transport address %q: bad port", listen)
	}
	// Proto.Actor panics when it cannot listen: find out first, so that a
	// busy port is an error, not a crash.
	probe, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, "", fmt.Errorf("cluster: actor transport: %w", err)
	}
	if port == 0 {
		port = probe.Addr().(*net.TCPAddr).Port
	}
	if err := probe.Close(); err != nil {
		return nil, "", fmt.Errorf("cluster: actor transport: %w", err)
	}
	opts := []remote.ConfigOption{
		remote.WithServerOptions(
			grpc.Creds(credentials.NewTLS(tlsConf.server)),
			grpc.MaxRecvMsgSize(maxTransportMessage),
		),
		remote.WithDialOptions(
			grpc.WithTransportCredentials(credentials.NewTLS(tlsConf.client)),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxTransportMessage), grpc.MaxCallSendMsgSize(maxTransportMessage)),
		),
		remote.WithEndpointWriterBatchSize(transportBatch),
	}
	ip := net.ParseIP(host)
	unspecified := host == "" || (ip != nil && ip.IsUnspecified())
	if advertiseHost != "" || unspecified {
		if advertiseHost == "" {
			return nil, "", errors.New("cluster: the actor transport listens on every interface: set the address to advertise")
		}
		opts = append(opts, remote.WithAdvertisedHost(net.JoinHostPort(advertiseHost, strconv.Itoa(port))))
	}
	cfg := remote.Configure(host, port, opts...)
	// One connection attempt: a node that cannot be reached is reported by
	// membership, and requests to it fail fast instead of queueing behind
	// retries.
	cfg.MaxRetryCount = 1
	r := remote.NewRemote(system, cfg)
	var startErr error
	func() {
		defer func() {
			if v := recover(); v != nil {
				startErr = fmt.Errorf("cluster: start actor transport on %s: %v", listen, v)
			}
		}()
		r.Start()
	}()
	if startErr != nil {
		return nil, "", startErr
	}
	return r, system.Address(), nil
}
