// The Node peer of the benchmarks: a plain socket.io 4 server doing the
// same fan-out as the realtime server (subscribe = join a room, publish =
// emit to the room with meta, the publisher included), without storage,
// presence or permissions, so it is the best case for Node.
//
//   node server.mjs [port]
import { createServer } from "node:http";
import { randomUUID } from "node:crypto";
import { Server } from "socket.io";

const port = Number(process.argv[2] ?? 7131);
const httpServer = createServer();
const io = new Server(httpServer, { cors: { origin: "*" } });

io.on("connection", (socket) => {
  socket.on("realtime:subscribe", ({ channel } = {}, ack) => {
    socket.join(channel);
    ack?.({ ok: true, channel, presence: { members: [] } });
  });
  socket.on("realtime:unsubscribe", ({ channel } = {}) => socket.leave(channel));
  socket.on("realtime:publish", ({ channel, event, payload } = {}, ack) => {
    const messageId = randomUUID();
    const meta = { channel, messageId, senderType: "user", timestamp: new Date().toISOString() };
    io.to(channel).emit(event, { ...payload, meta });
    ack?.({ ok: true, messageId });
  });
});

httpServer.listen(port, "127.0.0.1", () => console.log(`node peer listening on ${port}`));
