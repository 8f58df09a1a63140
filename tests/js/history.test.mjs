// History on demand, per-channel retention and ephemeral channels (SPEC
// §9c) with the stock socket.io-client against the real server binary, on
// SQLite and PostgreSQL.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { once } from "node:events";
import { io } from "socket.io-client";
import { startRealtime, backends, nextEvent, jwt, sql, ANON_KEY } from "./helpers.mjs";

const ALICE = "11111111-1111-4111-8111-111111111111";
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const range = (from, to) => Array.from({ length: to - from }, (_, i) => from + i);

async function until(check, what, ms = 15_000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

for (const backend of backends()) {
  describe(`history and ephemeral channels on ${backend}`, () => {
    let server;
    const sockets = [];
    let receiver;
    const posted = [];
    before(async () => {
      // A local webhook receiver that counts what it gets.
      receiver = http.createServer((req, res) => {
        let body = "";
        req.on("data", (chunk) => (body += chunk));
        req.on("end", () => {
          posted.push({ channel: req.headers["x-insforge-channel"], body });
          res.end("ok");
        });
      });
      receiver.listen(0, "127.0.0.1");
      await once(receiver, "listening");
      server = await startRealtime(backend, { REALTIME__RETENTION__SWEEP_INTERVAL_MS: "300" });
      const hook = `http://127.0.0.1:${receiver.address().port}/hook`;
      for (const channel of [
        { pattern: "chat:%" },
        { pattern: "typing:%", ephemeral: true, webhookUrls: [hook] },
        { pattern: "kept:%", webhookUrls: [hook] },
        { pattern: "recent:%", retention: { maxMessages: 10 } },
        { pattern: "aged:%", retention: { maxAgeDays: 1 } },
      ]) {
        const created = await server.admin("POST", "/api/realtime/channels", channel);
        assert.equal(created.status, 201, JSON.stringify(created.body));
      }
    });
    after(async () => {
      for (const socket of sockets) socket.close();
      await server?.stop();
      receiver?.close();
    });

    async function connected(auth = { token: ANON_KEY }) {
      const socket = io(server.url, { auth, transports: ["websocket"], forceNew: true, reconnection: false });
      sockets.push(socket);
      await nextEvent(socket, "connect");
      return socket;
    }
    const call = (socket, event, body) => new Promise((resolve) => socket.emit(event, body, resolve));
    async function publishAll(socket, channel, from, to, event = "said") {
      assert.equal((await call(socket, "realtime:subscribe", { channel })).ok, true);
      for (let n = from; n < to; n += 25) {
        const acks = await Promise.all(
          range(n, Math.min(n + 25, to)).map((i) => call(socket, "realtime:publish", { channel, event, payload: { n: i } })),
        );
        for (const ack of acks) assert.equal(ack.ok, true, JSON.stringify(ack));
      }
    }
    const history = (socket, body) => call(socket, "realtime:history", body);

    test("history pages back through 250 messages, newest last, each as delivered live", async () => {
      const publisher = await connected();
      await publishAll(publisher, "chat:history", 0, 250);
      // A reader that never subscribed may read: subscribing is allowed.
      const reader = await connected({ token: jwt({ sub: ALICE, role: "authenticated" }) });
      const live = await new Promise((resolve) => {
        reader.emit("realtime:subscribe", { channel: "chat:history" }, () => {
          reader.once("said", (...args) => resolve(args));
          call(publisher, "realtime:publish", { channel: "chat:history", event: "said", payload: { n: 250 } });
        });
      });
      const first = await history(reader, { channel: "chat:history" });
      assert.equal(first.ok, true, JSON.stringify(first));
      assert.equal(first.channel, "chat:history");
      assert.equal(first.messages.length, 50);
      assert.deepEqual(first.messages.map((m) => m.payload.n), range(201, 251));
      // The newest is the one delivered live: same meta and offset.
      const newest = first.messages.at(-1);
      assert.equal(newest.event, "said");
      assert.deepEqual(newest.payload, { n: 250 });
      assert.deepEqual(newest.meta, live[0].meta);
      assert.equal(newest.offset, live[1]);
      // Paging back with `before`, down to nothing.
      const seen = [...first.messages];
      let page = first;
      while (page.messages.length > 0) {
        page = await history(reader, { channel: "chat:history", before: page.messages[0].offset, limit: 100 });
        assert.equal(page.ok, true);
        seen.unshift(...page.messages);
      }
      assert.deepEqual(seen.map((m) => m.payload.n), range(0, 251));
      // Bad requests name the field; a request without an ack gets an error event.
      for (const [body, field] of [
        [{ channel: "chat:history", limit: 0 }, "limit"],
        [{ channel: "chat:history", limit: 101 }, "limit"],
        [{ channel: "chat:history", before: 12 }, "before"],
        [{}, "channel"],
      ]) {
        const refused = await history(reader, body);
        assert.equal(refused.ok, false);
        assert.equal(refused.error.code, "INVALID_INPUT");
        assert.ok(refused.error.message.startsWith(field), refused.error.message);
      }
      const error = nextEvent(reader, "realtime:error");
      reader.emit("realtime:history", { channel: "chat:history" });
      assert.equal((await error)[0].code, "INVALID_INPUT");
      // No enabled channel: unauthorized, as subscribing would be.
      const none = await history(reader, { channel: "nowhere:1" });
      assert.equal(none.error.code, "REALTIME_UNAUTHORIZED");
    });

    test("an ephemeral channel delivers live, leaves no row, calls no webhook, has no history", async () => {
      const typist = await connected();
      const watcher = await connected();
      assert.equal((await call(watcher, "realtime:subscribe", { channel: "typing:doc1" })).ok, true);
      assert.equal((await call(typist, "realtime:subscribe", { channel: "typing:doc1" })).ok, true);
      const heard = nextEvent(watcher, "typing");
      const ack = await call(typist, "realtime:publish", { channel: "typing:doc1", event: "typing", payload: { who: "a" } });
      assert.equal(ack.ok, true, JSON.stringify(ack));
      assert.ok(ack.messageId);
      const args = await heard;
      assert.equal(args.length, 1, "no offset: nothing to recover");
      assert.equal(args[0].who, "a");
      assert.equal(args[0].meta.channel, "typing:doc1");
      assert.equal(args[0].meta.messageId, ack.messageId);
      // Over REST too.
      const heardRest = nextEvent(watcher, "typing");
      const rest = await server.admin("POST", "/api/realtime/messages", { channel: "typing:doc1", event: "typing", payload: { who: "b" } });
      assert.equal(rest.status, 201, JSON.stringify(rest.body));
      assert.equal((await heardRest)[0].who, "b");
      // A durable channel's webhook shows the receiver works; the
      // ephemeral channel's never came.
      await publishAll(typist, "kept:1", 0, 1, "kept");
      await until(() => posted.some((p) => p.channel === "kept:1"), "the durable webhook");
      await sleep(300);
      assert.equal(posted.filter((p) => p.channel === "typing:doc1").length, 0);
      const stored = await server.admin("GET", "/api/realtime/messages?eventName=typing");
      assert.equal(stored.status, 200);
      assert.equal(stored.body.length, 0, JSON.stringify(stored.body));
      const page = await history(watcher, { channel: "typing:doc1" });
      assert.deepEqual(page.messages, []);
    });

    test("retention by count keeps the newest of each channel; by age drops the old", async () => {
      const publisher = await connected();
      await publishAll(publisher, "recent:a", 0, 25);
      await publishAll(publisher, "recent:b", 0, 5);
      const reader = await connected();
      await until(async () => (await history(reader, { channel: "recent:a", limit: 100 })).messages.length === 10, "the sweep by count");
      const a = await history(reader, { channel: "recent:a", limit: 100 });
      assert.deepEqual(a.messages.map((m) => m.payload.n), range(15, 25));
      const b = await history(reader, { channel: "recent:b", limit: 100 });
      assert.deepEqual(b.messages.map((m) => m.payload.n), range(0, 5));

      // Two new messages, and two made three days old in the database.
      await publishAll(publisher, "aged:x", 0, 4);
      const old = backend === "postgres"
        ? "UPDATE realtime.messages SET created_at = now() - interval '3 days' WHERE channel_name = 'aged:x' AND payload->>'n' IN ('0', '1')"
        : "UPDATE messages SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-3 days') WHERE channel_name = 'aged:x' AND json_extract(payload, '$.n') IN (0, 1)";
      sql(server, old);
      await until(async () => (await history(reader, { channel: "aged:x" })).messages.length === 2, "the sweep by age");
      assert.deepEqual((await history(reader, { channel: "aged:x" })).messages.map((m) => m.payload.n), [2, 3]);
      // Channels without a retention of their own keep everything (no
      // global retention is set).
      assert.equal((await history(reader, { channel: "chat:history", limit: 100 })).messages.length, 100);
    });

    test("the new channel fields are additions: shown, kept by a PUT that omits them, validated", async () => {
      const list = await server.admin("GET", "/api/realtime/channels");
      const typing = list.body.find((c) => c.pattern === "typing:%");
      assert.equal(typing.ephemeral, true);
      assert.equal(typing.retention, null);
      const recent = list.body.find((c) => c.pattern === "recent:%");
      assert.deepEqual(recent.retention, { maxMessages: 10 });
      assert.equal(recent.ephemeral, false);
      // An InsForge client sends the whole object back without them.
      const { id, pattern, description, webhookUrls, enabled } = recent;
      const put = await server.admin("PUT", `/api/realtime/channels/${id}`, { pattern, description, webhookUrls, enabled });
      assert.equal(put.status, 200);
      assert.deepEqual(put.body.retention, { maxMessages: 10 });
      for (const body of [{ ephemeral: "yes" }, { retention: 5 }, { retention: { maxMessages: 0 } }, { retention: { maxAgeDays: 1.5 } }]) {
        const bad = await server.admin("PUT", `/api/realtime/channels/${id}`, body);
        assert.equal(bad.status, 400, JSON.stringify(body));
      }
      const cleared = await server.admin("PUT", `/api/realtime/channels/${id}`, { retention: null });
      assert.equal(cleared.body.retention, null);
    });
  });

  describe(`history permissions on ${backend}`, () => {
    let server;
    const sockets = [];
    before(async () => {
      server = await startRealtime(backend);
      assert.equal((await server.admin("POST", "/api/realtime/channels", { pattern: "vault:%" })).status, 201);
      const policy = {
        name: "no guests in vaults", action: "subscribe", roles: ["anon", "authenticated"],
        condition: backend === "postgres"
          ? "realtime.channel_name() NOT LIKE 'vault:%' OR auth.uid() IS NOT NULL"
          : "request.channel NOT LIKE 'vault:%' OR request.user_id IS NOT NULL",
      };
      const created = await server.admin("POST", "/api/realtime/permissions", policy);
      assert.equal(created.status, 201, JSON.stringify(created.body));
    });
    after(async () => {
      for (const socket of sockets) socket.close();
      await server?.stop();
    });

    test("history is allowed exactly when subscribing is", async () => {
      const published = await server.admin("POST", "/api/realtime/messages", { channel: "vault:1", event: "secret", payload: { n: 1 } });
      assert.equal(published.status, 201);
      const connect = async (token) => {
        const socket = io(server.url, { auth: { token }, transports: ["websocket"], forceNew: true, reconnection: false });
        sockets.push(socket);
        await nextEvent(socket, "connect");
        return socket;
      };
      const call = (socket, event, body) => new Promise((resolve) => socket.emit(event, body, resolve));
      const guest = await connect(ANON_KEY);
      assert.equal((await call(guest, "realtime:subscribe", { channel: "vault:1" })).ok, false);
      const refused = await call(guest, "realtime:history", { channel: "vault:1" });
      assert.equal(refused.ok, false);
      assert.equal(refused.error.code, "REALTIME_UNAUTHORIZED");
      const member = await connect(jwt({ sub: ALICE, role: "authenticated" }));
      const allowed = await call(member, "realtime:history", { channel: "vault:1" });
      assert.equal(allowed.ok, true, JSON.stringify(allowed));
      assert.deepEqual(allowed.messages.map((m) => m.payload), [{ n: 1 }]);
    });
  });
}
