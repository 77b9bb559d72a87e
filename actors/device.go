package actors

import (
	"context"
	"crypto/subtle"
	"log/slog"
	"strings"

	"github.com/asynkron/protoactor-go/actor"
	"go.etcd.io/bbolt"

	"github.com/shoal-chat/shoal/actors/pb"
	"github.com/shoal-chat/shoal/storage"
)

// lastSeenEvery is how stale a device's last-seen time may get before a
// request refreshes it: a write per authenticated request would put every
// request on the fsync path.
const lastSeenEvery = 60_000 // ms

// device is the actor of one device of a local user, identity
// device/<user_id>/<device_id>. It holds the device's display name, the
// SHA-256 of its current access token and when and where it was last seen.
//
//	DeviceLogin  creates the device or gives it a new token (the old one stops
//	             working); replies DeviceInfo
//	DeviceAuth   replies DeviceAuthReply{valid}; never writes before replying
//	DeviceQuery  replies DeviceInfo (exists=false for no such device)
//	DeviceUpdate display_name: replies Empty, 404 for no such device;
//	             logout: deletes the device and its token, replies Empty;
//	             moderation: stores the account's locked/suspended flags,
//	             which DeviceAuthReply then carries, replies Empty
//	DeviceKeysOp keys and to-device inbox (device_keys.go); replies KeysReply
type device struct {
	env      *Env
	userID   string
	deviceID string

	dev     *storage.Device // nil: no such device
	loadErr error
	// keys is the device's encryption counters, read on first use
	// (device_keys.go).
	keys *deviceKeysMeta
}

// NewDevice makes the actor of a device.
func NewDevice(env *Env) actor.Actor {
	d := &device{env: env}
	rest := strings.TrimPrefix(env.Identity, pb.KindDevice+"/")
	// A localpart may contain '/' but not ':', a server name contains no
	// '/', and a device ID may contain anything: the device ID starts after
	// the first '/' that follows the first ':'.
	if colon := strings.IndexByte(rest, ':'); colon >= 0 {
		if slash := strings.IndexByte(rest[colon:], '/'); slash >= 0 {
			d.userID, d.deviceID = rest[:colon+slash], rest[colon+slash+1:]
		}
	}
	return d
}

func (d *device) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		d.load()
		ctx.SetReceiveTimeout(d.env.IdleTimeout)
	case *actor.ReceiveTimeout:
		ctx.Send(ctx.Parent(), &pb.Passivate{Identity: d.env.Identity})
	case *pb.DeviceLogin:
		d.reply(ctx, d.login(m))
	case *pb.DeviceAuth:
		d.auth(ctx, m)
	case *pb.DeviceQuery:
		d.reply(ctx, d.info())
	case *pb.DeviceUpdate:
		d.reply(ctx, d.update(m))
	case *pb.DeviceKeysOp:
		d.reply(ctx, d.keysOp(m))
	}
}

func (d *device) load() {
	err := d.env.Partition.View(func(tx *bbolt.Tx) error {
		dev, err := storage.LoadDevice(tx, d.env.Identity)
		d.dev = dev
		return err
	})
	if err != nil {
		d.loadErr = err
		d.dev = nil
		d.env.Log.Error("device: load", slog.Any("err", err))
	}
}

func (d *device) reply(ctx actor.Context, r acctResult) {
	if ctx.Sender() == nil {
		return
	}
	if r.err != nil {
		if _, isME := r.err.(*MatrixError); !isME {
			d.env.Log.Error("device: request failed", slog.Any("err", r.err))
		}
		ctx.Respond(ToPB(r.err))
		return
	}
	ctx.Respond(r.msg)
}

// deviceMessage is any request to a device actor.
type deviceMessage interface {
	GetUserId() string
	GetDeviceId() string
}

func (d *device) ready(m deviceMessage) error {
	if d.loadErr != nil {
		return ErrUnknown("device unavailable")
	}
	if m.GetUserId() != d.userID || m.GetDeviceId() != d.deviceID {
		return ErrInvalidParam("message for another device")
	}
	return nil
}

func (d *device) write(fn func(tx *bbolt.Tx) error) error {
	return d.env.Partition.Update(context.Background(), fn)
}

func (d *device) info() acctResult {
	if d.loadErr != nil {
		return acctFail(ErrUnknown("device unavailable"))
	}
	if d.dev == nil {
		return acctOK(&pb.DeviceInfo{DeviceId: d.deviceID})
	}
	return acctOK(&pb.DeviceInfo{DeviceId: d.deviceID, DisplayName: d.dev.DisplayName,
		LastSeenIp: d.dev.LastSeenIP, LastSeenTs: d.dev.LastSeenTS, Exists: true})
}

// login creates the device or replaces its token. The display name is
// only taken for a new device, as the spec says of
// initial_device_display_name.
func (d *device) login(m *pb.DeviceLogin) acctResult {
	if err := d.ready(m); err != nil {
		return acctFail(err)
	}
	if len(m.TokenHash) != 32 {
		return acctFail(ErrInvalidParam("token hash must be 32 bytes"))
	}
	now := d.env.NowMillis()
	var next storage.Device
	if d.dev != nil {
		next = *d.dev
	} else {
		next = storage.Device{DisplayName: m.DisplayName, CreatedTS: now}
	}
	next.Locked, next.Suspended = m.Locked, m.Suspended
	next.TokenHash = append([]byte(nil), m.TokenHash...)
	next.LastSeenTS = now
	if m.Ip != "" {
		next.LastSeenIP = m.Ip
	}
	if err := d.write(func(tx *bbolt.Tx) error { return storage.PutDevice(tx, d.env.Identity, &next) }); err != nil {
		return acctFail(err)
	}
	d.dev = &next
	return d.info()
}

// auth answers whether a token hash is the device's current one. The
// comparison takes the same time whatever the hashes (and whether the
// device exists); refreshing the last-seen time happens after the reply.
func (d *device) auth(ctx actor.Context, m *pb.DeviceAuth) {
	if err := d.ready(m); err != nil {
		d.reply(ctx, acctFail(err))
		return
	}
	var stored [32]byte
	exists := d.dev != nil && len(d.dev.TokenHash) == 32
	if exists {
		copy(stored[:], d.dev.TokenHash)
	}
	var given [32]byte
	copy(given[:], m.TokenHash)
	match := subtle.ConstantTimeCompare(stored[:], given[:]) == 1
	valid := exists && len(m.TokenHash) == 32 && match
	rep := &pb.DeviceAuthReply{Valid: valid}
	if valid {
		rep.Locked, rep.Suspended = d.dev.Locked, d.dev.Suspended
	}
	d.reply(ctx, acctOK(rep))
	if valid {
		d.touch(m.Ip)
	}
}

// touch records activity when the last record is over a minute old or the
// address changed.
func (d *device) touch(ip string) {
	now := d.env.NowMillis()
	if now-d.dev.LastSeenTS < lastSeenEvery && (ip == "" || ip == d.dev.LastSeenIP) {
		return
	}
	next := *d.dev
	next.LastSeenTS = now
	if ip != "" {
		next.LastSeenIP = ip
	}
	if err := d.write(func(tx *bbolt.Tx) error { return storage.PutDevice(tx, d.env.Identity, &next) }); err != nil {
		d.env.Log.Warn("device: record last seen", slog.Any("err", err))
		return
	}
	d.dev = &next
}

func (d *device) update(m *pb.DeviceUpdate) acctResult {
	if err := d.ready(m); err != nil {
		return acctFail(err)
	}
	switch m.Kind {
	case "display_name":
		if d.dev == nil {
			return acctFail(ErrNotFound("no such device"))
		}
		next := *d.dev
		next.DisplayName = m.DisplayName
		if err := d.write(func(tx *bbolt.Tx) error { return storage.PutDevice(tx, d.env.Identity, &next) }); err != nil {
			return acctFail(err)
		}
		d.dev = &next
		return acctOK(&pb.Empty{})
	case "moderation":
		// A device logged out meanwhile has nothing to mark.
		if d.dev == nil {
			return acctOK(&pb.Empty{})
		}
		next := *d.dev
		next.Locked, next.Suspended = m.Locked, m.Suspended
		if err := d.write(func(tx *bbolt.Tx) error { return storage.PutDevice(tx, d.env.Identity, &next) }); err != nil {
			return acctFail(err)
		}
		d.dev = &next
		return acctOK(&pb.Empty{})
	case "logout":
		if err := d.write(func(tx *bbolt.Tx) error { return storage.DeleteIdentity(tx, d.env.Identity) }); err != nil {
			return acctFail(err)
		}
		d.dev, d.keys = nil, nil
		return acctOK(&pb.Empty{})
	default:
		return acctFail(ErrInvalidParam("unknown device update %q", m.Kind))
	}
}
