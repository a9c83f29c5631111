/**
 * bezant-trio's live console, served at / (docs/console.md).
 *
 * It reads only the daemon's public API, like any other client:
 *   GET /events/_status, /health/ready, /state/marketdata   every second
 *   GET /events/gap?since=C                                  every second (the timeline)
 *   GET /state/orders, then SSE /events/orders/stream        orders, live
 * With http.token set it asks for the token once, keeps it in sessionStorage
 * (this tab only, gone when the tab closes) and sends it as an Authorization
 * header on every request: never in a URL.
 *
 * The page's Content-Security-Policy (http/console.py) allows no inline script
 * or style and requires Trusted Types, so nothing here may parse a string as
 * HTML: every value from the daemon (order fields are the gateway's) is
 * written as text (Node.append, textContent), never parsed as markup.
 */

const POLL_MS = 1000;
const RATE_WINDOW_S = 60;
/** Samples each point of a sparkline averages over. */
const SMOOTHING = 5;
const TOKEN_KEY = "bezant-trio.token";
/** Order statuses after which nothing more happens to an order (store/state.py). */
const FINISHED = new Set(["Filled", "Cancelled", "ApiCancelled", "Inactive", "Rejected"]);
const MAX_ORDER_ROWS = 200;
const MAX_FINISHED_KEPT = 500;
const MAX_TIMELINE = 200;
/** Gaps shown from before the page was opened. */
const TIMELINE_BACKLOG = 50;
/** Topics whose resync events are looked for after a gap (orders' come on its stream). */
const RESYNC_TOPICS = ["trades", "pnl"];
const RESYNC_WATCH_MS = 60_000;
const STREAM_RETRY_MAX_MS = 10_000;
/** Topics a read of which records a want (subscribes upstream): the console never reads them. */
const PER_INSTRUMENT = /^(marketdata|bars|book):/;
/** Market-data fields shown, in column order: last, bid, ask, bid size, ask size, volume. */
const QUOTE_FIELDS = ["31", "84", "86", "88", "85", "87"];
/** The symbol field: shown beside the conid when events.marketdata.fields asks for it. */
const SYMBOL_FIELD = "55";

// ------------------------------------------------------------------ DOM helpers

const byId = (id) => document.getElementById(id);

/** An element with attributes and children; strings become text nodes, never markup. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function setText(id, value) {
  const node = byId(id);
  const shown = display(value);
  if (node.textContent !== shown) node.textContent = shown;
}

/** Highlight a cell whose value changed: a CSS animation, restarted if one is running. */
function flash(node) {
  node.classList.remove("changed");
  void node.offsetWidth; // a reflow, so the animation starts again
  node.classList.add("changed");
}

// The class goes once its animation is over, so moving a row does not replay it.
document.addEventListener("animationend", (event) => event.target.classList?.remove("changed"));

// ------------------------------------------------------------------- formatting

const display = (value) =>
  value === null || value === undefined || value === "" ? "—" : String(value);
const words = (reason) => display(reason).replaceAll("_", " ");

/** The daemon's clock minus the browser's, from the Date header (ms; 0 when close). */
let clockSkewMs = 0;
const serverNow = () => Date.now() + clockSkewMs;

function noteServerDate(response) {
  const date = Date.parse(response.headers.get("date") ?? "");
  if (Number.isNaN(date)) return;
  const skew = date - Date.now();
  // The header has whole seconds: only a larger difference is a real skew.
  clockSkewMs = Math.abs(skew) > 2000 ? skew : 0;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${s % 60} s`;
  return `${s} s`;
}

function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

function epochMs(ts) {
  if (ts === null || ts === undefined || ts === "") return null;
  const ms = typeof ts === "number" ? ts : Date.parse(ts);
  return Number.isNaN(ms) ? null : ms;
}

/** A <time> saying how long ago `ts` (RFC 3339 or epoch ms) was, with the instant as its title. */
function ago(ts) {
  const ms = epochMs(ts);
  if (ms === null) return display(ts);
  const iso = new Date(ms).toISOString();
  return el("time", { datetime: iso, title: iso }, `${duration((serverNow() - ms) / 1000)} ago`);
}

function clockTime(ts) {
  const ms = epochMs(ts);
  if (ms === null) return display(ts);
  const iso = new Date(ms).toISOString();
  const local = new Date(ms).toLocaleTimeString([], { hour12: false });
  return el("time", { datetime: iso, title: iso }, local);
}

function replaceContent(id, content) {
  const node = byId(id);
  node.replaceChildren(content instanceof Node ? content : display(content));
}

// -------------------------------------------------------------------------- API

class Unauthorized extends Error {}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function authHeaders(extra) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { ...extra, Authorization: `Bearer ${token}` } : { ...extra };
}

/** GET a JSON route: {status, body} (body null for a 204); 401 throws Unauthorized. */
async function getJson(path, signal, { accept = [] } = {}) {
  const response = await fetch(path, {
    headers: authHeaders({ Accept: "application/json" }),
    signal,
    cache: "no-store",
  });
  if (response.status === 401) throw new Unauthorized();
  const body = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok && !accept.includes(response.status)) {
    throw new HttpError(response.status, body?.message ?? `${path} answered ${response.status}`);
  }
  return { status: response.status, body, response };
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        resolve();
      },
      { once: true },
    );
  });
}

// -------------------------------------------------------------------------- SSE

/**
 * The messages of a text/event-stream body, read as the EventSource algorithm
 * reads them: `id:`, `event:`, `data:` (several lines joined with "\n"),
 * `retry:`; comments (`:` lines, the daemon's heartbeats) are skipped.
 */
async function* sseMessages(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let message = {};
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        // A "\r" at the very end ends its line; anything else left is an unfinished line.
        if (!buffer.endsWith("\r")) return;
        buffer += "\n";
      } else {
        buffer += value;
      }
      // A "\r" at the very end may be the first half of a "\r\n": keep it for the next chunk.
      const lines = buffer.split(/\r\n|\r(?!$)|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          const joined = data.join("\n");
          if (joined !== "") message.data = joined;
          if (Object.keys(message).length) yield message;
          message = {};
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "data") data.push(value);
        else if (field === "id") message.id = value;
        else if (field === "event") message.event = value;
        else if (field === "retry" && /^\d+$/.test(value)) message.retry = Number(value);
      }
      if (done) return;
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/**
 * One topic's SSE stream, resumed after every break.
 *
 * Not EventSource: an EventSource cannot send an Authorization header, so with
 * http.token set the token would have to ride in the URL, where access logs,
 * proxies, the browser's history and Referer headers keep it. fetch() sends
 * it as a header like every other request of this page, and the body is
 * parsed above. A reconnect sends Last-Event-ID with the last cursor seen, as
 * an EventSource would, so nothing is missed across a broken connection.
 */
class TopicStream {
  constructor(topic, since, { onEvent, onUnauthorized }) {
    this.topic = topic;
    this.lastId = String(since);
    this.onEvent = onEvent;
    this.onUnauthorized = onUnauthorized;
    this.controller = new AbortController();
  }

  start() {
    this.run().catch((err) => console.error(`stream ${this.topic}:`, err));
    return this;
  }

  stop() {
    this.controller.abort();
  }

  async run() {
    const { signal } = this.controller;
    let retryMs = 1000;
    let failures = 0;
    while (!signal.aborted) {
      try {
        const response = await fetch(`/events/${this.topic}/stream`, {
          headers: authHeaders({ Accept: "text/event-stream", "Last-Event-ID": this.lastId }),
          signal,
          cache: "no-store",
        });
        if (response.status === 401) {
          this.onUnauthorized();
          return;
        }
        if (!response.ok || !response.body) {
          throw new HttpError(response.status, `stream answered ${response.status}`);
        }
        failures = 0;
        for await (const message of sseMessages(response.body)) {
          if (message.retry !== undefined) retryMs = message.retry;
          if (message.id !== undefined) this.lastId = message.id;
          if (message.data !== undefined) this.onEvent(JSON.parse(message.data));
        }
      } catch (err) {
        if (signal.aborted) return;
        failures += 1;
        console.warn(`stream ${this.topic} broke (${err.message}); resuming after ${this.lastId}`);
      }
      await sleep(Math.min(retryMs * 2 ** Math.min(failures, 4), STREAM_RETRY_MAX_MS), signal);
    }
  }
}

// ---------------------------------------------------------------------- orders

/** The order records of an sor frame or of an orders resync (as store/state.py reads them). */
function ordersIn(payload) {
  let list = payload.args;
  if (payload.reason === "resync") {
    const data = payload.data;
    list = data !== null && typeof data === "object" && !Array.isArray(data) ? data.orders : data;
  }
  return Array.isArray(list) ? list.filter((o) => o !== null && typeof o === "object") : [];
}

function orderKey(order) {
  const id = order.orderId;
  if ((typeof id !== "number" && typeof id !== "string") || id === "") return null;
  return String(id);
}

/** Every order by orderId, merged from the partial updates sor frames carry. */
class Orders {
  constructor() {
    this.items = new Map();
    this.revision = 0;
    /** Keys whose status changed since the last render (their status cell flashes). */
    this.flashing = new Set();
    this.dirty = true;
  }

  load(items) {
    this.items.clear();
    const entries = Object.entries(items ?? {});
    entries.sort(([, a], [, b]) => (a.lastExecutionTime_r ?? 0) - (b.lastExecutionTime_r ?? 0));
    for (const [key, record] of entries) this.items.set(key, { ...record, _rev: ++this.revision });
    this.dirty = true;
  }

  merge(orders) {
    for (const order of orders) {
      const key = orderKey(order);
      if (key === null) continue;
      const record = this.items.get(key);
      if (record === undefined) {
        this.items.set(key, { ...order, _rev: ++this.revision });
        continue;
      }
      if ("status" in order && order.status !== record.status) this.flashing.add(key);
      Object.assign(record, order, { _rev: ++this.revision });
    }
    this.prune();
    this.dirty = true;
  }

  prune() {
    const finished = [...this.items].filter(([, r]) => FINISHED.has(r.status));
    if (finished.length <= MAX_FINISHED_KEPT) return;
    finished.sort(([, a], [, b]) => a._rev - b._rev);
    for (const [key] of finished.slice(0, finished.length - MAX_FINISHED_KEPT))
      this.items.delete(key);
  }

  /** Working orders first, then finished ones; the most recently updated first in each. */
  sorted() {
    return [...this.items].sort(([, a], [, b]) => {
      const finished = Number(FINISHED.has(a.status)) - Number(FINISHED.has(b.status));
      return finished || b._rev - a._rev;
    });
  }
}

function renderOrders(orders, rows) {
  if (!orders.dirty) return;
  orders.dirty = false;
  const body = byId("orders-body");
  const sorted = orders.sorted();
  const shown = sorted.slice(0, MAX_ORDER_ROWS);
  const working = sorted.filter(([, r]) => !FINISHED.has(r.status)).length;
  setText(
    "orders-caption",
    `${working} working, ${sorted.length - working} finished` +
      (sorted.length > shown.length ? ` (the ${shown.length} most recent shown)` : "") +
      "; working orders first, updated live from the orders stream.",
  );
  if (!shown.length) {
    rows.clear();
    body.replaceChildren(emptyRow(8, "No order in the daemon's state yet."));
    return;
  }
  const wanted = [];
  for (const [key, record] of shown) {
    let row = rows.get(key);
    if (row === undefined) {
      row = el("tr", { "data-order-id": key });
      for (let i = 0; i < 8; i += 1)
        row.append(el(i === 0 ? "th" : "td", i === 0 ? { scope: "row" } : {}));
      row.cells[4].className = "num";
      row.cells[5].className = "num";
      row.cells[6].classList.add("status");
      rows.set(key, row);
    }
    const instrument = record.ticker ?? record.symbol ?? record.description1 ?? record.conid;
    const values = [
      key,
      instrument,
      record.side,
      record.orderType ?? record.origOrderType,
      record.price ?? record.avgPrice,
      `${display(record.filledQuantity)} / ${display(record.totalSize)}`,
      record.status,
      record.acct ?? record.account,
    ];
    values.forEach((value, i) => {
      const shownValue = display(value);
      if (row.cells[i].textContent !== shownValue) row.cells[i].textContent = shownValue;
    });
    row.dataset.status = display(record.status);
    if (orders.flashing.has(key)) flash(row.cells[6]);
    wanted.push(row);
  }
  orders.flashing.clear();
  const shownKeys = new Set(shown.map(([key]) => key));
  for (const key of rows.keys()) if (!shownKeys.has(key)) rows.delete(key);
  const current = [...body.children];
  if (current.length !== wanted.length || current.some((row, i) => row !== wanted[i])) {
    body.replaceChildren(...wanted);
  }
}

function emptyRow(columns, message) {
  return el("tr", { class: "empty" }, el("td", { colspan: columns }, message));
}

// -------------------------------------------------------------- topics (rates)

/** Events per second per topic over the last minute, from successive events_published samples. */
class Rates {
  constructor() {
    this.samples = [];
  }

  add(published, at) {
    const last = this.samples.at(-1);
    // A count that went down is a restarted daemon: its counts start again.
    if (last && Object.entries(last.counts).some(([t, n]) => (published[t] ?? 0) < n))
      this.samples = [];
    this.samples.push({ at, counts: { ...published } });
    while (this.samples.length > 2 && at - this.samples[1].at >= RATE_WINDOW_S)
      this.samples.shift();
  }

  rate(topic) {
    if (this.samples.length < 2) return null;
    const first = this.samples[0];
    const last = this.samples.at(-1);
    return ((last.counts[topic] ?? 0) - (first.counts[topic] ?? 0)) / (last.at - first.at);
  }

  /**
   * The rate at each sample, oldest first, over the SMOOTHING samples before it:
   * a topic with one event a second, sampled once a second, reads as a line,
   * not as spikes of 0 and 2.
   */
  series(topic) {
    const out = [];
    for (let i = 1; i < this.samples.length; i += 1) {
      const a = this.samples[Math.max(0, i - SMOOTHING)];
      const b = this.samples[i];
      out.push(((b.counts[topic] ?? 0) - (a.counts[topic] ?? 0)) / Math.max(b.at - a.at, 0.001));
    }
    return out;
  }
}

function sparkline(series) {
  const width = RATE_WINDOW_S;
  const height = 16;
  const max = Math.max(...series, 0);
  const node = svg("svg", {
    class: "spark",
    viewBox: `0 0 ${width} ${height}`,
    preserveAspectRatio: "none",
    "aria-hidden": "true",
    focusable: "false",
  });
  if (series.length > 1) {
    const start = width - series.length + 1;
    const points = series
      .map(
        (v, i) =>
          `${start + i},${(height - 1 - (max > 0 ? (v / max) * (height - 2) : 0)).toFixed(2)}`,
      )
      .join(" ");
    node.append(svg("polyline", { points, "vector-effect": "non-scaling-stroke" }));
  }
  return node;
}

function formatRate(rate) {
  if (rate === null) return "…";
  if (rate === 0) return "0/s";
  return rate >= 10 ? `${rate.toFixed(0)}/s` : `${rate.toFixed(rate >= 1 ? 1 : 2)}/s`;
}

function renderTopics(status, rates) {
  const topics = Object.keys(status.head_cursors ?? {}).sort();
  const rows = topics.map((topic) => {
    const size = status.buffer_sizes?.[topic] ?? 0;
    const capacity = status.ring_capacity?.[topic];
    const ring = el("td", { class: "ring" });
    if (capacity) {
      ring.append(
        el("meter", { min: 0, max: capacity, value: size, "aria-label": `${topic} ring fill` }),
        ` ${size} / ${capacity}`,
      );
    } else {
      ring.append(String(size));
    }
    const rate = rates.rate(topic);
    return el(
      "tr",
      { "data-topic": topic },
      el("th", { scope: "row" }, topic),
      el(
        "td",
        {},
        el(
          "span",
          { class: "rate" },
          sparkline(rates.series(topic)),
          el("span", {}, formatRate(rate)),
        ),
      ),
      el("td", { class: "num" }, status.head_cursors[topic]),
      ring,
      el("td", {}, ago(status.last_event_at?.[topic])),
    );
  });
  byId("topics-body").replaceChildren(
    ...(rows.length ? rows : [emptyRow(5, "No topic has had an event yet.")]),
  );
}

// ------------------------------------------------------------------------ sinks

/**
 * How long ago the oldest event a sink has not delivered was received: the
 * event right after its checkpoint, read once per checkpoint. Not for
 * per-instrument topics (marketdata:<conid>, bars:, book:), where a read
 * subscribes the conid upstream.
 */
class SinkLag {
  constructor() {
    this.receivedAt = new Map();
  }

  seconds(sink, heads, signal) {
    if (!sink.lag) return 0;
    let oldest = null;
    const current = new Set();
    for (const [topic, checkpoint] of Object.entries(sink.checkpoints ?? {})) {
      if (!((heads[topic] ?? 0) > checkpoint) || PER_INSTRUMENT.test(topic)) continue;
      const key = `${topic}@${checkpoint}`;
      current.add(key);
      if (!this.receivedAt.has(key)) {
        this.receivedAt.set(key, null);
        getJson(`/events/${topic}?since=${checkpoint}&limit=1`, signal)
          .then(({ body }) => this.receivedAt.set(key, epochMs(body?.events?.[0]?.received_at)))
          .catch(() => {});
      }
      const at = this.receivedAt.get(key);
      if (at !== null && (oldest === null || at < oldest)) oldest = at;
    }
    this.forgetAllBut(sink, current);
    return oldest === null ? null : (serverNow() - oldest) / 1000;
  }

  forgetAllBut(sink, current) {
    const topics = Object.keys(sink.checkpoints ?? {});
    for (const key of this.receivedAt.keys()) {
      const topic = key.slice(0, key.lastIndexOf("@"));
      if (topics.includes(topic) && !current.has(key)) this.receivedAt.delete(key);
    }
  }
}

function renderSinks(status, sinkLag, signal) {
  const sinks = Object.entries(status.sinks ?? {}).sort(([a], [b]) => a.localeCompare(b));
  const rows = sinks.map(([name, sink]) => {
    const lagSeconds = sinkLag.seconds(sink, status.head_cursors ?? {}, signal);
    return el(
      "tr",
      { "data-sink": name, "data-state": sink.state },
      el("th", { scope: "row" }, name, el("span", { class: "sub" }, ` ${display(sink.type)}`)),
      el("td", {}, el("span", { class: "state", "data-state": sink.state }, display(sink.state))),
      el("td", { class: "num" }, display(sink.lag)),
      el("td", { class: "num" }, lagSeconds === null ? "—" : duration(lagSeconds)),
      el("td", { class: "num" }, display(sink.delivered)),
      el("td", {}, ago(sink.last_delivered_at)),
      el("td", { class: sink.last_error ? "error" : "" }, display(sink.last_error)),
    );
  });
  byId("sinks-body").replaceChildren(
    ...(rows.length ? rows : [emptyRow(7, "No sink is configured (sinks: in the config).")]),
  );
}

// ------------------------------------------------------------------ market data

function renderQuotes(quotes, previous) {
  const body = byId("quotes-body");
  const entries = Object.entries(quotes ?? {}).sort(([a], [b]) => Number(a) - Number(b));
  if (!entries.length) {
    previous.clear();
    body.replaceChildren(
      emptyRow(
        8,
        "No conid is wanted: a poll or stream of /events/marketdata?conid=N subscribes one.",
      ),
    );
    return;
  }
  const rows = entries.map(([conid, quote]) => {
    let row = previous.get(conid)?.row;
    const before = previous.get(conid)?.values ?? {};
    if (row === undefined) {
      row = el(
        "tr",
        { "data-conid": conid },
        el("th", { scope: "row" }, conid, el("span", { class: "sub" })),
      );
      for (const field of QUOTE_FIELDS) row.append(el("td", { class: "num", "data-field": field }));
      row.append(el("td", { class: "updated" }));
    }
    const symbol = quote[SYMBOL_FIELD] ? ` ${quote[SYMBOL_FIELD]}` : "";
    if (row.cells[0].lastChild.textContent !== symbol) row.cells[0].lastChild.textContent = symbol;
    QUOTE_FIELDS.forEach((field, i) => {
      const cell = row.cells[i + 1];
      const value = display(quote[field]);
      if (cell.textContent !== value) cell.textContent = value;
      if (field in before && before[field] !== quote[field]) flash(cell);
    });
    row.cells[QUOTE_FIELDS.length + 1].replaceChildren(ago(quote._updated));
    previous.set(conid, { row, values: { ...quote } });
    return row;
  });
  for (const conid of previous.keys()) if (!(conid in (quotes ?? {}))) previous.delete(conid);
  const current = [...body.children];
  if (current.length !== rows.length || current.some((row, i) => row !== rows[i]))
    body.replaceChildren(...rows);
}

// --------------------------------------------------------------------- timeline

class Timeline {
  constructor() {
    this.seen = new Set();
  }

  /** Add `event` of `topic` (a gap or a resync) once, however often it is read. */
  add(event, topic) {
    // Cursors start again after a restart without the log: the time tells such events apart.
    const key = `${topic}:${event.cursor}:${event.received_at}`;
    if (this.seen.has(key)) return;
    this.seen.add(key);
    const payload = event.payload ?? {};
    const reason = String(payload.reason ?? "gap");
    const kind = reason.startsWith("resync") ? "resync" : "gap";
    const facts = [];
    if (payload.new_reset_epoch !== undefined) facts.push(`epoch ${payload.new_reset_epoch}`);
    if (kind === "gap") {
      const down = epochMs(payload.reconnected_at) - epochMs(payload.disconnected_at);
      if (payload.disconnected_at && Number.isFinite(down))
        facts.push(`no connection for ${(down / 1000).toFixed(1)} s`);
    } else {
      if (payload.source) facts.push(`from ${payload.source}`);
      if (reason === "resync") {
        const count = topic === "orders" ? ordersIn(payload).length : null;
        if (count !== null) facts.push(`${count} order${count === 1 ? "" : "s"}`);
      }
      if (payload.error) facts.push(String(payload.error));
    }
    const title =
      kind === "gap"
        ? `Gap: ${words(reason)}`
        : `${reason === "resync" ? "Resync" : "Resync failed"}: ${topic}`;
    const at = epochMs(event.received_at) ?? 0;
    const item = el(
      "li",
      { "data-kind": kind, "data-reason": reason, "data-topic": topic, "data-at": at },
      clockTime(event.received_at),
      " ",
      el("strong", {}, title),
      facts.length ? el("span", { class: "sub" }, ` · ${facts.join(" · ")}`) : null,
    );
    // Newest first, by when the daemon received each: they arrive from several reads.
    const list = byId("timeline");
    const older = [...list.children].find((li) => Number(li.dataset.at) < at);
    list.insertBefore(item, older ?? null);
    while (list.children.length > MAX_TIMELINE) list.lastElementChild.remove();
  }
}

/**
 * After a live gap, the resync events that follow it in the trades and pnl
 * topics: read from the cursor each topic had before the new epoch, until the
 * resync of that epoch shows up (bounded by RESYNC_WATCH_MS).
 */
class ResyncWatch {
  constructor(timeline) {
    this.timeline = timeline;
    this.watches = [];
    /** The heads of the newest status sample, and of the newest one of the epoch before. */
    this.latest = null;
    this.before = null;
  }

  noteStatus(status) {
    if (this.latest && this.latest.epoch !== status.reset_epoch) this.before = this.latest;
    this.latest = { epoch: status.reset_epoch, heads: { ...(status.head_cursors ?? {}) } };
  }

  /** A gap that started `epoch` was seen: watch for its resyncs after the heads of an older epoch. */
  gapSeen(epoch) {
    const sample = [this.latest, this.before].find((s) => s && s.epoch < epoch);
    if (!sample) return; // the gap is older than this page: its resyncs are not looked for
    for (const topic of RESYNC_TOPICS) {
      if (!(topic in sample.heads)) continue;
      this.watches.push({
        topic,
        epoch,
        cursor: sample.heads[topic],
        until: Date.now() + RESYNC_WATCH_MS,
      });
    }
  }

  async poll(signal) {
    const now = Date.now();
    this.watches = this.watches.filter((w) => w.until > now);
    for (const watch of [...this.watches]) {
      const { body, status } = await getJson(
        `/events/${watch.topic}?since=${watch.cursor}&limit=200`,
        signal,
        { accept: [412] },
      );
      if (status !== 200) {
        watch.until = 0; // 412: what followed the gap is no longer kept
        continue;
      }
      for (const event of body.events) {
        const payload = event.payload ?? {};
        if (
          String(payload.reason ?? "").startsWith("resync") &&
          payload.new_reset_epoch === watch.epoch
        ) {
          this.timeline.add(event, watch.topic);
          watch.until = 0;
        }
      }
      watch.cursor = body.next_cursor;
    }
  }
}

// ------------------------------------------------------------ gateway and log

const GATEWAY_WORDS = {
  connecting: "connecting to the gateway",
  needs_login: "a person must log in at the gateway",
  session_down: "the brokerage session is down; recovery is in progress",
  competing: "another login holds the session",
  gateway_unreachable: "the gateway cannot be reached",
  gateway_silent: "the gateway opened the socket but sent no ready frame",
  stopped: "the daemon stopped connecting",
  stopping: "the daemon is stopping",
  not_connecting: "this daemon does not connect to a gateway",
};

function renderGateway(status) {
  const state = status.state ?? (status.connected ? "connected" : "unknown");
  const badge = byId("gw-state");
  badge.textContent = state;
  badge.dataset.state = state;
  setText("gw-error", status.last_error);
  const disconnect = status.last_disconnect;
  replaceContent(
    "gw-disconnect",
    disconnect ? el("span", {}, ago(disconnect.at), ` · ${display(disconnect.reason)}`) : "—",
  );
  const gw = status.gateway ?? {};
  const kind = gw.is_paper === true ? "paper" : gw.is_paper === false ? "live" : "unknown";
  const accounts =
    Array.isArray(gw.accounts) && gw.accounts.length ? ` · ${gw.accounts.join(", ")}` : "";
  replaceContent(
    "gw-account",
    el(
      "span",
      {},
      el("span", { class: "kind", "data-kind": kind }, kind),
      ` ${display(gw.username)}${accounts}`,
    ),
  );
  setText(
    "gw-server",
    gw.server_name || gw.server_version
      ? `${display(gw.server_name)} ${display(gw.server_version)}`
      : null,
  );
  setText("gw-epoch", status.reset_epoch);
  setText("gw-reconnects", status.reconnect_count);
  replaceContent("gw-last-frame", ago(status.last_message_at));
  setText("gw-uptime", duration(status.uptime_seconds));
  const summary = [
    `${state}`,
    `epoch ${display(status.reset_epoch)}`,
    `up ${duration(status.uptime_seconds)}`,
  ];
  setText("summary", summary.join(" · "));
}

function renderLog(log) {
  const badge = byId("log-state");
  if (!log) {
    badge.textContent = "off: memory only (set store.path to keep events across restarts)";
    badge.dataset.state = "off";
    setText("log-error", null);
    for (const id of ["log-size", "log-events", "log-oldest", "log-latency", "log-backlog"])
      setText(id, null);
    return;
  }
  badge.textContent = log.state;
  badge.dataset.state = log.state;
  setText("log-error", log.last_error);
  setText("log-size", bytes(log.size_bytes));
  setText("log-events", log.events);
  replaceContent("log-oldest", ago(log.oldest_received_at));
  setText(
    "log-latency",
    log.commit_latency_ms === null || log.commit_latency_ms === undefined
      ? null
      : `${log.commit_latency_ms} ms`,
  );
  setText("log-backlog", log.backlog);
}

/** `text` as a sentence: a capital first letter and one full stop. */
function sentence(text) {
  const trimmed = String(text)
    .trim()
    .replace(/[.\s]+$/, "");
  return `${trimmed.charAt(0).toUpperCase()}${trimmed.slice(1)}.`;
}

/** The banner's words: empty when the daemon is reachable, connected, receiving, its log healthy. */
function bannerText(status, ready) {
  const lines = [];
  const state = status.state;
  if (state && state !== "connected") {
    const retryIn = status.next_retry_in;
    let retry = "";
    if (typeof retryIn === "number")
      retry = retryIn < 1 ? " Retrying now." : ` Retrying in ${duration(retryIn)}.`;
    const error = status.last_error ? ` ${sentence(status.last_error)}` : "";
    lines.push(
      `Not receiving from the gateway: ${state}, ${GATEWAY_WORDS[state] ?? "disconnected"}.${error}${retry}`,
    );
  } else if (ready && ready.status !== 200 && ready.body?.reason) {
    lines.push(`Not ready: ${sentence(ready.body.reason)}`);
  }
  if (status.log?.state === "degraded") {
    lines.push(
      `Event log degraded: ${sentence(display(status.log.last_error))} Events are kept in memory until it can write again.`,
    );
  }
  return lines.join(" ");
}

/** Words for a request that failed: the daemon's own message, or why it could not be reached. */
function trouble(err) {
  if (err instanceof HttpError) return `The daemon answered ${err.status}: ${err.message}`;
  return `Cannot reach the daemon at ${location.origin} (${err.message})`;
}

function setBanner(message, level = "warn") {
  const banner = byId("banner");
  if (banner.textContent !== message) banner.textContent = message;
  banner.dataset.level = message ? level : "";
  document.title = message ? "⚠ bezant-trio console" : "bezant-trio console";
}

// ---------------------------------------------------------------------- session

/** Everything one unlocked view runs: the polls, the orders stream, the models. */
class Session {
  constructor(onLocked) {
    this.onLocked = onLocked;
    this.controller = new AbortController();
    this.orders = new Orders();
    this.orderRows = new Map();
    this.rates = new Rates();
    this.sinkLag = new SinkLag();
    this.quotes = new Map();
    this.timeline = new Timeline();
    this.resyncs = new ResyncWatch(this.timeline);
    this.gapCursor = null;
    this.stream = null;
    this.renderPending = false;
  }

  stop() {
    this.controller.abort();
    this.stream?.stop();
  }

  /** Raises Unauthorized when the token is missing or wrong. */
  async start() {
    const { signal } = this.controller;
    const first = await getJson("/events/_status", signal);
    showData();
    this.apply(first, null, null);
    await this.loadOrders();
    await this.loadTimeline(first.body);
    this.loop().catch((err) => this.fail(err));
  }

  async loadOrders() {
    this.stream?.stop();
    const { body } = await getJson("/state/orders", this.controller.signal);
    this.orders.load(body.items);
    renderOrders(this.orders, this.orderRows);
    // State at cursor C, then the stream after C: nothing lost, nothing applied twice.
    this.stream = new TopicStream("orders", body.cursor, {
      onEvent: (event) => this.orderEvent(event),
      onUnauthorized: () => this.fail(new Unauthorized()),
    }).start();
  }

  /** Take the state again (the stream skipped events the daemon no longer keeps). */
  async reloadOrders() {
    const { signal } = this.controller;
    while (!signal.aborted) {
      try {
        await this.loadOrders();
        return;
      } catch (err) {
        if (err instanceof Unauthorized) return this.fail(err);
        await sleep(2000, signal); // the banner says why, from the status polls
      }
    }
  }

  orderEvent(event) {
    const payload = event.payload ?? {};
    if (payload.reason === "cursor_expired") {
      this.stream?.stop();
      this.reloadOrders();
      return;
    }
    if (String(payload.reason ?? "").startsWith("resync")) this.timeline.add(event, "orders");
    this.orders.merge(ordersIn(payload));
    // A burst of frames is drawn once: the table is redrawn at most every 50 ms.
    if (this.renderPending) return;
    this.renderPending = true;
    setTimeout(() => {
      this.renderPending = false;
      renderOrders(this.orders, this.orderRows);
    }, 50);
  }

  async loadTimeline(status) {
    const head = status.head_cursors?.gap ?? 0;
    const since = Math.max(0, head - TIMELINE_BACKLOG);
    const { body } = await getJson(
      `/events/gap?since=${since}&limit=${TIMELINE_BACKLOG}`,
      this.controller.signal,
      { accept: [412] },
    );
    this.gapCursor = body?.next_cursor ?? head;
    for (const event of body?.events ?? []) this.timeline.add(event, "gap");
  }

  async pollGaps() {
    const { status, body } = await getJson(
      `/events/gap?since=${this.gapCursor}&limit=100`,
      this.controller.signal,
      { accept: [412] },
    );
    if (status === 412) {
      this.gapCursor = Math.max(0, (body?.head_cursor ?? 1) - 1);
      return;
    }
    if (status !== 200) return;
    for (const event of body.events) {
      this.timeline.add(event, "gap");
      const epoch = event.payload?.new_reset_epoch;
      if (epoch !== undefined) this.resyncs.gapSeen(epoch);
    }
    this.gapCursor = body.next_cursor;
  }

  async loop() {
    const { signal } = this.controller;
    while (!signal.aborted) {
      await sleep(POLL_MS, signal);
      if (signal.aborted) return;
      try {
        const [status, ready, quotes] = await Promise.all([
          getJson("/events/_status", signal),
          getJson("/health/ready", signal, { accept: [503] }),
          // Polled, not streamed: a stream of marketdata:<conid> would keep that conid
          // subscribed upstream for as long as the page is open. /state/marketdata
          // without a conid reads the quotes and records no want.
          getJson("/state/marketdata", signal),
        ]);
        this.apply(status, ready, quotes);
        await this.pollGaps();
        await this.resyncs.poll(signal);
      } catch (err) {
        if (signal.aborted) return;
        if (err instanceof Unauthorized) return this.fail(err);
        setBanner(`${trouble(err)}. Retrying every second.`, "error");
        setText(
          "summary",
          err instanceof HttpError ? "daemon answered an error" : "daemon unreachable",
        );
      }
    }
  }

  apply(status, ready, quotes) {
    noteServerDate(status.response);
    const body = status.body;
    this.rates.add(body.events_published ?? {}, performance.now() / 1000);
    this.resyncs.noteStatus(body);
    renderGateway(body);
    renderLog(body.log);
    renderTopics(body, this.rates);
    renderSinks(body, this.sinkLag, this.controller.signal);
    if (quotes) renderQuotes(quotes.body.items, this.quotes);
    const banner = bannerText(body, ready);
    setBanner(banner, body.log?.state === "degraded" ? "error" : "warn");
  }

  fail(err) {
    this.stop();
    if (err instanceof Unauthorized) {
      this.onLocked(true);
      return;
    }
    console.error(err);
    setBanner(`The console stopped: ${err.message}. Reload the page.`, "error");
  }
}

// --------------------------------------------------------------------- the page

let session = null;

function clearData() {
  for (const id of ["topics-body", "sinks-body", "orders-body", "quotes-body", "timeline"])
    byId(id).replaceChildren();
  for (const node of document.querySelectorAll("#data dd[id]")) node.replaceChildren("—");
  for (const badge of [byId("gw-state"), byId("log-state")]) {
    badge.textContent = "—";
    badge.dataset.state = "";
  }
}

function showData() {
  byId("login").hidden = true;
  byId("data").hidden = false;
  byId("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
}

/** No data without the token: the data is hidden, cleared, and the form asks for it. */
function showLogin(refused) {
  session?.stop();
  session = null;
  clearData();
  byId("data").hidden = true;
  byId("login").hidden = false;
  byId("forget-token").hidden = true;
  setBanner("");
  setText("summary", "locked: this daemon needs its API token");
  const hadToken = sessionStorage.getItem(TOKEN_KEY) !== null;
  byId("login-error").textContent = refused && hadToken ? "The daemon refused that token." : "";
  sessionStorage.removeItem(TOKEN_KEY);
  byId("token-input").focus();
}

async function openSession() {
  session?.stop();
  session = new Session((refused) => showLogin(refused));
  try {
    await session.start();
  } catch (err) {
    if (err instanceof Unauthorized) {
      showLogin(true);
      return;
    }
    session.stop();
    session = null;
    setBanner(`${trouble(err)}. Retrying.`, "error");
    setTimeout(openSession, 2000);
  }
}

byId("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = byId("token-input");
  const token = input.value.trim();
  input.value = "";
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  byId("login-error").textContent = "";
  openSession();
});

byId("forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin(false);
});

openSession();

// For the browser tests (tests/console), which import the module the page already runs.
export { Rates, ordersIn, sseMessages };
