// Two matrix-js-sdk clients register on a shoal node, create a room, join,
// exchange messages and see each other's messages through /sync.
// Usage: SHOAL_URL=http://127.0.0.1:8008 node e2e.mjs
import * as sdk from "matrix-js-sdk";

const baseUrl = process.env.SHOAL_URL;
if (!baseUrl) {
  console.error("SHOAL_URL is not set");
  process.exit(2);
}
const suffix = Date.now().toString(36);
const silent = { debug() {}, info() {}, log() {}, warn() {}, error() {}, trace() {}, getChild() { return silent; } };

function fail(msg) {
  console.error("FAIL:", msg);
  process.exit(1);
}

async function register(name) {
  const tmp = sdk.createClient({ baseUrl, logger: silent });
  let res;
  try {
    res = await tmp.registerRequest({ username: name, password: "pw-" + name, auth: { type: "m.login.dummy" } });
  } catch (e) {
    // The first call may answer 401 with a UIA session to complete.
    const session = e?.data?.session;
    if (!session) throw e;
    res = await tmp.registerRequest({ username: name, password: "pw-" + name, auth: { type: "m.login.dummy", session } });
  }
  return sdk.createClient({ baseUrl, userId: res.user_id, accessToken: res.access_token, deviceId: res.device_id, logger: silent });
}

function waitFor(what, predicate, timeoutMs = 20000) {
  return new Promise((resolve, reject) => {
    const start = Date.now();
    const tick = () => {
      let v;
      try { v = predicate(); } catch (e) { return reject(e); }
      if (v) return resolve(v);
      if (Date.now() - start > timeoutMs) return reject(new Error("timed out waiting for " + what));
      setTimeout(tick, 50);
    };
    tick();
  });
}

function bodies(client, roomId) {
  const room = client.getRoom(roomId);
  if (!room) return [];
  return room.getLiveTimeline().getEvents().filter((e) => e.getType() === "m.room.message").map((e) => e.getContent().body);
}

async function main() {
  const alice = await register("alice" + suffix);
  const bob = await register("bob" + suffix);
  const who = await alice.whoami();
  if (who.user_id !== alice.getUserId()) fail("whoami: " + JSON.stringify(who));

  await alice.startClient({ initialSyncLimit: 20 });
  await bob.startClient({ initialSyncLimit: 20 });
  await waitFor("alice to sync", () => alice.isInitialSyncComplete());
  await waitFor("bob to sync", () => bob.isInitialSyncComplete());

  const { room_id: roomId } = await alice.createRoom({ name: "js e2e " + suffix, invite: [bob.getUserId()] });
  await waitFor("bob to see the invite", () => bob.getRoom(roomId)?.getMyMembership() === "invite");
  await bob.joinRoom(roomId);
  await waitFor("alice to see bob join", () => alice.getRoom(roomId)?.getMember(bob.getUserId())?.membership === "join");

  await alice.sendTextMessage(roomId, "hello from alice");
  await waitFor("bob to receive alice's message", () => bodies(bob, roomId).includes("hello from alice"));
  await bob.sendTextMessage(roomId, "hello from bob");
  await waitFor("alice to receive bob's message", () => bodies(alice, roomId).includes("hello from bob"));

  const name = alice.getRoom(roomId).name;
  if (name !== "js e2e " + suffix) fail("room name seen by alice: " + name);

  alice.stopClient();
  bob.stopClient();
  console.log(JSON.stringify({ ok: true, roomId, alice: bodies(alice, roomId), bob: bodies(bob, roomId) }));
  process.exit(0);
}

main().catch((e) => fail(e?.stack || String(e)));
