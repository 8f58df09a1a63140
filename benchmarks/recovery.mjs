// Time to recover missed messages: a stock socket.io-client subscribes,
// drops (closed through the admin API, as a dead network would be), misses
// MESSAGES publishes, then reconnects; we time from its reconnect to the
// last missed message, and check that each arrived once, in order.
//
//   node benchmarks/recovery.mjs URL [MESSAGES] [ROUNDS]
//
// Uses the npm packages of tests/js (run `npm ci` there first). Prints one
// JSON line per round. benchmarks/recovery.sh starts the server for it.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(path.join(root, "tests/js/package.json"));
const { io } = require("socket.io-client");

const [url, messages = "10000", rounds = "3"] = process.argv.slice(2);
const API_KEY = process.env.API_KEY ?? "ik_dev_only_insecure_change_me";
const ANON_KEY = process.env.ANON_KEY ?? "anon_dev_only_insecure_change_me";
const n = Number(messages);

const once = (emitter, event, ms = 30_000) =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} in ${ms} ms`)), ms);
    emitter.once(event, (...args) => {
      clearTimeout(timer);
      resolve(args);
    });
  });
const admin = (method, route, body) =>
  fetch(`${url}${route}`, {
    method,
    headers: { "x-api-key": API_KEY, "content-type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
const emitAck = (socket, event, data) => new Promise((resolve) => socket.emit(event, data, resolve));

await admin("POST", "/api/realtime/channels", { pattern: "recover:%" });
const publisher = io(url, { auth: { token: ANON_KEY }, transports: ["websocket"], reconnection: false });
await once(publisher, "connect");

for (let round = 0; round < Number(rounds); round++) {
  const channel = `recover:${Date.now()}:${round}`;
  await emitAck(publisher, "realtime:subscribe", { channel });
  const client = io(url, { auth: { token: ANON_KEY }, transports: ["websocket"], reconnection: false, forceNew: true });
  await once(client, "connect");
  await emitAck(client, "realtime:subscribe", { channel });
  let received = 0;
  let inOrder = true;
  let done;
  const all = new Promise((resolve) => (done = resolve));
  client.on("tick", (message) => {
    if (message.n !== received) inOrder = false;
    received += 1;
    if (received === n) done();
  });
  const gone = once(client, "disconnect");
  await admin("DELETE", `/api/realtime/sessions/${encodeURIComponent(client.id)}`);
  await gone;
  for (let i = 0; i < n; i += 64) {
    const batch = [];
    for (let j = i; j < Math.min(i + 64, n); j++) {
      batch.push(emitAck(publisher, "realtime:publish", { channel, event: "tick", payload: { n: j, text: "x".repeat(80) } }));
    }
    for (const ack of await Promise.all(batch)) if (!ack.ok) throw new Error(JSON.stringify(ack));
  }
  const started = performance.now();
  client.connect();
  await once(client, "connect");
  const connected = performance.now();
  await Promise.race([all, new Promise((_, reject) => setTimeout(() => reject(new Error(`only ${received} of ${n}`)), 60_000))]);
  const finished = performance.now();
  await new Promise((resolve) => setTimeout(resolve, 200));
  console.log(JSON.stringify({
    messages: n,
    recovered: client.recovered,
    exactly_once_in_order: inOrder && received === n,
    connect_ms: +(connected - started).toFixed(1),
    recover_ms: +(finished - started).toFixed(1),
    messages_per_second: Math.round(n / ((finished - started) / 1000)),
  }));
  client.close();
}
publisher.close();
