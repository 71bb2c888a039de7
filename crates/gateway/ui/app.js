// The switchyard dashboard: reads the server's own endpoints (the
// telemetry records, /metrics, the handoff queue) every few seconds and
// draws them. No library, no network beyond this server.
"use strict";

const REFRESH_MS = 3000;
const BUCKETS = 30;
const COLORS = ["#2f6fde", "#d9822b", "#2e9e6a", "#b04fc2", "#c43c3c", "#6b7385", "#1aa3b8", "#8a6d3b"];
const $ = (id) => document.getElementById(id);

let key = sessionStorage.getItem("switchyard-key") || "";
let timer = null;

async function get(path, as = "json") {
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  const resp = await fetch(path, { headers });
  if (resp.status === 401 || resp.status === 403) {
    const err = new Error((await resp.json().catch(() => ({}))).error?.message || resp.statusText);
    err.auth = true;
    throw err;
  }
  if (!resp.ok) throw new Error(`${path}: ${resp.status}`);
  return as === "json" ? resp.json() : resp.text();
}

function percentile(values, q) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length - 1) * q))];
}

const fmt = {
  ms: (v) => (v == null ? "–" : v < 10 ? v.toFixed(1) : Math.round(v).toString()),
  usd: (v) => (v == null ? "–" : v === 0 ? "$0" : v < 0.01 ? `$${v.toPrecision(2)}` : `$${v.toFixed(2)}`),
  pct: (n, d) => (d ? `${((100 * n) / d).toFixed(1)}%` : "–"),
  rate: (v) => (v < 10 ? v.toFixed(2) : v.toFixed(0)),
};

/** Totals of a set of records: what each table row and tile shows. */
function summarize(records, seconds) {
  const answered = records.filter((r) => r.label === "answered");
  const costs = records.map((r) => r.cost_usd).filter((c) => c != null);
  const cost = costs.reduce((a, b) => a + b, 0);
  return {
    n: records.length,
    rate: records.length / seconds,
    answered: answered.length,
    refused: records.filter((r) => r.label === "refused").length,
    escalated: records.filter((r) => r.cascade === "escalated" || r.label === "human-escalated").length,
    errors: records.filter((r) => r.label === "error").length,
    cost: costs.length ? cost : null,
    costPerTask: costs.length && answered.length ? cost / answered.length : null,
    total: [0.5, 0.95, 0.99].map((q) => percentile(records.map((r) => r.total_ms).filter((v) => v != null), q)),
    ttft: [0.5, 0.95].map((q) => percentile(records.map((r) => r.ttft_ms).filter((v) => v != null), q)),
  };
}

function groupBy(records, keyOf) {
  const groups = new Map();
  for (const r of records) {
    const k = keyOf(r);
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k).push(r);
  }
  return [...groups.entries()].sort((a, b) => b[1].length - a[1].length);
}

function cells(row, values) {
  row.replaceChildren(
    ...values.map((v) => {
      const td = document.createElement("td");
      if (v instanceof Node) td.append(v);
      else td.textContent = v;
      return td;
    }),
  );
  return row;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function breakers(metricsText) {
  const open = new Map();
  for (const line of metricsText.split("\n")) {
    const m = line.match(/^switchyard_breaker_open\{route="([^"]+)"\} (\S+)/);
    if (m) open.set(m[1], Number(m[2]) > 0);
  }
  return open;
}

/** A line chart of one series per route over the window, in buckets. */
function chart(svg, series, fromMs, toMs, unit) {
  const W = 600, H = 220, L = 44, B = 20, T = 8, R = 8;
  const max = Math.max(1e-9, ...series.flatMap((s) => s.points.filter((p) => p != null)));
  const x = (i) => L + ((W - L - R) * i) / (BUCKETS - 1);
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const parts = [];
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    parts.push(`<line x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}" stroke="#e3e6ec"/>`);
    parts.push(`<text class="axis" x="${L - 4}" y="${y(v) + 3}" text-anchor="end">${unit(v)}</text>`);
  }
  for (const [i, at] of [[0, fromMs], [BUCKETS - 1, toMs]]) {
    parts.push(`<text class="axis" x="${x(i)}" y="${H - 4}" text-anchor="${i ? "end" : "start"}">${new Date(at).toLocaleTimeString()}</text>`);
  }
  series.forEach((s, n) => {
    const color = COLORS[n % COLORS.length];
    const d = s.points.map((v, i) => (v == null ? null : `${x(i)},${y(v)}`)).filter(Boolean);
    if (d.length) parts.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${d.join(" ")}"/>`);
    // Dots too: a bucket alone (recent traffic only) draws no line.
    s.points.forEach((v, i) => {
      if (v != null && v > 0) parts.push(`<circle cx="${x(i)}" cy="${y(v)}" r="2.5" fill="${color}"/>`);
    });
    parts.push(`<text x="${L + 6 + n * 90}" y="${T + 10}" fill="${color}">${s.name.replace(/[<&"]/g, "")}</text>`);
  });
  svg.innerHTML = parts.join("");
}

function buckets(records, fromMs, toMs, reduce) {
  const width = (toMs - fromMs) / BUCKETS;
  const slots = Array.from({ length: BUCKETS }, () => []);
  for (const r of records) {
    const i = Math.min(BUCKETS - 1, Math.max(0, Math.floor((r.created_ms - fromMs) / width)));
    slots[i].push(r);
  }
  return slots.map((rs) => reduce(rs, width / 1000));
}

async function showDetail(id) {
  $("detail").hidden = false;
  $("detail-title").textContent = id;
  $("detail-body").textContent = "loading…";
  try {
    $("detail-body").textContent = JSON.stringify(await get(`/admin/decisions/${encodeURIComponent(id)}`), null, 2);
  } catch (e) {
    $("detail-body").textContent = e.message;
  }
}

async function refresh() {
  const minutes = Number($("window").value);
  const toMs = Date.now();
  const fromMs = toMs - minutes * 60_000;
  const [telemetry, metrics, handoffs] = await Promise.all([
    get(`/admin/telemetry?since_ms=${fromMs}&limit=10000&order=newest`),
    get("/metrics", "text").catch(() => ""),
    get("/admin/handoffs?status=open&limit=50").catch(() => ({ data: [] })),
  ]);
  // The newest 10,000 of the window, put back in time order.
  const records = telemetry.data.reverse();
  const seconds = minutes * 60;
  const all = summarize(records, seconds);
  $("total-requests").textContent = all.n;
  $("total-rate").textContent = fmt.rate(all.rate);
  $("total-answered").textContent = fmt.pct(all.answered, all.n);
  $("total-refused").textContent = fmt.pct(all.refused, all.n);
  $("total-escalated").textContent = fmt.pct(all.escalated, all.n);
  $("total-errors").textContent = fmt.pct(all.errors, all.n);
  $("total-cost").textContent = fmt.usd(all.cost);
  $("total-cost-per-task").textContent = fmt.usd(all.costPerTask);

  const open = breakers(metrics);
  const routes = groupBy(records, (r) => r.route);
  for (const name of open.keys()) if (!routes.some(([r]) => r === name)) routes.push([name, []]);
  fill(
    $("routes").tBodies[0],
    routes.map(([name, rs]) => {
      const s = summarize(rs, seconds);
      const breaker = document.createElement("span");
      breaker.textContent = open.has(name) ? (open.get(name) ? "open" : "closed") : "–";
      if (open.get(name)) breaker.className = "open";
      const row = cells(document.createElement("tr"), [
        name, s.n, fmt.rate(s.rate), fmt.ms(s.total[0]), fmt.ms(s.total[1]), fmt.ms(s.total[2]),
        fmt.ms(s.ttft[0]), fmt.ms(s.ttft[1]), fmt.pct(s.refused, s.n), fmt.pct(s.escalated, s.n),
        fmt.pct(s.errors, s.n), fmt.usd(s.cost), fmt.usd(s.costPerTask), breaker,
      ]);
      row.dataset.route = name;
      return row;
    }),
  );

  const charted = routes.filter(([, rs]) => rs.length).slice(0, COLORS.length);
  chart(
    $("chart-latency"),
    charted.map(([name, rs]) => ({
      name,
      points: buckets(rs, fromMs, toMs, (b) => percentile(b.map((r) => r.total_ms).filter((v) => v != null), 0.95)),
    })),
    fromMs, toMs, (v) => fmt.ms(v),
  );
  chart(
    $("chart-rate"),
    charted.map(([name, rs]) => ({ name, points: buckets(rs, fromMs, toMs, (b, secs) => b.length / secs) })),
    fromMs, toMs, (v) => fmt.rate(v),
  );

  const lane = (r) => (r.decision && r.decision.lane) || "none";
  fill(
    $("lanes").tBodies[0],
    groupBy(records, lane).map(([name, rs]) => {
      const s = summarize(rs, seconds);
      return cells(document.createElement("tr"), [name, s.n, fmt.usd(s.cost), fmt.usd(s.costPerTask)]);
    }),
  );
  fill(
    $("handoffs").tBodies[0],
    handoffs.data.map((h) =>
      cells(document.createElement("tr"), [h.id, new Date(h.created_ms).toLocaleTimeString(), h.rule_id, h.tenant || "–"]),
    ),
  );
  fill(
    $("recent").tBodies[0],
    records.slice(-50).reverse().map((r) => {
      const row = cells(document.createElement("tr"), [
        new Date(r.created_ms).toLocaleTimeString(), r.route, r.status, r.label, fmt.ms(r.total_ms), r.reason,
      ]);
      row.lastChild.className = "reason";
      row.dataset.id = r.request_id;
      row.addEventListener("click", () => showDetail(r.request_id));
      return row;
    }),
  );
  const dropped = telemetry.dropped_since_start ? ` · ${telemetry.dropped_since_start} records dropped` : "";
  $("status").textContent = `updated ${new Date().toLocaleTimeString()}${dropped}`;
}

async function tick() {
  try {
    await refresh();
    $("login").hidden = true;
    $("board").hidden = false;
  } catch (e) {
    if (e.auth) {
      $("board").hidden = true;
      $("login").hidden = false;
      $("login-error").textContent = key ? e.message : "";
      $("status").textContent = "API key required";
      return;
    }
    $("status").textContent = `error: ${e.message}`;
  }
  timer = setTimeout(tick, REFRESH_MS);
}

function restart() {
  clearTimeout(timer);
  tick();
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  key = $("key").value.trim();
  sessionStorage.setItem("switchyard-key", key);
  restart();
});
$("window").addEventListener("change", () => {
  $("window-label").textContent = `last ${$("window").selectedOptions[0].textContent}`;
  restart();
});
$("detail-close").addEventListener("click", () => ($("detail").hidden = true));
tick();
