package gateway_test

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/gateway"
	"github.com/shoal-chat/shoal/gateway/fedclient"
	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// fqPeer is a federation peer reduced to PUT /send/{txnId} on real TLS:
// it checks each request's X-Matrix signature with the sending node's key,
// answers 500 to its first failFirst requests, and keeps the PDUs and
// EDUs of the transactions it accepts (a transaction ID seen before is
// acknowledged and ignored, as the spec asks of receivers).
type fqPeer struct {
	name      string
	origin    string
	pub       ed25519.PublicKey
	failFirst int

	mu       sync.Mutex
	attempts []string // txn ID of every request
	accepted map[string]bool
	pdus     []json.RawMessage
	edus     []string
	problems []string
	notify   chan struct{}
}

func startFQPeer(t testing.TB, fed *shoaltest.Federation, name, origin string, pub ed25519.PublicKey, failFirst int) *fqPeer {
	t.Helper()
	p := &fqPeer{name: name, origin: origin, pub: pub, failFirst: failFirst, accepted: map[string]bool{}, notify: make(chan struct{}, 1)}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(p.serve))
	certFile, keyFile := fed.CA.Issue(t, t.TempDir(), name)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	n, _ := strconv.Atoi(port)
	fed.Add(name, n)
	return p
}

func (p *fqPeer) problem(format string, args ...any) {
	p.mu.Lock()
	p.problems = append(p.problems, fmt.Sprintf(format, args...))
	p.mu.Unlock()
}

func (p *fqPeer) serve(w http.ResponseWriter, r *http.Request) {
	txnID, ok := strings.CutPrefix(r.URL.Path, "/_matrix/federation/v1/send/")
	if r.Method != http.MethodPut || !ok || txnID == "" {
		http.Error(w, `{"errcode":"M_UNRECOGNIZED","error":"no"}`, http.StatusNotFound)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 8<<20))
	if err != nil {
		return
	}
	x, err := fedclient.ParseXMatrix(r.Header.Get("Authorization"))
	if err == nil && (x.Origin != p.origin || x.Destination != p.name) {
		err = fmt.Errorf("origin %q destination %q", x.Origin, x.Destination)
	}
	if err == nil {
		err = fedclient.VerifyRequest(x, p.pub, r.Method, r.URL.RequestURI(), p.name, body)
	}
	if err != nil {
		p.problem("txn %s: authorization: %v", txnID, err)
		http.Error(w, `{"errcode":"M_UNAUTHORIZED","error":"bad signature"}`, http.StatusUnauthorized)
		return
	}
	var txn struct {
		Origin string            `json:"origin"`
		TS     int64             `json:"origin_server_ts"`
		PDUs   []json.RawMessage `json:"pdus"`
		EDUs   []struct {
			Type    string          `json:"edu_type"`
			Content json.RawMessage `json:"content"`
		} `json:"edus"`
	}
	if err := json.Unmarshal(body, &txn); err != nil || txn.Origin != p.origin || txn.TS == 0 || len(txn.PDUs) > 50 || len(txn.EDUs) > 100 {
		p.problem("txn %s: body %s (%v)", txnID, body, err)
		http.Error(w, `{"errcode":"M_BAD_JSON","error":"bad"}`, http.StatusBadRequest)
		return
	}
	p.mu.Lock()
	p.attempts = append(p.attempts, txnID)
	fail := len(p.attempts) <= p.failFirst
	if !fail && !p.accepted[txnID] {
		p.accepted[txnID] = true
		p.pdus = append(p.pdus, txn.PDUs...)
		for _, e := range txn.EDUs {
			p.edus = append(p.edus, e.Type+" "+string(e.Content))
		}
	}
	p.mu.Unlock()
	if fail {
		http.Error(w, `{"errcode":"M_UNKNOWN","error":"try later"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"pdus":{}}`))
	select {
	case p.notify <- struct{}{}:
	default:
	}
}

func (p *fqPeer) received() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pdus)
}

// A shoal node sends queued PDUs and EDUs to a peer that fails twice with
// 500: the same signed transaction is retried, and everything arrives
// exactly once and in order.
func TestFedQueueDeliversThroughFailures(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a := fed.Start(t, "a.test")
	ident, err := gateway.LoadOrCreateSigningKey(a.DataDir(), "a.test")
	if err != nil {
		t.Fatal(err)
	}
	peer := startFQPeer(t, fed, "p.test", "a.test", ident.PrivateKey.Public().(ed25519.PublicKey), 2)
	ctx := context.Background()
	const batches, per = 7, 10
	for b := range batches {
		m := &pb.FedEnqueue{Destination: "p.test", RoomId: "!room:a.test",
			Edus: []*pb.FedEDU{{EduType: "m.test", Content: fmt.Appendf(nil, `{"b":%d}`, b)}}}
		for i := range per {
			m.Pdus = append(m.Pdus, fmt.Appendf(nil, `{"event_id":"$%d","n":%d}`, b*per+i, b*per+i))
		}
		if _, err := a.Cluster.Request(ctx, m); err != nil {
			t.Fatalf("enqueue: %v", err)
		}
	}
	deadline := time.After(60 * time.Second)
	for peer.received() < batches*per {
		select {
		case <-peer.notify:
		case <-deadline:
			t.Fatalf("peer received %d PDUs of %d", peer.received(), batches*per)
		}
	}
	time.Sleep(200 * time.Millisecond)
	peer.mu.Lock()
	defer peer.mu.Unlock()
	if len(peer.problems) > 0 {
		t.Fatalf("peer saw bad requests: %v", peer.problems)
	}
	if len(peer.pdus) != batches*per {
		t.Fatalf("peer received %d PDUs, want %d exactly once", len(peer.pdus), batches*per)
	}
	for i, raw := range peer.pdus {
		var v struct{ N int }
		if err := json.Unmarshal(raw, &v); err != nil || v.N != i {
			t.Fatalf("PDU %d is %s: out of order or changed", i, raw)
		}
	}
	if len(peer.edus) != batches {
		t.Fatalf("peer received EDUs %v", peer.edus)
	}
	for b, e := range peer.edus {
		if want := fmt.Sprintf(`m.test {"b":%d}`, b); e != want {
			t.Fatalf("EDU %d = %s, want %s", b, e, want)
		}
	}
	// The two failures and the success of the first transaction carry one ID;
	// 70 PDUs need more than one transaction.
	if len(peer.attempts) < 4 || peer.attempts[0] != peer.attempts[1] || peer.attempts[1] != peer.attempts[2] || len(peer.accepted) < 2 {
		t.Fatalf("attempts %v, accepted %d transactions", peer.attempts, len(peer.accepted))
	}
}

// A transaction that failed before the node restarted is sent again, with
// the same ID, once the node is back: the node wakes the queues it has
// stored. The queue's counters show on the admin endpoint.
func TestFedQueueResumesAfterNodeRestart(t *testing.T) {
	fed := shoaltest.NewFederation(t)
	a := fed.Start(t, "a.test", func(cfg *gateway.NodeConfig) { cfg.AdminListen = "127.0.0.1:0" })
	ident, err := gateway.LoadOrCreateSigningKey(a.DataDir(), "a.test")
	if err != nil {
		t.Fatal(err)
	}
	peer := startFQPeer(t, fed, "p.test", "a.test", ident.PrivateKey.Public().(ed25519.PublicKey), 1)
	if _, err := a.Cluster.Request(context.Background(), &pb.FedEnqueue{Destination: "p.test", RoomId: "!room:a.test",
		Pdus: [][]byte{[]byte(`{"event_id":"$0","n":0}`)}}); err != nil {
		t.Fatal(err)
	}
	attempts := func() []string {
		peer.mu.Lock()
		defer peer.mu.Unlock()
		return append([]string(nil), peer.attempts...)
	}
	for deadline := time.Now().Add(20 * time.Second); len(attempts()) == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no attempt before the restart")
		}
	}
	a.Restart()
	for deadline := time.Now().Add(30 * time.Second); peer.received() == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("nothing delivered after the restart (attempts %v)", attempts())
		}
	}
	if got := attempts(); len(got) != 2 || got[0] != got[1] {
		t.Fatalf("attempts %v: want the failed transaction once more", got)
	}
	// The queue stores the outcome after the peer answered: poll.
	wants := []string{"shoal_fed_transactions_sent_total 1", "shoal_fedqueue_pdus 0", "shoal_fed_transactions_failed_total 0"}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := http.Get("http://" + a.AdminAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		missing := ""
		for _, want := range wants {
			if !strings.Contains(string(body), want+"\n") {
				missing = want
			}
		}
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics lack %q", missing)
		}
	}
}
