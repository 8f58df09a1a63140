// Starts the project's binaries for the client tests and waits until they
// listen. Binaries come from cargo's target folder (debug unless
// REALTIME_PROFILE says otherwise).
import { spawn } from "node:child_process";
import { once } from "node:events";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const targetDir = process.env.CARGO_TARGET_DIR ?? path.join(root, "target");
const profile = process.env.REALTIME_PROFILE ?? "debug";

/** Starts the conformance server on `port` (0: any); resolves with it. */
export async function startConformance(port = 0) {
  const bin = path.join(targetDir, profile, "examples", "conformance");
  const child = spawn(bin, ["--port", String(port)], { stdio: ["ignore", "pipe", "inherit"] });
  const listening = await new Promise((resolve, reject) => {
    let seen = "";
    child.stdout.on("data", (chunk) => {
      seen += chunk;
      const match = seen.match(/listening on port (\d+)/);
      if (match) resolve(Number(match[1]));
    });
    child.once("exit", (code) => reject(new Error(`conformance server exited with ${code}`)));
    setTimeout(() => reject(new Error("conformance server did not start")), 10_000);
  });
  return {
    port: listening,
    url: `http://127.0.0.1:${listening}`,
    async stop() {
      if (child.exitCode !== null) return;
      child.kill("SIGKILL");
      await once(child, "exit");
    },
  };
}

/** Resolves with the first emission of `event` on `emitter`, or rejects after `ms`. */
export function nextEvent(emitter, event, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${ms} ms`)), ms);
    emitter.once(event, (...args) => {
      clearTimeout(timer);
      resolve(args);
    });
  });
}

import net from "node:net";
import crypto from "node:crypto";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";

export const API_KEY = "ik_test_admin_key_0001";
export const ANON_KEY = "anon_test_anon_key_0001";
export const JWT_SECRET = "test-secret-that-is-at-least-32-characters";

async function freePort() {
  const server = net.createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  server.close();
  await once(server, "close");
  return port;
}

/** The backends the realtime tests run on; PostgreSQL needs scripts/with-postgres. */
export function backends() {
  const list = ["sqlite"];
  if (process.env.REALTIME_TEST_POSTGRES_URL) list.push("postgres");
  else if (process.env.REALTIME_TEST_SKIP_POSTGRES !== "1") {
    throw new Error("REALTIME_TEST_POSTGRES_URL is not set: run through scripts/test (or set REALTIME_TEST_SKIP_POSTGRES=1)");
  }
  return list;
}

function freshDatabase(backend) {
  if (backend === "sqlite") {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "realtime-js-"));
    return { url: `sqlite://${path.join(dir, "realtime.db")}`, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
  }
  const admin = process.env.REALTIME_TEST_POSTGRES_URL;
  const name = `rt_js_${crypto.randomBytes(6).toString("hex")}`;
  execFileSync("psql", [admin, "-qc", `CREATE DATABASE ${name}`], { stdio: "ignore" });
  return { url: admin.replace(/\/[^/]*$/, `/${name}`), cleanup: () => {} };
}

/** Starts the realtime server on a fresh database of `backend`. */
export async function startRealtime(backend, extraEnv = {}) {
  return startNode(freshDatabase(backend), extraEnv);
}

/**
 * Starts `n` realtime servers on one fresh PostgreSQL database (a cluster);
 * each can be killed (SIGKILL), restarted (SIGTERM, then started again on
 * its port) or stopped.
 */
export async function startCluster(n, extraEnv = {}) {
  const database = freshDatabase("postgres");
  const nodes = [];
  for (let i = 0; i < n; i++) nodes.push(await startNode(database, extraEnv));
  return nodes;
}

/**
 * A layer-4 load balancer on 127.0.0.1 in front of `urls`: each TCP
 * connection goes to the next server in turn that accepts it (a server
 * that is down is skipped), as a balancer with health checks would.
 */
export async function startBalancer(urls) {
  const upstreams = urls.map((url) => new URL(url));
  let next = 0;
  const sockets = new Set();
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on("close", () => sockets.delete(client));
    client.pause();
    const attempt = (tries) => {
      if (tries === 0) return client.destroy();
      const target = upstreams[next++ % upstreams.length];
      const upstream = net.connect(Number(target.port), target.hostname);
      upstream.once("error", () => attempt(tries - 1));
      upstream.once("connect", () => {
        upstream.removeAllListeners("error");
        sockets.add(upstream);
        upstream.on("close", () => sockets.delete(upstream));
        upstream.on("error", () => client.destroy());
        client.on("error", () => upstream.destroy());
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      });
    };
    attempt(upstreams.length);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    async stop() {
      for (const socket of sockets) socket.destroy();
      server.close();
    },
  };
}

async function startNode(database, extraEnv) {
  const port = await freePort();
  const bin = path.join(targetDir, profile, "realtime");
  const env = {
    ...process.env,
    REALTIME__SERVER__HOST: "127.0.0.1",
    REALTIME__SERVER__PORT: String(port),
    REALTIME__SERVER__WORKERS: "2",
    REALTIME__DATABASE__URL: database.url,
    REALTIME__AUTH__JWT_SECRET: JWT_SECRET,
    REALTIME__AUTH__API_KEYS: `["${API_KEY}"]`,
    REALTIME__AUTH__ANON_KEYS: `["${ANON_KEY}"]`,
    REALTIME__LOG__LEVEL: "warn",
    // The bulk-ordering test publishes 1,000 messages from one socket; the
    // per-socket rate limit has its own tests in tests/pipeline.rs.
    REALTIME__LIMITS__PUBLISH_RATE: "0",
    ...extraEnv,
  };
  let child;
  const url = `http://127.0.0.1:${port}`;
  async function launch() {
    child = spawn(bin, ["serve"], { env, stdio: ["ignore", "inherit", "inherit"] });
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`realtime exited with ${child.exitCode}`);
      try {
        const response = await fetch(`${url}/health`);
        if (response.ok) break;
      } catch {}
      if (Date.now() > deadline) throw new Error("realtime did not become healthy");
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  // A process killed by a signal has a signalCode and no exitCode.
  const running = () => child.exitCode === null && child.signalCode === null;
  async function terminate() {
    if (running()) {
      child.kill("SIGTERM");
      await once(child, "exit");
    }
  }
  await launch();
  return {
    url,
    databaseUrl: database.url,
    async admin(method, route, body) {
      const response = await fetch(`${url}${route}`, {
        method,
        headers: { "x-api-key": API_KEY, ...(body ? { "content-type": "application/json" } : {}) },
        body: body ? JSON.stringify(body) : undefined,
      });
      const text = await response.text();
      return { status: response.status, body: text ? JSON.parse(text) : null };
    },
    /** A graceful restart (SIGTERM) on the same database and port. */
    async restart() {
      await terminate();
      await launch();
    },
    /** Kills the process (SIGKILL), as a crash would. */
    async kill() {
      if (running()) {
        child.kill("SIGKILL");
        await once(child, "exit");
      }
    },
    async stop() {
      await terminate();
      database.cleanup();
    },
  };
}

/** Runs SQL statements on the server's database (psql or sqlite3). */
export function sql(server, statements) {
  if (server.databaseUrl.startsWith("sqlite://")) {
    // The server writes too: wait for its lock rather than fail.
    execFileSync("sqlite3", ["-cmd", ".timeout 10000", server.databaseUrl.slice("sqlite://".length), statements], { stdio: ["ignore", "ignore", "inherit"] });
  } else {
    execFileSync("psql", [server.databaseUrl, "-v", "ON_ERROR_STOP=1", "-qc", statements], { stdio: ["ignore", "ignore", "inherit"] });
  }
}

/**
 * An HS256 JWT signed with the test secret, expiring in 10 minutes unless
 * `expires` is false (InsForge's own anon and admin tokens have no `exp`).
 */
export function jwt(claims, { expires = true } = {}) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const exp = expires ? { exp: Math.floor(Date.now() / 1000) + 600 } : {};
  const body = `${encode({ alg: "HS256", typ: "JWT" })}.${encode({ ...exp, ...claims })}`;
  const signature = crypto.createHmac("sha256", JWT_SECRET).update(body).digest("base64url");
  return `${body}.${signature}`;
}
