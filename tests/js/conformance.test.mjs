// The stock socket.io-client v4 against the conformance server, which runs
// the product's own Engine.IO and Socket.IO layers.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import WebSocket from "ws";
import { startConformance, nextEvent } from "./helpers.mjs";

let server;
before(async () => {
  server = await startConformance();
});
after(async () => {
  await server?.stop();
});

function connect(options = {}) {
  return io(server.url, { reconnection: false, forceNew: true, ...options });
}

test("default transports connect on polling and upgrade to websocket", async () => {
  const socket = connect({ auth: { token: "abc" } });
  try {
    const [auth] = await nextEvent(socket, "auth");
    assert.deepEqual(auth, { token: "abc" });
    if (socket.io.engine.transport.name !== "websocket") {
      await nextEvent(socket.io.engine, "upgrade");
    }
    assert.equal(socket.io.engine.transport.name, "websocket");
    socket.emit("message", "after upgrade", 42);
    const args = await nextEvent(socket, "message-back");
    assert.deepEqual(args, ["after upgrade", 42]);
  } finally {
    socket.close();
  }
});

for (const transports of [["polling"], ["websocket"]]) {
  test(`${transports[0]} only: events, acks and binary`, async () => {
    const socket = connect({ transports });
    try {
      await nextEvent(socket, "connect");
      assert.equal(socket.io.engine.transport.name, transports[0]);
      assert.ok(socket.id);

      socket.emit("message", 1, "2", { 3: [true] });
      assert.deepEqual(await nextEvent(socket, "message-back"), [1, "2", { 3: [true] }]);

      const acked = await new Promise((resolve) =>
        socket.emit("message-with-ack", 1, "2", { 3: [false] }, (...args) => resolve(args)),
      );
      assert.deepEqual(acked, [1, "2", { 3: [false] }]);

      const blob = Buffer.from([0, 1, 2, 254, 255]);
      socket.emit("message", blob, { nested: Buffer.from("hi") });
      const [echoed, nested] = await nextEvent(socket, "message-back");
      assert.ok(Buffer.from(echoed).equals(blob));
      assert.ok(Buffer.from(nested.nested).equals(Buffer.from("hi")));

      const binaryAck = await new Promise((resolve) =>
        socket.emit("message-with-ack", Buffer.from([9, 8, 7]), (...args) => resolve(args)),
      );
      assert.ok(Buffer.from(binaryAck[0]).equals(Buffer.from([9, 8, 7])));
    } finally {
      socket.close();
    }
  });
}

test("custom namespace and unknown namespace", async () => {
  const custom = io(`${server.url}/custom`, { reconnection: false, forceNew: true, auth: { a: 1 } });
  const unknown = io(`${server.url}/random`, { reconnection: false, forceNew: true });
  // Listen before awaiting anything: either answer may come first.
  const auth = nextEvent(custom, "auth");
  const refused = nextEvent(unknown, "connect_error");
  try {
    assert.deepEqual(await auth, [{ a: 1 }]);
    const [error] = await refused;
    assert.equal(error.message, "Invalid namespace");
  } finally {
    custom.close();
    unknown.close();
  }
});

test("the client reconnects after the server goes away and comes back", async () => {
  const port = server.port;
  const socket = io(server.url, {
    forceNew: true,
    transports: ["websocket"],
    reconnectionDelay: 100,
    reconnectionDelayMax: 200,
  });
  try {
    await nextEvent(socket, "connect");
    const firstId = socket.id;
    const disconnected = nextEvent(socket, "disconnect");
    await server.stop();
    const [reason] = await disconnected;
    assert.equal(reason, "transport close");
    const reconnected = nextEvent(socket, "connect", 10_000);
    server = await startConformance(port);
    await reconnected;
    assert.notEqual(socket.id, firstId);
    socket.emit("message", "back");
    assert.deepEqual(await nextEvent(socket, "message-back"), ["back"]);
  } finally {
    socket.close();
  }
});

test("a second WebSocket for an upgraded session is opened, then closed by the server", async () => {
  const ws = (query) => new WebSocket(`${server.url.replace("http", "ws")}/engine.io/?EIO=4&transport=websocket&${query}`);
  const open = await fetch(`${server.url}/engine.io/?EIO=4&transport=polling`);
  const { sid } = JSON.parse((await open.text()).slice(1));

  const first = ws(`sid=${sid}`);
  const frames = [];
  first.on("message", (data) => frames.push(data.toString()));
  await nextEvent(first, "open");
  first.send("2probe");
  await waitFor(() => frames.includes("3probe"));
  first.send("5");

  const second = ws(`sid=${sid}`);
  const seen = [];
  second.on("open", () => seen.push("open"));
  second.on("message", (data) => seen.push(`message ${data}`));
  second.on("error", (error) => seen.push(`error ${error.message}`));
  second.on("close", () => seen.push("close"));
  await waitFor(() => seen.includes("close"));
  // The handshake is answered with 101, then the server closes at once:
  // a close, with no packet and no error event.
  assert.deepEqual(seen, ["open", "close"]);

  first.send("4hello");
  await waitFor(() => frames.includes("4hello"));
  first.close();
});

async function waitFor(condition, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
