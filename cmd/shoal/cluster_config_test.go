package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestClusterSettings(t *testing.T) {
	none := func(string) string { return "" }
	cfg, err := loadConfig(nil, none)
	if err != nil || clusterConfig(cfg) != nil {
		t.Fatalf("no cluster settings must mean a one-node server: %v %+v", err, clusterConfig(cfg))
	}
	file := filepath.Join(t.TempDir(), "shoal.yaml")
	if err := os.WriteFile(file, []byte("cluster_name: prod\njoin: [\"10.0.0.1:7946\", \"10.0.0.2:7946\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"SHOAL_CLUSTER_SECRET": "a secret of the cluster"}
	cfg, err = loadConfig([]string{"--config", file, "--cluster-listen", "10.0.0.3:7946", "--cluster-advertise", "node3.internal"},
		func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	cc := clusterConfig(cfg)
	if cc == nil || cc.Name != "prod" || cc.Secret != "a secret of the cluster" || cc.Listen != "10.0.0.3:7946" ||
		cc.Advertise != "node3.internal" || len(cc.Join) != 2 || cc.Join[1] != "10.0.0.2:7946" || cc.RPCListen != "" {
		t.Fatalf("cluster settings not applied: %+v", cc)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--join", "10.0.0.1:7946"}, "need cluster_listen"},
		{[]string{"--cluster-listen", ":7946"}, "cluster_secret"},
		{[]string{"--cluster-listen", ":7946", "--cluster-secret", "short"}, "at least 16"},
		{[]string{"--cluster-listen", ":7946", "--cluster-secret", "long enough secret", "--cluster-name", ""}, "cluster_name"},
	} {
		if _, err := loadConfig(c.args, none); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want an error about %q", c.args, err, c.want)
		}
	}
}
