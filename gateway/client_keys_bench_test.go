package gateway_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/shoal-chat/shoal/gateway/shoaltest"
)

// BenchmarkKeysClaimConcurrent measures POST /keys/claim with many clients
// claiming at once from a set of devices, each claim taking one one-time
// key (the device actor is the single writer, so each is one commit).
func BenchmarkKeysClaimConcurrent(b *testing.B) {
	node := shoaltest.Start(b)
	ctx := context.Background()
	const devices, keysPerDevice = 8, 5000
	var targets []*mautrix.Client
	for i := range devices {
		cli := node.Register(fmt.Sprintf("owner%d", i))
		otks := map[id.KeyID]mautrix.OneTimeKey{}
		for k := range keysPerDevice {
			otks[id.KeyID(fmt.Sprintf("signed_curve25519:k%05d", k))] = mautrix.OneTimeKey{Key: id.Curve25519(fmt.Sprintf("key%05d", k))}
		}
		if _, err := cli.UploadKeys(ctx, &mautrix.ReqUploadKeys{OneTimeKeys: otks}); err != nil {
			b.Fatal(err)
		}
		targets = append(targets, cli)
	}
	claimer := node.Register("claimer")
	var next atomic.Int64
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			t := targets[int(next.Add(1))%devices]
			resp, err := claimer.ClaimKeys(ctx, &mautrix.ReqClaimKeys{OneTimeKeys: mautrix.OneTimeKeysRequest{
				t.UserID: {t.DeviceID: id.KeyAlgorithmSignedCurve25519}}})
			if err != nil {
				b.Error(err)
				return
			}
			if len(resp.OneTimeKeys[t.UserID][t.DeviceID]) != 1 && next.Load() < devices*keysPerDevice {
				b.Error("no key claimed")
				return
			}
		}
	})
}
