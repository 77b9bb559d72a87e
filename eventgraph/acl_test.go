package eventgraph

import (
	"encoding/json"
	"testing"
)

func TestServerACLAllows(t *testing.T) {
	cases := []struct {
		name   string
		acl    string
		server string
		want   bool
	}{
		{"no ACL", "", "evil.com", true},
		{"allow all", `{"allow":["*"]}`, "example.org", true},
		{"no allow list denies everyone", `{"deny":[]}`, "example.org", false},
		{"empty content denies everyone", `{}`, "example.org", false},
		{"deny wins over allow", `{"allow":["*"],"deny":["evil.com"]}`, "evil.com", false},
		{"port is ignored (deny)", `{"allow":["*"],"deny":["evil.com"]}`, "evil.com:8448", false},
		{"port is ignored (allow)", `{"allow":["good.org"]}`, "good.org:1234", true},
		{"port in the rule never matches", `{"allow":["good.org:8448"]}`, "good.org:8448", false},
		{"subdomain wildcard", `{"allow":["*"],"deny":["*.evil.com"]}`, "a.b.evil.com", false},
		{"wildcard needs its dot", `{"allow":["*"],"deny":["*.evil.com"]}`, "evil.com", true},
		{"question mark is one character", `{"allow":["?.org"]}`, "a.org", true},
		{"question mark is not two", `{"allow":["?.org"]}`, "ab.org", false},
		{"question mark is not zero", `{"allow":["?.org"]}`, ".org", false},
		{"case-insensitive rule", `{"allow":["GOOD.ORG"]}`, "good.org", true},
		{"case-insensitive server", `{"allow":["good.org"]}`, "Good.Org", true},
		{"allow list without match", `{"allow":["good.org"]}`, "other.org", false},
		{"IPv4 literal denied", `{"allow":["*"],"allow_ip_literals":false}`, "1.2.3.4", false},
		{"IPv4 literal with port denied", `{"allow":["*"],"allow_ip_literals":false}`, "1.2.3.4:8448", false},
		{"IPv6 literal denied", `{"allow":["*"],"allow_ip_literals":false}`, "[::1]:8448", false},
		{"IP literals allowed by default", `{"allow":["*"]}`, "1.2.3.4", true},
		{"IP literals allowed when true", `{"allow":["*"],"allow_ip_literals":true}`, "[::1]", true},
		{"non-boolean allow_ip_literals means true", `{"allow":["*"],"allow_ip_literals":"no"}`, "1.2.3.4", true},
		{"IPv6 rule keeps brackets", `{"allow":["[::1]"]}`, "[::1]:8448", true},
		{"digits-only host is not an IP literal", `{"allow":["*"],"allow_ip_literals":false}`, "1.2.3.4.example", true},
		{"non-string entries skipped", `{"allow":[5,null,"good.org"]}`, "good.org", true},
		{"allow of the wrong type is empty", `{"allow":"*"}`, "good.org", false},
		{"deny of the wrong type is empty", `{"allow":["*"],"deny":"evil.com"}`, "evil.com", true},
		{"content not an object", `[1]`, "good.org", false},
		{"invalid server name", `{"allow":["*"]}`, "bad server", false},
		{"empty server name", `{"allow":["*"]}`, "", false},
		{"star matches runs", `{"allow":["a*b*c.org"]}`, "axxbyyc.org", true},
		{"star backtracks", `{"allow":["*ab.org"]}`, "aab.org", true},
		{"trailing stars", `{"allow":["good.org**"]}`, "good.org", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := ServerACLAllows(json.RawMessage(c.acl), c.server); got != c.want {
				t.Fatalf("ServerACLAllows(%s, %q) = %v, want %v", c.acl, c.server, got, c.want)
			}
		})
	}
}

func TestGlobMatch(t *testing.T) {
	cases := []struct {
		pattern, s string
		want       bool
	}{
		{"", "", true},
		{"", "a", false},
		{"*", "", true},
		{"*", "anything", true},
		{"a?c", "abc", true},
		{"a?c", "ac", false},
		{"a*", "a", true},
		{"*a", "ba", true},
		{"*a", "ab", false},
		{"é?", "éx", true},
		{"?", "é", true},
		{"**a**b", "xxaxxb", true},
		{"a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false},
	}
	for _, c := range cases {
		if got := GlobMatch(c.pattern, c.s); got != c.want {
			t.Errorf("GlobMatch(%q, %q) = %v, want %v", c.pattern, c.s, got, c.want)
		}
	}
}
