package gateway

import (
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/cluster"
)

func startCertsCluster(t *testing.T) *cluster.Node {
	t.Helper()
	cn, err := cluster.Start(cluster.Config{
		DataDir:    t.TempDir(),
		Partitions: 2,
		Kinds:      actors.Kinds(),
		Server:     &actors.ServerIdentity{ServerName: "test.local", KeyID: "ed25519:t", PrivateKey: ed25519.NewKeyFromSeed(make([]byte, 32))},
		Log:        slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cn.Stop(context.Background()) })
	return cn
}

// The store behaves as certmagic's Storage: files, implicit directories,
// fs.ErrNotExist for what is not there.
func TestCertStoreFiles(t *testing.T) {
	cn := startCertsCluster(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	s := newCertStore(cn, "acme", time.Second, log)
	ctx := context.Background()
	if _, err := s.Load(ctx, "certificates/x/a.crt"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("load of nothing: %v", err)
	}
	if err := s.Store(ctx, "certificates/x/a.crt", []byte("pem")); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Load(ctx, "certificates/x/a.crt"); err != nil || string(v) != "pem" {
		t.Fatalf("load: %q %v", v, err)
	}
	if !s.Exists(ctx, "certificates/x") || !s.Exists(ctx, "certificates/x/a.crt") || s.Exists(ctx, "certificates/y") {
		t.Fatal("Exists wrong")
	}
	info, err := s.Stat(ctx, "certificates/x/a.crt")
	if err != nil || !info.IsTerminal || info.Size != 3 || time.Since(info.Modified) > time.Minute {
		t.Fatalf("stat: %+v %v", info, err)
	}
	if keys, err := s.List(ctx, "certificates", true); err != nil || !slices.Equal(keys, []string{"certificates/x", "certificates/x/a.crt"}) {
		t.Fatalf("list: %v %v", keys, err)
	}
	if err := s.Delete(ctx, "certificates"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.List(ctx, "certificates", false); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("list after delete: %v", err)
	}
}

// One lock, two nodes: the second waits until the first unlocks; a holder
// that dies (stops renewing) blocks the other for one lease at most; a
// waiter gives up when its context ends.
func TestCertStoreLockAcrossNodes(t *testing.T) {
	cn := startCertsCluster(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a := newCertStore(cn, "acme", time.Second, log)
	b := newCertStore(cn, "acme", time.Second, log)
	ctx := context.Background()
	if err := a.Lock(ctx, "issue_cert_x"); err != nil {
		t.Fatal(err)
	}
	// a renews its one-second lease: b still waits after several leases.
	short, cancel := context.WithTimeout(ctx, 2500*time.Millisecond)
	err := b.Lock(short, "issue_cert_x")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("b locked a held lock: %v", err)
	}
	got := make(chan time.Time, 1)
	go func() {
		if err := b.Lock(ctx, "issue_cert_x"); err != nil {
			t.Error(err)
		}
		got <- time.Now()
	}()
	time.Sleep(300 * time.Millisecond)
	released := time.Now()
	if err := a.Unlock(ctx, "issue_cert_x"); err != nil {
		t.Fatal(err)
	}
	if at := <-got; at.Sub(released) > 2*time.Second {
		t.Fatalf("b got the lock %v after the unlock", at.Sub(released))
	}
	// b "dies" holding it: no unlock, no renewal. a gets it once the lease ends.
	b.release()
	start := time.Now()
	if err := a.Lock(ctx, "issue_cert_x"); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited > 3*time.Second {
		t.Fatalf("waited %v for a dead holder's lease", waited)
	}
	if err := b.Unlock(ctx, "issue_cert_x"); err == nil {
		t.Fatal("b released a's lock")
	}
	if err := a.RenewLockLease(ctx, "issue_cert_x", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	a.release()
}
