package actors

import (
	"fmt"
	"net/http"
	"testing"
)

// The count bound, on the settings alone: filling it through the actor
// would cost a thousand commits.
func TestPushSettingsCountBound(t *testing.T) {
	s := (&pushSettings{}).clone()
	for i := range MaxPushRules {
		kind := PushRuleKinds[i%len(PushRuleKinds)]
		body := `{"actions":[]}`
		if kind == "content" {
			body = `{"actions":[],"pattern":"x"}`
		}
		if err := s.put(kind, fmt.Sprint(i), "", "", []byte(body)); err != nil {
			t.Fatalf("rule %d: %v", i, err)
		}
	}
	err := s.put("room", "one-more", "", "", []byte(`{"actions":[]}`))
	if me, ok := err.(*MatrixError); !ok || me.ErrCode != "M_FORBIDDEN" || me.Status != http.StatusForbidden {
		t.Fatalf("rule %d: %v", MaxPushRules+1, err)
	}
	// Replacing a rule is still allowed, and so is adding after a delete.
	if err := s.put("override", "0", "", "", []byte(`{"actions":["notify"]}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.remove("override", "0"); err != nil {
		t.Fatal(err)
	}
	if err := s.put("room", "one-more", "", "", []byte(`{"actions":[]}`)); err != nil {
		t.Fatal(err)
	}
	if s.count() != MaxPushRules {
		t.Fatalf("%d rules", s.count())
	}
}
