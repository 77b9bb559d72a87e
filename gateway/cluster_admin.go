package gateway

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/shoal-chat/shoal/cluster"
)

// The cluster's operations endpoints, on the admin listener:
//
//	GET  /_shoal/cluster/status  the cluster as this node sees it (cluster.Status, JSON)
//	POST /_shoal/cluster/leave   hand every partition to the other members and leave;
//	                             202 at once, the node stops once it has left
//
// `shoal cluster status` and `shoal cluster leave` call them. Leaving is
// accepted from loopback only, even if the admin listener is exposed for
// scraping.

// leaveTimeout bounds a graceful leave; after it the node stays a member.
const leaveTimeout = 30 * time.Minute

func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", s.metrics.adminHandler())
	cn, ok := s.router.(*cluster.Node)
	if !ok {
		return mux
	}
	mux.HandleFunc("GET /_shoal/cluster/status", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		writeJSON(w, http.StatusOK, cn.Status(ctx))
	})
	mux.HandleFunc("POST /_shoal/cluster/leave", func(w http.ResponseWriter, r *http.Request) {
		if !fromLoopback(r) {
			writeJSON(w, http.StatusForbidden, map[string]string{"errcode": "M_FORBIDDEN", "error": "leave is accepted from loopback only"})
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), leaveTimeout)
		done, err := cn.StartLeave(ctx)
		if err != nil {
			cancel()
			writeJSON(w, http.StatusConflict, map[string]string{"errcode": "M_UNKNOWN", "error": err.Error()})
			return
		}
		go func() {
			defer cancel()
			if err := <-done; err != nil {
				s.log.Error("cluster: leave failed; the node stays a member", slog.Any("err", err))
			}
		}()
		writeJSON(w, http.StatusAccepted, map[string]any{"leaving": true, "node": cn.ID()})
	})
	return mux
}

func fromLoopback(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// clusterSharedFiles are the files of the data dir that make the server's
// identity: the first node of a cluster creates them, each joining node
// receives them.
var clusterSharedFiles = []string{"signing.key", "registration_shared_secret"}

// joinCluster begins a clustered node (nil without cluster settings).
func joinCluster(cfg NodeConfig) (*cluster.Node, error) {
	if cfg.Cluster == nil || cfg.Shared != nil {
		return nil, nil
	}
	return cluster.Join(cluster.Config{
		DataDir:     cfg.DataDir,
		Partitions:  cfg.Partitions,
		ServerName:  cfg.Gateway.ServerName,
		SharedFiles: clusterSharedFiles,
		Log:         cfg.Log,
		Cluster:     cfg.Cluster,
	})
}

// Left is closed once the node has left its cluster (POST
// /_shoal/cluster/leave): it should then stop. Never closed for a one-node
// server or a gateway on a shared cluster node.
func (n *Node) Left() <-chan struct{} {
	if n.Cluster == nil || !n.ownsCluster {
		return nil
	}
	return n.Cluster.Left()
}
