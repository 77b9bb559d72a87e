package cluster

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/shoal-chat/shoal/cluster/clusterpb"
	"github.com/shoal-chat/shoal/storage"
)

// Handoff moves a partition file from its old owner H to its new owner D so
// that at every moment at most one node serves it, and nothing acknowledged
// is lost:
//
//  1. H's host stops taking requests for the partition (it holds them) and
//     stops the partition's actors; each finishes its message, and every
//     write they acknowledged is committed.
//  2. H seals the file at epoch e+1 with a note naming D. From then on the
//     file takes no write (storage.ErrSealed), and the actors' fenced
//     handles (epoch e) could not write anyway.
//  3. H streams a snapshot to D's host for the partition, in chunks (a few
//     in flight, each acknowledged in order), then the partition's media
//     blobs (files beside it, each named and checked by its SHA-256), then
//     commits with the length and SHA-256 of the file and the blob count.
//     D checks them, installs the blobs and the file (storage.Store.Install
//     checks it is a complete bbolt file of that partition), unseals it and
//     serves it, and only then answers.
//  4. On "ok", H deletes its copy and forwards what it held to D.
//
// If the transfer breaks off, H cannot know whether D installed the file,
// so H keeps its copy sealed and asks D until D answers. D answers "held" if
// it serves the partition, else "not held" — and from then on refuses that
// transfer, which makes the answer final; H then unseals and serves again.
// A node that stopped in the middle finds its sealed file at start and asks
// the same question; a receiver that stopped between install and unseal
// finds the file sealed with its own name and unseals it. The unsealed file
// is thus in one place at a time, and it is the only copy anyone serves.

const (
	chunkSize     = 1 << 20
	stepTimeout   = 15 * time.Second
	commitTimeout = 2 * time.Minute
	resolveEvery  = time.Second
)

// transfer is a partition in flight, for status reports.
type transfer struct {
	partition uint32
	from, to  string
	epoch     uint64
	bytes     atomic.Uint64
	started   time.Time
}

func (n *Node) trackOutgoing(p uint32, to string, epoch uint64) *transfer {
	x := &transfer{partition: p, from: n.id, to: to, epoch: epoch, started: time.Now()}
	n.xfersMu.Lock()
	n.xfers[p] = x
	n.xfersMu.Unlock()
	return x
}

func (n *Node) trackIncoming(p uint32, from string, epoch, bytes uint64) {
	n.xfersMu.Lock()
	defer n.xfersMu.Unlock()
	x := n.xfers[p]
	if x == nil || x.to != n.id || x.epoch != epoch {
		x = &transfer{partition: p, from: from, to: n.id, epoch: epoch, started: time.Now()}
		n.xfers[p] = x
	}
	x.bytes.Store(bytes)
}

func (n *Node) untrackIncoming(p uint32) {
	n.xfersMu.Lock()
	defer n.xfersMu.Unlock()
	if x := n.xfers[p]; x != nil && x.to == n.id {
		delete(n.xfers, p)
	}
}

func (n *Node) untrackOutgoing(x *transfer) {
	n.xfersMu.Lock()
	defer n.xfersMu.Unlock()
	if n.xfers[x.partition] == x {
		delete(n.xfers, x.partition)
	}
}

// sendPartition streams sealed partition p (sealed at epoch) to member to.
// It reports held when to confirmed it holds the partition; any error
// leaves the outcome unknown (see resolveHandoff).
func (n *Node) sendPartition(ctx context.Context, p uint32, part *storage.Partition, epoch uint64, to *clusterpb.Member) (bool, error) {
	x := n.trackOutgoing(p, to.NodeId, epoch)
	defer n.untrackOutgoing(x)
	pid := actor.NewPID(to.RpcAddr, hostName(p))
	start := time.Now()
	ack, err := n.handoffCall(ctx, pid, &clusterpb.HandoffBegin{Partition: p, Epoch: epoch, FromNode: n.id}, stepTimeout)
	if err != nil {
		return false, err
	}
	if ack.Held {
		if ack.Epoch >= epoch {
			return true, nil
		}
		return false, fmt.Errorf("cluster: %s already holds partition %d at epoch %d", to.NodeId, p, ack.Epoch)
	}
	if !ack.Ok {
		return false, fmt.Errorf("cluster: %s refused partition %d: %s", to.NodeId, p, ack.Error)
	}
	pl := &pipeline{ctx: ctx, n: n, pid: pid, x: x}
	w := &chunkWriter{pl: pl, p: p, epoch: epoch, h: sha256.New(), buf: make([]byte, 0, chunkSize)}
	size, err := part.Snapshot(w)
	if err == nil {
		err = w.flush()
	}
	var blobs uint32
	if err == nil {
		blobs, err = sendBlobs(pl, part, epoch)
	}
	if err == nil {
		err = pl.drain()
	}
	if err != nil {
		return false, err
	}
	commit := &clusterpb.HandoffCommit{Partition: p, Epoch: epoch, Size: uint64(size), Sha256: w.h.Sum(nil), Blobs: blobs}
	ack, err = n.handoffCall(ctx, pid, commit, commitTimeout)
	if err != nil {
		return false, err
	}
	if !ack.Held || ack.Epoch < epoch {
		return false, fmt.Errorf("cluster: %s did not install partition %d: %s", to.NodeId, p, ack.Error)
	}
	n.log.Debug("cluster: partition sent", slog.Int("partition", int(p)), slog.String("to", to.NodeId),
		slog.Int64("bytes", size), slog.Duration("took", time.Since(start)))
	return true, nil
}

// resolveHandoff asks node to, until it answers, whether it holds partition
// p at epoch or later. "Not held" is final: the receiver refuses that
// transfer from then on.
func (n *Node) resolveHandoff(ctx context.Context, p uint32, epoch uint64, to string) (bool, error) {
	for {
		v := n.mem.view.Load()
		if m := v.members[to]; m != nil && v.alive[to] && m.RpcAddr != "" {
			ack, err := n.handoffCall(ctx, actor.NewPID(m.RpcAddr, hostName(p)),
				&clusterpb.HandoffQuery{Partition: p, Epoch: epoch, FromNode: n.id}, stepTimeout)
			switch {
			case err != nil:
				n.log.Debug("cluster: handoff query", slog.Int("partition", int(p)), slog.Any("err", err))
			case ack.Held && ack.Epoch >= epoch:
				return true, nil
			case ack.Held:
				n.log.Error("cluster: two nodes hold one partition; the other copy is older, this one stays sealed",
					slog.Int("partition", int(p)), slog.String("other", to), slog.Uint64("other_epoch", ack.Epoch),
					slog.Uint64("epoch", epoch))
			case ack.Ok:
				return false, nil
			}
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(resolveEvery):
		}
	}
}

// handoffCall sends one handoff message and waits for its HandoffAck.
func (n *Node) handoffCall(ctx context.Context, pid *actor.PID, msg any, timeout time.Duration) (*clusterpb.HandoffAck, error) {
	f := n.system.Root.RequestFuture(pid, msg, timeout)
	res, err := n.resultOf(ctx, f, n.peerDone(pid.Address))
	if err != nil {
		return nil, fmt.Errorf("cluster: handoff to %s: %w", pid.Address, err)
	}
	ack, ok := res.(*clusterpb.HandoffAck)
	if !ok {
		return nil, fmt.Errorf("cluster: handoff to %s: unexpected reply %T", pid.Address, res)
	}
	return ack, nil
}

// pipeline sends handoff messages to one partition host, keeping up to
// chunkWindow of them in flight; the receiver acknowledges each, in order.
type pipeline struct {
	ctx      context.Context
	n        *Node
	pid      *actor.PID
	x        *transfer
	sent     uint64 // bytes sent
	inflight []pendingChunk
}

type pendingChunk struct {
	f    *actor.Future
	sent uint64 // bytes sent once this message is acknowledged
}

const chunkWindow = 4

// send puts msg, carrying n bytes of payload, on the wire.
func (pl *pipeline) send(msg any, n int) error {
	for len(pl.inflight) >= chunkWindow {
		if err := pl.awaitOldest(); err != nil {
			return err
		}
	}
	pl.sent += uint64(n)
	pl.inflight = append(pl.inflight, pendingChunk{f: pl.n.system.Root.RequestFuture(pl.pid, msg, stepTimeout), sent: pl.sent})
	return nil
}

func (pl *pipeline) awaitOldest() error {
	c := pl.inflight[0]
	pl.inflight = pl.inflight[1:]
	res, err := pl.n.resultOf(pl.ctx, c.f, pl.n.peerDone(pl.pid.Address))
	if err != nil {
		return fmt.Errorf("cluster: handoff to %s: %w", pl.pid.Address, err)
	}
	ack, ok := res.(*clusterpb.HandoffAck)
	if !ok {
		return fmt.Errorf("cluster: handoff to %s: unexpected reply %T", pl.pid.Address, res)
	}
	if !ack.Ok {
		return errors.New("cluster: handoff refused: " + ack.Error)
	}
	pl.x.bytes.Store(c.sent)
	return nil
}

// drain waits for every message's acknowledgement.
func (pl *pipeline) drain() error {
	for len(pl.inflight) > 0 {
		if err := pl.awaitOldest(); err != nil {
			return err
		}
	}
	return nil
}

// chunkWriter sends what Snapshot writes as HandoffChunks.
type chunkWriter struct {
	pl    *pipeline
	p     uint32
	epoch uint64
	h     hash.Hash
	buf   []byte
	off   uint64
}

func (w *chunkWriter) Write(b []byte) (int, error) {
	written := 0
	for len(b) > 0 {
		k := min(len(b), cap(w.buf)-len(w.buf))
		w.buf = append(w.buf, b[:k]...)
		b = b[k:]
		written += k
		if len(w.buf) == cap(w.buf) {
			if err := w.flush(); err != nil {
				return written, err
			}
		}
	}
	return written, nil
}

// flush sends what is buffered.
func (w *chunkWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	msg := &clusterpb.HandoffChunk{Partition: w.p, Epoch: w.epoch, Offset: w.off, Data: w.buf}
	if err := w.pl.send(msg, len(w.buf)); err != nil {
		return err
	}
	w.h.Write(w.buf)
	w.off += uint64(len(w.buf))
	w.buf = make([]byte, 0, chunkSize)
	return nil
}

// sendBlobs sends the partition's media blobs and returns how many.
func sendBlobs(pl *pipeline, part *storage.Partition, epoch uint64) (uint32, error) {
	sums, err := storage.BlobSums(part)
	if err != nil {
		return 0, err
	}
	blobs := storage.BlobsOf(part)
	for _, sum := range sums {
		if err := sendBlob(pl, part.ID(), epoch, sum, blobs.Path(sum)); err != nil {
			return 0, err
		}
	}
	return uint32(len(sums)), nil
}

func sendBlob(pl *pipeline, p uint32, epoch uint64, sum, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("cluster: blob %s: %w", sum, err)
	}
	defer func() { _ = f.Close() }()
	var off uint64
	for {
		buf := make([]byte, chunkSize)
		// A file that ends exactly at a chunk's end gets an empty last
		// chunk.
		n, err := io.ReadFull(f, buf)
		last := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
		if err != nil && !last {
			return fmt.Errorf("cluster: blob %s: %w", sum, err)
		}
		msg := &clusterpb.HandoffBlob{Partition: p, Epoch: epoch, Sha256: sum, Offset: off, Data: buf[:n], Last: last}
		if err := pl.send(msg, n); err != nil {
			return err
		}
		off += uint64(n)
		if last {
			return nil
		}
	}
}
