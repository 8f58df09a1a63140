// Several nodes as one service (SPEC §10): three real server processes on
// one PostgreSQL database, with the stock socket.io-client and
// @insforge/sdk spread over them: fan-out and one order per channel (of
// durable and of ephemeral messages), presence across nodes, a node killed (its members leave, its clients
// come back through the balancer to the others and recover what they
// missed), and a rolling restart that loses no acknowledged message.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { createClient } from "@insforge/sdk";
import { execFileSync } from "node:child_process";
import { startCluster, startBalancer, nextEvent, jwt, ANON_KEY } from "./helpers.mjs";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const range = (from, to) => Array.from({ length: to - from }, (_, i) => from + i);

async function until(check, what, ms = 20_000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

// Nodes take one for dead after 4 s of silence (a client of a killed node
// is back on another before: a recovery waits up to 2 s for the session's
// node to hand it over); members of a dropped connection stay 3 s.
const CLUSTER_ENV = {
  REALTIME__CLUSTER__HEARTBEAT_MS: "200",
  REALTIME__CLUSTER__NODE_TIMEOUT_MS: "4000",
  REALTIME__PRESENCE__LEAVE_GRACE_MS: "3000",
};

const postgres = Boolean(process.env.REALTIME_TEST_POSTGRES_URL);

describe("three nodes on one PostgreSQL", { skip: !postgres && "needs PostgreSQL" }, () => {
  let nodes;
  const sockets = [];
  const clients = [];
  before(async () => {
    nodes = await startCluster(3, CLUSTER_ENV);
    for (const pattern of ["chat:%", "room:%", "live:%"]) {
      assert.equal((await nodes[0].admin("POST", "/api/realtime/channels", { pattern })).status, 201);
    }
    const typing = await nodes[0].admin("POST", "/api/realtime/channels", { pattern: "typing:%", ephemeral: true });
    assert.equal(typing.status, 201);
    // Every node knows the channels (the others hear of them at once).
    for (const node of nodes) {
      await until(async () => {
        const socket = connect(node.url, { token: ANON_KEY });
        const ack = await subscribe(socket, "chat:probe");
        socket.close();
        return ack.ok;
      }, "the channels on every node");
    }
  });
  after(async () => {
    for (const socket of sockets) socket.close();
    for (const client of clients) client.realtime.disconnect();
    for (const node of nodes ?? []) await node.stop();
  });

  function connect(url, auth, options = {}) {
    const socket = io(url, {
      auth,
      transports: ["websocket"],
      forceNew: true,
      reconnectionDelay: 100,
      reconnectionDelayMax: 100,
      randomizationFactor: 0,
      ...options,
    });
    sockets.push(socket);
    return socket;
  }
  const subscribe = (socket, channel) =>
    new Promise((resolve) => socket.emit("realtime:subscribe", { channel }, resolve));
  const publish = (socket, channel, payload) =>
    new Promise((resolve) => socket.emit("realtime:publish", { channel, event: "tick", payload }, resolve));
  const user = (sub) => ({ token: jwt({ sub, role: "authenticated" }) });
  /**
   * Waits until `presenceId` is written as present on `n` nodes: the other
   * nodes learn of a member a few milliseconds after it joined (one that
   * subscribes meanwhile hears of it as a join instead).
   */
  const writtenOn = (presenceId, n) =>
    until(() => {
      const count = execFileSync("psql", [nodes[0].databaseUrl, "-tAc",
        `SELECT count(*) FROM realtime.presence WHERE presence_id = '${presenceId}'`]).toString().trim();
      return Number(count) === n;
    }, `${presenceId} present on ${n} nodes`);

  test("a message published on any node reaches every node, in one order per channel", async () => {
    const channel = "chat:fanout";
    const received = [];
    // Two stock clients and one @insforge/sdk client on each node.
    for (const node of nodes) {
      for (let i = 0; i < 2; i++) {
        const socket = connect(node.url, { token: ANON_KEY });
        const got = [];
        socket.on("tick", (message) => got.push(message.n));
        assert.equal((await subscribe(socket, channel)).ok, true);
        received.push(got);
      }
      const sdk = createClient({ baseUrl: node.url, anonKey: ANON_KEY });
      clients.push(sdk);
      assert.equal((await sdk.realtime.subscribe(channel)).ok, true);
      const got = [];
      sdk.realtime.on("tick", (message) => got.push(message.n));
      received.push(got);
    }
    // Publishers on every node at once: sockets, and REST on one node.
    const publishers = [];
    for (const node of nodes) {
      const socket = connect(node.url, { token: ANON_KEY });
      assert.equal((await subscribe(socket, channel)).ok, true);
      publishers.push(socket);
    }
    const PER = 60;
    await Promise.all([
      ...publishers.map(async (socket, p) => {
        for (let n = 0; n < PER; n += 10) {
          const acks = await Promise.all(range(n, n + 10).map((i) => publish(socket, channel, { n: `s${p}-${i}` })));
          for (const ack of acks) assert.equal(ack.ok, true, JSON.stringify(ack));
        }
      }),
      (async () => {
        for (let i = 0; i < PER; i++) {
          const { status } = await nodes[2].admin("POST", "/api/realtime/messages", { channel, event: "tick", payload: { n: `r-${i}` } });
          assert.equal(status, 201);
        }
      })(),
    ]);
    const total = PER * 4;
    await until(() => received.every((got) => got.length >= total), `all ${total} on every client`);
    await sleep(300);
    const [first] = received;
    assert.equal(new Set(first).size, total, "each message once");
    for (const got of received) assert.deepEqual(got, first, "one order on every node");
    // Each publisher's own messages keep their order.
    for (let p = 0; p < 3; p++) {
      const own = first.filter((n) => n.startsWith(`s${p}-`));
      assert.deepEqual(own, range(0, PER).map((i) => `s${p}-${i}`));
    }
    // Audience counts add up over the nodes: 12 subscribers in all.
    const history = await nodes[1].admin("GET", `/api/realtime/messages?channelName=${channel}&limit=1000`);
    assert.equal(history.body.length, total);
    assert.ok(history.body.every((row) => row.wsAudienceCount === 12), JSON.stringify(history.body[0]));
  });

  test("ephemeral messages reach every node in one order and are never stored", async () => {
    const channel = "typing:doc";
    const received = [];
    const publishers = [];
    for (const node of nodes) {
      const socket = connect(node.url, { token: ANON_KEY });
      const got = [];
      socket.on("typing", (...args) => got.push(args));
      assert.equal((await subscribe(socket, channel)).ok, true);
      received.push(got);
      const publisher = connect(node.url, { token: ANON_KEY });
      assert.equal((await subscribe(publisher, channel)).ok, true);
      publishers.push(publisher);
    }
    const PER = 50;
    await Promise.all(publishers.map(async (socket, p) => {
      const acks = await Promise.all(range(0, PER).map((i) =>
        new Promise((resolve) => socket.emit("realtime:publish", { channel, event: "typing", payload: { n: `p${p}-${i}` } }, resolve))));
      for (const ack of acks) assert.equal(ack.ok, true, JSON.stringify(ack));
    }));
    const total = PER * 3;
    await until(() => received.every((got) => got.length >= total), `all ${total} on every node`);
    await sleep(300);
    const names = received.map((got) => got.map(([message]) => message.n));
    assert.equal(new Set(names[0]).size, total, "each message once");
    for (const got of names) assert.deepEqual(got, names[0], "one order on every node");
    for (let p = 0; p < 3; p++) {
      assert.deepEqual(names[0].filter((n) => n.startsWith(`p${p}-`)), range(0, PER).map((i) => `p${p}-${i}`));
    }
    // No offset argument, no history row.
    assert.ok(received.every((got) => got.every((args) => args.length === 1)));
    const history = await nodes[1].admin("GET", "/api/realtime/messages?eventName=typing&limit=10");
    assert.deepEqual(history.body, []);
  });

  test("presence is one set of members across the nodes", async () => {
    const channel = "room:presence";
    const watcher = connect(nodes[0].url, user("aaaaaaaa-0000-4000-8000-000000000001"));
    const events = [];
    watcher.on("presence:join", ({ member }) => events.push(["join", member.presenceId]));
    watcher.on("presence:leave", ({ member }) => events.push(["leave", member.presenceId]));
    assert.equal((await subscribe(watcher, channel)).ok, true);
    await writtenOn("aaaaaaaa-0000-4000-8000-000000000001", 1);
    const BOB = "bbbbbbbb-0000-4000-8000-000000000002";
    // Bob on node 2, then again on node 3: one member.
    const bobOn2 = connect(nodes[1].url, user(BOB));
    const ack = await subscribe(bobOn2, channel);
    assert.deepEqual(ack.presence.members.map((m) => m.presenceId).sort(), ["aaaaaaaa-0000-4000-8000-000000000001", BOB]);
    await until(() => events.length === 1, "Bob's join");
    const bobOn3 = connect(nodes[2].url, user(BOB));
    const again = await subscribe(bobOn3, channel);
    assert.equal(again.presence.members.length, 2);
    // An @insforge/sdk client on node 3 sees both members.
    const sdk = createClient({ baseUrl: nodes[2].url, accessToken: jwt({ sub: "cccccccc-0000-4000-8000-000000000003", role: "authenticated" }), isServerMode: true });
    clients.push(sdk);
    const sdkAck = await sdk.realtime.subscribe(channel);
    assert.equal(sdkAck.presence.members.length, 3);
    await until(() => events.length === 2, "the SDK's join");
    // Bob leaves node 2 but stays on node 3: nobody sees him leave.
    bobOn2.emit("realtime:unsubscribe", { channel });
    await sleep(500);
    assert.deepEqual(events, [["join", BOB], ["join", "cccccccc-0000-4000-8000-000000000003"]]);
    // His last socket leaves: one leave, everywhere.
    const sdkLeaves = [];
    sdk.realtime.on("presence:leave", (payload) => sdkLeaves.push(payload.member?.presenceId ?? payload.presenceId));
    bobOn3.emit("realtime:unsubscribe", { channel });
    await until(() => events.length === 3 && sdkLeaves.length === 1, "Bob's leave on node 1 and node 3");
    assert.deepEqual(events[2], ["leave", BOB]);
    await sleep(300);
    assert.equal(events.length, 3);
  });

  test("a killed node's members leave; its clients recover on the others what they missed", async () => {
    const channel = "live:crash";
    const balancer = await startBalancer(nodes.map((node) => node.url));
    try {
      // The watcher is on node 1; the balancer sends the next two
      // connections to nodes 1, 2, 3 in turn: connect until one is on node 3.
      const watcher = connect(nodes[0].url, user("dddddddd-0000-4000-8000-000000000004"));
      const events = [];
      watcher.on("presence:join", ({ member }) => events.push(["join", member.presenceId]));
      watcher.on("presence:leave", ({ member }) => events.push(["leave", member.presenceId]));
      assert.equal((await subscribe(watcher, channel)).ok, true);
      const sessionsOn = async (node) => (await node.admin("GET", "/api/realtime/sessions")).body.map((s) => s.id);
      async function clientOnNode3(sub, options) {
        for (;;) {
          const socket = connect(balancer.url, user(sub), options);
          await nextEvent(socket, "connect");
          if ((await sessionsOn(nodes[2])).includes(socket.id)) return socket;
          socket.io.reconnection(false);
          socket.close();
        }
      }
      const SURVIVOR = "eeeeeeee-0000-4000-8000-000000000005";
      const GONE = "ffffffff-0000-4000-8000-000000000006";
      const survivor = await clientOnNode3(SURVIVOR);
      const gone = await clientOnNode3(GONE, { reconnection: false });
      const got = [];
      survivor.on("tick", (message) => got.push(message.n));
      assert.equal((await subscribe(survivor, channel)).ok, true);
      assert.equal((await subscribe(gone, channel)).ok, true);
      await until(() => events.length === 2, "both joins");
      // A publisher on node 2 publishes through the crash.
      const publisher = connect(nodes[1].url, { token: ANON_KEY });
      assert.equal((await subscribe(publisher, channel)).ok, true);
      const acked = [];
      let publishing = true;
      const publishing_done = (async () => {
        for (let i = 0; publishing; i++) {
          const ack = await publish(publisher, channel, { n: i });
          if (ack.ok) acked.push(i);
          await sleep(5);
        }
      })();
      await until(() => got.length >= 20, "messages before the crash");
      // The checkpoint of the survivor's session is saved at its subscribe.
      const reconnected = nextEvent(survivor, "connect", 20_000);
      await nodes[2].kill();
      await reconnected;
      assert.equal(survivor.recovered, true, "recovered on another node");
      await sleep(300);
      publishing = false;
      await publishing_done;
      await until(() => got.length >= acked.length, `all ${acked.length} acked messages`);
      await sleep(300);
      assert.deepEqual(got, acked, "every message once, in order");
      // The member that did not come back leaves within the node timeout;
      // the one that came back never left.
      await until(() => events.some(([kind, id]) => kind === "leave" && id === GONE), "the dead node's member leaves", 8000);
      await sleep(500);
      assert.deepEqual(events.filter(([, id]) => id === SURVIVOR), [["join", SURVIVOR]]);
    } finally {
      await balancer.stop();
    }
  });

  test("a rolling restart of every node loses no acknowledged message", async () => {
    // The node killed above comes back first.
    await nodes[2].restart();
    const channel = "live:rolling";
    const balancer = await startBalancer(nodes.map((node) => node.url));
    try {
      const subscribers = [];
      for (let i = 0; i < 3; i++) {
        const socket = connect(balancer.url, { token: ANON_KEY });
        const got = [];
        socket.on("tick", (message) => got.push(message.n));
        assert.equal((await subscribe(socket, channel)).ok, true);
        subscribers.push({ socket, got });
      }
      const publisher = connect(balancer.url, { token: ANON_KEY });
      assert.equal((await subscribe(publisher, channel)).ok, true);
      const acked = [];
      let failed = 0;
      let publishing = true;
      const done = (async () => {
        for (let i = 0; publishing; i++) {
          if (!publisher.connected) {
            await sleep(20);
            continue;
          }
          const ack = await Promise.race([publish(publisher, channel, { n: i }), sleep(5000).then(() => ({ ok: false }))]);
          if (ack.ok) acked.push(i);
          else failed++;
          await sleep(5);
        }
      })();
      publisher.on("connect", () => subscribe(publisher, channel));
      for (const node of nodes) {
        await sleep(1500);
        await node.restart();
      }
      await sleep(1500);
      publishing = false;
      await done;
      assert.ok(acked.length > 50, `${acked.length} acked, ${failed} failed`);
      // Every acknowledged message is in history.
      const stored = new Set();
      for (let offset = 0; ; offset += 1000) {
        const page = await nodes[0].admin("GET", `/api/realtime/messages?channelName=${channel}&limit=1000&offset=${offset}`);
        assert.equal(page.status, 200, JSON.stringify(page.body));
        for (const row of page.body) stored.add(row.payload.n);
        if (page.body.length < 1000) break;
      }
      assert.deepEqual(acked.filter((n) => !stored.has(n)), [], "acked but not stored");
      // Every subscriber came back (recovered) and got each acked message
      // once, in order.
      for (const { socket, got } of subscribers) {
        await until(() => socket.connected && acked.every((n) => got.includes(n)), "every acked message at every subscriber");
        const dupes = got.filter((n, i) => got.indexOf(n) !== i);
        assert.deepEqual(dupes, [], `no message twice: ${JSON.stringify(got)}`);
        const ackedSet = new Set(acked);
        assert.deepEqual(got.filter((n) => ackedSet.has(n)), acked, "in order");
      }
    } finally {
      await balancer.stop();
    }
  });
});
