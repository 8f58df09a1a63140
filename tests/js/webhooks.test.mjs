// Webhooks as a receiver sees them: real requests from the real server,
// verified with the published `standardwebhooks` package (not with the
// project's own code), on SQLite and PostgreSQL.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import crypto from "node:crypto";
import { once } from "node:events";
import { io } from "socket.io-client";
import { Webhook } from "standardwebhooks";
import { startRealtime, backends, nextEvent, ANON_KEY } from "./helpers.mjs";

/** A receiver on loopback that records every request with its raw body. */
async function startReceiver() {
  const requests = [];
  const waiters = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => {
      requests.push({ url: req.url, headers: req.headers, body: Buffer.concat(chunks).toString("utf8") });
      res.writeHead(204).end();
      for (const waiter of waiters.splice(0)) waiter();
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    url: (path) => `http://127.0.0.1:${server.address().port}${path}`,
    requests,
    async waitFor(n, ms = 10_000) {
      const deadline = Date.now() + ms;
      while (requests.length < n) {
        if (Date.now() > deadline) throw new Error(`only ${requests.length} of ${n} webhook requests`);
        await new Promise((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 100);
        });
      }
    },
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

for (const backend of backends()) {
  describe(`webhooks on ${backend}`, () => {
    const secret = `whsec_${crypto.randomBytes(32).toString("base64")}`;
    let server;
    let receiver;
    before(async () => {
      receiver = await startReceiver();
      server = await startRealtime(backend, { REALTIME__WEBHOOKS__SIGNING_SECRET: secret });
      const created = await server.admin("POST", "/api/realtime/channels", {
        pattern: "hooked:%",
        webhookUrls: [receiver.url("/hook")],
      });
      assert.equal(created.status, 201, JSON.stringify(created.body));
    });
    after(async () => {
      await server?.stop();
      await receiver?.close();
    });

    test("a socket publish arrives signed; standardwebhooks verifies it", async () => {
      const socket = io(server.url, { auth: { token: ANON_KEY }, transports: ["websocket"], reconnection: false, forceNew: true });
      try {
        await nextEvent(socket, "connect");
        const joined = await new Promise((resolve) => socket.emit("realtime:subscribe", { channel: "hooked:1" }, resolve));
        assert.equal(joined.ok, true);
        const payload = { orderId: "o-1", total: 42.5, tags: ["a", "b"], note: "ünïcode ✓" };
        const ack = await new Promise((resolve) =>
          socket.emit("realtime:publish", { channel: "hooked:1", event: "order.paid", payload }, resolve),
        );
        assert.equal(ack.ok, true, JSON.stringify(ack));
        await receiver.waitFor(1);
        const [request] = receiver.requests.filter((r) => r.headers["x-insforge-message-id"] === ack.messageId);
        assert.ok(request, "the request for this message");
        assert.equal(request.headers["content-type"], "application/json");
        assert.equal(request.headers["x-insforge-event"], "order.paid");
        assert.equal(request.headers["x-insforge-channel"], "hooked:1");
        assert.equal(request.headers["webhook-id"], ack.messageId);

        const verified = new Webhook(secret).verify(request.body, request.headers);
        assert.deepEqual(verified, payload);

        // A changed body, another secret or a stale timestamp is refused.
        assert.throws(() => new Webhook(secret).verify(request.body.replace("42.5", "0"), request.headers));
        const other = `whsec_${crypto.randomBytes(32).toString("base64")}`;
        assert.throws(() => new Webhook(other).verify(request.body, request.headers));
        const stale = { ...request.headers, "webhook-timestamp": String(Math.floor(Date.now() / 1000) - 600) };
        assert.throws(() => new Webhook(secret).verify(request.body, stale));
      } finally {
        socket.close();
      }
    });

    test("REST publishes are signed too, and the delivery rate counts them", async () => {
      const published = await server.admin("POST", "/api/realtime/messages", {
        channel: "hooked:rest",
        event: "ping",
        payload: { n: 1 },
      });
      assert.equal(published.status, 201);
      assert.equal(published.body.whAudienceCount, 1);
      const deadline = Date.now() + 10_000;
      let request;
      while (!(request = receiver.requests.find((r) => r.headers["x-insforge-message-id"] === published.body.id))) {
        if (Date.now() > deadline) throw new Error("no webhook for the REST publish");
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
      assert.deepEqual(new Webhook(secret).verify(request.body, request.headers), { n: 1 });
      for (;;) {
        const stats = await server.admin("GET", "/api/realtime/messages/stats");
        if (stats.body.whDeliveryRate === 1) break;
        if (Date.now() > deadline) throw new Error(`delivery rate ${stats.body.whDeliveryRate}`);
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
    });
  });
}
