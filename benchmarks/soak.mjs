// Soak: thousands of stock socket.io-client connections churning for N
// minutes against one server: connecting (WebSocket and long-polling),
// subscribing, publishing with acks, leaving and re-joining channels
// (presence churn), and leaving, politely or by dropping the transport.
// Every 10 s it samples the server (RSS, open file descriptors, sessions,
// live channel actors, subscriptions); at the end every client leaves and
// it waits for the server to come back to its baseline.
//
//   node benchmarks/soak.mjs URL SERVER_PID [MINUTES] [CLIENTS]
//
// Uses the npm packages of tests/js (run `npm ci` there first).
// benchmarks/soak.sh starts the server for it. Prints one JSON line per
// sample and a summary; exits non-zero if sessions, channels,
// subscriptions or the server's sockets on its port (not its database
// connections, which a pool opens as load needs) do not return to the
// baseline, or if
// any acknowledged publish was never delivered to its own publisher.
import { createRequire } from "node:module";
import { readFileSync, readdirSync, readlinkSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(path.join(root, "tests/js/package.json"));
const { io } = require("socket.io-client");

const [url, pidText, minutesText = "5", clientsText = "2000"] = process.argv.slice(2);
if (!url || !pidText) {
  console.error("usage: node benchmarks/soak.mjs URL SERVER_PID [MINUTES] [CLIENTS]");
  process.exit(2);
}
const pid = Number(pidText);
const minutes = Number(minutesText);
const target = Number(clientsText);
const API_KEY = process.env.API_KEY ?? "ik_dev_only_insecure_change_me";
const ANON_KEY = process.env.ANON_KEY ?? "anon_dev_only_insecure_change_me";
const CHANNELS = 50;
/** Share of clients on long-polling only; the rest use WebSocket only. */
const POLLING_SHARE = 0.2;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const pick = (n) => Math.floor(Math.random() * n);
const between = (low, high) => low + Math.random() * (high - low);

/** What the server process holds now. */
/**
 * The server's descriptors that are TCP sockets on its own port (the
 * listener and the clients' connections): unlike all descriptors, they do
 * not count database connections, which a pool opens as load needs them.
 */
function clientSockets() {
  const port = Number(new URL(url).port).toString(16).toUpperCase().padStart(4, "0");
  const inodes = new Set();
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    for (const line of readFileSync(table, "utf8").split("\n").slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields.length > 9 && fields[1].endsWith(`:${port}`)) inodes.add(fields[9]);
    }
  }
  let n = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const target = readlinkSync(`/proc/${pid}/fd/${fd}`);
      if (inodes.has(/^socket:\[(\d+)\]$/.exec(target)?.[1])) n++;
    } catch {}
  }
  return n;
}

function sampleProcess() {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
  const fds = readdirSync(`/proc/${pid}/fd`).length;
  return { rssMb: Math.round(rssKb / 102.4) / 10, fds, clientSockets: clientSockets() };
}

async function sampleMetrics() {
  const text = await (await fetch(`${url}/metrics`)).text();
  const value = (name) => Number(new RegExp(`^${name} (\\d+)`, "m").exec(text)?.[1] ?? NaN);
  return {
    sessions: value("realtime_sessions_open"),
    channels: value("realtime_channels_live"),
    subscriptions: value("realtime_subscriptions"),
    accepted: value("realtime_messages_accepted_total"),
  };
}

async function sample() {
  return { ...sampleProcess(), ...(await sampleMetrics()) };
}

const totals = {
  connects: 0,
  pollingConnects: 0,
  connectErrors: 0,
  publishes: 0,
  publishFailures: 0,
  ownDelivered: 0,
  subscribes: 0,
  subscribeFailures: 0,
  drops: 0,
};
/** Acked publishes not yet seen back by their publisher: id → when. */
const awaitingEcho = new Map();
let stopping = false;
let lives = 0;
const live = new Set();

/** One client's life: connect, join, talk, churn, leave. */
async function life() {
  const polling = Math.random() < POLLING_SHARE;
  const socket = io(url, {
    auth: { token: ANON_KEY },
    transports: polling ? ["polling"] : ["websocket"],
    reconnection: false,
    forceNew: true,
    timeout: 20_000,
  });
  live.add(socket);
  try {
    await new Promise((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("connect_error", reject);
      // Closed by the end of the run before it connected: neither comes.
      socket.once("disconnect", reject);
      setTimeout(() => reject(new Error("no connect in 25 s")), 25_000).unref();
    });
  } catch {
    if (!stopping) totals.connectErrors++;
    live.delete(socket);
    socket.close();
    return;
  }
  totals.connects++;
  if (polling) totals.pollingConnects++;
  // Our own messages come back to us (the publisher is a subscriber too),
  // before or after the ack: either order counts.
  const me = `${process.pid}-${++lives}`;
  const echoedEarly = new Set();
  socket.on("chat", (payload) => {
    const id = payload?.meta?.messageId;
    if (payload?.by !== me || !id) return;
    if (awaitingEcho.delete(id)) totals.ownDelivered++;
    else echoedEarly.add(id);
  });
  const joined = new Set();
  const join = async () => {
    const channel = `soak:${pick(CHANNELS)}`;
    const ack = await socket.timeout(20_000).emitWithAck("realtime:subscribe", { channel }).catch(() => null);
    totals.subscribes++;
    if (ack?.ok) joined.add(channel);
    else if (!stopping) totals.subscribeFailures++;
  };
  const joins = 1 + pick(3);
  for (let i = 0; i < joins; i++) await join();
  const until = Date.now() + between(5_000, 60_000);
  while (!stopping && Date.now() < until && socket.connected) {
    await sleep(between(1_000, 5_000));
    const roll = Math.random();
    if (roll < 0.6 && joined.size > 0) {
      const channel = [...joined][pick(joined.size)];
      const ack = await socket
        .timeout(20_000)
        .emitWithAck("realtime:publish", { channel, event: "chat", payload: { by: me, text: "x".repeat(pick(200)) } })
        .catch(() => null);
      totals.publishes++;
      // Failures while everyone is told to leave are the test's own doing.
      if (!ack?.ok) totals.publishFailures += stopping ? 0 : 1;
      else if (echoedEarly.delete(ack.messageId)) totals.ownDelivered++;
      else awaitingEcho.set(ack.messageId, Date.now());
    } else if (roll < 0.8 && joined.size > 0) {
      // Presence churn: leave a channel, join another.
      const channel = [...joined][pick(joined.size)];
      socket.emit("realtime:unsubscribe", { channel });
      joined.delete(channel);
      await join();
    }
  }
  // The last publish's echo may still be on its way.
  await sleep(1_000);
  live.delete(socket);
  if (Math.random() < 0.3) {
    // The network drops: no DISCONNECT, the server sees the transport go.
    totals.drops++;
    socket.io.engine.close();
  } else {
    socket.disconnect();
  }
}

/** Keeps `target` lives going until the end. */
async function population() {
  const running = new Set();
  const start = () => {
    const task = life().finally(() => running.delete(task));
    running.add(task);
  };
  // Ramp up over ~20 s rather than in one burst.
  for (let i = 0; i < target; i++) {
    start();
    if (i % 100 === 99) await sleep(1_000);
  }
  while (!stopping) {
    while (running.size < target && !stopping) start();
    await sleep(200);
  }
  await Promise.allSettled([...running]);
}

const admin = (method, route, body) =>
  fetch(`${url}${route}`, {
    method,
    headers: { "x-api-key": API_KEY, "content-type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
await admin("POST", "/api/realtime/channels", { pattern: "soak:%" });

const baseline = await sample();
console.log(JSON.stringify({ at: "baseline", ...baseline }));
const started = Date.now();
const running = population();
const samples = [];
while (Date.now() - started < minutes * 60_000) {
  await sleep(10_000);
  const now = { t: Math.round((Date.now() - started) / 1000), ...(await sample()), ...totals, live: live.size };
  samples.push(now);
  console.log(JSON.stringify(now));
}
stopping = true;
for (const socket of live) socket.disconnect();
await running;

// Back to baseline: sessions and subscriptions at once, channels once
// presence's leave grace (10 s) has passed for dropped members.
const settleStarted = Date.now();
let after = await sample();
while (Date.now() - settleStarted < 120_000) {
  after = await sample();
  if (after.sessions === 0 && after.channels === 0 && after.subscriptions === 0 && after.clientSockets <= baseline.clientSockets + 2) {
    break;
  }
  await sleep(1_000);
}
// Dropped sessions wait for recovery 60 s (benchmarks/soak.sh): the memory
// they held is measured once they are gone.
await sleep(Math.max(0, 70_000 - (Date.now() - settleStarted)));
const settledInS = Math.round((Date.now() - settleStarted) / 1000);
after = { ...(await sample()), rssMbAfterRecoveryWindow: sampleProcess().rssMb };
// Echoes still missing a few seconds after the end were lost.
const lostEchoes = [...awaitingEcho.values()].filter((at) => at < Date.now() - 30_000).length;
const peak = samples.reduce(
  (max, s) => ({ rssMb: Math.max(max.rssMb, s.rssMb), fds: Math.max(max.fds, s.fds), sessions: Math.max(max.sessions, s.sessions) }),
  { rssMb: 0, fds: 0, sessions: 0 },
);
const summary = {
  at: "summary",
  minutes,
  clients: target,
  ...totals,
  lostEchoes,
  baseline,
  peak,
  after,
  settledInS,
  messagesStored: after.accepted - baseline.accepted,
};
console.log(JSON.stringify(summary));
const back =
  after.sessions === 0 && after.channels === 0 && after.subscriptions === 0 && after.clientSockets <= baseline.clientSockets + 2;
if (!back || lostEchoes > 0 || totals.publishFailures > 0 || totals.connectErrors > 0) {
  console.error(
    !back
      ? "the server did not return to its baseline"
      : `${lostEchoes} acknowledged publishes never came back to their publisher, ` +
          `${totals.publishFailures} publishes and ${totals.connectErrors} connects failed`,
  );
  process.exit(1);
}
process.exit(0);
