package actors_test

import (
	"net/http"
	"slices"
	"testing"

	"github.com/shoal-chat/shoal/actors/pb"
)

func TestCertsActorFiles(t *testing.T) {
	tn := startNode(t)
	const store = "acme"
	put := func(key, v string) { tn.must(&pb.CertStore{Store: store, Key: key, Value: []byte(v)}) }
	put("certificates/ca/a.example/a.example.crt", "crt")
	put("certificates/ca/a.example/a.example.key", "key")
	put("certificates/ca/b.example/b.example.crt", "crt-b")
	put("acme/ca/users/x/x.json", "{}")
	put("last_clean.json", "{}")

	got := tn.must(&pb.CertLoad{Store: store, Key: "certificates/ca/a.example/a.example.key"}).(*pb.CertLoadReply)
	if string(got.Value) != "key" || got.ModifiedMs == 0 {
		t.Fatalf("load: %+v", got)
	}
	tn.mustFail(&pb.CertLoad{Store: store, Key: "certificates/ca"}, "M_NOT_FOUND", http.StatusNotFound)
	tn.mustFail(&pb.CertLoad{Store: store, Key: "/leading"}, "M_INVALID_PARAM", http.StatusBadRequest)

	list := func(prefix string, rec bool) []string {
		return tn.must(&pb.CertList{Store: store, Prefix: prefix, Recursive: rec}).(*pb.CertListReply).Keys
	}
	if k := list("", false); !slices.Equal(k, []string{"acme", "certificates", "last_clean.json"}) {
		t.Errorf("list root: %v", k)
	}
	if k := list("certificates/ca", false); !slices.Equal(k, []string{"certificates/ca/a.example", "certificates/ca/b.example"}) {
		t.Errorf("list dir: %v", k)
	}
	want := []string{"certificates/ca", "certificates/ca/a.example", "certificates/ca/a.example/a.example.crt",
		"certificates/ca/a.example/a.example.key", "certificates/ca/b.example", "certificates/ca/b.example/b.example.crt"}
	if k := list("certificates", true); !slices.Equal(k, want) {
		t.Errorf("list recursive: %v", k)
	}
	tn.mustFail(&pb.CertList{Store: store, Prefix: "nothing"}, "M_NOT_FOUND", http.StatusNotFound)

	st := tn.must(&pb.CertStat{Store: store, Key: "certificates/ca/b.example/b.example.crt"}).(*pb.CertStatReply)
	if !st.Terminal || st.Size != 5 {
		t.Errorf("stat file: %+v", st)
	}
	st = tn.must(&pb.CertStat{Store: store, Key: "certificates/ca"}).(*pb.CertStatReply)
	if st.Terminal || st.ModifiedMs == 0 {
		t.Errorf("stat dir: %+v", st)
	}
	// "certificates/c" is a prefix of a key but not a component of one.
	tn.mustFail(&pb.CertStat{Store: store, Key: "certificates/c"}, "M_NOT_FOUND", http.StatusNotFound)

	tn.must(&pb.CertDelete{Store: store, Key: "certificates/ca/a.example"})
	tn.must(&pb.CertDelete{Store: store, Key: "certificates/ca/a.example"}) // gone already: fine
	tn.restart()
	if k := list("certificates", true); !slices.Equal(k, []string{"certificates/ca", "certificates/ca/b.example", "certificates/ca/b.example/b.example.crt"}) {
		t.Errorf("after delete and restart: %v", k)
	}
}

func TestCertsActorLocks(t *testing.T) {
	tn := startNode(t)
	lock := func(owner string, leaseMs int64) *pb.CertLockReply {
		return tn.must(&pb.CertLock{Store: "acme", Name: "issue_cert_a.example", Owner: owner, LeaseMs: leaseMs}).(*pb.CertLockReply)
	}
	if r := lock("n1", 60_000); !r.Acquired {
		t.Fatal("free lock not granted")
	}
	if r := lock("n2", 60_000); r.Acquired || r.ExpiresMs == 0 {
		t.Fatalf("held lock granted to another owner: %+v", r)
	}
	if r := lock("n1", 60_000); !r.Acquired {
		t.Fatal("holder could not renew")
	}
	// The lock survives a restart: a node that restarts while another holds
	// it must still wait.
	tn.restart()
	if r := lock("n2", 60_000); r.Acquired {
		t.Fatal("lock lost across restart")
	}
	tn.mustFail(&pb.CertUnlock{Store: "acme", Name: "issue_cert_a.example", Owner: "n2"}, "M_UNKNOWN", http.StatusConflict)
	tn.must(&pb.CertUnlock{Store: "acme", Name: "issue_cert_a.example", Owner: "n1"})
	tn.must(&pb.CertUnlock{Store: "acme", Name: "issue_cert_a.example", Owner: "n1"})
	if r := lock("n2", 1000); !r.Acquired {
		t.Fatal("released lock not granted")
	}
	tn.mustFail(&pb.CertLock{Store: "acme", Name: "x"}, "M_INVALID_PARAM", http.StatusBadRequest)
}
