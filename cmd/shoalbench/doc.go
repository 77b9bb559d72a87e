// Command shoalbench is shoal's load tool. It drives a Matrix homeserver
// over its client API the way real clients do (one shared HTTP client with
// keep-alive connections, every simulated user with its own access token)
// and prints what it measured as a plain-text table, and as JSON with -json.
//
// Servers:
//
//	-shoal BIN     starts a fresh shoal node (new data dir, free loopback
//	               port, rate limits off) and stops it with SIGTERM after.
//	-url URL       a server that is already running on this machine; users
//	               register with m.login.dummy UIA, or with the shared-secret
//	               admin API when -shared-secret is given.
//	-dendrite BIN  sets up a fresh Dendrite v0.13.8 with its own tools
//	               (generate-keys, generate-config: SQLite, federation off,
//	               open registration, rate limits off) and runs it the same
//	               way, for comparison.
//
// Servers run one after the other, never at the same time, and only on
// loopback. Every scenario is bounded in count and in time (-timeout).
//
// Scenarios (-scenarios picks some):
//
//  1. register: -users accounts registered by -concurrency clients at
//     once. Rate in users/s, and the latency of one registration (both
//     requests of the UIA flow, including the server's password hashing).
//  2. send: -senders users send into one room as fast as each gets its
//     answers, for -send-duration. Throughput in acknowledged messages/s
//     and the latency of one send. A send that fails with a transport
//     error or a 5xx is retried with the same transaction ID.
//  3. fanout: -members users long-poll /sync (since + timeout=30000) in one
//     room; one more sends -messages messages at -rate per second. For each
//     (member, message) pair, the time from the start of the send request
//     until that member's /sync returned it: p50, p99 and max over all
//     pairs, and the share of pairs delivered within 15 s of the last send.
//  4. initialsync: one user in 1, 10, 100 rooms (-rooms; each room created
//     by the user, with one message in it); the time of a full initial
//     /sync, median of -repeats, and the size of its answer.
//  5. join: public rooms of 1, 10, 100 members (-join-sizes, 1000 with
//     -big) are set up; then -joins more users join one after another, each
//     timed: median and p99 (with 10 joins p99 is the slowest one), and how
//     long setting up the room took.
//  6. (with send) every event ID the server acknowledged in scenario 2 must
//     be in the room's /messages history (paged backwards from the newest
//     event) exactly once: none lost, none duplicated. Missing events are
//     looked for again for up to 15 s, as a server may serve history from
//     a copy that lags behind its acknowledgements.
//
// Reading the table: one column per server; with exactly two servers a
// ratio column gives the first's figure over the second's, and "better"
// says which way a figure improves (for throughput a ratio above 1 favours
// the first server, for latency a ratio below 1 does). Rows without
// "better" (setup times, counts, answer sizes) are context, not scores.
// Latencies are client-side, so they include the loopback round trip and
// JSON handling; the tool runs on the same machine as the server and takes
// CPU from it, which weighs most in the fan-out scenario (the tool parses
// every member's sync answer). The header gives the load average when the
// run started, with a warning when other work kept the machine busy. The
// checks follow the table. The tool exits 1 if a check fails or a scenario
// could not run on a server under test (-shoal, -url), 2 on bad flags;
// Dendrite is a reference, whose failures are printed but do not change
// the exit status.
package main
