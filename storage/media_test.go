package storage

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

func stage(t *testing.T, b *Blobs, content string) string {
	t.Helper()
	dir, err := b.StagingDir()
	if err != nil {
		t.Fatal(err)
	}
	f, err := CreateStaged(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

func TestBlobsAdoptDeduplicates(t *testing.T) {
	p := openTest(t, Options{})
	b := BlobsOf(p)
	if filepath.Dir(b.Dir()) != filepath.Dir(p.Path()) {
		t.Fatalf("blobs %s not beside %s", b.Dir(), p.Path())
	}
	first := stage(t, b, "same")
	sum, size, err := HashFile(first)
	if err != nil || size != 4 {
		t.Fatal(err, size)
	}
	blob, dedup, err := b.Adopt(first, sum)
	if err != nil || dedup || blob != b.Path(sum) {
		t.Fatalf("adopt: %s %v %v", blob, dedup, err)
	}
	second := stage(t, b, "same")
	if _, dedup, err := b.Adopt(second, sum); err != nil || !dedup {
		t.Fatalf("second adopt: %v %v", dedup, err)
	}
	if _, err := os.Stat(second); !os.IsNotExist(err) {
		t.Error("the duplicate staged file stayed")
	}
	if data, _ := os.ReadFile(blob); string(data) != "same" || !b.Has(sum) {
		t.Errorf("blob %q", data)
	}

	// Only staged files, only proper hashes.
	outside := filepath.Join(t.TempDir(), "up-x")
	if err := os.WriteFile(outside, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Adopt(outside, sum); err == nil {
		t.Error("adopted a file outside the staging directory")
	}
	if _, _, err := b.Adopt(stage(t, b, "y"), "../../etc"); err == nil {
		t.Error("adopted under a bad hash")
	}
}

func TestBlobsSweepStaging(t *testing.T) {
	b := BlobsOf(openTest(t, Options{}))
	old, fresh := stage(t, b, "old"), stage(t, b, "fresh")
	past := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(old, past, past); err != nil {
		t.Fatal(err)
	}
	b.SweepStaging(time.Hour, time.Now())
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Error("old staged file kept")
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Error("fresh staged file removed")
	}
}

func TestMediaRecords(t *testing.T) {
	p := openTest(t, Options{})
	id := "media/example.org/abc"
	rec := MediaRecord{Owner: "@a:example.org", SHA256: "00", Size: 3, CreatedMs: 5,
		Thumbs: map[string]MediaThumb{"32x32-crop": {SHA256: "11", Width: 32, Height: 32}}}
	st := MediaOwner{Usage: 4096, Count: 1, Pending: map[string]int64{"x": 9}}
	if err := p.Update(context.Background(), func(tx *bbolt.Tx) error {
		if err := PutMediaRecord(tx, id, "m1", rec); err != nil {
			return err
		}
		return PutMediaOwner(tx, id, st)
	}); err != nil {
		t.Fatal(err)
	}
	if err := p.View(func(tx *bbolt.Tx) error {
		got, ok, err := MediaRecordOf(tx, id, "m1")
		if err != nil || !ok || got.Thumbs["32x32-crop"].Width != 32 || !got.Uploaded() {
			t.Errorf("record %+v %v %v", got, ok, err)
		}
		if _, ok, _ := MediaRecordOf(tx, id, "m2"); ok {
			t.Error("unknown record found")
		}
		gst, err := MediaOwnerOf(tx, id)
		if err != nil || gst.Usage != 4096 || gst.Pending["x"] != 9 {
			t.Errorf("owner %+v %v", gst, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
