// The admin API's view of live connections with the stock socket.io-client:
// an admin closes a session, and the client reconnects by itself (it sees
// "transport close", never "io server disconnect", which would stop it).
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { startRealtime, backends, nextEvent, ANON_KEY } from "./helpers.mjs";

for (const backend of backends()) {
  describe(`inspection on ${backend}`, () => {
    let server;
    before(async () => {
      server = await startRealtime(backend);
      assert.equal((await server.admin("POST", "/api/realtime/channels", { pattern: "room:%" })).status, 201);
    });
    after(async () => {
      await server?.stop();
    });

    test("an admin closes a session; socket.io-client reconnects by itself", async () => {
      const socket = io(server.url, { auth: { token: ANON_KEY }, transports: ["websocket"], reconnectionDelay: 100 });
      try {
        await nextEvent(socket, "connect");
        const ack = await socket.emitWithAck("realtime:subscribe", { channel: "room:1" });
        assert.equal(ack.ok, true);
        const listed = await server.admin("GET", "/api/realtime/sessions");
        assert.equal(listed.status, 200);
        const mine = listed.body.find((session) => session.id === socket.id);
        assert.ok(mine, JSON.stringify(listed.body));
        assert.deepEqual(mine.channels, ["room:1"]);
        assert.equal(mine.transport, "websocket");

        const disconnected = nextEvent(socket, "disconnect");
        const closed = await server.admin("DELETE", `/api/realtime/sessions/${encodeURIComponent(socket.id)}`);
        assert.equal(closed.status, 204);
        const [reason] = await disconnected;
        assert.equal(reason, "transport close");
        await nextEvent(socket, "connect");
        assert.equal(socket.connected, true);
        const again = await socket.emitWithAck("realtime:subscribe", { channel: "room:1" });
        assert.equal(again.ok, true);
      } finally {
        socket.close();
      }
    });
  });
}
