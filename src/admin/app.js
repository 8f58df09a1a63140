// The admin dashboard: plain JavaScript over the admin REST API and
// /metrics. The API key stays in this tab's sessionStorage and goes out as
// the X-API-Key header; nothing is loaded from elsewhere.
"use strict";

const $ = (selector) => document.querySelector(selector);
const REFRESH_MS = 2000;
const CHART_POINTS = 150; // five minutes at one point every two seconds

let apiKey = sessionStorage.getItem("realtime-admin-key");
let currentTab = "overview";
let selectedActor = null;
let timer = null;
const samples = []; // {rate, connections}
let lastDelivered = null;

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { "x-api-key": apiKey, ...(body ? { "content-type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const error = new Error(data?.message ?? response.statusText);
    error.status = response.status;
    throw error;
  }
  return data;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  row.appendChild(td);
  return td;
}

function button(label, className, onClick) {
  const b = document.createElement("button");
  b.textContent = label;
  b.className = className;
  b.addEventListener("click", onClick);
  return b;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "";
}

// ---------------------------------------------------------------- sign in

async function signIn(key) {
  apiKey = key;
  try {
    await api("GET", "/api/realtime/config");
  } catch (error) {
    apiKey = null;
    $("#sign-in-error").textContent =
      error.status === 401 || error.status === 403 ? "That key is not an admin key." : error.message;
    return;
  }
  sessionStorage.setItem("realtime-admin-key", key);
  $("#sign-in").hidden = true;
  $("#tabs").hidden = false;
  $("#sign-out").hidden = false;
  show("overview");
}

function signOut() {
  sessionStorage.removeItem("realtime-admin-key");
  location.reload();
}

// ---------------------------------------------------------------- tabs

function show(tab) {
  currentTab = tab;
  for (const section of document.querySelectorAll(".tab")) section.hidden = section.id !== tab;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === tab);
  refresh();
}

async function refresh() {
  clearTimeout(timer);
  try {
    await sampleMetrics();
    if (currentTab === "overview") await renderOverview();
    if (currentTab === "channels") await renderChannels();
    if (currentTab === "actors") await renderActors();
    if (currentTab === "sessions") await renderSessions();
  } catch (error) {
    console.error(error);
  }
  // Live tabs refresh themselves; forms are left alone while edited.
  timer = setTimeout(refresh, REFRESH_MS);
}

// ---------------------------------------------------------------- overview

function metric(text, name) {
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith(name + " ") || line.startsWith(name + "{")) sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return sum;
}

async function sampleMetrics() {
  const text = await (await fetch("/metrics")).text();
  const delivered = metric(text, "realtime_messages_delivered_total");
  const connections = metric(text, "realtime_connections");
  const rate = lastDelivered === null ? 0 : Math.max(0, (delivered - lastDelivered) / (REFRESH_MS / 1000));
  lastDelivered = delivered;
  samples.push({ rate, connections });
  if (samples.length > CHART_POINTS) samples.shift();
  $("#stat-connections").textContent = connections;
  $("#stat-subscriptions").textContent = metric(text, "realtime_subscriptions");
  $("#stat-channels").textContent = metric(text, "realtime_channels_live");
  $("#stat-rate").textContent = rate.toFixed(1);
}

function drawChart() {
  const canvas = $("#chart");
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const pad = 24;
  const plot = (key, color) => {
    const max = Math.max(1, ...samples.map((s) => s[key]));
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath();
    samples.forEach((s, i) => {
      const x = pad + (i / (CHART_POINTS - 1)) * (canvas.width - 2 * pad);
      const y = canvas.height - pad - (s[key] / max) * (canvas.height - 2 * pad);
      if (i === 0) g.moveTo(x, y);
      else g.lineTo(x, y);
    });
    g.stroke();
    g.fillStyle = color;
    g.fillText(`max ${max.toFixed(key === "rate" ? 1 : 0)}`, key === "rate" ? pad : canvas.width - 90, 14);
  };
  plot("rate", "#2d6cdf");
  plot("connections", "#1f9d55");
}

async function renderOverview() {
  drawChart();
  const stats = await api("GET", "/api/realtime/messages/stats");
  const box = $("#stats");
  box.textContent = "";
  const rows = [
    ["Messages stored", stats.totalMessages],
    ["Webhook delivery rate", `${(stats.whDeliveryRate * 100).toFixed(1)}%`],
    ["Retention", stats.retentionDays ? `${stats.retentionDays} days` : "forever"],
    ["Top events", stats.topEvents.map((e) => `${e.eventName} (${e.count})`).join(", ") || "none"],
  ];
  const table = document.createElement("table");
  for (const [label, value] of rows) {
    const tr = table.insertRow();
    cell(tr, label);
    cell(tr, String(value));
  }
  box.appendChild(table);
}

// ---------------------------------------------------------------- channels

let channelsShown = null;

async function renderChannels() {
  const channels = await api("GET", "/api/realtime/channels");
  const key = JSON.stringify(channels);
  if (key === channelsShown) return;
  channelsShown = key;
  const body = $("#channel-table tbody");
  body.textContent = "";
  for (const channel of channels) {
    const tr = body.insertRow();
    tr.dataset.pattern = channel.pattern;
    cell(tr, channel.pattern);
    cell(tr, channel.description);
    cell(tr, (channel.webhookUrls ?? []).join(", "));
    cell(tr, channel.enabled ? "yes" : "no");
    const actions = cell(tr, "");
    actions.append(
      button("Edit", "secondary", () => editChannel(channel)),
      " ",
      button(channel.enabled ? "Disable" : "Enable", "secondary", async () => {
        await api("PUT", `/api/realtime/channels/${channel.id}`, { enabled: !channel.enabled });
        channelsShown = null;
        refresh();
      }),
      " ",
      button("Delete", "danger", async () => {
        if (!confirm(`Delete ${channel.pattern}? Its history stays.`)) return;
        await api("DELETE", `/api/realtime/channels/${channel.id}`);
        channelsShown = null;
        refresh();
      }),
    );
  }
}

function editChannel(channel) {
  $("#channel-id").value = channel?.id ?? "";
  $("#channel-pattern").value = channel?.pattern ?? "";
  $("#channel-description").value = channel?.description ?? "";
  $("#channel-webhooks").value = (channel?.webhookUrls ?? []).join(", ");
  $("#channel-enabled").checked = channel?.enabled ?? true;
  $("#channel-save").textContent = channel ? "Save" : "Create";
  $("#channel-cancel").hidden = !channel;
}

async function saveChannel(event) {
  event.preventDefault();
  const id = $("#channel-id").value;
  const urls = $("#channel-webhooks").value.split(",").map((u) => u.trim()).filter(Boolean);
  const body = {
    pattern: $("#channel-pattern").value.trim(),
    description: $("#channel-description").value || null,
    webhookUrls: urls.length ? urls : null,
    enabled: $("#channel-enabled").checked,
  };
  try {
    if (id) await api("PUT", `/api/realtime/channels/${id}`, body);
    else await api("POST", "/api/realtime/channels", body);
    $("#channel-error").textContent = "";
    editChannel(null);
    channelsShown = null;
    refresh();
  } catch (error) {
    $("#channel-error").textContent = error.message;
  }
}

// ---------------------------------------------------------------- actors

async function renderActors() {
  const prefix = encodeURIComponent($("#actor-prefix").value);
  const actors = await api("GET", `/api/realtime/actors?limit=500&prefix=${prefix}`);
  const body = $("#actor-table tbody");
  body.textContent = "";
  for (const actor of actors) {
    const tr = body.insertRow();
    tr.className = "clickable";
    tr.dataset.name = actor.name;
    tr.addEventListener("click", () => {
      selectedActor = actor.name;
      refresh();
    });
    cell(tr, actor.name);
    if (actor.stale) {
      cell(tr, "(busy: no answer in time)");
      continue;
    }
    cell(tr, actor.pattern ?? "(disabled)");
    cell(tr, String(actor.subscribers));
    cell(tr, String(actor.presenceMembers));
    cell(tr, String(actor.messagesDelivered));
    cell(tr, String(actor.pendingWrites));
    cell(tr, when(actor.lastActivityAt));
  }
  const detail = $("#actor-detail");
  if (!selectedActor) {
    detail.hidden = true;
    return;
  }
  try {
    const actor = await api("GET", `/api/realtime/actors/${encodeURIComponent(selectedActor)}`);
    detail.hidden = false;
    $("#actor-name").textContent = actor.name;
    const subscribers = $("#actor-subscribers");
    subscribers.textContent = "";
    for (const id of actor.subscribers ?? []) {
      const li = document.createElement("li");
      li.textContent = id;
      subscribers.appendChild(li);
    }
    const presence = $("#actor-presence");
    presence.textContent = "";
    for (const member of actor.presence ?? []) {
      const li = document.createElement("li");
      li.textContent = `${member.presenceId} (${member.type}) since ${when(member.joinedAt)}`;
      presence.appendChild(li);
    }
  } catch (error) {
    if (error.status === 404) selectedActor = null; // retired: nobody left in it
    detail.hidden = true;
  }
}

// ---------------------------------------------------------------- sessions

async function renderSessions() {
  const user = $("#session-user").value.trim();
  const query = user ? `&userId=${encodeURIComponent(user)}` : "";
  const sessions = await api("GET", `/api/realtime/sessions?limit=500${query}`);
  const body = $("#session-table tbody");
  body.textContent = "";
  for (const session of sessions) {
    const tr = body.insertRow();
    tr.dataset.id = session.id;
    cell(tr, session.id);
    cell(tr, session.role);
    cell(tr, session.userId);
    cell(tr, session.transport);
    cell(tr, session.channels.join(", "));
    cell(tr, String(session.queuedFrames));
    cell(tr, session.remoteAddress);
    cell(tr, when(session.connectedAt));
    cell(tr, "").appendChild(
      button("Disconnect", "danger", async () => {
        await api("DELETE", `/api/realtime/sessions/${encodeURIComponent(session.id)}`);
        refresh();
      }),
    );
  }
}

// ---------------------------------------------------------------- messages

async function renderMessages(event) {
  event?.preventDefault();
  const select = $("#message-channel");
  const chosen = select.value;
  const channels = await api("GET", "/api/realtime/channels");
  select.textContent = "";
  select.append(new Option("all", ""));
  for (const channel of channels) select.append(new Option(channel.pattern, channel.id));
  select.value = chosen;
  const params = new URLSearchParams({ limit: $("#message-limit").value || "50" });
  if (chosen) params.set("channelId", chosen);
  const eventName = $("#message-event").value.trim();
  if (eventName) params.set("eventName", eventName);
  const messages = await api("GET", `/api/realtime/messages?${params}`);
  const body = $("#message-table tbody");
  body.textContent = "";
  for (const message of messages) {
    const tr = body.insertRow();
    cell(tr, new Date(message.createdAt).toLocaleString());
    cell(tr, message.channelName);
    cell(tr, message.eventName);
    cell(tr, message.senderType + (message.senderId ? ` ${message.senderId}` : ""));
    cell(tr, String(message.wsAudienceCount));
    cell(tr, `${message.whDeliveredCount}/${message.whAudienceCount}`);
    const payload = cell(tr, "");
    const code = document.createElement("code");
    code.textContent = JSON.stringify(message.payload);
    payload.appendChild(code);
  }
}

// ---------------------------------------------------------------- retention

async function renderRetention() {
  const config = await api("GET", "/api/realtime/config");
  $("#retention-days").value = config.retentionDays ?? "";
}

async function saveRetention(event) {
  event.preventDefault();
  const value = $("#retention-days").value;
  try {
    await api("PATCH", "/api/realtime/config", { retentionDays: value ? Number(value) : null });
    $("#retention-status").textContent = value ? `Messages are kept ${value} days.` : "Messages are kept forever.";
  } catch (error) {
    $("#retention-status").textContent = error.message;
  }
}

// ---------------------------------------------------------------- wiring

document.addEventListener("DOMContentLoaded", () => {
  $("#sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("#api-key").value.trim());
  });
  $("#sign-out").addEventListener("click", signOut);
  for (const b of document.querySelectorAll("#tabs button")) {
    b.addEventListener("click", () => {
      show(b.dataset.tab);
      if (b.dataset.tab === "messages") renderMessages();
      if (b.dataset.tab === "settings") renderRetention();
    });
  }
  $("#channel-form").addEventListener("submit", saveChannel);
  $("#channel-cancel").addEventListener("click", () => editChannel(null));
  $("#message-filter").addEventListener("submit", renderMessages);
  $("#retention-form").addEventListener("submit", saveRetention);
  if (apiKey) signIn(apiKey);
});
