package main

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
)

func TestIntList(t *testing.T) {
	var l intList
	if err := l.Set("100, 1,10,10"); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(l, intList{1, 10, 100}) || l.String() != "1,10,100" {
		t.Errorf("intList = %v", l)
	}
	for _, bad := range []string{"", "1,,2", "0", "-3", "x"} {
		if err := l.Set(bad); err == nil {
			t.Errorf("Set(%q): no error", bad)
		}
	}
}

func TestParallel(t *testing.T) {
	var calls atomic.Int64
	seen := make([]atomic.Bool, 50)
	if err := parallel(context.Background(), 50, 4, func(_ context.Context, i int) error {
		calls.Add(1)
		seen[i].Store(true)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for i := range seen {
		if !seen[i].Load() {
			t.Fatalf("index %d never run", i)
		}
	}
	if calls.Load() != 50 {
		t.Errorf("%d calls, want 50", calls.Load())
	}

	boom := errors.New("boom")
	calls.Store(0)
	err := parallel(context.Background(), 1000, 2, func(_ context.Context, i int) error {
		calls.Add(1)
		if i == 3 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) {
		t.Errorf("err = %v, want boom", err)
	}
	// The other worker may finish a few trivial calls before it sees the
	// cancellation (more on a loaded machine), but not the remaining ~1000.
	if n := calls.Load(); n >= 500 {
		t.Errorf("%d of 1000 calls ran after the error at index 3; it should stop early", n)
	}
	if err := parallel(context.Background(), 0, 4, func(context.Context, int) error { return boom }); err != nil {
		t.Errorf("no work: %v", err)
	}
}

// Bad flags exit 2 before anything is started.
func TestRunUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"-shoal", "x", "-scenarios", "register,nope"},
		{"-url", "http://192.0.2.1:8008"},
		{"-url", "ftp://127.0.0.1"},
		{"-shoal", "x", "-users", "0"},
		{"-shoal", "x", "extra"},
	} {
		var stderr strings.Builder
		if code := run(args, io.Discard, &stderr); code != 2 {
			t.Errorf("run(%q) = %d, want 2 (stderr: %s)", args, code, stderr.String())
		}
	}
	if code := run([]string{"-h"}, io.Discard, io.Discard); code != 0 {
		t.Errorf("-h exits %d", code)
	}
}
