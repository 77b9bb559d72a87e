package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Defaults for Options fields left zero.
const (
	// DefaultLockTimeout is how long Open waits for the file lock that another
	// process may hold before it gives up with ErrLocked.
	DefaultLockTimeout = time.Second
	// DefaultMaxBatch is the largest number of Update functions committed in
	// one transaction.
	DefaultMaxBatch = 1000
)

var (
	// ErrClosed is returned by the operations of a closed Partition or Store.
	ErrClosed = errors.New("storage: closed")
	// ErrStaleEpoch is returned by UpdateAt and SetEpoch when the caller's
	// epoch is older than the one the partition stores: the caller lost
	// ownership of the partition and must not write to it.
	ErrStaleEpoch = errors.New("storage: stale epoch")
	// ErrLocked is returned by Open when another process holds the file.
	ErrLocked = errors.New("storage: partition file is locked by another process")
	// ErrPartitionMismatch is returned when a file records another partition
	// number than the one it is opened or restored as.
	ErrPartitionMismatch = errors.New("storage: file belongs to another partition")
	// ErrSealed is returned by Update and UpdateAt on a sealed partition
	// (see Seal): it is being handed to another node and takes no writes.
	ErrSealed = errors.New("storage: partition sealed")
)

// Options tune a Partition. The zero value is the production setting.
type Options struct {
	// NoSync skips fsync on commit. Data acknowledged by Update may then be
	// lost on a crash: only benchmarks and tests that say so may set it.
	NoSync bool
	// LockTimeout bounds the wait for the file lock at Open;
	// DefaultLockTimeout when zero.
	LockTimeout time.Duration
	// MaxBatch is the largest number of Update functions committed in one
	// transaction; DefaultMaxBatch when zero.
	MaxBatch int
	// InitialMmapSize is passed to bbolt: a map large enough for the file's
	// growth keeps a long read transaction (Snapshot) from blocking commits
	// that grow the file.
	InitialMmapSize int
	// OnCommit, when set, is called by the partition's committer after each
	// batch it tried to commit, successfully or not (a batch whose every
	// function failed commits nothing and is not reported). It runs on the
	// commit path, after the batch's callers are answered: it must be quick
	// and must not call into the partition.
	OnCommit func(CommitStats)
}

func (o Options) withDefaults() Options {
	if o.LockTimeout <= 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	return o
}

// CommitStats describes one group commit, for metrics.
type CommitStats struct {
	Partition uint32
	// Batch is the number of Update functions committed together.
	Batch int
	// Failed is the number of functions of this batch that returned an
	// error or panicked and were left out of the commit.
	Failed int
	// Duration runs from the start of the first transaction of the batch to
	// the end of the commit's fsync, re-runs after failures included.
	Duration time.Duration
	// Err is the commit's error; nil when the batch is durable.
	Err error
}

// PanicError is what an Update caller gets when its function panicked. The
// panic is confined to that caller: the rest of its batch commits.
type PanicError struct {
	Partition uint32
	Value     any
	Stack     []byte
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("storage: partition %d: update function panicked: %v", e.Partition, e.Value)
}

// Unwrap returns the panic value when it is an error.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

// Partition is one bbolt file holding one partition's data.
//
// Writes are group-committed: a committer goroutine takes every Update queued
// since its last commit (at most Options.MaxBatch), runs their functions in
// order in one read-write transaction, commits with one fsync, and answers
// each caller. There is no artificial delay: while one batch's fsync runs,
// the next batch accumulates, so batches grow with the load by themselves.
//
// A Partition is safe for concurrent use. At returns another handle on the
// same file whose every Update is fenced by an epoch.
type Partition struct {
	*partition
	// fence is the epoch every Update of this handle is fenced with, when
	// fenced is set (see At).
	fence  uint64
	fenced bool
}

// partition is the state the handles of one open file share.
type partition struct {
	id   uint32
	path string
	db   *bbolt.DB
	opts Options

	// epoch caches the stored epoch; it only grows. The authoritative check
	// is made inside the transaction.
	epoch atomic.Uint64
	// sealed caches whether the file is sealed; the authoritative check is
	// made inside the transaction.
	sealed atomic.Bool

	mu     sync.Mutex
	queue  []*request
	closed bool

	wake      chan struct{} // capacity 1: "the queue may be non-empty"
	stopped   chan struct{} // closed when the committer has exited
	closeOnce sync.Once
	closeErr  error
}

const (
	stateQueued int32 = iota
	stateRunning
	stateCancelled
)

type request struct {
	fn     func(*bbolt.Tx) error
	fenced bool
	epoch  uint64
	// meta marks the partition's own metadata updates (SetEpoch, Seal,
	// Unseal), which a seal does not block.
	meta  bool
	state atomic.Int32
	done  chan error // capacity 1
}

// errFnFailed aborts the transaction of a batch in which a function failed.
var errFnFailed = errors.New("storage: update function failed")

// Metadata of the partition, in a top-level bucket no identity can name.
var (
	metaBucket   = []byte{reservedPrefix, 'm', 'e', 't', 'a'}
	keyEpoch     = []byte("epoch")
	keyPartition = []byte("partition")
	keySealed    = []byte("sealed")
)

// Open opens (creating it if absent) the bbolt file at path as partition id.
// A file that records another partition number is refused with
// ErrPartitionMismatch; a file locked by another process is refused with
// ErrLocked after opts.LockTimeout.
func Open(path string, id uint32, opts Options) (*Partition, error) {
	opts = opts.withDefaults()
	_, statErr := os.Stat(path)
	created := errors.Is(statErr, os.ErrNotExist)
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout:         opts.LockTimeout,
		FreelistType:    bbolt.FreelistMapType,
		NoSync:          opts.NoSync,
		InitialMmapSize: opts.InitialMmapSize,
	})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("storage: partition %d: open %s: no lock after %s: %w", id, path, opts.LockTimeout, ErrLocked)
		}
		return nil, fmt.Errorf("storage: partition %d: open %s: %w", id, path, err)
	}
	if created && !opts.NoSync {
		// The new file's directory entry must be durable before any
		// write to it is acknowledged.
		if err := syncDir(filepath.Dir(path)); err != nil {
			_ = db.Close()
			return nil, fmt.Errorf("storage: partition %d: open %s: %w", id, path, err)
		}
	}
	epoch, sealed, err := initMeta(db, id)
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("storage: partition %d: open %s: %w", id, path, err)
	}
	p := &Partition{partition: &partition{
		id:      id,
		path:    path,
		db:      db,
		opts:    opts,
		wake:    make(chan struct{}, 1),
		stopped: make(chan struct{}),
	}}
	p.epoch.Store(epoch)
	p.sealed.Store(sealed)
	go p.commitLoop()
	return p, nil
}

// initMeta checks (or, in a new file, records) the partition number and
// returns the stored epoch and whether the file is sealed.
func initMeta(db *bbolt.DB, id uint32) (epoch uint64, sealed bool, err error) {
	recorded := false
	err = db.View(func(tx *bbolt.Tx) error {
		var err error
		recorded, err = checkPartitionID(tx, int64(id))
		if err != nil {
			return err
		}
		_, sealed = sealNote(tx)
		epoch, err = storedEpoch(tx)
		return err
	})
	if err != nil || recorded {
		return epoch, sealed, err
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(metaBucket)
		if err != nil {
			return fmt.Errorf("create meta bucket: %w", err)
		}
		return b.Put(keyPartition, U64Key(uint64(id)))
	})
	return epoch, sealed, err
}

// checkPartitionID reports whether tx's file records a partition number and,
// when want >= 0, that it is want.
func checkPartitionID(tx *bbolt.Tx, want int64) (bool, error) {
	b := tx.Bucket(metaBucket)
	if b == nil {
		return false, nil
	}
	v := b.Get(keyPartition)
	if v == nil {
		return false, nil
	}
	got, err := ParseU64Key(v)
	if err != nil {
		return true, fmt.Errorf("recorded partition number: %w", err)
	}
	if want >= 0 && got != uint64(want) {
		return true, fmt.Errorf("file is partition %d: %w", got, ErrPartitionMismatch)
	}
	return true, nil
}

func storedEpoch(tx *bbolt.Tx) (uint64, error) {
	b := tx.Bucket(metaBucket)
	if b == nil {
		return 0, nil
	}
	v := b.Get(keyEpoch)
	if v == nil {
		return 0, nil
	}
	e, err := ParseU64Key(v)
	if err != nil {
		return 0, fmt.Errorf("stored epoch: %w", err)
	}
	return e, nil
}

// sealNote returns the note of a sealed file.
func sealNote(tx *bbolt.Tx) ([]byte, bool) {
	b := tx.Bucket(metaBucket)
	if b == nil {
		return nil, false
	}
	v := b.Get(keySealed)
	if v == nil {
		return nil, false
	}
	return slices.Clone(v), true
}

// ID returns the partition number.
func (p *Partition) ID() uint32 { return p.id }

// Path returns the partition's file.
func (p *Partition) Path() string { return p.path }

// Update runs fn in a read-write transaction shared with the other Updates
// queued at the same time, and returns once that transaction is durable
// (fsync'd), or with an error and none of fn's writes kept.
//
// fn must be a pure function of its inputs and the transaction: when another
// function of its batch fails, the batch is rolled back and run again without
// the failing one, so fn may run more than once. Change in-memory state only
// after Update returned nil. fn runs on the partition's committer goroutine,
// so it must not block, must not call Update, UpdateAt, SetEpoch or Close of
// the same partition (that deadlocks), must not Commit or Rollback tx, and must
// not keep tx, or slices read from it, after it returns.
//
// The error fn returns is returned unchanged to its caller; a panic in fn is
// recovered and returned as a *PanicError. ctx is honoured while the update
// waits in the queue (Update then returns ctx's error and fn never runs), not
// once its batch has started. After Close, Update returns ErrClosed; on a
// sealed partition it returns ErrSealed, writing nothing. On a handle from At,
// Update is UpdateAt with that handle's epoch.
func (p *Partition) Update(ctx context.Context, fn func(tx *bbolt.Tx) error) error {
	if p.fenced {
		return p.UpdateAt(ctx, p.fence, fn)
	}
	if p.sealed.Load() {
		return p.sealedErr()
	}
	return p.submit(ctx, &request{fn: fn})
}

// At returns a handle on the same partition whose Update is
// UpdateAt(epoch): the node that owns the partition under epoch gives its
// actors this handle, so that once the partition has moved on (its epoch
// raised by SetEpoch or Seal) nothing they write can land. Closing either
// handle closes the partition.
func (p *Partition) At(epoch uint64) *Partition {
	return &Partition{partition: p.partition, fence: epoch, fenced: true}
}

// UpdateAt is Update fenced by epoch: it refuses with ErrStaleEpoch, writing
// nothing, when epoch is older than the partition's stored epoch at the time
// its transaction runs. A node writes with the epoch under which it was given
// the partition, so that once a newer owner has raised the epoch (SetEpoch)
// the old owner's late writes are refused.
func (p *Partition) UpdateAt(ctx context.Context, epoch uint64, fn func(tx *bbolt.Tx) error) error {
	if cur := p.epoch.Load(); epoch < cur {
		return p.staleErr(epoch, cur)
	}
	if p.sealed.Load() {
		return p.sealedErr()
	}
	return p.submit(ctx, &request{fn: fn, fenced: true, epoch: epoch})
}

// SetEpoch durably raises the partition's epoch to epoch. Setting the current
// epoch again is a no-op; lowering it is refused with ErrStaleEpoch.
func (p *Partition) SetEpoch(epoch uint64) error {
	err := p.submit(context.Background(), &request{meta: true, fn: func(tx *bbolt.Tx) error {
		return p.raiseEpoch(tx, epoch)
	}})
	if err != nil {
		if errors.Is(err, ErrStaleEpoch) || errors.Is(err, ErrClosed) {
			return err
		}
		return fmt.Errorf("storage: partition %d: set epoch %d: %w", p.id, epoch, err)
	}
	p.cacheEpoch(epoch)
	return nil
}

// raiseEpoch stores epoch unless it is older than the stored one.
func (p *Partition) raiseEpoch(tx *bbolt.Tx, epoch uint64) error {
	cur, err := storedEpoch(tx)
	if err != nil {
		return err
	}
	if epoch < cur {
		return p.staleErr(epoch, cur)
	}
	if epoch == cur {
		return nil
	}
	b, err := tx.CreateBucketIfNotExists(metaBucket)
	if err != nil {
		return err
	}
	return b.Put(keyEpoch, U64Key(epoch))
}

func (p *Partition) cacheEpoch(epoch uint64) {
	for {
		cur := p.epoch.Load()
		if cur >= epoch || p.epoch.CompareAndSwap(cur, epoch) {
			return
		}
	}
}

// Seal durably raises the partition's epoch to epoch (refusing with
// ErrStaleEpoch an older one, as SetEpoch does) and seals it with note: from
// then on every Update and UpdateAt fails with ErrSealed, writing nothing,
// until Unseal. Updates already queued when Seal is called are committed or
// refused before the seal, in queue order.
//
// A node seals a partition before it snapshots it for another node, so that
// the copy it sends is the last version written here. The seal and its note
// are part of the file: they survive a restart, travel in the snapshot, and
// say on both ends where the partition was going (the note is the caller's).
// Sealing a sealed partition replaces its note.
func (p *Partition) Seal(epoch uint64, note []byte) error {
	note = slices.Clone(note)
	if note == nil {
		note = []byte{}
	}
	err := p.submit(context.Background(), &request{meta: true, fn: func(tx *bbolt.Tx) error {
		if err := p.raiseEpoch(tx, epoch); err != nil {
			return err
		}
		b, err := tx.CreateBucketIfNotExists(metaBucket)
		if err != nil {
			return err
		}
		return b.Put(keySealed, note)
	}})
	if err != nil {
		if errors.Is(err, ErrStaleEpoch) || errors.Is(err, ErrClosed) {
			return err
		}
		return fmt.Errorf("storage: partition %d: seal at epoch %d: %w", p.id, epoch, err)
	}
	p.cacheEpoch(epoch)
	p.sealed.Store(true)
	return nil
}

// Unseal lifts the seal: the node that received a sealed partition, or the
// node that sealed it and learnt that it never arrived, takes writes on it
// again. Unsealing a partition that is not sealed is a no-op.
func (p *Partition) Unseal() error {
	err := p.submit(context.Background(), &request{meta: true, fn: func(tx *bbolt.Tx) error {
		b := tx.Bucket(metaBucket)
		if b == nil {
			return nil
		}
		return b.Delete(keySealed)
	}})
	if err != nil {
		if errors.Is(err, ErrClosed) {
			return err
		}
		return fmt.Errorf("storage: partition %d: unseal: %w", p.id, err)
	}
	p.sealed.Store(false)
	return nil
}

// Sealed reports whether the partition is sealed, and the note it was sealed
// with.
func (p *Partition) Sealed() (note []byte, sealed bool, err error) {
	err = p.View(func(tx *bbolt.Tx) error {
		note, sealed = sealNote(tx)
		return nil
	})
	return note, sealed, err
}

func (p *Partition) sealedErr() error {
	return fmt.Errorf("storage: partition %d: %w", p.id, ErrSealed)
}

// Epoch returns the partition's current epoch (0 until SetEpoch is called).
func (p *Partition) Epoch() uint64 { return p.epoch.Load() }

func (p *Partition) staleErr(epoch, cur uint64) error {
	return fmt.Errorf("storage: partition %d: epoch %d is older than %d: %w", p.id, epoch, cur, ErrStaleEpoch)
}

func (p *Partition) submit(ctx context.Context, r *request) error {
	if r.fn == nil {
		return fmt.Errorf("storage: partition %d: update with a nil function", p.id)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("storage: partition %d: update not queued: %w", p.id, err)
	}
	r.done = make(chan error, 1)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return fmt.Errorf("storage: partition %d: update: %w", p.id, ErrClosed)
	}
	p.queue = append(p.queue, r)
	p.mu.Unlock()
	p.signal()

	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		if r.state.CompareAndSwap(stateQueued, stateCancelled) {
			return fmt.Errorf("storage: partition %d: update cancelled while queued: %w", p.id, ctx.Err())
		}
		// Already running: its outcome is decided by the commit.
		return <-r.done
	}
}

func (p *Partition) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// View runs fn in a read-only transaction. It sees only committed data and
// does not wait for commits (except one that grows the file's memory map).
// The error fn returns is returned unchanged; after Close, View returns
// ErrClosed.
func (p *Partition) View(fn func(tx *bbolt.Tx) error) error {
	tx, err := p.db.Begin(false)
	if err != nil {
		if errors.Is(err, berrors.ErrDatabaseNotOpen) {
			err = ErrClosed
		}
		return fmt.Errorf("storage: partition %d: view: %w", p.id, err)
	}
	defer func() { _ = tx.Rollback() }()
	return fn(tx)
}

// Close stops taking updates, commits every update already queued (their
// callers get the commit's result), and closes the file. Updates that arrive
// after Close began get ErrClosed. Close waits for running View and Snapshot
// calls; calling it again returns the first call's result.
func (p *Partition) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		p.signal()
		<-p.stopped
		if err := p.db.Close(); err != nil {
			p.closeErr = fmt.Errorf("storage: partition %d: close %s: %w", p.id, p.path, err)
		}
	})
	return p.closeErr
}

// commitLoop is the partition's committer: the only goroutine that writes.
func (p *Partition) commitLoop() {
	defer close(p.stopped)
	var batch []*request
	for {
		var ok bool
		batch, ok = p.next(batch[:0])
		if !ok {
			return
		}
		p.runBatch(batch)
		clear(batch)
	}
}

// next waits for queued updates and moves up to MaxBatch of them into buf. It
// reports false once the partition is closed and the queue is drained.
func (p *Partition) next(buf []*request) ([]*request, bool) {
	p.mu.Lock()
	for len(p.queue) == 0 {
		if p.closed {
			p.mu.Unlock()
			return buf, false
		}
		p.mu.Unlock()
		<-p.wake
		p.mu.Lock()
	}
	n := min(len(p.queue), p.opts.MaxBatch)
	buf = append(buf, p.queue[:n]...)
	clear(p.queue[:n])
	p.queue = p.queue[n:]
	p.mu.Unlock()
	return buf, true
}

// runBatch commits the functions of batch in one transaction. A function that
// fails is answered with its error and the batch is run again without it:
// bbolt has no savepoints, so the failed function's partial writes can only be
// undone by rolling back the whole transaction. A batch with f failures thus
// runs at most (f+1)·MaxBatch functions and commits once.
func (p *Partition) runBatch(batch []*request) {
	live := batch[:0]
	for _, r := range batch {
		if r.state.CompareAndSwap(stateQueued, stateRunning) {
			live = append(live, r)
		}
	}
	if len(live) == 0 {
		return
	}
	start := time.Now()
	failed := 0
	for len(live) > 0 {
		failedAt := -1
		var fnErr error
		err := p.db.Update(func(tx *bbolt.Tx) error {
			for i, r := range live {
				if err := p.call(tx, r); err != nil {
					failedAt, fnErr = i, err
					return errFnFailed
				}
			}
			return nil
		})
		if failedAt >= 0 {
			live[failedAt].done <- fnErr
			live = slices.Delete(live, failedAt, failedAt+1)
			failed++
			continue
		}
		if err != nil {
			err = fmt.Errorf("storage: partition %d: commit of %d updates: %w", p.id, len(live), err)
		}
		for _, r := range live {
			r.done <- err
		}
		if p.opts.OnCommit != nil {
			p.opts.OnCommit(CommitStats{
				Partition: p.id,
				Batch:     len(live),
				Failed:    failed,
				Duration:  time.Since(start),
				Err:       err,
			})
		}
		return
	}
}

// call runs one update function, turning a panic into a *PanicError.
func (p *Partition) call(tx *bbolt.Tx, r *request) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &PanicError{Partition: p.id, Value: v, Stack: debug.Stack()}
		}
	}()
	if r.fenced {
		cur, err := storedEpoch(tx)
		if err != nil {
			return fmt.Errorf("storage: partition %d: %w", p.id, err)
		}
		if r.epoch < cur {
			return p.staleErr(r.epoch, cur)
		}
	}
	if !r.meta {
		if _, sealed := sealNote(tx); sealed {
			return p.sealedErr()
		}
	}
	return r.fn(tx)
}
