package main

import (
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// A stand-in for a generated config: the same shape (sections and the keys
// the tool changes), written for this test.
const generatedConfig = `
version: 2
global:
  server_name: localhost
  private_key: matrix_key.pem
  disable_federation: false
  trusted_third_party_id_servers:
  - id.example
  jetstream:
    storage_path: ./
    in_memory: false
  report_stats:
    enabled: true
client_api:
  registration_disabled: true
  registration_shared_secret: ""
  rate_limiting:
    enabled: true
    threshold: 5
federation_api:
  key_perspectives:
  - server_name: keys.example
sync_api:
  database:
    connection_string: file:/tmp/x/syncapi.db
logging:
- type: std
  level: info
`

func TestPatchDendriteConfig(t *testing.T) {
	out, err := patchDendriteConfig([]byte(generatedConfig), dendritePatch{
		Dir: "/tmp/d", ServerName: "bench.local", KeyPath: "/tmp/d/key.pem", SharedSecret: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(out, &doc); err != nil {
		t.Fatalf("patched config is not YAML: %v\n%s", err, out)
	}
	get := func(path string) any {
		var v any = doc
		for _, k := range strings.Split(path, ".") {
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("%s: %q is not a map in\n%s", path, k, out)
			}
			v = m[k]
		}
		return v
	}
	for path, want := range map[string]any{
		"version":                                2,
		"global.server_name":                     "bench.local",
		"global.private_key":                     "/tmp/d/key.pem",
		"global.disable_federation":              true,
		"global.report_stats.enabled":            false,
		"global.server_notices.enabled":          false, // created
		"global.jetstream.storage_path":          "/tmp/d/jetstream",
		"global.jetstream.in_memory":             false, // kept
		"client_api.registration_disabled":       false,
		"client_api.registration_requires_token": false,
		"client_api.enable_registration_captcha": false,
		"client_api.registration_shared_secret":  "s3cret",
		"client_api.rate_limiting.enabled":       false,
		"client_api.rate_limiting.threshold":     5, // kept
		"sync_api.database.connection_string":    "file:/tmp/x/syncapi.db",
	} {
		if got := get(path); got != want {
			t.Errorf("%s = %#v, want %#v", path, got, want)
		}
	}
	for _, path := range []string{"global.trusted_third_party_id_servers", "federation_api.key_perspectives"} {
		if l, ok := get(path).([]any); !ok || len(l) != 0 {
			t.Errorf("%s = %#v, want an empty list", path, get(path))
		}
	}
	logging, ok := doc["logging"].([]any)
	if !ok || len(logging) != 1 {
		t.Fatalf("logging = %#v", doc["logging"])
	}
	hook := logging[0].(map[string]any)
	if hook["type"] != "file" || hook["level"] != "warn" || hook["params"].(map[string]any)["path"] != "/tmp/d/logs" {
		t.Errorf("logging hook = %#v", hook)
	}
}

func TestPatchDendriteConfigRejectsOtherFormats(t *testing.T) {
	for name, in := range map[string]string{
		"not YAML":        "global: [",
		"no client_api":   "global: {}\nfederation_api: {}\n",
		"section is list": "global: []\nclient_api: {}\nfederation_api: {}\n",
		"leaf in the way": "global: {report_stats: true}\nclient_api: {}\nfederation_api: {}\n",
	} {
		if _, err := patchDendriteConfig([]byte(in), dendritePatch{Dir: "/tmp/d"}); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestSetPath(t *testing.T) {
	m := map[string]any{"a": map[string]any{"b": 1}}
	if err := setPath(m, []string{"a", "c", "d"}, "x"); err != nil {
		t.Fatal(err)
	}
	if m["a"].(map[string]any)["c"].(map[string]any)["d"] != "x" || m["a"].(map[string]any)["b"] != 1 {
		t.Errorf("setPath: %#v", m)
	}
	if err := setPath(m, []string{"a", "b", "z"}, 1); err == nil {
		t.Error("setPath through a leaf: no error")
	}
}
