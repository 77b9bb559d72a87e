package actors

import (
	"crypto/sha256"
	"encoding/json"
	"math"

	"github.com/shoal-chat/shoal/eventgraph"
	"github.com/shoal-chat/shoal/storage"
)

// Unread notification counts (client-server API, "Receiving notifications",
// unread_notifications in /sync).
//
// The counts are computed when the user syncs, not kept up to date as
// events arrive: the room actor knows the members, power levels, display
// names and receipts the evaluation needs, and the user actor owns the
// rules. Pushing every rules change out to every room the user is in would
// fan out and could race with events; instead the gateway reads the ruleset
// from the user actor once per /sync (it is small and bounded by
// MaxPushRules) and passes it in SyncRoom.push_rules, and the room walks
// back from its newest event to the user's read marker and evaluates each
// event. A read marker is the newest of the user's unthreaded or "main"
// m.read / m.read.private receipts, the user's own newest event (sending
// implies having read what came before) and their join; so a receipt
// resets the counts at the next sync, which it triggers by moving the
// room's ephemeral position.
//
// The walk is bounded (maxUnreadScan events), so the counts saturate there;
// they use the room's current state (member count, power levels, display
// name) rather than the state at each event. unread_thread_notifications
// (per-thread counts) is not reported.

// maxUnreadScan bounds the events one count examines.
const maxUnreadScan = 1000

// maxCachedEvaluators bounds the compiled rulesets one actor keeps.
const maxCachedEvaluators = 64

// evaluatorCache keeps compiled rulesets by user and ruleset bytes:
// compiling is the costly part, and a user's repeated syncs give a room the
// same ruleset each time. Each actor owns its cache (no sharing, no lock).
type evaluatorCache struct {
	m map[[sha256.Size]byte]*PushEvaluator
}

// get compiles (or finds) userID's ruleset, given as {"global":
// PushRuleset}; nil when it does not parse.
func (c *evaluatorCache) get(userID string, rules []byte) *PushEvaluator {
	h := sha256.New()
	h.Write([]byte(userID))
	h.Write([]byte{0})
	h.Write(rules)
	var key [sha256.Size]byte
	copy(key[:], h.Sum(nil))
	if e, ok := c.m[key]; ok {
		return e
	}
	var rs struct {
		Global PushRuleset `json:"global"`
	}
	if err := json.Unmarshal(rules, &rs); err != nil {
		return nil
	}
	e := NewPushEvaluator(userID, &rs.Global)
	if c.m == nil || len(c.m) >= maxCachedEvaluators {
		c.m = map[[sha256.Size]byte]*PushEvaluator{}
	}
	c.m[key] = e
	return e
}

// unreadCounts is the user's notification and highlight counts in the
// room: the events after their read marker that their rules notify for.
func (r *roomActor) unreadCounts(rd *roomReader, user string, rules []byte) (notify, highlight int, err error) {
	if len(rules) == 0 {
		return 0, 0, nil
	}
	eval := r.evaluators.get(user, rules)
	if eval == nil {
		return 0, 0, nil
	}
	floor := r.members[user].Pos
	for _, typ := range []string{receiptRead, receiptReadPrivate} {
		for _, thread := range []string{"", "main"} {
			rc, ok := r.receipts[storage.RoomReceiptKey{Type: typ, Thread: thread, User: user}]
			if !ok {
				continue
			}
			l, err := rd.event(rc.EventID)
			if err != nil {
				return 0, 0, err
			}
			if l != nil && l.rec.Pos > floor {
				floor = l.rec.Pos
			}
		}
	}
	if floor >= r.meta.Pos {
		return 0, 0, nil
	}
	pctx, err := r.pushContext(user)
	if err != nil {
		return 0, 0, err
	}
	pl, err := r.powerLevels()
	if err != nil {
		return 0, 0, err
	}
	scanned := 0
	err = rd.rt.ScanTimeline(floor+1, r.meta.Pos, true, func(p uint64, _ string) (bool, error) {
		if scanned >= maxUnreadScan {
			return false, nil
		}
		l, err := rd.at(p)
		if err != nil || l == nil {
			return err == nil, err
		}
		scanned++
		if l.ev.Sender() == user {
			return false, nil
		}
		out := evaluateFor(eval, l.ev, pctx, pl)
		if out.Notify {
			notify++
			if out.Highlight {
				highlight++
			}
		}
		return true, nil
	})
	if err != nil {
		return 0, 0, err
	}
	return notify, highlight, nil
}

// pushContext is what evaluation needs about the room for user, from the
// current state; SenderPowerLevel is filled in per event.
func (r *roomActor) pushContext(user string) (PushContext, error) {
	pl, err := r.powerLevels()
	if err != nil {
		return PushContext{}, err
	}
	joined := 0
	for _, m := range r.members {
		if m.Membership == eventgraph.MembershipJoin {
			joined++
		}
	}
	pctx := PushContext{MemberCount: joined, NotificationLevels: pl.Notifications()}
	if ev := r.stateEvent(eventgraph.TypeMember, user); ev != nil {
		var c struct {
			DisplayName string `json:"displayname"`
		}
		if json.Unmarshal(ev.Content(), &c) == nil {
			pctx.DisplayName = c.DisplayName
		}
	}
	return pctx, nil
}

// evaluateFor evaluates one event against a user's rules.
func evaluateFor(eval *PushEvaluator, ev *eventgraph.Event, pctx PushContext, pl *eventgraph.PowerLevels) PushOutcome {
	pe, err := NewPushEvent(ev.JSON())
	if err != nil {
		return PushOutcome{}
	}
	lvl := pl.UserLevel(ev.Sender())
	pctx.SenderPowerLevel = lvl.Value
	if lvl.Infinite {
		pctx.SenderPowerLevel = math.MaxInt64
	}
	return eval.Evaluate(pe, pctx)
}
