package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/shoal-chat/shoal/cluster"
)

// clusterConfig is the cluster part of a node's configuration; nil for a
// one-node server.
func clusterConfig(cfg Config) *cluster.ClusterConfig {
	if cfg.ClusterListen == "" {
		return nil
	}
	return &cluster.ClusterConfig{
		Name:      cfg.ClusterName,
		Secret:    cfg.ClusterSecret,
		Listen:    cfg.ClusterListen,
		RPCListen: cfg.ClusterRPCListen,
		Advertise: cfg.ClusterAdvertise,
		Join:      cfg.Join,
	}
}

// clusterCommand runs `shoal cluster status|leave`, which talk to a running
// node's admin listener.
func clusterCommand(args []string, stdout io.Writer, getenv func(string) string) error {
	if len(args) == 0 || (args[0] != "status" && args[0] != "leave") {
		return errors.New("usage: shoal cluster status|leave [flags]")
	}
	fs := flag.NewFlagSet("cluster "+args[0], flag.ContinueOnError)
	url := fs.String("url", "", "admin base URL of a running node (default: from the configuration's admin_listen)")
	configPath := fs.String("config", getenv("SHOAL_CONFIG"), "YAML configuration file of the node")
	asJSON := fs.Bool("json", false, "status: print the JSON the node answers")
	wait := fs.Bool("wait", true, "leave: wait until the node has handed everything over and left")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *url == "" {
		var cfgArgs []string
		if *configPath != "" {
			cfgArgs = append(cfgArgs, "--config", *configPath)
		}
		cfg, err := loadConfig(cfgArgs, getenv)
		if err != nil {
			return err
		}
		if cfg.AdminListen == "" {
			return errors.New("the node has no admin listener (admin_listen): give its URL with --url")
		}
		*url = "http://" + cfg.AdminListen
	}
	base := strings.TrimRight(*url, "/")
	if args[0] == "status" {
		st, raw, err := fetchStatus(base)
		if err != nil {
			return err
		}
		if *asJSON {
			_, err := stdout.Write(raw)
			return err
		}
		return printStatus(stdout, st)
	}
	return leaveCluster(stdout, base, *wait)
}

var adminClient = &http.Client{Timeout: 10 * time.Second}

func fetchStatus(base string) (*cluster.Status, []byte, error) {
	resp, err := adminClient.Get(base + "/_shoal/cluster/status")
	if err != nil {
		return nil, nil, fmt.Errorf("cluster status: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, nil, fmt.Errorf("cluster status: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("cluster status: %s: %s", resp.Status, strings.TrimSpace(string(raw)))
	}
	var st cluster.Status
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, nil, fmt.Errorf("cluster status: %w", err)
	}
	return &st, raw, nil
}

func printStatus(w io.Writer, st *cluster.Status) error {
	if st.ClusterID == "" {
		fmt.Fprintf(w, "one-node server, %d partitions, all held here\n", st.Partitions)
	} else {
		fmt.Fprintf(w, "cluster %q (id %s), %d partitions, as seen by node %s\n\n", st.Cluster, st.ClusterID, st.Partitions, st.Node)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tSTATUS\tALIVE\tGOSSIP\tRPC\tHOLDS\tACTORS")
	for _, m := range st.Members {
		holds, actors := "?", "?"
		if m.Reported {
			holds, actors = fmt.Sprint(len(m.Holds)), fmt.Sprint(m.ActiveActors)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.Status, yesNo(m.Alive), m.GossipAddr, m.RPCAddr, holds, actors)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "PARTITION\tOWNER\tHOLDER\tSTATE\tEPOCH")
	for _, p := range st.Map {
		holder := p.Holder
		if holder == "" {
			holder = "-"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\n", p.Partition, orDash(p.Owner), holder, p.State, p.Epoch)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	if len(st.Handoffs) == 0 {
		fmt.Fprintln(w, "no handoff in flight")
	}
	for _, h := range st.Handoffs {
		fmt.Fprintf(w, "handoff: partition %d %s -> %s, epoch %d, %d bytes, for %s\n", h.Partition, h.From, h.To, h.Epoch,
			h.Bytes, time.Since(h.Started).Round(time.Millisecond))
	}
	return nil
}

// leaveCluster asks the node to leave and, with wait, follows it until it
// has (its admin listener then goes away with it).
func leaveCluster(w io.Writer, base string, wait bool) error {
	resp, err := adminClient.Post(base+"/_shoal/cluster/leave", "application/json", strings.NewReader("{}"))
	if err != nil {
		return fmt.Errorf("cluster leave: %w", err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return fmt.Errorf("cluster leave: %s", e.Error)
		}
		return fmt.Errorf("cluster leave: %s", resp.Status)
	}
	var started struct {
		Node string `json:"node"`
	}
	_ = json.Unmarshal(body, &started)
	fmt.Fprintf(w, "node %s is handing its partitions over\n", started.Node)
	if !wait {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	last := -1
	for {
		st, _, err := fetchStatus(base)
		if err != nil {
			// The node stops once it has left.
			fmt.Fprintf(w, "node %s has left the cluster\n", started.Node)
			return nil
		}
		for _, m := range st.Members {
			if m.ID != st.Node {
				continue
			}
			if m.Status == "left" {
				fmt.Fprintf(w, "node %s has left the cluster\n", m.ID)
				return nil
			}
			if n := len(m.Holds); n != last {
				fmt.Fprintf(w, "  %d partitions still held\n", n)
				last = n
			}
		}
		select {
		case <-ctx.Done():
			return errors.New("cluster leave: still not done after 30 minutes; see `shoal cluster status`")
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
