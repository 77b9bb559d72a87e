package cluster

import (
	"fmt"
	"slices"
	"testing"
)

func TestPlacementDeterministicAndOrderFree(t *testing.T) {
	a := placement(64, []string{"n1", "n2", "n3"})
	b := placement(64, []string{"n3", "n1", "n2"})
	if !slices.Equal(a, b) {
		t.Fatal("placement depends on the order of members")
	}
	if placement(4, nil)[0] != "" {
		t.Fatal("no members must own nothing")
	}
	// Golden: the function is part of the cluster protocol; every node of
	// every version must compute the same owners.
	if got := ownerOf(0, []string{"alpha", "beta", "gamma"}); got != goldenOwner0 {
		t.Fatalf("owner of partition 0 changed: %s", got)
	}
}

const goldenOwner0 = "beta"

// Adding a member moves partitions only to it; removing one moves only its
// own partitions. Spread stays within a reasonable band.
func TestPlacementMinimalMovement(t *testing.T) {
	const count = 1024
	members := []string{}
	for i := range 5 {
		members = append(members, fmt.Sprintf("node-%d", i))
	}
	before := placement(count, members)
	after := placement(count, append(slices.Clone(members), "node-new"))
	moved := 0
	for p := range before {
		if before[p] != after[p] {
			if after[p] != "node-new" {
				t.Fatalf("partition %d moved from %s to %s, not to the new member", p, before[p], after[p])
			}
			moved++
		}
	}
	if moved < count/6/2 || moved > count/6*2 {
		t.Fatalf("%d of %d partitions moved to the 6th member", moved, count)
	}
	removed := placement(count, members[1:])
	for p := range before {
		if before[p] != "node-0" && before[p] != removed[p] {
			t.Fatalf("partition %d of %s moved when node-0 left", p, before[p])
		}
	}
	counts := map[string]int{}
	for _, o := range before {
		counts[o]++
	}
	for m, c := range counts {
		if c < count/5/2 || c > count/5*2 {
			t.Fatalf("%s owns %d of %d partitions", m, c, count)
		}
	}
}
