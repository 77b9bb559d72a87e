// End-to-end encryption through a shoal node with matrix-js-sdk's Rust crypto
// (@matrix-org/matrix-sdk-crypto-wasm): alice and bob set up cross-signing,
// alice sets up secret storage and key backup, they talk in an encrypted room
// and each decrypts the other; then a new device of alice restores the key
// backup with the recovery key, decrypts both sides' messages from /messages
// and cross-signs itself with the keys from secret storage.
// Usage: SHOAL_URL=http://127.0.0.1:8008 node e2ee.mjs
import * as sdk from "matrix-js-sdk";

const baseUrl = process.env.SHOAL_URL;
if (!baseUrl) {
  console.error("SHOAL_URL is not set");
  process.exit(2);
}
const suffix = Date.now().toString(36);
const deadline = setTimeout(() => fail("overall timeout (90 s)"), 90_000);

// The SDK's warnings and errors (and, below, everything the Rust crypto logs to
// the console) are kept and printed only on failure, so that a misbehaving
// endpoint is named in the test output. SHOAL_JS_DEBUG=1 prints all as it comes.
const logLines = [];
function makeLogger(prefix) {
  const keep = (level) => (...args) => {
    logLines.push(`[${prefix}] ${level}: ${args.map((a) => (a instanceof Error ? a.stack : typeof a === "string" ? a : safeJSON(a))).join(" ")}`);
    if (logLines.length > 1500) logLines.shift();
  };
  const l = { debug() {}, info() {}, log() {}, trace() {}, warn: keep("warn"), error: keep("error"), getChild(n) { return makeLogger(prefix + n); } };
  if (process.env.SHOAL_JS_DEBUG) { l.debug = l.info = l.log = keep("debug"); }
  return l;
}
// Rust crypto and parts of the SDK log to the console directly: keep that too.
for (const level of ["debug", "info", "log", "warn", "error"]) {
  const orig = console[level].bind(console);
  console[level] = (...args) => {
    if (process.env.SHOAL_JS_DEBUG) orig(...args);
    logLines.push(`[console] ${level}: ${args.map((a) => (typeof a === "string" ? a : safeJSON(a))).join(" ")}`);
    if (logLines.length > 1500) logLines.shift();
  };
}
const stderr = (s) => process.stderr.write(s + "\n");

function safeJSON(v) {
  try { return JSON.stringify(v); } catch { return String(v); }
}

function fail(msg) {
  stderr("FAIL: " + msg);
  if (logLines.length) stderr("--- js-sdk log (last " + logLines.length + " lines) ---\n" + logLines.join("\n"));
  process.exit(1);
}

function step(msg) {
  stderr(`[${new Date().toISOString()}] ${msg}`);
}

// Secret storage keys as the user would hold them (the recovery key), by
// key ID; every client of the same user reads from it.
function keyStore() {
  const keys = new Map();
  return {
    keys,
    callbacks: {
      getSecretStorageKey: async ({ keys: wanted }) => {
        for (const id of Object.keys(wanted)) if (keys.has(id)) return [id, keys.get(id)];
        return null;
      },
      cacheSecretStorageKey: (keyId, _info, key) => keys.set(keyId, key),
    },
  };
}

function password(name) {
  return "pw-" + name;
}

async function register(name, store) {
  const tmp = sdk.createClient({ baseUrl, logger: makeLogger(name + "/reg") });
  let res;
  try {
    res = await tmp.registerRequest({ username: name, password: password(name), auth: { type: "m.login.dummy" } });
  } catch (e) {
    const session = e?.data?.session;
    if (!session) throw e;
    res = await tmp.registerRequest({ username: name, password: password(name), auth: { type: "m.login.dummy", session } });
  }
  return makeClient(name, res, store);
}

async function login(name, store) {
  const tmp = sdk.createClient({ baseUrl, logger: makeLogger(name + "/login") });
  const res = await tmp.loginRequest({ type: "m.login.password", identifier: { type: "m.id.user", user: name }, password: password(name) });
  return makeClient(name, res, store);
}

async function makeClient(name, res, store) {
  const client = sdk.createClient({
    baseUrl,
    userId: res.user_id,
    accessToken: res.access_token,
    deviceId: res.device_id,
    logger: makeLogger(name + "/" + res.device_id),
    cryptoCallbacks: store.callbacks,
  });
  // Node has no IndexedDB: the Rust crypto store lives in memory.
  await client.initRustCrypto({ useIndexedDB: false });
  return client;
}

// Password UIA for /keys/device_signing/upload: try without auth first (MSC3967
// lets a first upload through), then answer the 401 with the password stage.
function passwordAuth(client, name) {
  return async (makeRequest) => {
    try {
      await makeRequest(null);
    } catch (e) {
      const session = e?.data?.session;
      if (e?.httpStatus !== 401 || !e?.data?.flows) throw e;
      await makeRequest({ type: "m.login.password", identifier: { type: "m.id.user", user: client.getUserId() }, password: password(name), session });
    }
  };
}

function waitFor(what, predicate, timeoutMs = 30000) {
  return new Promise((resolve, reject) => {
    const start = Date.now();
    const tick = async () => {
      let v;
      try { v = await predicate(); } catch (e) { return reject(e); }
      if (v) return resolve(v);
      if (Date.now() - start > timeoutMs) return reject(new Error("timed out waiting for " + what));
      setTimeout(tick, 100);
    };
    tick();
  });
}

// Decrypted message bodies in a room's live timeline.
function bodies(client, roomId) {
  const room = client.getRoom(roomId);
  if (!room) return [];
  return room.getLiveTimeline().getEvents().filter((e) => e.isEncrypted() && e.getType() === "m.room.message").map((e) => e.getContent().body);
}

async function main() {
  const aliceName = "alice" + suffix;
  const bobName = "bob" + suffix;
  const aliceKeys = keyStore();
  const bobKeys = keyStore();
  step("register");
  const alice = await register(aliceName, aliceKeys);
  const bob = await register(bobName, bobKeys);

  step("start clients");
  await alice.startClient({ initialSyncLimit: 20 });
  await bob.startClient({ initialSyncLimit: 20 });
  await waitFor("alice to sync", () => alice.isInitialSyncComplete());
  await waitFor("bob to sync", () => bob.isInitialSyncComplete());

  step("cross-signing");
  const aliceCrypto = alice.getCrypto();
  const bobCrypto = bob.getCrypto();
  await aliceCrypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: passwordAuth(alice, aliceName) });
  await bobCrypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: passwordAuth(bob, bobName) });
  if (!(await aliceCrypto.isCrossSigningReady())) fail("alice: cross-signing not ready: " + safeJSON(await aliceCrypto.getCrossSigningStatus()));
  if (!(await bobCrypto.isCrossSigningReady())) fail("bob: cross-signing not ready: " + safeJSON(await bobCrypto.getCrossSigningStatus()));

  step("secret storage and key backup");
  await aliceCrypto.bootstrapSecretStorage({
    setupNewSecretStorage: true,
    setupNewKeyBackup: true,
    createSecretStorageKey: () => aliceCrypto.createRecoveryKeyFromPassphrase(),
  });
  if (!(await aliceCrypto.isSecretStorageReady())) fail("alice: secret storage not ready");
  const backupVersion = await waitFor("alice's key backup to be active", () => aliceCrypto.getActiveSessionBackupVersion());

  step("encrypted room");
  const { room_id: roomId } = await alice.createRoom({
    name: "js e2ee " + suffix,
    invite: [bob.getUserId()],
    initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
  });
  await waitFor("bob to see the invite", () => bob.getRoom(roomId)?.getMyMembership() === "invite");
  await bob.joinRoom(roomId);
  await waitFor("alice to see bob join", () => alice.getRoom(roomId)?.getMember(bob.getUserId())?.membership === "join");
  await waitFor("alice's room to be encrypted", () => aliceCrypto.isEncryptionEnabledInRoom(roomId));
  await waitFor("bob's room to be encrypted", () => bobCrypto.isEncryptionEnabledInRoom(roomId));

  // Each side sees the other's cross-signed device once keys/query answers.
  step("key query");
  const rawQuery = async (c, u) => safeJSON(await c.http.authedRequest(sdk.Method.Post, "/keys/query", undefined, { device_keys: { [u]: [] } }));
  let lastStatus;
  await waitFor("bob to see alice's cross-signing identity", async () => {
    await bobCrypto.getUserDeviceInfo([alice.getUserId()], true);
    const st = await bobCrypto.getDeviceVerificationStatus(alice.getUserId(), alice.getDeviceId());
    lastStatus = safeJSON({ st, user: await bobCrypto.getUserVerificationStatus(alice.getUserId()) });
    return st?.signedByOwner;
  }).catch(async (e) => fail(`${e.message}; bob's view of alice's device: ${lastStatus}; /keys/query: ${await rawQuery(bob, alice.getUserId())}`));
  await waitFor("alice to see bob's cross-signing identity", async () => {
    await aliceCrypto.getUserDeviceInfo([bob.getUserId()], true);
    return (await aliceCrypto.getDeviceVerificationStatus(bob.getUserId(), bob.getDeviceId()))?.signedByOwner;
  }).catch(async (e) => fail(`${e.message}; /keys/query: ${await rawQuery(alice, bob.getUserId())}`));

  step("alice -> bob");
  await alice.sendTextMessage(roomId, "secret from alice");
  await waitFor("bob to decrypt alice's message", () => bodies(bob, roomId).includes("secret from alice"));
  step("bob -> alice");
  await bob.sendTextMessage(roomId, "secret from bob");
  await waitFor("alice to decrypt bob's message", () => bodies(alice, roomId).includes("secret from bob"));

  // The events on the wire must be encrypted: the server never sees bodies.
  const raw = await alice.createMessagesRequest(roomId, null, 50, sdk.Direction.Backward);
  const rawMsgs = raw.chunk.filter((e) => e.type === "m.room.encrypted");
  if (rawMsgs.length < 2) fail("expected 2 m.room.encrypted events in /messages, got " + safeJSON(raw.chunk.map((e) => e.type)));
  if (raw.chunk.some((e) => e.type === "m.room.message")) fail("plaintext m.room.message in an encrypted room");

  step("wait for backup upload");
  // Both megolm sessions (alice's outbound and bob's, received by alice) are
  // backed up by alice's device.
  await waitFor("alice's backup to hold both sessions", async () => {
    const res = await alice.http.authedRequest(sdk.Method.Get, "/room_keys/keys", { version: backupVersion });
    return Object.keys(res?.rooms?.[roomId]?.sessions ?? {}).length >= 2;
  });

  step("third device restores backup");
  const alice2 = await login(aliceName, aliceKeys);
  if (alice2.getDeviceId() === alice.getDeviceId()) fail("login reused the device ID");
  const alice2Crypto = alice2.getCrypto();
  await alice2.startClient({ initialSyncLimit: 1 });
  await waitFor("alice2 to sync", () => alice2.isInitialSyncComplete());
  await waitFor("alice2 to see secret storage", () => alice2.getAccountData("m.secret_storage.default_key"));
  await alice2Crypto.loadSessionBackupPrivateKeyFromSecretStorage();
  const check = await alice2Crypto.checkKeyBackupAndEnable();
  if (!check?.backupInfo) fail("alice2: no key backup on the server");
  if (check.backupInfo.version !== backupVersion) fail(`alice2: backup version ${check.backupInfo.version}, want ${backupVersion}`);
  const restored = await alice2Crypto.restoreKeyBackup();
  if (restored.imported < 2) fail("alice2: restored " + safeJSON(restored));

  const page = await alice2.createMessagesRequest(roomId, null, 50, sdk.Direction.Backward);
  const mapper = alice2.getEventMapper();
  const events = page.chunk.map(mapper);
  const decrypted = [];
  for (const ev of events) {
    if (!ev.isEncrypted()) continue;
    await alice2.decryptEventIfNeeded(ev);
    if (ev.isDecryptionFailure()) fail("alice2 could not decrypt " + ev.getId() + ": " + ev.decryptionFailureReason);
    decrypted.push(ev.getContent().body);
  }
  for (const want of ["secret from alice", "secret from bob"]) {
    if (!decrypted.includes(want)) fail(`alice2 did not decrypt ${JSON.stringify(want)}: got ${safeJSON(decrypted)}`);
  }

  // The new device takes the cross-signing keys from secret storage, signs
  // itself (/keys/signatures/upload), and bob, who tracks alice, learns of it
  // through device_lists in /sync and sees it cross-signed.
  step("third device cross-signs itself");
  await alice2Crypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: passwordAuth(alice2, aliceName) });
  if (!(await alice2Crypto.isCrossSigningReady())) fail("alice2: cross-signing not ready: " + safeJSON(await alice2Crypto.getCrossSigningStatus()));
  const aliceIdentity = (await aliceCrypto.getCrossSigningKeyId()) ?? "";
  const alice2Identity = (await alice2Crypto.getCrossSigningKeyId()) ?? "";
  if (aliceIdentity === "" || aliceIdentity !== alice2Identity) fail(`alice2 master key ${alice2Identity}, want ${aliceIdentity}`);
  await waitFor("bob to see alice's new device cross-signed", async () =>
    (await bobCrypto.getDeviceVerificationStatus(alice.getUserId(), alice2.getDeviceId()))?.signedByOwner,
  ).catch(async (e) => fail(`${e.message}; /keys/query: ${await rawQuery(bob, alice.getUserId())}`));

  alice.stopClient();
  bob.stopClient();
  alice2.stopClient();
  clearTimeout(deadline);
  process.stdout.write(JSON.stringify({ ok: true, roomId, backupVersion, restored, alice: bodies(alice, roomId), bob: bodies(bob, roomId), alice2: decrypted }) + "\n");
  process.exit(0);
}

main().catch((e) => fail(e?.stack || String(e)));
