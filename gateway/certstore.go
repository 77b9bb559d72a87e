package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/shoal-chat/shoal/actors"
	"github.com/shoal-chat/shoal/actors/pb"
)

// certStore is certmagic's Storage on the certs actor (certs/<store>), so
// that every node of a cluster shares its certificates, its ACME account
// and its locks: the lock certmagic takes before it orders a certificate is
// held in the actor, and N nodes place one order, not N.
//
// Each certStore is one lock owner. Lock returns once the actor granted the
// lock and keeps renewing the lease in the background until Unlock, so a
// node that dies while it holds a lock blocks the others only for one lease.
type certStore struct {
	router actors.Router
	store  string
	owner  string
	lease  time.Duration
	// poll bounds the wait between two attempts at a held lock.
	poll time.Duration
	log  *slog.Logger

	mu     sync.Mutex
	held   map[string]context.CancelFunc // lock name → stops its lease renewal
	closed chan struct{}                 // closed by release: waits for locks end
}

var (
	_ certmagic.Storage          = (*certStore)(nil)
	_ certmagic.LockLeaseRenewer = (*certStore)(nil)
)

// Default lease of a certificate store lock: long enough that renewing it
// three times per lease is cheap, short enough that a crashed holder
// delays the others by about a minute.
const defaultCertLockLease = time.Minute

func newCertStore(router actors.Router, store string, lease time.Duration, log *slog.Logger) *certStore {
	if lease <= 0 {
		lease = defaultCertLockLease
	}
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return &certStore{router: router, store: store, owner: hex.EncodeToString(b), lease: lease,
		poll: min(lease/4, time.Second), log: log, held: map[string]context.CancelFunc{}, closed: make(chan struct{})}
}

// notExist turns the actor's M_NOT_FOUND into the fs.ErrNotExist certmagic
// expects.
func notExist(err error) error {
	var me *actors.MatrixError
	if errors.As(err, &me) && me.Status == http.StatusNotFound {
		return fmt.Errorf("certificate store: %s: %w", me.Message, fs.ErrNotExist)
	}
	return err
}

func (c *certStore) request(ctx context.Context, msg pb.Targeted) (any, error) {
	res, err := c.router.Request(ctx, msg)
	if err != nil {
		return nil, fmt.Errorf("certificate store: %T: %w", msg, notExist(err))
	}
	return res, nil
}

// Store implements certmagic.Storage.
func (c *certStore) Store(ctx context.Context, key string, value []byte) error {
	_, err := c.request(ctx, &pb.CertStore{Store: c.store, Key: key, Value: value})
	return err
}

// Load implements certmagic.Storage.
func (c *certStore) Load(ctx context.Context, key string) ([]byte, error) {
	res, err := c.request(ctx, &pb.CertLoad{Store: c.store, Key: key})
	if err != nil {
		return nil, err
	}
	rep, ok := res.(*pb.CertLoadReply)
	if !ok {
		return nil, fmt.Errorf("certificate store: load replied %T", res)
	}
	return rep.Value, nil
}

// Delete implements certmagic.Storage.
func (c *certStore) Delete(ctx context.Context, key string) error {
	_, err := c.request(ctx, &pb.CertDelete{Store: c.store, Key: key})
	return err
}

// Exists implements certmagic.Storage.
func (c *certStore) Exists(ctx context.Context, key string) bool {
	_, err := c.Stat(ctx, key)
	return err == nil
}

// List implements certmagic.Storage.
func (c *certStore) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	res, err := c.request(ctx, &pb.CertList{Store: c.store, Prefix: path, Recursive: recursive})
	if err != nil {
		return nil, err
	}
	rep, ok := res.(*pb.CertListReply)
	if !ok {
		return nil, fmt.Errorf("certificate store: list replied %T", res)
	}
	return rep.Keys, nil
}

// Stat implements certmagic.Storage.
func (c *certStore) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	res, err := c.request(ctx, &pb.CertStat{Store: c.store, Key: key})
	if err != nil {
		return certmagic.KeyInfo{}, err
	}
	rep, ok := res.(*pb.CertStatReply)
	if !ok {
		return certmagic.KeyInfo{}, fmt.Errorf("certificate store: stat replied %T", res)
	}
	return certmagic.KeyInfo{Key: rep.Key, Modified: time.UnixMilli(rep.ModifiedMs), Size: rep.Size,
		IsTerminal: rep.Terminal}, nil
}

// Lock implements certmagic.Locker: it waits, polling the actor, until the
// lock is free or its holder's lease has run out.
func (c *certStore) Lock(ctx context.Context, name string) error {
	for {
		rep, err := c.tryLock(ctx, name, c.lease)
		if err != nil {
			return err
		}
		if rep.Acquired {
			c.keepAlive(name)
			return nil
		}
		wait := min(time.Until(time.UnixMilli(rep.ExpiresMs)), c.poll)
		t := time.NewTimer(max(wait, 10*time.Millisecond))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("certificate store: lock %s: %w", name, ctx.Err())
		case <-c.closed:
			t.Stop()
			return fmt.Errorf("certificate store: lock %s: node stopping", name)
		case <-t.C:
		}
	}
}

func (c *certStore) tryLock(ctx context.Context, name string, lease time.Duration) (*pb.CertLockReply, error) {
	res, err := c.request(ctx, &pb.CertLock{Store: c.store, Name: name, Owner: c.owner, LeaseMs: lease.Milliseconds()})
	if err != nil {
		return nil, err
	}
	rep, ok := res.(*pb.CertLockReply)
	if !ok {
		return nil, fmt.Errorf("certificate store: lock replied %T", res)
	}
	return rep, nil
}

// keepAlive renews the lease of a held lock every third of a lease until
// Unlock: certmagic may hold the lock for as long as an order takes.
func (c *certStore) keepAlive(name string) {
	ctx, cancel := context.WithCancel(context.Background())
	c.mu.Lock()
	if prev, ok := c.held[name]; ok {
		prev()
	}
	c.held[name] = cancel
	c.mu.Unlock()
	go func() {
		t := time.NewTicker(c.lease / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				rctx, rcancel := context.WithTimeout(ctx, c.lease/3)
				rep, err := c.tryLock(rctx, name, c.lease)
				rcancel()
				if err == nil && !rep.Acquired {
					c.log.Warn("certificate store: lost a lock to another node", slog.String("lock", name))
					return
				}
				if err != nil && ctx.Err() == nil {
					c.log.Warn("certificate store: renew lock", slog.String("lock", name), slog.Any("err", err))
				}
			}
		}
	}()
}

// Unlock implements certmagic.Locker.
func (c *certStore) Unlock(ctx context.Context, name string) error {
	c.mu.Lock()
	if stop, ok := c.held[name]; ok {
		stop()
		delete(c.held, name)
	}
	c.mu.Unlock()
	_, err := c.request(ctx, &pb.CertUnlock{Store: c.store, Name: name, Owner: c.owner})
	return err
}

// RenewLockLease implements certmagic.LockLeaseRenewer.
func (c *certStore) RenewLockLease(ctx context.Context, name string, lease time.Duration) error {
	rep, err := c.tryLock(ctx, name, lease)
	if err != nil {
		return err
	}
	if !rep.Acquired {
		return fmt.Errorf("certificate store: lock %s is held by another node", name)
	}
	return nil
}

// release stops every lease renewal and every wait for a lock (at
// shutdown; the leases then run out).
func (c *certStore) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.closed:
	default:
		close(c.closed)
	}
	for name, stop := range c.held {
		stop()
		delete(c.held, name)
	}
}
