// The /admin dashboard in a real browser (headless Chromium driven by
// puppeteer-core): sign in, create a channel, watch a live actor appear
// when a client subscribes, disconnect that client's session and watch it
// reconnect. A screenshot goes to tests/js/output/admin.png.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";
import { io } from "socket.io-client";
import { startRealtime, nextEvent, API_KEY, ANON_KEY } from "./helpers.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const output = path.join(here, "output");

function chromiumPath() {
  const candidates = [process.env.CHROMIUM_PATH, "/usr/bin/chromium", "/usr/bin/chromium-browser"];
  const found = candidates.find((candidate) => candidate && fs.existsSync(candidate));
  if (!found) throw new Error("no Chromium: install Debian's chromium package (.ci/run does) or set CHROMIUM_PATH");
  return found;
}

/// Headless Chromium. Its start is the test's, not the server's, concern: a
/// launch that dies at birth (seen once on a busy machine, with nothing but
/// crash-reporter noise) is tried again, at most three times.
async function launchBrowser() {
  for (let attempt = 1; ; attempt++) {
    try {
      return await puppeteer.launch({
        executablePath: chromiumPath(),
        headless: true,
        args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-crash-reporter", "--no-first-run"],
      });
    } catch (error) {
      if (attempt === 3) throw error;
      console.error(`chromium did not start (attempt ${attempt}): ${error.message.split("\n")[0]}`);
    }
  }
}

describe("the admin dashboard", () => {
  let server;
  let browser;
  let page;
  before(async () => {
    server = await startRealtime("sqlite");
    browser = await launchBrowser();
    page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 900 });
    page.setDefaultTimeout(10_000);
  });
  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  test("sign in, create a channel, see an actor, disconnect a session", async () => {
    const errors = [];
    page.on("pageerror", (error) => errors.push(error.message));

    await page.goto(`${server.url}/admin`);
    // A wrong key is refused with a message.
    await page.type("#api-key", "ik_not_the_key");
    await page.click("#sign-in-form button");
    await page.waitForFunction(() => document.querySelector("#sign-in-error").textContent.length > 0);
    await page.$eval("#api-key", (input) => (input.value = ""));
    await page.type("#api-key", API_KEY);
    await page.click("#sign-in-form button");
    await page.waitForSelector("#tabs:not([hidden])");

    // Create a channel through the form.
    await page.click('#tabs button[data-tab="channels"]');
    await page.type("#channel-pattern", "room:%");
    await page.type("#channel-description", "made in the browser");
    await page.click("#channel-save");
    await page.waitForSelector('#channel-table tr[data-pattern="room:%"]');
    const listed = await server.admin("GET", "/api/realtime/channels");
    assert.equal(listed.body[0].description, "made in the browser");

    // A client subscribes: its channel actor appears with one subscriber.
    const socket = io(server.url, { auth: { token: ANON_KEY }, transports: ["websocket"], reconnectionDelay: 100 });
    try {
      await nextEvent(socket, "connect");
      assert.equal((await socket.emitWithAck("realtime:subscribe", { channel: "room:1" })).ok, true);
      await page.click('#tabs button[data-tab="actors"]');
      await page.waitForFunction(() => {
        const row = document.querySelector('#actor-table tr[data-name="room:1"]');
        return row && row.cells[2].textContent === "1";
      });
      await page.click('#actor-table tr[data-name="room:1"]');
      await page.waitForFunction(
        (id) => [...document.querySelectorAll("#actor-subscribers li")].some((li) => li.textContent === id),
        {},
        socket.id,
      );

      // Its session is listed; disconnecting it makes the client reconnect.
      await page.click('#tabs button[data-tab="sessions"]');
      const firstId = socket.id;
      await page.waitForSelector(`#session-table tr[data-id="${firstId}"]`);
      const disconnected = nextEvent(socket, "disconnect");
      const reconnected = nextEvent(socket, "connect", 10_000);
      await page.click(`#session-table tr[data-id="${firstId}"] button`);
      const [reason] = await disconnected;
      assert.equal(reason, "transport close");
      await reconnected;
      // It comes back as the same session (connection state recovery), so
      // it is listed under the same id again.
      assert.equal(socket.recovered, true);
      assert.equal(socket.id, firstId);
      await page.waitForSelector(`#session-table tr[data-id="${socket.id}"]`);

      await page.click('#tabs button[data-tab="overview"]');
      await page.waitForFunction(() => document.querySelector("#stat-connections").textContent === "1");
      fs.mkdirSync(output, { recursive: true });
      await page.screenshot({ path: path.join(output, "admin.png"), fullPage: true });
    } finally {
      socket.close();
    }
    assert.deepEqual(errors, [], "no script errors in the page");
  });
});
