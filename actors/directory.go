package actors

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"

	"github.com/asynkron/protoactor-go/actor"
	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

const (
	defaultDirectoryLimit = 100
	maxDirectoryLimit     = 500
)

// directoryActor is the public room directory (identity directory/public):
// the published rooms with the summaries their rooms last reported.
//
// Publishing is decided by the room (which keeps a published flag and checks
// the publisher's power); the room then reports its summary after every
// change the directory shows. A summary carries the room position it was
// taken at, so a late, older report never replaces a newer one.
type directoryActor struct {
	env     *Env
	loadErr error
	entries map[string]directoryEntry
	sorted  []string // room IDs in listing order; nil when stale
}

type directoryEntry struct {
	pos     uint64
	raw     json.RawMessage
	summary publicRoomsChunk
}

// NewDirectory makes the public room directory actor.
func NewDirectory(env *Env) actor.Actor {
	return &directoryActor{env: env}
}

func (d *directoryActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		if d.env.IdleTimeout > 0 {
			ctx.SetReceiveTimeout(d.env.IdleTimeout)
		}
		d.loadErr = d.load()
		if d.loadErr != nil {
			d.env.Log.Error("directory: load failed", slog.Any("err", d.loadErr))
		}
	case *actor.ReceiveTimeout:
		ctx.Send(ctx.Parent(), &pb.Passivate{Identity: d.env.Identity})
	case *pb.DirectoryOp:
		var res *pb.DirectoryReply
		err := d.loadErr
		if err == nil {
			res, err = d.op(m)
		}
		if ctx.Sender() == nil {
			if err != nil {
				d.env.Log.Warn("directory: notice failed", slog.String("op", m.Op), slog.Any("err", err))
			}
			return
		}
		if err != nil {
			var me *MatrixError
			if !errors.As(err, &me) {
				d.env.Log.Error("directory: request failed", slog.Any("err", err))
			}
			ctx.Respond(ToPB(err))
			return
		}
		ctx.Respond(res)
	}
}

func (d *directoryActor) load() error {
	d.entries = map[string]directoryEntry{}
	return d.env.Partition.View(func(tx *bbolt.Tx) error {
		stored, err := storage.DirectoryEntries(tx, d.env.Identity)
		if err != nil {
			return err
		}
		for id, e := range stored {
			var s publicRoomsChunk
			if err := json.Unmarshal(e.Summary, &s); err != nil {
				return fmt.Errorf("directory: summary of %s: %w", id, err)
			}
			d.entries[id] = directoryEntry{pos: e.Pos, raw: e.Summary, summary: s}
		}
		return nil
	})
}

func (d *directoryActor) op(m *pb.DirectoryOp) (*pb.DirectoryReply, error) {
	switch m.Op {
	case "publish", "refresh":
		return d.publish(m)
	case "unpublish":
		if _, ok := d.entries[m.RoomId]; !ok {
			return &pb.DirectoryReply{Json: []byte("{}")}, nil
		}
		identity, room := d.env.Identity, m.RoomId
		if err := d.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
			return storage.DeleteDirectoryEntry(tx, identity, room)
		}); err != nil {
			return nil, fmt.Errorf("directory: unpublish %s: %w", room, err)
		}
		delete(d.entries, m.RoomId)
		d.sorted = nil
		return &pb.DirectoryReply{Json: []byte("{}")}, nil
	case "get":
		vis := "private"
		if _, ok := d.entries[m.RoomId]; ok {
			vis = "public"
		}
		raw, _ := json.Marshal(map[string]string{"visibility": vis})
		return &pb.DirectoryReply{Json: raw}, nil
	case "list":
		return d.list(m)
	}
	return nil, ErrInvalidParam("unknown directory operation %q", m.Op)
}

func (d *directoryActor) publish(m *pb.DirectoryOp) (*pb.DirectoryReply, error) {
	var s publicRoomsChunk
	if err := json.Unmarshal(m.Summary, &s); err != nil || s.RoomID != m.RoomId || m.RoomId == "" {
		return nil, ErrBadJSON("directory summary does not describe room %s", m.RoomId)
	}
	if old, ok := d.entries[m.RoomId]; ok && old.pos > m.Pos {
		return &pb.DirectoryReply{Json: []byte("{}")}, nil
	}
	identity, room := d.env.Identity, m.RoomId
	e := storage.DirectoryEntry{Summary: append(json.RawMessage(nil), m.Summary...), Pos: m.Pos}
	if err := d.env.Partition.Update(context.Background(), func(tx *bbolt.Tx) error {
		return storage.PutDirectoryEntry(tx, identity, room, e)
	}); err != nil {
		return nil, fmt.Errorf("directory: publish %s: %w", room, err)
	}
	d.entries[m.RoomId] = directoryEntry{pos: m.Pos, raw: e.Summary, summary: s}
	d.sorted = nil
	return &pb.DirectoryReply{Json: []byte("{}")}, nil
}

// directoryFilter is the filter of POST /publicRooms.
type directoryFilter struct {
	GenericSearchTerm string             `json:"generic_search_term"`
	RoomTypes         *[]json.RawMessage `json:"room_types"`
}

// list pages through the directory, biggest rooms first. Tokens are
// offsets ("o<n>") into the filtered listing.
func (d *directoryActor) list(m *pb.DirectoryOp) (*pb.DirectoryReply, error) {
	var f directoryFilter
	if m.Filter != "" {
		if err := json.Unmarshal([]byte(m.Filter), &f); err != nil {
			return nil, ErrInvalidParam("invalid filter")
		}
	}
	var types map[string]bool // "" stands for rooms without a type
	if f.RoomTypes != nil {
		types = map[string]bool{}
		for _, raw := range *f.RoomTypes {
			var t *string
			if json.Unmarshal(raw, &t) != nil {
				return nil, ErrInvalidParam("room_types must be strings or null")
			}
			if t == nil {
				types[""] = true
			} else {
				types[*t] = true
			}
		}
	}
	term := strings.ToLower(strings.TrimSpace(f.GenericSearchTerm))
	if d.sorted == nil {
		d.sorted = make([]string, 0, len(d.entries))
		for id := range d.entries {
			d.sorted = append(d.sorted, id)
		}
		sort.Slice(d.sorted, func(i, j int) bool {
			a, b := d.entries[d.sorted[i]].summary, d.entries[d.sorted[j]].summary
			if a.NumJoinedMembers != b.NumJoinedMembers {
				return a.NumJoinedMembers > b.NumJoinedMembers
			}
			return a.RoomID < b.RoomID
		})
	}
	var matched []string
	for _, id := range d.sorted {
		s := d.entries[id].summary
		if types != nil && !types[s.RoomType] {
			continue
		}
		if term != "" && !strings.Contains(strings.ToLower(s.Name), term) &&
			!strings.Contains(strings.ToLower(s.Topic), term) &&
			!strings.Contains(strings.ToLower(s.CanonicalAlias), term) &&
			!strings.Contains(strings.ToLower(s.RoomID), term) {
			continue
		}
		matched = append(matched, id)
	}
	offset := 0
	if m.Since != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(m.Since, "o"))
		if err != nil || !strings.HasPrefix(m.Since, "o") || n < 0 {
			return nil, ErrInvalidParam("invalid since token")
		}
		offset = min(n, len(matched))
	}
	limit := int(m.Limit)
	if limit <= 0 {
		limit = defaultDirectoryLimit
	}
	limit = min(limit, maxDirectoryLimit)
	end := min(offset+limit, len(matched))
	chunk := make([]json.RawMessage, 0, end-offset)
	for _, id := range matched[offset:end] {
		chunk = append(chunk, d.entries[id].raw)
	}
	out := map[string]any{"chunk": chunk, "total_room_count_estimate": len(matched)}
	if end < len(matched) {
		out["next_batch"] = "o" + strconv.Itoa(end)
	}
	if offset > 0 {
		out["prev_batch"] = "o" + strconv.Itoa(max(0, offset-limit))
	}
	raw, err := json.Marshal(out)
	if err != nil {
		return nil, fmt.Errorf("directory: encode listing: %w", err)
	}
	return &pb.DirectoryReply{Json: raw}, nil
}
