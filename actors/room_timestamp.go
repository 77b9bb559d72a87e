package actors

import (
	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// maxTimestampScan bounds the events timestamp_to_event steps over, from
// the binary search's landing point, looking for one the user may see.
const maxTimestampScan = 500

// timestampToEvent finds the event closest to m.Ts in direction m.Dir: the
// first event at or after it ("f") or the last at or before it ("b"),
// among those the user may see. The timeline's origin_server_ts values are
// searched by bisection over stream positions: they grow with the
// positions, except where a clock stepped back, where the answer is the
// event next to the step rather than the globally closest one.
func (r *roomActor) timestampToEvent(m *pb.RoomTimestamp) (*pb.RoomQueryReply, error) {
	if !r.exists {
		return nil, ErrForbidden("you are not in this room")
	}
	if m.Dir != "f" && m.Dir != "b" {
		return nil, ErrInvalidParam("dir must be f or b")
	}
	cap, err := r.readCap(m.UserId)
	if err != nil {
		return nil, err
	}
	var out map[string]any
	err = r.env.Partition.View(func(tx *bbolt.Tx) error {
		rd := r.reader(storage.Room(tx, r.env.Identity))
		tsAt := func(p uint64) (int64, error) {
			l, err := rd.at(p)
			if err != nil || l == nil {
				return 0, err
			}
			return l.ev.OriginServerTS(), nil
		}
		// first is the smallest position in [1, cap] whose ts >= m.Ts
		// (cap+1 when none).
		lo, hi := uint64(1), cap+1
		for lo < hi {
			mid := lo + (hi-lo)/2
			ts, err := tsAt(mid)
			if err != nil {
				return err
			}
			if ts >= m.Ts {
				hi = mid
			} else {
				lo = mid + 1
			}
		}
		first := lo
		var p uint64
		var step func()
		if m.Dir == "f" {
			p, step = first, func() { p++ }
		} else {
			p = first
			if ts, err := tsAt(first); err != nil {
				return err
			} else if first > cap || ts > m.Ts {
				p = first - 1
			}
			step = func() { p-- }
		}
		for n := 0; n < maxTimestampScan && p >= 1 && p <= cap; n++ {
			l, err := rd.at(p)
			if err != nil {
				return err
			}
			if l != nil {
				ok, err := rd.visibleTo(l, m.UserId)
				if err != nil {
					return err
				}
				if ok {
					out = map[string]any{"event_id": l.ev.EventID(), "origin_server_ts": l.ev.OriginServerTS()}
					return nil
				}
			}
			step()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if out == nil {
		return nil, ErrNotFound("no event found in that direction")
	}
	return r.queryReply("timestamp_to_event", out)
}
