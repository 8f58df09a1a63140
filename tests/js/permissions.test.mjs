// Permissions with @insforge/sdk against the real server binary, on SQLite
// and PostgreSQL: InsForge's documentation examples. On PostgreSQL also
// end to end with SQL: a trigger on the user's `orders` table publishes
// `status_changed` to `order:<id>`, which only the order's owner may
// subscribe to.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createClient } from "@insforge/sdk";
import { startRealtime, backends, jwt, sql, ANON_KEY } from "./helpers.mjs";

const ALICE = "11111111-1111-4111-8111-111111111111";
const BOB = "22222222-2222-4222-8222-222222222222";

for (const backend of backends()) {
  describe(`permissions on ${backend}`, () => {
    let server;
    const clients = [];
    const user = (sub) => {
      const client = createClient({ baseUrl: server.url, accessToken: jwt({ sub, role: "authenticated" }), isServerMode: true });
      clients.push(client);
      return client;
    };
    const guest = () => {
      const client = createClient({ baseUrl: server.url, anonKey: ANON_KEY });
      clients.push(client);
      return client;
    };
    const pg = backend === "postgres";

    before(async () => {
      server = await startRealtime(backend);
      for (const pattern of ["order:%", "room:%"]) {
        assert.equal((await server.admin("POST", "/api/realtime/channels", { pattern })).status, 201);
      }
      if (pg) {
        sql(server, `
          CREATE TABLE public.orders (id int PRIMARY KEY, user_id uuid NOT NULL, status text NOT NULL);
          INSERT INTO public.orders VALUES (1, '${ALICE}', 'new'), (2, '${BOB}', 'new');
          GRANT SELECT ON public.orders TO authenticated;
          CREATE FUNCTION public.order_status_changed() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN
            PERFORM realtime.publish('order:' || NEW.id, 'status_changed',
                                     jsonb_build_object('id', NEW.id, 'status', NEW.status));
            RETURN NEW;
          END $$;
          CREATE TRIGGER order_status AFTER UPDATE OF status ON public.orders
            FOR EACH ROW EXECUTE FUNCTION public.order_status_changed();`);
      } else {
        sql(server, `CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id TEXT NOT NULL, status TEXT NOT NULL);
          INSERT INTO orders VALUES (1, '${ALICE}', 'new'), (2, '${BOB}', 'new');`);
      }
      const policies = [
        {
          name: "own orders", action: "subscribe", roles: ["authenticated"],
          condition: pg
            ? "EXISTS (SELECT 1 FROM public.orders o WHERE 'order:' || o.id = realtime.channel_name() AND o.user_id = auth.uid())"
            : "EXISTS (SELECT 1 FROM orders o WHERE 'order:' || o.id = request.channel AND o.user_id = request.user_id)",
        },
        {
          name: "rooms", action: "subscribe", roles: ["anon", "authenticated"],
          condition: pg ? "realtime.channel_name() LIKE 'room:%'" : "request.channel LIKE 'room:%'",
        },
        { name: "members publish", action: "publish", roles: ["authenticated"], condition: "true" },
      ];
      for (const policy of policies) {
        const created = await server.admin("POST", "/api/realtime/permissions", policy);
        assert.equal(created.status, 201, JSON.stringify(created.body));
      }
    });
    after(async () => {
      for (const client of clients) client.realtime.disconnect();
      await server?.stop();
    });

    test("a user subscribes only to their own order; another is refused", async () => {
      const alice = user(ALICE);
      const bob = user(BOB);
      const own = await alice.realtime.subscribe("order:1");
      assert.equal(own.ok, true, JSON.stringify(own));
      const other = await bob.realtime.subscribe("order:1");
      assert.equal(other.ok, false);
      assert.equal(other.error.code, "REALTIME_UNAUTHORIZED");
      const guestOrder = await guest().realtime.subscribe("order:2");
      assert.equal(guestOrder.error?.code, "REALTIME_UNAUTHORIZED");
      if (pg) {
        // The documentation's trigger: an UPDATE publishes from SQL.
        const changed = new Promise((resolve) => alice.realtime.on("status_changed", resolve));
        sql(server, "UPDATE public.orders SET status = 'shipped' WHERE id = 1");
        const message = await changed;
        assert.equal(message.id, 1);
        assert.equal(message.status, "shipped");
        assert.equal(message.meta.channel, "order:1");
        assert.equal(message.meta.senderType, "system");
      }
    });

    test("only authenticated users publish; a guest's publish is refused and stored nowhere", async () => {
      const alice = user(ALICE);
      const visitor = guest();
      assert.equal((await alice.realtime.subscribe("room:1")).ok, true);
      assert.equal((await visitor.realtime.subscribe("room:1")).ok, true);
      const refused = new Promise((resolve) => visitor.realtime.on("error", resolve));
      await visitor.realtime.publish("room:1", "said", { text: "from the guest" });
      const error = await refused;
      assert.equal(error.code, "REALTIME_UNAUTHORIZED");
      assert.equal(error.channel, "room:1");
      const heard = new Promise((resolve) => visitor.realtime.on("said", resolve));
      await alice.realtime.publish("room:1", "said", { text: "from alice" });
      assert.equal((await heard).text, "from alice");
      const history = await server.admin("GET", "/api/realtime/messages?eventName=said");
      assert.deepEqual(history.body.map((row) => row.payload.text), ["from alice"]);
    });
  });
}
