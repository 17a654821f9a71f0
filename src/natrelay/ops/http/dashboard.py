"""The dashboard at ``/``: one server-rendered page, refreshed by polling ``/api/overview``.

No build step and no third-party script: the page is this module's HTML with a small script that
fetches the overview JSON every two seconds and fills the tables with ``textContent`` (never
HTML from data, so a hostile user or host name cannot inject markup). Sessions come a page of
:data:`PAGE_SIZE` at a time, which keeps a router with thousands of sessions readable and the
JSON small. Disconnect buttons POST JSON with the page's CSRF token.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from natrelay.ops.http.source import Source

PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def overview(sources: Sequence[Source], page: int, per_page: int) -> dict[str, Any]:
    """The dashboard's data: counters per source, relays and hosts (router), one page of sessions."""
    sessions: list[dict[str, Any]] = []
    relays: list[dict[str, Any]] = []
    hosts: list[dict[str, Any]] = []
    counters = []
    for source in sources:
        t = source.totals()
        figures: dict[str, Any] = {"connections": t.connections}
        if not source.is_router:  # a router's relayed figures are its relays' (in its status)
            figures.update(sessions=t.sessions, pending=t.pending, bytes=t.bytes_relayed)
        figures.update((k, v) for k, v in source.status().items() if isinstance(v, int | float | str))
        counters.append({"family": source.family, "title": source.title, "figures": figures})
        for row in source.sessions():
            sessions.append({"family": source.family, **row})
        relays.extend({"family": source.family, **r} for r in source.relays())
        hosts.extend({"family": source.family, **h} for h in source.hosts())
    per_page = max(1, min(per_page, MAX_PAGE_SIZE))
    pages = max(1, -(-len(sessions) // per_page))
    page = max(1, min(page, pages))
    start = (page - 1) * per_page
    return {"counters": counters, "relays": relays, "hosts": hosts,
            "router": any(s.is_router for s in sources),
            "sessions": sessions[start:start + per_page], "total_sessions": len(sessions), "page": page,
            "pages": pages, "per_page": per_page}


def page_html(title: str, csrf: str, user: str | None) -> str:
    who = (f'<form method="post" action="/logout" class="who">{html.escape(user)} '
           f'<button type="submit">Log out</button></form>') if user else ""
    return _PAGE.replace("{{TITLE}}", html.escape(title)).replace("{{CSRF}}", html.escape(csrf)) \
        .replace("{{WHO}}", who)


def login_html(message: str = "") -> str:
    note = f'<p class="error" id="error">{html.escape(message)}</p>' if message else ""
    return _LOGIN.replace("{{MESSAGE}}", note)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;padding:0.5rem 1rem;color:#222;background:#fafafa}
h1{font-size:1.3rem;margin:0.3rem 0}h2{font-size:1.05rem;margin:1rem 0 0.3rem}
.wrap{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:0.85rem;min-width:100%}
th,td{border-bottom:1px solid #ddd;padding:0.25rem 0.5rem;text-align:left;white-space:nowrap}
th{background:#eee}td.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(8.5rem,1fr));gap:0.4rem}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:0.3rem 0.6rem}
.card b{display:block;font-size:0.75rem;color:#555;overflow:hidden;text-overflow:ellipsis}
h3{font-size:0.95rem;margin:0.6rem 0 0.3rem}
button{font-size:0.85rem}.who{float:right}.error{color:#b00}
#pager{margin:0.4rem 0}#stamp{color:#777;font-size:0.8rem}
"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{TITLE}}</title><style>""" + _STYLE + """</style></head>
<body data-csrf="{{CSRF}}">
{{WHO}}<h1>{{TITLE}}</h1><div id="stamp">loading...</div>
<div id="counters"></div>
<section id="relays-section" hidden><h2>Relays</h2><div class="wrap"><table id="relays">
<thead><tr><th>ID</th><th>Address</th><th>Version</th><th>Keys in pool</th><th>Sessions</th><th>Bytes</th>
<th>Uptime</th><th>Last statistics</th></tr></thead><tbody></tbody></table></div></section>
<section id="hosts-section" hidden><h2>Hosts online</h2><div class="wrap"><table id="hosts">
<thead><tr><th>Session</th><th>Host IDs</th><th>Address</th><th>Since</th><th></th></tr></thead>
<tbody></tbody></table></div></section>
<section><h2>Active sessions (<span id="total">0</span>)</h2>
<div id="pager"><button id="prev" type="button">&larr;</button> page <span id="page">1</span> of
<span id="pages">1</span> <button id="next" type="button">&rarr;</button></div>
<div class="wrap"><table id="sessions"><thead><tr><th>Server</th><th>ID</th><th>Client / first</th>
<th>Host / second</th><th>Relay</th><th>Host ID</th><th>User</th><th>Bytes &rarr;</th><th>Bytes &larr;</th>
<th>Duration</th><th>Idle</th><th></th></tr></thead><tbody></tbody></table></div></section>
<p id="message" class="error"></p>
<script>
"use strict";
const csrf = document.body.dataset.csrf;
let page = 1;
function dur(s) {
  if (s === null || s === undefined) return "-";
  s = Math.floor(s); const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, x = s % 60;
  return h + ":" + String(m).padStart(2, "0") + ":" + String(x).padStart(2, "0");
}
function num(v) { return v === null || v === undefined ? "-" : Number(v).toLocaleString("en"); }
function row(tbody, cells, button) {
  const tr = document.createElement("tr");
  for (const [text, numeric] of cells) {
    const td = document.createElement("td"); td.textContent = text; if (numeric) td.className = "n";
    tr.appendChild(td);
  }
  const td = document.createElement("td");
  if (button) td.appendChild(button);
  tr.appendChild(td); tbody.appendChild(tr); return tr;
}
function disconnectButton(family, kind, id) {
  const b = document.createElement("button"); b.type = "button"; b.textContent = "Disconnect";
  b.className = "disconnect"; b.dataset.id = id; b.dataset.kind = kind;
  b.addEventListener("click", async () => {
    b.disabled = true;
    const r = await fetch("/api/disconnect", {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify({family: family, kind: kind, id: id})});
    const answer = await r.json().catch(() => ({error: "HTTP " + r.status}));
    document.getElementById("message").textContent = answer.ok ? "" : (answer.error || "failed");
    refresh();
  });
  return b;
}
function fill(id, rows, make) {
  const tbody = document.querySelector("#" + id + " tbody"); tbody.replaceChildren();
  for (const r of rows) make(tbody, r);
}
async function refresh() {
  let data;
  try {
    const r = await fetch("/api/overview?page=" + page, {credentials: "same-origin"});
    if (r.status === 401) { location.href = "/login"; return; }
    data = await r.json();
  } catch (e) { document.getElementById("stamp").textContent = "no answer: " + e; return; }
  page = data.page;
  const groups = document.getElementById("counters"); groups.replaceChildren();
  for (const c of data.counters) {
    const h = document.createElement("h3"); h.textContent = c.title; groups.appendChild(h);
    const cards = document.createElement("div"); cards.className = "cards"; cards.dataset.family = c.family;
    for (const [k, v] of Object.entries(c.figures)) {
      const d = document.createElement("div"); d.className = "card";
      const b = document.createElement("b"); b.textContent = k;
      d.appendChild(b); d.appendChild(document.createTextNode(typeof v === "number" ? num(v) : v));
      cards.appendChild(d);
    }
    groups.appendChild(cards);
  }
  document.getElementById("relays-section").hidden = !data.router;
  document.getElementById("hosts-section").hidden = !data.router;
  fill("relays", data.relays, (t, r) => row(t, [[r.id], [r.address || "(not announced)"], [r.version || "-"],
    [num(r.pool_size), 1], [num(r.sessions), 1], [num(r.bytes), 1], [dur(r.uptime), 1],
    [r.last_statistics === null || r.last_statistics === undefined ? "-"
      : dur(r.last_statistics) + " ago", 1]]));
  fill("hosts", data.hosts, (t, h) => row(t, [[h.id], [h.host_ids.join(", ")], [h.address],
    [new Date(h.since * 1000).toLocaleString()]], disconnectButton(h.family, "host", h.id)));
  fill("sessions", data.sessions, (t, s) => row(t, [[s.family], [s.id], [s.a], [s.b],
    [s.relay === undefined ? "-" : s.relay], [s.host_id === undefined ? "-" : s.host_id], [s.user || "-"],
    [num(s.bytes_ab === undefined ? s.bytes : s.bytes_ab), 1], [num(s.bytes_ba), 1], [dur(s.duration), 1],
    [dur(s.idle), 1]], disconnectButton(s.family, "session", s.id)).dataset.session = s.id);
  document.getElementById("total").textContent = data.total_sessions;
  document.getElementById("page").textContent = data.page;
  document.getElementById("pages").textContent = data.pages;
  document.getElementById("stamp").textContent = "updated " + new Date().toLocaleTimeString();
}
document.getElementById("prev").addEventListener("click", () => { page = Math.max(1, page - 1); refresh(); });
document.getElementById("next").addEventListener("click", () => { page += 1; refresh(); });
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""

_LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>natrelay: log in</title><style>""" + _STYLE + """</style></head>
<body><h1>natrelay</h1><p>Log in with a router administrator account.</p>{{MESSAGE}}
<form method="post" action="/login">
<p><label>User name<br><input name="user" id="user" autocomplete="username" required></label></p>
<p><label>Password<br><input name="password" id="password" type="password" autocomplete="current-password"
required></label></p><p><button type="submit" id="login">Log in</button></p></form></body></html>
"""
