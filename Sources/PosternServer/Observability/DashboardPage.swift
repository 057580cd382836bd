/// The dashboard served at `/`: one self-contained page (no CDN, no external fonts; a mail
/// host may have no internet access). It reads `/api/summary` every two seconds and the
/// decision records from `/events` (Server-Sent Events); its charts are SVG drawn by the page.
enum DashboardPage {
    static let html: [UInt8] = Array(text.utf8)

    private static let text = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Postern</title>
<style>
  :root { --fg: #1d2330; --muted: #667085; --line: #e4e7ec; --bg: #f7f8fa; --card: #fff;
          --accepted: #2e7d32; --rejected: #c62828; --tempfailed: #ef6c00; --discarded: #6a1b9a;
          --quarantined: #0277bd; --aborted: #8a8f98; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
  header { display: flex; flex-wrap: wrap; gap: 16px; align-items: baseline; padding: 14px 20px; background: var(--card); border-bottom: 1px solid var(--line); }
  header h1 { margin: 0; font-size: 20px; }
  header .meta { color: var(--muted); }
  .badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; color: #fff; margin-right: 4px; }
  .up { background: var(--accepted); } .down { background: var(--rejected); }
  .failure { color: var(--rejected); font-weight: 600; }
  main { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 14px; padding: 14px 20px; }
  section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; min-width: 0; }
  section.wide { grid-column: 1 / -1; }
  h2 { margin: 0 0 8px; font-size: 14px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
  table { width: 100%; border-collapse: collapse; font-size: 13px; }
  th, td { text-align: left; padding: 3px 6px; border-bottom: 1px solid var(--line); white-space: nowrap; overflow: hidden; text-overflow: ellipsis; max-width: 260px; }
  td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
  .totals { display: flex; flex-wrap: wrap; gap: 10px; }
  .total { min-width: 96px; }
  .total .v { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
  .dot { display: inline-block; width: 9px; height: 9px; border-radius: 50%; margin-right: 5px; vertical-align: middle; }
  svg text { font-size: 10px; fill: var(--muted); }
  .empty { color: var(--muted); font-style: italic; }
  footer { padding: 4px 20px 16px; color: var(--muted); font-size: 12px; }
</style>
</head>
<body>
<header>
  <h1>Postern</h1>
  <span class="meta">policy <b id="policy-version">…</b> (<span id="policy-rules">…</span> rules), last load <span id="policy-load">…</span></span>
  <span class="meta" id="upstreams"></span>
  <span class="meta">live: <b id="seen">0</b> decisions since this page opened</span>
</header>
<main>
  <section class="wide">
    <h2>Decisions per second, last 10 minutes</h2>
    <svg id="chart" viewBox="0 0 1200 170" width="100%" height="170" role="img" aria-label="decisions per second"></svg>
  </section>
  <section>
    <h2>Last hour</h2>
    <div id="totals" class="totals"></div>
  </section>
  <section>
    <h2>Shadow rules: would have hit, last hour</h2>
    <table id="shadow"></table>
  </section>
  <section><h2>Top refused clients</h2><table id="clients"></table></section>
  <section><h2>Top refused countries</h2><table id="countries"></table></section>
  <section><h2>Top refused senders</h2><table id="senders"></table></section>
  <section><h2>Top refusing rules</h2><table id="rules"></table></section>
  <section><h2>Engines and DNS lists, last hour</h2><table id="engines"></table></section>
  <section class="wide">
    <h2>Latest decisions</h2>
    <table>
      <thead><tr><th>time</th><th>decision</th><th>stage</th><th>rule</th><th>client</th><th>from</th><th>to</th><th>reply</th><th>id</th></tr></thead>
      <tbody id="latest"></tbody>
    </table>
  </section>
</main>
<footer>Read-only. This page has no login: serve it on a trusted address (the default is loopback) or behind a proxy that authenticates.</footer>
<script>
"use strict";
const DECISIONS = ["accepted", "rejected", "tempfailed", "discarded", "quarantined", "aborted"];
const colour = d => getComputedStyle(document.documentElement).getPropertyValue("--" + d).trim() || "#888";
const $ = id => document.getElementById(id);
const el = (tag, text, cls) => { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; };

function table(id, rows, label) {
  const t = $(id); t.replaceChildren();
  if (!rows.length) { const tr = el("tr"); tr.appendChild(el("td", "none in the last hour", "empty")); t.appendChild(tr); return; }
  const head = el("tr"); head.appendChild(el("th", label)); head.appendChild(el("th", "count", "n")); t.appendChild(head);
  for (const row of rows) {
    const tr = el("tr"); tr.appendChild(el("td", row.name)); tr.appendChild(el("td", String(row.count), "n")); t.appendChild(tr);
  }
}

function chart(perSecond) {
  const svg = $("chart"), W = 1200, H = 170, left = 34, bottom = 18, bucket = 10;
  const points = [];
  for (let i = 0; i < perSecond.length; i += bucket) {
    const slice = perSecond.slice(i, i + bucket), sums = {};
    for (const d of DECISIONS) sums[d] = slice.reduce((a, s) => a + (s[d] || 0), 0) / slice.length;
    points.push({ t: slice[0].t, sums });
  }
  const max = Math.max(1, ...points.flatMap(p => DECISIONS.map(d => p.sums[d])));
  const x = i => left + (W - left - 6) * (points.length < 2 ? 0 : i / (points.length - 1));
  const y = v => (H - bottom) - (H - bottom - 8) * v / max;
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  for (const f of [0, 0.5, 1]) {
    const line = document.createElementNS(ns, "line");
    line.setAttribute("x1", left); line.setAttribute("x2", W - 6); line.setAttribute("y1", y(max * f)); line.setAttribute("y2", y(max * f));
    line.setAttribute("stroke", "#e4e7ec"); svg.appendChild(line);
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", 2); label.setAttribute("y", y(max * f) + 3); label.textContent = (max * f).toFixed(max < 10 ? 1 : 0); svg.appendChild(label);
  }
  for (const [i, text] of [[0, "-10 min"], [points.length - 1, "now"]]) {
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", Math.min(x(i), W - 30)); label.setAttribute("y", H - 4); label.textContent = text; svg.appendChild(label);
  }
  for (const d of DECISIONS) {
    if (!points.some(p => p.sums[d] > 0)) continue;
    const path = document.createElementNS(ns, "polyline");
    path.setAttribute("points", points.map((p, i) => x(i).toFixed(1) + "," + y(p.sums[d]).toFixed(1)).join(" "));
    path.setAttribute("fill", "none"); path.setAttribute("stroke", colour(d)); path.setAttribute("stroke-width", "2");
    path.setAttribute("data-decision", d); svg.appendChild(path);
  }
}

function totals(id, counts) {
  const box = $(id); box.replaceChildren();
  for (const d of DECISIONS) {
    const total = el("div", undefined, "total");
    const name = el("div"); const dot = el("span", undefined, "dot"); dot.style.background = colour(d);
    name.appendChild(dot); name.appendChild(document.createTextNode(d));
    const value = el("div", String(counts[d] || 0), "v"); value.id = "total-" + d;
    total.appendChild(name); total.appendChild(value); box.appendChild(total);
  }
}

async function refresh() {
  try {
    const s = await (await fetch("api/summary", { cache: "no-store" })).json();
    $("policy-version").textContent = s.policy.version;
    $("policy-rules").textContent = s.policy.rules;
    const load = s.policy.last_load;
    $("policy-load").textContent = load.result + " at " + load.at.replace("T", " ").replace(/\.\d+Z$/, "Z");
    $("policy-load").className = load.result === "success" ? "" : "failure";
    $("policy-load").title = load.errors.join("\n");
    const ups = $("upstreams"); ups.replaceChildren(document.createTextNode("upstreams: "));
    for (const u of s.upstreams) {
      const b = el("span", u.name, "badge " + (u.up ? "up" : "down"));
      b.title = (u.up ? "up" : "marked down") + "; last success " + u.seconds_since_success + " s ago"; ups.appendChild(b);
    }
    chart(s.per_second);
    totals("totals", s.last_hour.decisions);
    table("clients", s.last_hour.clients, "client");
    table("countries", s.last_hour.countries, "country");
    table("senders", s.last_hour.senders, "sender");
    table("rules", s.last_hour.rules, "rule");
    table("shadow", s.last_hour.shadow, "shadow rule");
    engines(s.last_hour.engines, s.last_hour.dns_lists);
  } catch (error) {
    $("policy-load").textContent = "cannot read the summary: " + error;
  }
}

// The final reply's code; for a transaction refused at RCPT, the last recipient's.
const reply = r => r.reply ? String(r.reply.code) : ((r.rcpts || []).slice(-1).map(x => (x.reply || "").slice(0, 3))[0] || "");

// Each check's answers, failures (errors and timeouts) and mean time; each DNS list's
// listings and errors (a list that answered "not listed" is not in the records).
function engines(checks, lists) {
  const t = $("engines"); t.replaceChildren();
  if (!checks.length && !lists.length) { const tr = el("tr"); tr.appendChild(el("td", "no engine or DNS list answered in the last hour", "empty")); t.appendChild(tr); return; }
  const head = el("tr");
  for (const [text, cls] of [["name"], ["answers", "n"], ["failures", "n"], ["mean ms", "n"]]) head.appendChild(el("th", text, cls));
  t.appendChild(head);
  for (const c of checks) {
    const tr = el("tr"); tr.appendChild(el("td", c.name)); tr.appendChild(el("td", String(c.answers), "n"));
    const failures = el("td", String(c.failures), "n"); if (c.failures) failures.classList.add("failure"); tr.appendChild(failures);
    tr.appendChild(el("td", String(c.mean_ms), "n")); t.appendChild(tr);
  }
  for (const l of lists) {
    const tr = el("tr"); tr.appendChild(el("td", "dnsbl " + l.name)); tr.appendChild(el("td", l.listed + " listed", "n"));
    const errors = el("td", String(l.errors), "n"); if (l.errors) errors.classList.add("failure"); tr.appendChild(errors);
    tr.appendChild(el("td", "", "n")); t.appendChild(tr);
  }
}

let seen = 0;
function addDecision(r) {
  seen += 1; $("seen").textContent = String(seen);
  const tr = el("tr"); tr.dataset.id = r.id || "";
  const time = (r.ts || "").replace(/^.*T/, "").replace(/\.\d+Z$/, "");
  const decision = el("td"); const dot = el("span", undefined, "dot"); dot.style.background = colour(r.decision);
  decision.appendChild(dot); decision.appendChild(document.createTextNode(r.decision));
  const rcpts = (r.rcpts || []).map(x => x.address);
  const cells = [time, null, r.stage || "", r.rule || "", r.client ? r.client.ip : "", r.mail_from === "" ? "<>" : (r.mail_from || ""),
                 rcpts.slice(0, 2).join(", ") + (rcpts.length > 2 ? " +" + (rcpts.length - 2) : ""), reply(r), r.id || ""];
  cells.forEach((c, i) => tr.appendChild(i === 1 ? decision : el("td", c)));
  const body = $("latest"); body.insertBefore(tr, body.firstChild);
  while (body.children.length > 50) body.removeChild(body.lastChild);
}

const events = new EventSource("events");
events.onmessage = e => { try { addDecision(JSON.parse(e.data)); } catch (_) {} };
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"""#
}
