package gateway

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/cluster"
	"github.com/shoal-chat/shoal/gateway/fedclient"
	"github.com/shoal-chat/shoal/storage"
)

// The outbound federation queues (actors fedqueue/<server name>) send
// with the node's federation client. Anything that wants a PDU or EDU sent
// to another server sends the queue a pb.FedEnqueue.

// fedQueueWakeEvery is how often the node wakes the queues that have
// something stored: queues do not survive a restart or a partition handoff
// as actors, only as data.
const fedQueueWakeEvery = 5 * time.Minute

// maxTxnResponse bounds the answer to a transaction (a result per PDU).
const maxTxnResponse = 1 << 20

// withFedQueueKind returns kinds plus the outbound federation queues bound
// to f.
func withFedQueueKind(kinds map[string]cluster.Producer, f *federation) map[string]cluster.Producer {
	out := maps.Clone(kinds)
	// The counters travel with f from here, before the gateway exists, to
	// registerFederationQueue, which puts them in the gateway's metrics.
	stats := &actors.FedQueueStats{}
	f.queueStats = stats
	out[pb.KindFedQueue] = actors.NewFedQueueKind(actors.FedQueueConfig{Sender: txnSender{f}, Stats: stats})
	return out
}

// txnSender is the queues' actors.TransactionSender.
type txnSender struct{ f *federation }

// SendTransaction implements actors.TransactionSender: PUT
// /_matrix/federation/v1/send/{txnId}, signed. A 4xx other than 408 and
// 429 means the destination will never take this transaction: it is not
// to be retried.
func (t txnSender) SendTransaction(ctx context.Context, destination, txnID string, body []byte) ([]byte, error) {
	resp, err := t.f.client.Do(ctx, fedclient.Request{Method: http.MethodPut, Destination: destination,
		URI: "/_matrix/federation/v1/send/" + url.PathEscape(txnID), Content: body, Signed: true, Limit: maxTxnResponse})
	if err == nil {
		return resp, nil
	}
	var he *fedclient.HTTPError
	if errors.As(err, &he) {
		retry := he.Status >= 500 || he.Status == http.StatusTooManyRequests || he.Status == http.StatusRequestTimeout
		return nil, &actors.TxnError{Status: he.Status, Retry: retry, Err: err}
	}
	return nil, &actors.TxnError{Retry: true, Err: err}
}

// registerFederationQueue registers the queues' metrics and starts waking
// the queues that have something stored, now and every fedQueueWakeEvery
// until the gateway shuts down.
func (s *Server) registerFederationQueue() {
	if st := s.fed.queueStats; st != nil && s.metrics != nil {
		s.metrics.gaugeFunc("shoal_fedqueue_pdus", "PDUs queued for other servers in the active queues of this node.",
			func() float64 { return float64(st.QueuedPDUs.Load()) })
		s.metrics.reg.MustRegister(
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "shoal_fed_transactions_sent_total",
				Help: "Federation transactions accepted by their destination."},
				func() float64 { return float64(st.Sent.Load()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "shoal_fed_transactions_failed_total",
				Help: "Federation transaction attempts that failed (retried or dropped)."},
				func() float64 { return float64(st.Failed.Load()) }))
	}
	holder, ok := s.router.(interface{ Store() *storage.Store })
	if !ok {
		return
	}
	go func() {
		tick := time.NewTicker(fedQueueWakeEvery)
		defer tick.Stop()
		for {
			if store := holder.Store(); store != nil {
				n, err := actors.WakeFedQueues(store, s.router)
				if err != nil && s.stopCtx.Err() == nil {
					s.log.Warn("fedqueue: wake queues", slog.Any("err", err))
				}
				if n > 0 {
					s.log.Debug("fedqueue: woke queues", slog.Int("queues", n))
				}
			}
			select {
			case <-s.stopCtx.Done():
				return
			case <-tick.C:
			}
		}
	}()
}
