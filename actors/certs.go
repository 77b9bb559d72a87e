package actors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// Bounds of the certificate store: certmagic keeps PEM files and small JSON
// documents in it, never anything near these.
const (
	maxCertValue = 1 << 20
	minCertLease = time.Second
	maxCertLease = 10 * time.Minute
)

// certsActor owns one certificate store (identity certs/<store>): the files
// certmagic keeps (certificates, keys, ACME account and challenge data) and
// its named locks. Every node's gateway reaches the same actor, so a cluster
// shares one set of certificates, and the lock that certmagic takes before
// it orders a certificate is one lock for the whole cluster: one writer
// decides who holds it, with no consensus needed. Locks carry a lease so
// that a node that dies holding one blocks the others only until the lease
// ends; the holder renews it while it works.
type certsActor struct {
	env    *Env
	loaded bool
	locks  map[string]storage.CertLock
}

// NewCerts makes the actor of one certificate store.
func NewCerts(env *Env) actor.Actor {
	return &certsActor{env: env}
}

func (a *certsActor) Receive(ctx actor.Context) {
	var res any
	var err error
	switch m := ctx.Message().(type) {
	case *actor.Started:
		if a.env.IdleTimeout > 0 {
			ctx.SetReceiveTimeout(a.env.IdleTimeout)
		}
		return
	case *actor.ReceiveTimeout:
		// Files and locks are all in storage: nothing is lost by stopping.
		ctx.Send(ctx.Parent(), &pb.Passivate{Identity: a.env.Identity})
		return
	case *pb.CertStore:
		res, err = a.store(m)
	case *pb.CertLoad:
		res, err = a.loadFile(m.Key)
	case *pb.CertDelete:
		res, err = a.delete(m.Key)
	case *pb.CertList:
		res, err = a.list(m.Prefix, m.Recursive)
	case *pb.CertStat:
		res, err = a.stat(m.Key)
	case *pb.CertLock:
		res, err = a.lock(m)
	case *pb.CertUnlock:
		res, err = a.unlock(m)
	default:
		return
	}
	if ctx.Sender() == nil {
		return
	}
	if err != nil {
		var me *MatrixError
		if !errors.As(err, &me) {
			a.env.Log.Error("certs: request failed", slog.Any("err", err))
		}
		ctx.Respond(ToPB(err))
		return
	}
	ctx.Respond(res)
}

func (a *certsActor) notFound(key string) *MatrixError {
	return ErrNotFound("no %s in the certificate store", key)
}

// update persists fn; bad keys are the caller's error, not ours.
func (a *certsActor) update(fn func(tx *bbolt.Tx) error) error {
	err := a.env.Partition.Update(context.Background(), fn)
	if errors.Is(err, storage.ErrBadKey) {
		return ErrInvalidParam("bad certificate store key")
	}
	if err != nil {
		return fmt.Errorf("certs %s: store: %w", a.env.Identity, err)
	}
	return nil
}

func (a *certsActor) view(fn func(tx *bbolt.Tx) error) error {
	err := a.env.Partition.View(fn)
	if errors.Is(err, storage.ErrBadKey) {
		return ErrInvalidParam("bad certificate store key")
	}
	if err != nil {
		return fmt.Errorf("certs %s: read: %w", a.env.Identity, err)
	}
	return nil
}

func (a *certsActor) store(m *pb.CertStore) (*pb.Empty, error) {
	if len(m.Value) > maxCertValue {
		return nil, Errorf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "certificate store value of %d bytes", len(m.Value))
	}
	id, f := a.env.Identity, storage.CertFile{Value: m.Value, ModifiedMs: a.env.NowMillis()}
	if err := a.update(func(tx *bbolt.Tx) error { return storage.PutCertFile(tx, id, m.Key, f) }); err != nil {
		return nil, err
	}
	return &pb.Empty{}, nil
}

func (a *certsActor) loadFile(key string) (*pb.CertLoadReply, error) {
	var f storage.CertFile
	var ok bool
	if err := a.view(func(tx *bbolt.Tx) (err error) {
		f, ok, err = storage.CertFileOf(tx, a.env.Identity, key)
		return err
	}); err != nil {
		return nil, err
	}
	if !ok {
		return nil, a.notFound(key)
	}
	return &pb.CertLoadReply{Value: f.Value, ModifiedMs: f.ModifiedMs}, nil
}

func (a *certsActor) delete(key string) (*pb.Empty, error) {
	id := a.env.Identity
	if err := a.update(func(tx *bbolt.Tx) error { return storage.DeleteCertFiles(tx, id, key) }); err != nil {
		return nil, err
	}
	return &pb.Empty{}, nil
}

// list names the direct children of prefix (files and the directories
// implied by deeper files), or with recursive every file and directory
// below it. An empty prefix is the root.
func (a *certsActor) list(prefix string, recursive bool) (*pb.CertListReply, error) {
	seen := map[string]bool{}
	var keys []string
	add := func(k string) {
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	base := ""
	if prefix != "" {
		base = prefix + "/"
	}
	if err := a.view(func(tx *bbolt.Tx) error {
		return storage.CertFilesUnder(tx, a.env.Identity, prefix, func(key string, _ storage.CertFile) error {
			rest := strings.TrimPrefix(key, base)
			if !recursive {
				child, _, _ := strings.Cut(rest, "/")
				add(base + child)
				return nil
			}
			for i := 0; i < len(rest); i++ {
				if rest[i] == '/' {
					add(base + rest[:i])
				}
			}
			add(key)
			return nil
		})
	}); err != nil {
		return nil, err
	}
	if len(keys) == 0 && prefix != "" {
		return nil, a.notFound(prefix)
	}
	slices.Sort(keys)
	return &pb.CertListReply{Keys: keys}, nil
}

func (a *certsActor) stat(key string) (*pb.CertStatReply, error) {
	var rep *pb.CertStatReply
	if err := a.view(func(tx *bbolt.Tx) error {
		f, ok, err := storage.CertFileOf(tx, a.env.Identity, key)
		if err != nil || ok {
			rep = &pb.CertStatReply{Key: key, ModifiedMs: f.ModifiedMs, Size: int64(len(f.Value)), Terminal: true}
			return err
		}
		// A directory: the newest file below it dates it.
		return storage.CertFilesUnder(tx, a.env.Identity, key, func(_ string, f storage.CertFile) error {
			if rep == nil {
				rep = &pb.CertStatReply{Key: key}
			}
			rep.ModifiedMs = max(rep.ModifiedMs, f.ModifiedMs)
			return nil
		})
	}); err != nil {
		return nil, err
	}
	if rep == nil {
		return nil, a.notFound(key)
	}
	return rep, nil
}

func (a *certsActor) loadLocks() error {
	if a.loaded {
		return nil
	}
	var locks map[string]storage.CertLock
	if err := a.view(func(tx *bbolt.Tx) (err error) {
		locks, err = storage.CertLocks(tx, a.env.Identity)
		return err
	}); err != nil {
		return err
	}
	a.locks, a.loaded = locks, true
	return nil
}

// lock grants name to m.Owner when it is free, its lease has passed, or
// m.Owner holds it already (a renewal).
func (a *certsActor) lock(m *pb.CertLock) (*pb.CertLockReply, error) {
	if m.Owner == "" {
		return nil, ErrInvalidParam("a lock needs an owner")
	}
	if err := a.loadLocks(); err != nil {
		return nil, err
	}
	now := a.env.NowMillis()
	if cur, ok := a.locks[m.Name]; ok && cur.Owner != m.Owner && cur.ExpiresMs > now {
		return &pb.CertLockReply{Acquired: false, ExpiresMs: cur.ExpiresMs}, nil
	}
	lease := min(max(time.Duration(m.LeaseMs)*time.Millisecond, minCertLease), maxCertLease)
	l := storage.CertLock{Owner: m.Owner, ExpiresMs: now + lease.Milliseconds()}
	id := a.env.Identity
	if err := a.update(func(tx *bbolt.Tx) error { return storage.PutCertLock(tx, id, m.Name, l) }); err != nil {
		return nil, err
	}
	a.locks[m.Name] = l
	return &pb.CertLockReply{Acquired: true, ExpiresMs: l.ExpiresMs}, nil
}

func (a *certsActor) unlock(m *pb.CertUnlock) (*pb.Empty, error) {
	if err := a.loadLocks(); err != nil {
		return nil, err
	}
	cur, ok := a.locks[m.Name]
	if !ok {
		return &pb.Empty{}, nil
	}
	if cur.Owner != m.Owner {
		if cur.ExpiresMs <= a.env.NowMillis() {
			return &pb.Empty{}, nil // free already; the stale record goes with the next lock
		}
		return nil, Errorf(http.StatusConflict, "M_UNKNOWN", "lock %s is held by another node", m.Name)
	}
	id := a.env.Identity
	if err := a.update(func(tx *bbolt.Tx) error { return storage.DeleteCertLock(tx, id, m.Name) }); err != nil {
		return nil, err
	}
	delete(a.locks, m.Name)
	return &pb.Empty{}, nil
}
