package actors

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// The user actor's push rules. The actor keeps the user's settings (their
// rules and changes to server defaults, see pushSettings) and publishes the
// merged ruleset as the global account data event m.push_rules: each change
// writes the settings and the published event, at the next account data
// sequence, in one transaction, then wakes the user's long-polls, so that
// every device's next /sync carries the new ruleset.
//
// Reads (AccountQuery push_rules, and account_data of type m.push_rules)
// answer {"global": ruleset} merged from the current defaults, so that a
// user who never changed anything still sees the defaults, and a sync
// reports the ruleset as it is now rather than as it was written.

// pushState is the user's push rule settings in memory, read from storage
// on first use.
type pushState struct {
	settings *pushSettings
	// raw is the settings as marshalled.
	raw []byte
	// published tells whether the m.push_rules account data entry exists.
	published bool
	// content caches the published content {"global": ruleset}.
	content []byte
}

// pushRules returns the user's push state, loading it on first use.
func (u *user) pushRules() (*pushState, error) {
	if u.push != nil {
		return u.push, nil
	}
	ps := &pushState{settings: &pushSettings{}}
	if err := u.view(func(ut storage.UserTx) error {
		raw, err := ut.PushRules()
		if err != nil {
			return err
		}
		e, err := ut.AccountData("", PushRulesEventType)
		if err != nil {
			return err
		}
		ps.raw, ps.published = raw, e != nil
		return nil
	}); err != nil {
		return nil, err
	}
	if ps.raw != nil {
		if err := json.Unmarshal(ps.raw, ps.settings); err != nil {
			return nil, fmt.Errorf("user: decode push rules: %w", err)
		}
	}
	// raw is compared with the next settings to skip writing a no-op: keep
	// it in the form they marshal to.
	raw, err := json.Marshal(ps.settings)
	if err != nil {
		return nil, err
	}
	ps.raw = raw
	u.push = ps
	return ps, nil
}

// pushContent is the published content of the ruleset, {"global": ...}.
func (u *user) pushContent() ([]byte, error) {
	ps, err := u.pushRules()
	if err != nil {
		return nil, err
	}
	if ps.content == nil {
		c, err := pushRulesContent(u.userID, ps.settings)
		if err != nil {
			return nil, err
		}
		ps.content = c
	}
	return ps.content, nil
}

func pushRulesContent(userID string, s *pushSettings) ([]byte, error) {
	return json.Marshal(map[string]PushRuleset{"global": s.ruleset(userID)})
}

// queryPushRules answers AccountQuery push_rules (and account_data of type
// m.push_rules): the ruleset; found = the account exists.
func (u *user) queryPushRules() acctResult {
	if u.st.Account == nil {
		return acctOK(&pb.AccountQueryReply{})
	}
	c, err := u.pushContent()
	if err != nil {
		return acctFail(err)
	}
	return acctOK(&pb.AccountQueryReply{Found: true, Json: c})
}

// updatePushRule applies a PushRuleUpdate: the change is checked on a copy
// of the settings, persisted with the published ruleset, and only then
// made current.
func (u *user) updatePushRule(ctx actor.Context, m *pb.PushRuleUpdate) acctResult {
	if _, err := u.account(false); err != nil {
		return acctFail(err)
	}
	ps, err := u.pushRules()
	if err != nil {
		return acctFail(err)
	}
	next := ps.settings.clone()
	switch m.Op {
	case "put":
		err = next.put(m.Kind, m.RuleId, m.Before, m.After, m.Body)
	case "delete":
		err = next.remove(m.Kind, m.RuleId)
	case "enabled":
		err = next.setEnabled(u.userID, m.Kind, m.RuleId, m.Body)
	case "actions":
		err = next.setActions(u.userID, m.Kind, m.RuleId, m.Body)
	default:
		err = ErrInvalidParam("unknown push rule operation %q", m.Op)
	}
	if err != nil {
		return acctFail(err)
	}
	raw, err := json.Marshal(next)
	if err != nil {
		return acctFail(err)
	}
	if bytes.Equal(raw, ps.raw) {
		// Nothing changed (a rule set to what it was): no new event.
		return acctOK(&pb.Empty{})
	}
	content, err := pushRulesContent(u.userID, next)
	if err != nil {
		return acctFail(err)
	}
	if len(content) > MaxPushRulesetBytes {
		return acctFail(ErrForbidden("push rules would exceed %d bytes", MaxPushRulesetBytes))
	}
	meta := u.st.Meta
	meta.Seq++
	if !ps.published {
		meta.AccountData++
	}
	if err := u.write(func(ut storage.UserTx) error {
		if err := ut.PutPushRules(raw); err != nil {
			return err
		}
		if _, err := ut.PutAccountData("", PushRulesEventType, meta.Seq, content); err != nil {
			return err
		}
		return ut.PutMeta(meta)
	}); err != nil {
		return acctFail(err)
	}
	u.st.Meta = meta
	u.push = &pushState{settings: next, raw: raw, published: true, content: content}
	u.wakeAll(ctx)
	return acctOK(&pb.Empty{})
}

// pushRulesInSync makes the account data changes of a sync report the
// current ruleset: a change of m.push_rules carries it as it is now, and
// an initial sync always carries it (the defaults, for a user who never
// changed a rule).
func (u *user) pushRulesInSync(changes []storage.AccountDataChange, initial bool) ([]storage.AccountDataChange, error) {
	found := false
	for i, c := range changes {
		if c.Room == "" && c.Type == PushRulesEventType {
			found = true
			content, err := u.pushContent()
			if err != nil {
				return nil, err
			}
			changes[i].Content = content
		}
	}
	if !found && initial {
		content, err := u.pushContent()
		if err != nil {
			return nil, err
		}
		changes = append(changes, storage.AccountDataChange{Type: PushRulesEventType, Content: content})
	}
	return changes, nil
}
