// The realtime contract (SPEC §3, §5, §6) with the real npm clients,
// socket.io-client and @insforge/sdk, against the real server binary on
// SQLite and on PostgreSQL.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { createClient } from "@insforge/sdk";
import { startRealtime, backends, nextEvent, jwt, ANON_KEY, API_KEY } from "./helpers.mjs";

const USER_A = "11111111-1111-4111-8111-111111111111";
const USER_B = "22222222-2222-4222-8222-222222222222";

for (const backend of backends()) {
  describe(`realtime on ${backend}`, () => {
    let server;
    const sockets = [];
    before(async () => {
      server = await startRealtime(backend);
      for (const pattern of ["order:%", "order:vip", "chat:%", "bulk:%"]) {
        const created = await server.admin("POST", "/api/realtime/channels", { pattern });
        assert.equal(created.status, 201);
      }
      const disabled = await server.admin("POST", "/api/realtime/channels", { pattern: "closed:%", enabled: false });
      assert.equal(disabled.status, 201);
    });
    after(async () => {
      for (const socket of sockets) socket.close();
      await server?.stop();
    });

    function connect(auth, options = {}) {
      const socket = io(server.url, { auth, transports: ["websocket"], reconnection: false, forceNew: true, ...options });
      sockets.push(socket);
      return socket;
    }

    async function connected(auth, options) {
      const socket = connect(auth, options);
      await nextEvent(socket, "connect");
      return socket;
    }

    const subscribe = (socket, channel) =>
      new Promise((resolve) => socket.emit("realtime:subscribe", { channel }, resolve));
    const publish = (socket, channel, event, payload) =>
      new Promise((resolve) => socket.emit("realtime:publish", { channel, event, payload }, resolve));

    test("anon key and user JWT connect; bad credentials get CONNECT_ERROR codes", async () => {
      await connected({ token: ANON_KEY });
      await connected({ token: jwt({ sub: USER_A, role: "authenticated" }) });
      await connected({ apiKey: API_KEY }, { transports: ["polling"] });
      // Tokens without `exp`, as InsForge issues them, are accepted.
      await connected({ token: jwt({ sub: USER_A, role: "anon" }, { expires: false }) });
      // `apiKey` counts first: a good one wins over a bad token.
      await connected({ apiKey: API_KEY, token: "nope" });
      const later = Math.floor(Date.now() / 1000) + 3600;
      for (const [auth, code] of [
        [{}, "AUTH_INVALID_CREDENTIALS"],
        [{ token: "nope" }, "AUTH_INVALID_CREDENTIALS"],
        [{ token: jwt({ sub: USER_A, role: "authenticated", exp: 1 }) }, "AUTH_INVALID_CREDENTIALS"],
        [{ token: jwt({ sub: USER_A, role: "authenticated", nbf: later }) }, "AUTH_INVALID_CREDENTIALS"],
        [{ token: jwt({ sub: USER_A }) }, "AUTH_INVALID_CREDENTIALS"],
        [{ token: "anon_wrong_wrong" }, "AUTH_INVALID_CREDENTIALS"],
        [{ token: "ik_wrong_wrong" }, "AUTH_INVALID_CREDENTIALS"],
        [{ apiKey: "ik_wrong_wrong" }, "AUTH_INVALID_API_KEY"],
        [{ apiKey: "ik_wrong_wrong", token: ANON_KEY }, "AUTH_INVALID_API_KEY"],
        [{ apiKey: 42 }, "AUTH_INVALID_API_KEY"],
      ]) {
        const socket = connect(auth);
        const [error] = await nextEvent(socket, "connect_error");
        assert.equal(error.data?.code, code, JSON.stringify(auth));
        assert.ok(error.message);
      }
    });

    test("subscribe: ok with presence, refused without an enabled channel, idempotent", async () => {
      const socket = await connected({ token: jwt({ sub: USER_A, role: "authenticated" }) });
      const ok = await subscribe(socket, "order:1");
      assert.equal(ok.ok, true);
      assert.equal(ok.channel, "order:1");
      assert.equal(ok.presence.members.length, 1);
      const [me] = ok.presence.members;
      assert.equal(me.presenceId, USER_A);
      assert.equal(me.type, "user");
      assert.ok(!Number.isNaN(Date.parse(me.joinedAt)));
      const again = await subscribe(socket, "order:1");
      assert.equal(again.ok, true);
      assert.equal(again.presence.members.length, 1, "subscribing twice changes nothing");

      for (const channel of ["nothing:1", "closed:1"]) {
        const refused = await subscribe(socket, channel);
        assert.deepEqual(refused.ok, false);
        assert.equal(refused.channel, channel);
        assert.equal(refused.error.code, "REALTIME_UNAUTHORIZED");
      }
      const bad = await new Promise((resolve) => socket.emit("realtime:subscribe", { nope: 1 }, resolve));
      assert.equal(bad.error.code, "INVALID_INPUT");
    });

    test("presence: one member per user across sockets; join and leave go to the others", async () => {
      const channel = "chat:presence";
      const observer = await connected({ token: ANON_KEY });
      const observed = [];
      observer.on("presence:join", (message) => observed.push(["join", message]));
      observer.on("presence:leave", (message) => observed.push(["leave", message]));
      await subscribe(observer, channel);

      const token = jwt({ sub: USER_B, role: "authenticated" });
      const first = await connected({ token });
      const second = await connected({ token });
      const joined = await subscribe(first, channel);
      assert.equal(joined.presence.members.length, 2);
      const anonymous = joined.presence.members.find((member) => member.type === "anonymous");
      assert.equal(anonymous.presenceId, observer.id, "anonymous members are their socket id");
      const secondJoin = await subscribe(second, channel);
      assert.equal(secondJoin.presence.members.length, 2, "the same user is one member");

      await waitFor(() => observed.length >= 1);
      assert.equal(observed.length, 1);
      const [kind, message] = observed[0];
      assert.equal(kind, "join");
      assert.equal(message.member.presenceId, USER_B);
      assert.equal(message.meta.channel, channel);
      assert.equal(message.meta.senderType, "system");
      assert.ok(message.meta.messageId && message.meta.timestamp);

      first.emit("realtime:unsubscribe", { channel });
      await sleep(150);
      assert.equal(observed.length, 1, "the user is still present through the second socket");
      second.close();
      await waitFor(() => observed.length >= 2);
      assert.equal(observed[1][0], "leave");
      assert.equal(observed[1][1].member.presenceId, USER_B);
    });

    test("publish: own message comes back with meta; ack after it is stored", async () => {
      const channel = "order:42";
      const publisher = await connected({ token: jwt({ sub: USER_A, role: "authenticated" }) });
      const listener = await connected({ token: ANON_KEY });
      await subscribe(publisher, channel);
      await subscribe(listener, channel);
      const own = nextEvent(publisher, "status");
      const theirs = nextEvent(listener, "status");
      const ack = await publish(publisher, channel, "status", { state: "paid", amount: 12.5 });
      assert.equal(ack.ok, true);
      assert.match(ack.messageId, /^[0-9a-f-]{36}$/);
      for (const [message] of [await own, await theirs]) {
        assert.equal(message.state, "paid");
        assert.equal(message.amount, 12.5);
        assert.equal(message.meta.channel, channel);
        assert.equal(message.meta.messageId, ack.messageId);
        assert.equal(message.meta.senderType, "user");
        assert.equal(message.meta.senderId, USER_A);
        assert.ok(!Number.isNaN(Date.parse(message.meta.timestamp)));
      }
      const history = await server.admin("GET", `/api/realtime/messages?eventName=status`);
      const row = history.body.find((message) => message.id === ack.messageId);
      assert.ok(row, "acked message is in history");
      assert.equal(row.channelName, channel);
      assert.equal(row.senderType, "user");
      assert.equal(row.senderId, USER_A);
      assert.deepEqual(row.payload, { state: "paid", amount: 12.5 });
      await waitForAsync(async () => {
        const rows = await server.admin("GET", `/api/realtime/messages?eventName=status`);
        return rows.body.find((message) => message.id === ack.messageId)?.wsAudienceCount === 2;
      }, "wsAudienceCount becomes 2");

      // Anonymous publishers are users without an id.
      const anonReceived = nextEvent(publisher, "status");
      const anonAck = await publish(listener, channel, "status", { state: "anon" });
      assert.equal(anonAck.ok, true);
      const [anonMessage] = await anonReceived;
      assert.equal(anonMessage.meta.senderType, "user");
      assert.equal(anonMessage.meta.senderId, undefined);
    });

    test("publish errors: not subscribed, bad fields, reserved events", async () => {
      const socket = await connected({ token: ANON_KEY });
      const errors = [];
      socket.on("realtime:error", (error) => errors.push(error));
      socket.emit("realtime:publish", { channel: "order:7", event: "x", payload: {} });
      await waitFor(() => errors.length === 1);
      assert.deepEqual(errors[0].code, "REALTIME_NOT_SUBSCRIBED");
      assert.equal(errors[0].channel, "order:7");

      const notSubscribed = await publish(socket, "order:7", "x", {});
      assert.deepEqual(notSubscribed.ok, false);
      assert.equal(notSubscribed.error.code, "REALTIME_NOT_SUBSCRIBED");
      await subscribe(socket, "order:7");
      assert.equal((await publish(socket, "order:7", "x", "not an object")).error.code, "INVALID_INPUT");
      assert.equal((await publish(socket, "order:7", "", {})).error.code, "REALTIME_INVALID_EVENT");
      assert.equal((await publish(socket, "order:7", "presence:join", {})).error.code, "REALTIME_INVALID_EVENT");
      assert.equal((await publish(socket, "order:7", "connect", {})).error.code, "REALTIME_INVALID_EVENT");
      const binary = await publish(socket, "order:7", "x", { blob: Buffer.from([1, 2, 3]) });
      assert.equal(binary.error.code, "INVALID_INPUT", "binary attachments are refused");
      const unknown = await new Promise((resolve) => socket.emit("realtime:nope", {}, resolve));
      assert.equal(unknown.error.code, "REALTIME_INVALID_EVENT");
      assert.ok(socket.connected, "errors never cost the connection");
    });

    test("unsubscribe and disconnect stop delivery", async () => {
      const channel = "order:cleanup";
      const stays = await connected({ token: ANON_KEY });
      const leaves = await connected({ token: ANON_KEY });
      await subscribe(stays, channel);
      await subscribe(leaves, channel);
      let leftGot = 0;
      leaves.on("tick", () => leftGot++);
      const unsubscribed = await new Promise((resolve) => leaves.emit("realtime:unsubscribe", { channel }, resolve));
      assert.deepEqual(unsubscribed, { ok: true, channel });
      const got = nextEvent(stays, "tick");
      const ack = await publish(stays, channel, "tick", { n: 1 });
      assert.equal(ack.ok, true);
      await got;
      await sleep(100);
      assert.equal(leftGot, 0);
      const afterLeave = await publish(leaves, channel, "tick", {});
      assert.equal(afterLeave.error.code, "REALTIME_NOT_SUBSCRIBED");
    });

    test("wildcard resolution: exact pattern wins, history keeps the resolved name", async () => {
      const channels = (await server.admin("GET", "/api/realtime/channels")).body;
      const id = (pattern) => channels.find((channel) => channel.pattern === pattern).id;
      for (const [name, pattern] of [["order:vip", "order:vip"], ["order:777", "order:%"]]) {
        const published = await server.admin("POST", "/api/realtime/messages", {
          channel: name,
          event: "resolved",
          payload: { name },
        });
        assert.equal(published.status, 201, JSON.stringify(published.body));
        assert.equal(published.body.channelId, id(pattern));
        assert.equal(published.body.channelName, name);
        assert.equal(published.body.senderType, "system");
        assert.equal(published.body.senderId, null);
      }
      const missing = await server.admin("POST", "/api/realtime/messages", { channel: "none:1", event: "x", payload: {} });
      assert.equal(missing.status, 404);
      assert.equal(missing.body.error, "REALTIME_CHANNEL_NOT_FOUND");
      const bad = await server.admin("POST", "/api/realtime/messages", { channel: "order:1", event: "x", payload: [1] });
      assert.equal(bad.status, 400);
      assert.equal(bad.body.error, "INVALID_INPUT");
    });

    test("admin REST publish reaches socket subscribers as system", async () => {
      const channel = "order:rest";
      const socket = await connected({ token: ANON_KEY });
      await subscribe(socket, channel);
      const received = nextEvent(socket, "shipped");
      const published = await server.admin("POST", "/api/realtime/messages", {
        channel,
        event: "shipped",
        payload: { carrier: "post" },
      });
      assert.equal(published.status, 201);
      assert.equal(published.body.wsAudienceCount, 1);
      const [message] = await received;
      assert.equal(message.carrier, "post");
      assert.equal(message.meta.senderType, "system");
      assert.equal(message.meta.messageId, published.body.id);
    });

    test("disabling a channel stops delivery and refuses new subscribers", async () => {
      const created = await server.admin("POST", "/api/realtime/channels", { pattern: "toggle:%" });
      const channel = "toggle:1";
      const socket = await connected({ token: ANON_KEY });
      await subscribe(socket, channel);
      await server.admin("PUT", `/api/realtime/channels/${created.body.id}`, { enabled: false });
      const refused = await publish(socket, channel, "x", {});
      assert.equal(refused.error.code, "REALTIME_UNAUTHORIZED");
      const other = await connected({ token: ANON_KEY });
      assert.equal((await subscribe(other, channel)).error.code, "REALTIME_UNAUTHORIZED");
      await server.admin("PUT", `/api/realtime/channels/${created.body.id}`, { enabled: true });
      assert.equal((await publish(socket, channel, "x", {})).ok, true, "re-enabled: the live subscriber works again");
    });

    test("1,000 messages reach 50 subscribers in one order, none lost or doubled", async () => {
      const channel = "bulk:order";
      const subscribers = [];
      for (let i = 0; i < 50; i++) {
        const socket = await connected({ token: ANON_KEY });
        const seen = [];
        socket.on("seq", (message) => seen.push(message.n));
        assert.equal((await subscribe(socket, channel)).ok, true);
        subscribers.push({ socket, seen });
      }
      const publisher = subscribers[0].socket;
      const acks = [];
      for (let n = 0; n < 1000; n++) acks.push(publish(publisher, channel, "seq", { n }));
      const results = await Promise.all(acks);
      assert.ok(results.every((result) => result.ok));
      await waitFor(() => subscribers.every(({ seen }) => seen.length >= 1000), 20_000);
      const expected = Array.from({ length: 1000 }, (_, n) => n);
      for (const { seen } of subscribers) assert.deepEqual(seen, expected);

      await waitForAsync(async () => {
        const stats = await server.admin("GET", "/api/realtime/messages?eventName=seq&limit=1000");
        return stats.body.length === 1000 && stats.body.every((row) => row.wsAudienceCount === 50);
      }, "1000 history rows with audience 50");
      for (const { socket } of subscribers) socket.close();
    });

    test("@insforge/sdk subscribes, sees presence and receives messages", async () => {
      const client = createClient({ baseUrl: server.url, anonKey: ANON_KEY });
      const other = createClient({ baseUrl: server.url, anonKey: ANON_KEY });
      try {
        const channel = "chat:sdk";
        const first = await client.realtime.subscribe(channel);
        assert.equal(first.ok, true, JSON.stringify(first));
        const received = new Promise((resolve) => client.realtime.on("hello", resolve));
        const second = await other.realtime.subscribe(channel);
        assert.equal(second.ok, true);
        assert.equal(second.presence.members.length, 2);
        await waitFor(() => client.realtime.getPresenceState(channel).length === 2);
        await other.realtime.publish(channel, "hello", { text: "hi" });
        const message = await received;
        assert.equal(message.text, "hi");
        assert.equal(message.meta.channel, channel);
        other.realtime.disconnect();
        await waitFor(() => client.realtime.getPresenceState(channel).length === 1);
      } finally {
        client.realtime.disconnect();
        other.realtime.disconnect();
      }
    });

    test("@insforge/sdk: an InsForge anon JWT (no exp) connects; bad keys fail with their code", async () => {
      const insforgeAnon = jwt({ sub: "12345678-1234-5678-90ab-cdef12345678", role: "anon" }, { expires: false });
      const good = createClient({ baseUrl: server.url, anonKey: insforgeAnon });
      try {
        await good.realtime.connect();
        const joined = await good.realtime.subscribe("chat:sdk-anon");
        assert.equal(joined.ok, true, JSON.stringify(joined));
      } finally {
        good.realtime.disconnect();
      }
      for (const anonKey of ["anon_wrong_wrong", jwt({ sub: USER_A, role: "anon", exp: 1 })]) {
        const bad = createClient({ baseUrl: server.url, anonKey });
        try {
          await assert.rejects(bad.realtime.connect(), (error) => {
            assert.equal(error.data?.code, "AUTH_INVALID_CREDENTIALS", error.message);
            return true;
          });
        } finally {
          bad.realtime.disconnect();
        }
      }
    });
  });
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function waitFor(condition, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await sleep(10);
  }
}

async function waitForAsync(condition, what, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`${what}: not met in time`);
    await sleep(25);
  }
}
