package actors

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/blevesearch/bleve/v2"
	"github.com/blevesearch/bleve/v2/mapping"
	"github.com/blevesearch/bleve/v2/search/query"
	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// Full-text search of a room's messages (bleve). The index is derived data,
// a cache of the timeline: it lives in a directory beside the room's
// partition file (<partition>.search/<hash of the room ID>), records the
// last stream position it holds, and is brought up to date when a search
// comes, not on the send path. A partition moved to another node without
// its search directory rebuilds its rooms' indexes on their next search.
// The room actor is its only user; it opens the index on the first search
// and closes it when it stops.

const (
	// searchCatchUpBatch is how many timeline events go into one index
	// batch, and searchCatchUpTime how long one search may spend indexing
	// before it runs: a room far behind (a first search in a large room, or
	// a partition moved without its indexes) catches up over several
	// searches, each holding the room for about that long, and answers from
	// what is indexed so far meanwhile.
	searchCatchUpBatch = 1000
	searchCatchUpTime  = 500 * time.Millisecond
	// maxSearchHits bounds the hits one room returns.
	maxSearchHits = 500
	// maxSearchTermBytes bounds the search term.
	maxSearchTermBytes = 1024
)

var searchKeys = map[string]string{"content.body": "body", "content.name": "name", "content.topic": "topic"}

// searchDoc is what the index holds of one event.
type searchDoc struct {
	Body  string  `json:"body,omitempty"`
	Name  string  `json:"name,omitempty"`
	Topic string  `json:"topic,omitempty"`
	Pos   float64 `json:"pos"`
}

var searchPosKey = []byte("pos")

func searchMapping() mapping.IndexMapping {
	doc := bleve.NewDocumentStaticMapping()
	for _, f := range []string{"body", "name", "topic"} {
		fm := bleve.NewTextFieldMapping()
		fm.Store = false
		fm.IncludeTermVectors = false
		doc.AddFieldMappingsAt(f, fm)
	}
	pos := bleve.NewNumericFieldMapping()
	pos.Store = false
	doc.AddFieldMappingsAt("pos", pos)
	m := bleve.NewIndexMapping()
	m.DefaultMapping = doc
	return m
}

// searchDir is where the room's index lives.
func (r *roomActor) searchDir() string {
	sum := sha256.Sum256([]byte(r.roomID))
	return filepath.Join(r.env.Partition.Path()+".search", hex.EncodeToString(sum[:16]))
}

// openSearch opens (creating if absent) the room's index. An index that
// cannot be opened (damaged by a crash) is dropped and rebuilt.
func (r *roomActor) openSearch() (bleve.Index, error) {
	if r.searchIdx != nil {
		return r.searchIdx, nil
	}
	dir := r.searchDir()
	idx, err := bleve.Open(dir)
	if errors.Is(err, bleve.ErrorIndexPathDoesNotExist) {
		if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
			return nil, fmt.Errorf("room %s: search dir: %w", r.roomID, err)
		}
		idx, err = bleve.New(dir, searchMapping())
	} else if err != nil {
		r.env.Log.Warn("room: search index unreadable, rebuilding", "room", r.roomID, "err", err)
		if err := os.RemoveAll(dir); err != nil {
			return nil, fmt.Errorf("room %s: drop search index: %w", r.roomID, err)
		}
		idx, err = bleve.New(dir, searchMapping())
	}
	if err != nil {
		return nil, fmt.Errorf("room %s: open search index: %w", r.roomID, err)
	}
	r.searchIdx = idx
	return idx, nil
}

// closeSearch closes the index, if open.
func (r *roomActor) closeSearch() {
	if r.searchIdx != nil {
		if err := r.searchIdx.Close(); err != nil {
			r.env.Log.Warn("room: close search index", "room", r.roomID, "err", err)
		}
		r.searchIdx = nil
	}
}

// catchUpSearch indexes the timeline events after the index's position,
// batch by batch, for up to searchCatchUpTime.
func (r *roomActor) catchUpSearch(idx bleve.Index) error {
	start := r.env.Now()
	for {
		done, err := r.indexSearchBatch(idx)
		if err != nil || done || r.env.Now().Sub(start) >= searchCatchUpTime {
			return err
		}
	}
}

// indexSearchBatch indexes up to searchCatchUpBatch events after the
// index's position; done reports that it reached the room's end.
func (r *roomActor) indexSearchBatch(idx bleve.Index) (done bool, err error) {
	raw, err := idx.GetInternal(searchPosKey)
	if err != nil {
		return false, fmt.Errorf("room %s: search position: %w", r.roomID, err)
	}
	var from uint64
	if len(raw) > 0 {
		if from, err = strconv.ParseUint(string(raw), 10, 64); err != nil {
			return false, fmt.Errorf("room %s: search position %q: %w", r.roomID, raw, err)
		}
	}
	// History placed below a federated room's first event is not indexed.
	from = max(from, r.meta.TimelineBase)
	if from >= r.meta.Pos {
		return true, nil
	}
	upto := min(r.meta.Pos, from+searchCatchUpBatch)
	b := idx.NewBatch()
	err = r.env.Partition.View(func(tx *bbolt.Tx) error {
		rd := r.reader(storage.Room(tx, r.env.Identity))
		for p := from + 1; p <= upto; p++ {
			l, err := rd.at(p)
			if err != nil {
				return err
			}
			if l == nil || l.rec.RedactedBy != "" {
				continue
			}
			var c struct {
				Body  any `json:"body"`
				Name  any `json:"name"`
				Topic any `json:"topic"`
			}
			if json.Unmarshal(l.ev.Content(), &c) != nil {
				continue
			}
			d := searchDoc{Pos: float64(p)}
			switch l.ev.Type() {
			case "m.room.message":
				d.Body, _ = c.Body.(string)
			case "m.room.name":
				d.Name, _ = c.Name.(string)
			case "m.room.topic":
				d.Topic, _ = c.Topic.(string)
			}
			if d.Body == "" && d.Name == "" && d.Topic == "" {
				continue
			}
			if err := b.Index(l.ev.EventID(), d); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("room %s: index for search: %w", r.roomID, err)
	}
	b.SetInternal(searchPosKey, []byte(strconv.FormatUint(upto, 10)))
	if err := idx.Batch(b); err != nil {
		return false, fmt.Errorf("room %s: write search index: %w", r.roomID, err)
	}
	return upto >= r.meta.Pos, nil
}

// searchRoom answers one room's part of /search.
func (r *roomActor) searchRoom(m *pb.RoomSearch) (*pb.RoomQueryReply, error) {
	if !r.exists {
		return nil, ErrForbidden("you are not in this room")
	}
	if m.Term == "" || len(m.Term) > maxSearchTermBytes {
		return nil, ErrInvalidParam("search term must be 1 to %d bytes", maxSearchTermBytes)
	}
	cap, err := r.readCap(m.UserId)
	if err != nil {
		return nil, err
	}
	keys := m.Keys
	if len(keys) == 0 {
		keys = []string{"content.body", "content.name", "content.topic"}
	}
	var qs []query.Query
	for _, k := range keys {
		f, ok := searchKeys[k]
		if !ok {
			return nil, ErrInvalidParam("unknown search key %q", k)
		}
		mq := bleve.NewMatchQuery(m.Term)
		mq.SetField(f)
		mq.SetOperator(query.MatchQueryOperatorAnd)
		qs = append(qs, mq)
	}
	limit := int(m.Limit)
	if limit <= 0 {
		limit = defaultPageLimit
	}
	limit = min(limit, maxSearchHits)
	idx, err := r.openSearch()
	if err != nil {
		return nil, err
	}
	if err := r.catchUpSearch(idx); err != nil {
		return nil, err
	}
	// Ask for more than the limit: some hits may be invisible to the user.
	req := bleve.NewSearchRequestOptions(bleve.NewDisjunctionQuery(qs...), min(limit*2, maxSearchHits*2), 0, false)
	if m.OrderBy == "recent" {
		req.SortBy([]string{"-pos"})
	}
	res, err := idx.Search(req)
	if err != nil {
		return nil, fmt.Errorf("room %s: search: %w", r.roomID, err)
	}
	type hit struct {
		Rank  float64         `json:"rank"`
		TS    int64           `json:"ts"`
		Event json.RawMessage `json:"event"`
	}
	hits := []hit{}
	err = r.env.Partition.View(func(tx *bbolt.Tx) error {
		rd := r.reader(storage.Room(tx, r.env.Identity))
		for _, h := range res.Hits {
			if len(hits) == limit {
				break
			}
			l, err := rd.event(h.ID)
			if err != nil {
				return err
			}
			if l == nil || l.rec.RedactedBy != "" || l.rec.Pos > cap {
				continue
			}
			ok, err := rd.visibleTo(l, m.UserId)
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			raw, err := rd.format(l, formatOpts{user: m.UserId})
			if err != nil {
				return err
			}
			hits = append(hits, hit{Rank: h.Score, TS: l.ev.OriginServerTS(), Event: raw})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return r.queryReply("search", map[string]any{"results": hits, "count": res.Total})
}
