package eventgraph

import (
	"crypto/ed25519"
	"encoding/json"
	"testing"
)

// egBenchPDU is a typical v12 m.room.message as it arrives over
// federation (pretty-printed, keys unsorted).
const egBenchPDU = `{
  "type": "m.room.message",
  "sender": "@alice:example.org",
  "room_id": "!Nhcu5BS-UMnFX7hBVfVSoXiD7OgH6iRT-xyIuqDnpYQ",
  "origin_server_ts": 1718000000000,
  "depth": 4821,
  "content": {
    "msgtype": "m.text",
    "body": "Did you see the deploy went out? Ping me when the review is done — thanks! 🚀",
    "format": "org.matrix.custom.html",
    "formatted_body": "Did you see the <b>deploy</b> went out? Ping me when the review is done &mdash; thanks! 🚀",
    "m.mentions": {"user_ids": ["@bob:example.com"]},
    "m.relates_to": {"m.in_reply_to": {"event_id": "$Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg"}}
  },
  "prev_events": ["$Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg"],
  "auth_events": [
    "$acR1l0raoZnm60CBwAVgqbZqoO_mYU81xysh1u7XcJk",
    "$CD66HAED5npg6074c6pDtLKalHjVfYb2q4Q3LZgrW6o",
    "$Nhcu5BS-UMnFX7hBVfVSoXiD7OgH6iRT-xyIuqDnpYQ"
  ],
  "hashes": {"sha256": "thishashcoversallfieldsincasethisisredacted"},
  "signatures": {"example.org": {"ed25519:a_abcd": "86BytesOfSignatureOfTheRedactedEventxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}},
  "unsigned": {"age": 1234}
}`

func egBenchProto() ProtoEvent {
	var c struct {
		Content json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal([]byte(egBenchPDU), &c); err != nil {
		panic(err)
	}
	return ProtoEvent{
		RoomID:         "!Nhcu5BS-UMnFX7hBVfVSoXiD7OgH6iRT-xyIuqDnpYQ",
		Sender:         "@alice:example.org",
		Type:           "m.room.message",
		Content:        c.Content,
		PrevEvents:     []string{"$Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg"},
		AuthEvents:     []string{"$acR1l0raoZnm60CBwAVgqbZqoO_mYU81xysh1u7XcJk", "$CD66HAED5npg6074c6pDtLKalHjVfYb2q4Q3LZgrW6o"},
		Depth:          4821,
		OriginServerTS: 1718000000000,
	}
}

func BenchmarkCanonicalJSON(b *testing.B) {
	pretty := []byte(egBenchPDU)
	canon, err := CanonicalJSON(pretty)
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		in   []byte
	}{{"pretty-unsorted", pretty}, {"already-canonical", canon}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.in)))
			for b.Loop() {
				if _, err := CanonicalJSON(bc.in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkBuildHashSignVerify is the whole life of a new message: build,
// content hash, sign, event ID, then verify the signature as a receiver.
func BenchmarkBuildHashSignVerify(b *testing.B) {
	priv := egSeededKey(1)
	proto := egBenchProto()
	rv := MustRoomVersion("12")
	keys := egKeys(map[string]ed25519.PrivateKey{"example.org ed25519:a": priv})
	b.ReportAllocs()
	for b.Loop() {
		e, err := BuildEvent(proto, rv, "example.org", "ed25519:a", priv)
		if err != nil {
			b.Fatal(err)
		}
		if err := VerifyEventSignatures(e, keys); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBuildHashSign is BuildEvent alone: hash + sign + event ID.
func BenchmarkBuildHashSign(b *testing.B) {
	priv := egSeededKey(1)
	proto := egBenchProto()
	rv := MustRoomVersion("12")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := BuildEvent(proto, rv, "example.org", "ed25519:a", priv); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEd25519Sign is the floor under BuildHashSign: the signature alone.
func BenchmarkEd25519Sign(b *testing.B) {
	priv := egSeededKey(1)
	msg := make([]byte, 700)
	b.ReportAllocs()
	for b.Loop() {
		ed25519.Sign(priv, msg)
	}
}

func BenchmarkParseEvent(b *testing.B) {
	raw := []byte(egBenchPDU)
	rv := MustRoomVersion("12")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseEvent(raw, rv); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkContentHash(b *testing.B) {
	raw := []byte(egBenchPDU)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ContentHash(raw); err != nil {
			b.Fatal(err)
		}
	}
}
