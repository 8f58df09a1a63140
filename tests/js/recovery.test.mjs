// Connection state recovery (SPEC §9b) with the stock socket.io-client and
// @insforge/sdk, against the real server binary on SQLite and PostgreSQL:
// a client whose connection drops comes back with `socket.recovered ===
// true`, its subscriptions, and every message it missed exactly once, in
// order; also after a server restart. When recovery is impossible it gets
// a fresh session, never an error loop.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { createClient } from "@insforge/sdk";
import { startRealtime, backends, nextEvent, jwt, sql, ANON_KEY } from "./helpers.mjs";

const ALICE = "11111111-1111-4111-8111-111111111111";
const BOB = "22222222-2222-4222-8222-222222222222";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits until `check()` is true, or fails after `ms`. */
async function until(check, what, ms = 20_000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

const range = (from, to) => Array.from({ length: to - from }, (_, i) => from + i);

for (const backend of backends()) {
  describe(`recovery on ${backend}`, () => {
    let server;
    const sockets = [];
    const clients = [];
    before(async () => {
      server = await startRealtime(backend, { REALTIME__RECOVERY__MAX_MESSAGES: "2000" });
      for (const pattern of ["rec:%", "vault:%"]) {
        assert.equal((await server.admin("POST", "/api/realtime/channels", { pattern })).status, 201);
      }
    });
    after(async () => {
      for (const socket of sockets) socket.close();
      for (const client of clients) client.realtime.disconnect();
      await server?.stop();
    });

    /** A stock client that reconnects by itself, quickly (or after `delay`). */
    function connect(auth, delay = 100) {
      const socket = io(server.url, {
        auth,
        transports: ["websocket"],
        forceNew: true,
        reconnectionDelay: delay,
        reconnectionDelayMax: delay,
        randomizationFactor: 0,
      });
      sockets.push(socket);
      return socket;
    }
    const subscribe = (socket, channel) =>
      new Promise((resolve) => socket.emit("realtime:subscribe", { channel }, resolve));
    const publish = (socket, channel, event, payload) =>
      new Promise((resolve) => socket.emit("realtime:publish", { channel, event, payload }, resolve));

    /** Publishes `n` of `from..to` on `channel`, a few in flight at once, each acked. */
    const joined = new WeakMap();
    async function publishRange(publisher, channel, from, to) {
      // Only subscribers publish.
      const channels = joined.get(publisher) ?? new Set();
      joined.set(publisher, channels);
      if (!channels.has(channel)) {
        assert.equal((await subscribe(publisher, channel)).ok, true);
        channels.add(channel);
      }
      for (let n = from; n < to; n += 25) {
        const batch = range(n, Math.min(n + 25, to)).map((i) => publish(publisher, channel, "tick", { n: i }));
        for (const ack of await Promise.all(batch)) assert.equal(ack.ok, true, JSON.stringify(ack));
      }
    }

    /** Closes a socket's transport through the admin API, as a dropped network would. */
    async function drop(socket) {
      const closed = await server.admin("DELETE", `/api/realtime/sessions/${encodeURIComponent(socket.id)}`);
      assert.equal(closed.status, 204);
    }

    /**
     * Drops `socket` and keeps it away while `meanwhile` runs, then lets it
     * come back (with its pid and offset, as the stock client does).
     */
    async function away(socket, meanwhile) {
      socket.io.reconnection(false);
      const gone = nextEvent(socket, "disconnect");
      await drop(socket);
      await gone;
      await meanwhile();
      const back = nextEvent(socket, "connect", 20_000);
      socket.connect();
      await back;
    }

    test("a dropped client gets back its subscription and every missed message once, in order", async () => {
      const publisher = connect({ token: ANON_KEY });
      await nextEvent(publisher, "connect");
      const client = connect({ token: jwt({ sub: ALICE, role: "authenticated" }) });
      await nextEvent(client, "connect");
      assert.equal(client.recovered, false);
      assert.equal((await subscribe(client, "rec:1")).ok, true);
      const got = [];
      const offsets = [];
      client.on("tick", (message, offset) => {
        got.push(message.n);
        offsets.push(offset);
      });
      await publishRange(publisher, "rec:1", 0, 10);
      await until(() => got.length === 10, "the first 10");
      // Each event carries its offset as a string, growing.
      assert.ok(offsets.every((offset) => typeof offset === "string" && /^\d+$/.test(offset)));
      assert.ok(offsets.every((offset, i) => i === 0 || BigInt(offset) > BigInt(offsets[i - 1])));

      const firstId = client.id;
      const reconnected = nextEvent(client, "connect", 20_000);
      await drop(client);
      // 500 more while it is away (and while it comes back: the seam).
      await publishRange(publisher, "rec:1", 10, 510);
      await reconnected;
      assert.equal(client.recovered, true);
      assert.equal(client.id, firstId, "a recovered socket keeps its id");
      await until(() => got.length >= 510, "all 510");
      await sleep(300);
      assert.deepEqual(got, range(0, 510));

      // Live again, with no resubscribe: the next one arrives once.
      await publishRange(publisher, "rec:1", 510, 511);
      await until(() => got.length === 511, "the live one");

      // The same pid recovers again, from a connection that already
      // recovered once.
      const again = nextEvent(client, "connect", 20_000);
      await drop(client);
      await publishRange(publisher, "rec:1", 511, 520);
      await again;
      assert.equal(client.recovered, true);
      await until(() => got.length >= 520, "all 520");
      await sleep(200);
      assert.deepEqual(got, range(0, 520));
      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      assert.match(metrics, /realtime_recoveries_total\{outcome="recovered"\} [1-9]/);
    });

    test("a client that had received nothing yet recovers from where its session began", async () => {
      const publisher = connect({ token: ANON_KEY });
      await nextEvent(publisher, "connect");
      const client = connect({ token: ANON_KEY });
      await nextEvent(client, "connect");
      assert.equal((await subscribe(client, "rec:2")).ok, true);
      const got = [];
      client.on("tick", (message) => got.push(message.n));
      const reconnected = nextEvent(client, "connect", 20_000);
      await drop(client);
      await publishRange(publisher, "rec:2", 0, 50);
      await reconnected;
      assert.equal(client.recovered, true);
      await until(() => got.length >= 50, "all 50");
      await sleep(200);
      assert.deepEqual(got, range(0, 50));
    });

    test("a second connection with the same pid takes the session over; the old one closes", async () => {
      const publisher = connect({ token: ANON_KEY });
      await nextEvent(publisher, "connect");
      const old = connect({ token: ANON_KEY });
      await nextEvent(old, "connect");
      const oldId = old.id;
      assert.equal((await subscribe(old, "rec:3")).ok, true);
      await publishRange(publisher, "rec:3", 0, 5);
      await until(() => old._lastOffset !== undefined, "an offset");
      const { _pid: oldPid, _lastOffset: oldOffset } = old;
      assert.ok(oldPid, "the CONNECT answer carried a pid");
      const oldGone = nextEvent(old, "disconnect", 10_000);
      // A fresh client presenting the old session's pid and offset, while
      // the old connection is still open.
      const taker = io(server.url, {
        auth: { token: ANON_KEY, pid: oldPid, offset: oldOffset },
        transports: ["websocket"],
        forceNew: true,
        reconnection: false,
      });
      sockets.push(taker);
      const got = [];
      taker.on("tick", (message) => got.push(message.n));
      await nextEvent(taker, "connect");
      const [reason] = await oldGone;
      assert.equal(reason, "transport close");
      assert.equal(taker.id, oldId, "the session keeps its socket id");
      assert.equal(taker._pid, oldPid, "the session keeps its pid");
      await publishRange(publisher, "rec:3", 5, 10);
      await until(() => got.length >= 5, "the live ones");
      await sleep(200);
      // Nothing before the offset again: only what came after it.
      assert.deepEqual(got, range(5, 10));
      old.io.reconnection(false);
    });

    test("@insforge/sdk recovers: its listeners get the payload alone, no duplicate after its resubscribe", async () => {
      const publisher = connect({ token: ANON_KEY });
      await nextEvent(publisher, "connect");
      const sdk = createClient({ baseUrl: server.url, accessToken: jwt({ sub: BOB, role: "authenticated" }), isServerMode: true });
      clients.push(sdk);
      assert.equal((await sdk.realtime.subscribe("rec:sdk")).ok, true);
      const got = [];
      sdk.realtime.on("tick", (...args) => {
        // The SDK hands its listeners the message alone.
        assert.equal(args.length, 1);
        assert.equal(typeof args[0], "object");
        got.push(args[0].n);
      });
      await publishRange(publisher, "rec:sdk", 0, 5);
      await until(() => got.length === 5, "the first 5");
      const socket = sdk.realtime.socket;
      const reconnected = nextEvent(socket, "connect", 20_000);
      await drop(socket);
      await publishRange(publisher, "rec:sdk", 5, 105);
      await reconnected;
      assert.equal(socket.recovered, true);
      await until(() => got.length >= 105, "all 105");
      // The SDK subscribes again after every reconnect; the server keeps
      // one subscription, so nothing arrives twice.
      await publishRange(publisher, "rec:sdk", 105, 110);
      await until(() => got.length >= 110, "all 110");
      await sleep(300);
      assert.deepEqual(got, range(0, 110));
      const actor = await server.admin("GET", `/api/realtime/actors/${encodeURIComponent("rec:sdk")}`);
      assert.equal(actor.status, 200);
      // One subscription and one presence member for the SDK's socket.
      assert.equal(actor.body.subscribers.filter((id) => id === socket.id).length, 1);
      assert.equal(actor.body.presence.filter((member) => member.presenceId === BOB).length, 1);
    });

    test("presence does not flap: a client back within the grace shows the others nothing", async () => {
      const watcher = connect({ token: ANON_KEY });
      await nextEvent(watcher, "connect");
      assert.equal((await subscribe(watcher, "rec:presence")).ok, true);
      const seen = [];
      watcher.on("presence:join", (message) => seen.push(["join", message.member.presenceId]));
      watcher.on("presence:leave", (message) => seen.push(["leave", message.member.presenceId]));
      const client = connect({ token: jwt({ sub: ALICE, role: "authenticated" }) });
      await nextEvent(client, "connect");
      assert.equal((await subscribe(client, "rec:presence")).ok, true);
      await until(() => seen.length === 1, "the join");
      assert.deepEqual(seen, [["join", ALICE]]);
      // Away for 3 s (the grace is 10 s), then back.
      await away(client, () => sleep(3000));
      assert.equal(client.recovered, true);
      await sleep(300);
      assert.deepEqual(seen, [["join", ALICE]]);
      // Still one member, present.
      const actor = await server.admin("GET", `/api/realtime/actors/${encodeURIComponent("rec:presence")}`);
      assert.deepEqual(actor.body.presence.map((member) => member.presenceId).sort(), [ALICE, watcher.id].sort());
      // Leaving on purpose is seen at once.
      client.emit("realtime:unsubscribe", { channel: "rec:presence" });
      await until(() => seen.length === 2, "the leave", 2000);
      assert.deepEqual(seen[1], ["leave", ALICE]);
    });

    test("more missed messages than recovery.max_messages give a fresh session", async () => {
      const publisher = connect({ token: ANON_KEY });
      await nextEvent(publisher, "connect");
      const client = connect({ token: ANON_KEY });
      await nextEvent(client, "connect");
      assert.equal((await subscribe(client, "rec:many")).ok, true);
      await away(client, () => publishRange(publisher, "rec:many", 0, 2001));
      assert.equal(client.recovered, false);
    });

    test("after a graceful restart the client recovers what was published meanwhile", async () => {
      const client = connect({ token: jwt({ sub: ALICE, role: "authenticated" }) });
      await nextEvent(client, "connect");
      const joinedRestart = await subscribe(client, "rec:restart");
      assert.equal(joinedRestart.ok, true, JSON.stringify(joinedRestart));
      const got = [];
      client.on("tick", (message) => got.push(message.n));
      const publisher = connect({ token: ANON_KEY });
      await nextEvent(publisher, "connect");
      await publishRange(publisher, "rec:restart", 0, 3);
      await until(() => got.length === 3, "the first 3");
      publisher.io.reconnection(false);
      client.io.reconnection(false);
      const gone = nextEvent(client, "disconnect");
      await server.restart();
      await gone;
      // Published while the client is away, to the new process.
      for (const n of range(3, 203)) {
        const published = await server.admin("POST", "/api/realtime/messages", { channel: "rec:restart", event: "tick", payload: { n } });
        assert.equal(published.status, 201, JSON.stringify(published.body));
      }
      const back = nextEvent(client, "connect", 20_000);
      client.connect();
      await back;
      assert.equal(client.recovered, true);
      await until(() => got.length >= 203, "all 203");
      await sleep(200);
      assert.deepEqual(got, range(0, 203));
    });
  });

  describe(`recovery and permissions on ${backend}`, () => {
    let server;
    const sockets = [];
    before(async () => {
      server = await startRealtime(backend);
      assert.equal((await server.admin("POST", "/api/realtime/channels", { pattern: "vault:%" })).status, 201);
    });
    after(async () => {
      for (const socket of sockets) socket.close();
      await server?.stop();
    });

    function connect(auth) {
      const socket = io(server.url, { auth, transports: ["websocket"], forceNew: true, reconnection: false });
      sockets.push(socket);
      return socket;
    }
    const subscribe = (socket, channel) =>
      new Promise((resolve) => socket.emit("realtime:subscribe", { channel }, resolve));

    async function away(socket, meanwhile) {
      const gone = nextEvent(socket, "disconnect");
      const closed = await server.admin("DELETE", `/api/realtime/sessions/${encodeURIComponent(socket.id)}`);
      assert.equal(closed.status, 204);
      await gone;
      await meanwhile();
      const back = nextEvent(socket, "connect", 20_000);
      socket.connect();
      await back;
    }

    test("a revoked permission gives a fresh session and none of the missed messages", async () => {
      const pg = backend === "postgres";
      if (pg) {
        sql(server, `CREATE TABLE IF NOT EXISTS public.vault_grants (user_id uuid NOT NULL, channel text NOT NULL);
          GRANT SELECT ON public.vault_grants TO authenticated;
          INSERT INTO public.vault_grants VALUES ('${ALICE}', 'vault:1');`);
      } else {
        sql(server, `CREATE TABLE IF NOT EXISTS vault_grants (user_id TEXT NOT NULL, channel TEXT NOT NULL);
          INSERT INTO vault_grants VALUES ('${ALICE}', 'vault:1');`);
      }
      const policy = {
        name: "granted vaults", action: "subscribe", roles: ["authenticated", "anon"],
        condition: pg
          ? "realtime.channel_name() NOT LIKE 'vault:%' OR EXISTS (SELECT 1 FROM public.vault_grants g WHERE g.channel = realtime.channel_name() AND g.user_id = auth.uid())"
          : "request.channel NOT LIKE 'vault:%' OR EXISTS (SELECT 1 FROM vault_grants g WHERE g.channel = request.channel AND g.user_id = request.user_id)",
      };
      const created = await server.admin("POST", "/api/realtime/permissions", policy);
      assert.equal(created.status, 201, JSON.stringify(created.body));
      const client = connect({ token: jwt({ sub: ALICE, role: "authenticated" }) });
      await nextEvent(client, "connect");
      const vault = await subscribe(client, "vault:1");
      assert.equal(vault.ok, true, JSON.stringify(vault));
      const got = [];
      client.on("secret", (message) => got.push(message.n));
      await away(client, async () => {
        sql(server, pg ? "DELETE FROM public.vault_grants" : "DELETE FROM vault_grants");
        for (const n of range(0, 5)) {
          const published = await server.admin("POST", "/api/realtime/messages", { channel: "vault:1", event: "secret", payload: { n } });
          assert.equal(published.status, 201);
        }
      });
      assert.equal(client.recovered, false);
      await sleep(300);
      assert.deepEqual(got, []);
    });
  });

  describe(`recovery window on ${backend}`, () => {
    let server;
    const sockets = [];
    before(async () => {
      server = await startRealtime(backend, {
        REALTIME__RECOVERY__WINDOW_MS: "1000",
        REALTIME__PRESENCE__LEAVE_GRACE_MS: "500",
      });
      assert.equal((await server.admin("POST", "/api/realtime/channels", { pattern: "rec:%" })).status, 201);
    });
    after(async () => {
      for (const socket of sockets) socket.close();
      await server?.stop();
    });

    test("a client back after the window gets a fresh session (and no error loop)", async () => {
      const client = io(server.url, {
        auth: { token: ANON_KEY },
        transports: ["websocket"],
        forceNew: true,
        reconnectionDelay: 2000,
        reconnectionDelayMax: 2000,
        randomizationFactor: 0,
      });
      sockets.push(client);
      await nextEvent(client, "connect");
      assert.equal(await new Promise((resolve) => client.emit("realtime:subscribe", { channel: "rec:late" }, (ack) => resolve(ack.ok))), true);
      const oldPid = client._pid;
      const reconnected = nextEvent(client, "connect", 20_000);
      const closed = await server.admin("DELETE", `/api/realtime/sessions/${encodeURIComponent(client.id)}`);
      assert.equal(closed.status, 204);
      await reconnected;
      assert.equal(client.recovered, false);
      assert.notEqual(client._pid, oldPid, "a fresh session has a new pid");
      // Its subscription is gone with the old session: subscribing works.
      const ack = await new Promise((resolve) => client.emit("realtime:subscribe", { channel: "rec:late" }, resolve));
      assert.equal(ack.ok, true);
    });

    test("a member that does not come back leaves once the grace is over", async () => {
      const watcher = io(server.url, { auth: { token: ANON_KEY }, transports: ["websocket"], forceNew: true, reconnection: false });
      const leaver = io(server.url, { auth: { token: ANON_KEY }, transports: ["websocket"], forceNew: true, reconnection: false });
      sockets.push(watcher, leaver);
      await Promise.all([nextEvent(watcher, "connect"), nextEvent(leaver, "connect")]);
      const subscribed = (socket) => new Promise((resolve) => socket.emit("realtime:subscribe", { channel: "rec:gone" }, resolve));
      assert.equal((await subscribed(watcher)).ok, true);
      const joined = nextEvent(watcher, "presence:join");
      assert.equal((await subscribed(leaver)).ok, true);
      await joined;
      const leaverId = leaver.id;
      const droppedAt = Date.now();
      const left = nextEvent(watcher, "presence:leave", 5000);
      const closed = await server.admin("DELETE", `/api/realtime/sessions/${encodeURIComponent(leaverId)}`);
      assert.equal(closed.status, 204);
      const [message] = await left;
      assert.equal(message.member.presenceId, leaverId);
      assert.ok(Date.now() - droppedAt >= 450, "not before the grace ended");
    });
  });
}
