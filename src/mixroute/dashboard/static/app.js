/* mixroute dashboard: polls /api/v1/dashboard/* once a second and draws what it gets.
 *
 * Plain JavaScript, no build step, nothing loaded from elsewhere. Every value from the
 * gateway is put in the page as text (textContent), never parsed as HTML.
 *
 * Auth: when the gateway has server.admin_key, the data APIs answer 401 until the page
 * sends the key in x-mixroute-admin-key. The page asks once and keeps the key in this
 * tab's sessionStorage (cleared when the tab closes; "Forget key" clears it now).
 */
"use strict";

(function () {
  const KEY_STORE = "mixroute.adminKey";
  const THEME_STORE = "mixroute.theme";
  const ADMIN_HEADER = "x-mixroute-admin-key";
  const POLL_MS = 1000;
  const CONFIG_EVERY_MS = 15000;
  const MAX_ROWS = 300;

  const ui = {
    // Feed position per worker process (with --workers N a poll may land on any of them).
    state: { seqByWorker: {}, lastWorker: null, seen: new Set(), firstFeed: true,
      paused: false, locked: false, timer: null, lastConfig: 0,
      modelKey: "", filter: "" },
  };

  // ---------- small DOM helpers ----------
  function $(id) { return document.getElementById(id); }

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [name, value] of Object.entries(props)) {
        if (value === null || value === undefined || value === false) continue;
        if (name === "class") node.className = value;
        else if (name === "text") node.textContent = String(value);
        else if (name === "style") Object.assign(node.style, value); // CSSOM: allowed by the CSP
        else if (name.startsWith("data-")) node.setAttribute(name, String(value));
        else node.setAttribute(name, String(value));
      }
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms >= 10000) return (ms / 1000).toFixed(1) + " s";
    if (ms >= 1000) return (ms / 1000).toFixed(2) + " s";
    if (ms >= 100) return Math.round(ms) + " ms";
    return ms.toFixed(1) + " ms";
  }

  function fmtTime(epochS) {
    const d = new Date(epochS * 1000);
    const pad = (n, w) => String(n).padStart(w || 2, "0");
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function statusClass(status) {
    if (status >= 500) return "err";
    if (status === 499) return "dim";
    if (status >= 400) return "warn";
    return "ok";
  }

  // ---------- theme ----------
  function applyTheme(theme) {
    document.documentElement.setAttribute("data-theme", theme);
    try { localStorage.setItem(THEME_STORE, theme); } catch (e) { /* private mode */ }
    redrawCharts();
  }

  function initialTheme() {
    let saved = null;
    try { saved = localStorage.getItem(THEME_STORE); } catch (e) { /* private mode */ }
    if (saved === "dark" || saved === "light") return saved;
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: light)").matches ? "light" : "dark";
  }

  // ---------- API ----------
  function adminKey() {
    try { return sessionStorage.getItem(KEY_STORE) || ""; } catch (e) { return ""; }
  }

  class Unauthorized extends Error {}

  async function api(path, options, keyToTry) {
    const headers = Object.assign({ accept: "application/json" }, (options && options.headers) || {});
    const key = keyToTry === undefined ? adminKey() : keyToTry;
    if (key) headers[ADMIN_HEADER] = key;
    const response = await fetch(path, Object.assign({}, options || {}, { headers, cache: "no-store" }));
    if (response.status === 401) throw new Unauthorized("admin key needed");
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
      throw new Error(message);
    }
    return body;
  }

  function setConn(kind, text) {
    const pill = $("conn");
    pill.className = "pill pill-" + kind;
    pill.textContent = text;
  }

  // ---------- key gate ----------
  function lock(message) {
    ui.state.locked = true;
    setConn("locked", "locked");
    $("keygate").hidden = false;
    $("keyerror").textContent = message || "";
    $("keyinput").focus();
  }

  async function unlock(event) {
    event.preventDefault();
    const key = $("keyinput").value.trim();
    if (!key) return;
    try {
      await api("/api/v1/dashboard/state", null, key); // tried before it is kept
    } catch (err) {
      if (err instanceof Unauthorized) {
        $("keyerror").textContent = "That key was refused.";
        return;
      }
    }
    try { sessionStorage.setItem(KEY_STORE, key); } catch (e) { /* storage off */ }
    $("keyinput").value = "";
    $("keygate").hidden = true;
    $("forget").hidden = false;
    ui.state.locked = false;
    ui.state.lastConfig = 0;
    schedule(0);
  }

  function forget() {
    try { sessionStorage.removeItem(KEY_STORE); } catch (e) { /* ignore */ }
    $("forget").hidden = true;
    lock("");
  }

  // ---------- polling ----------
  function schedule(delay) {
    if (ui.state.timer !== null) clearTimeout(ui.state.timer);
    ui.state.timer = setTimeout(tick, delay);
  }

  async function tick() {
    ui.state.timer = null;
    if (ui.state.locked) return;
    if (ui.state.paused || document.hidden) { schedule(POLL_MS); return; }
    try {
      const [state, feed] = await Promise.all([
        api("/api/v1/dashboard/state"),
        api(`/api/v1/dashboard/feed?after=${ui.state.seqByWorker[ui.state.lastWorker] || 0}&limit=200`),
      ]);
      renderState(state);
      renderFeed(feed);
      if (Date.now() - ui.state.lastConfig > CONFIG_EVERY_MS) loadConfig();
      setConn("live", "live");
      $("updated").textContent = "updated " + new Date().toLocaleTimeString();
      if (adminKey()) $("forget").hidden = false;
    } catch (err) {
      if (err instanceof Unauthorized) { lock(adminKey() ? "The stored key was refused." : ""); return; }
      setConn("down", "unreachable");
      $("updated").textContent = String(err.message || err);
    }
    schedule(POLL_MS);
  }

  async function loadConfig() {
    ui.state.lastConfig = Date.now();
    try {
      const body = await api("/api/v1/dashboard/config");
      renderJson($("config"), body.config);
    } catch (err) {
      if (err instanceof Unauthorized) return;
      $("config").textContent = "Could not load the config: " + (err.message || err);
    }
  }

  // ---------- stats and charts ----------
  function renderState(state) {
    ui.lastState = state;
    const w = state.window;
    const t = w.total;
    const totals = state.totals;
    $("s-rps").textContent = t.rps.toFixed(2);
    $("s-rps-hint").textContent = `${t.requests} in ${Math.round(w.seconds)} s`;
    $("s-p50").textContent = fmtMs(t.p50_ms);
    $("s-p95").textContent = "p95 " + fmtMs(t.p95_ms);
    const errors = $("s-errors");
    const errRate = t.requests ? (100 * t.errors) / t.requests : 0;
    errors.textContent = t.requests ? errRate.toFixed(1) + "%" : "–";
    errors.className = "value " + (errRate >= 5 ? "bad" : errRate > 0 ? "warn" : "");
    $("s-errors-hint").textContent = `${t.errors} failed`;
    $("s-inflight").textContent = String(totals.in_flight);
    $("s-total").textContent = `${totals.records} requests seen`;
    const ep = $("s-endpoints");
    ep.textContent = `${totals.available} / ${totals.endpoints}`;
    ep.className = "value " + (totals.available === totals.endpoints ? "good" : totals.available === 0 ? "bad" : "warn");
    $("s-models").textContent = `${totals.models} models · ${state.ready ? "ready" : "not ready"}`;
    $("s-cache").textContent = t.requests ? ((100 * t.cache_hits) / t.requests).toFixed(0) + "%" : "–";
    $("s-guard").textContent = `${t.guarded} guarded · cache ${state.cache ? "on" : "off"}`;
    $("policy").textContent = `guards: PII ${state.guards.pii}, jailbreak ${state.guards.jailbreak}`
      + (state.default_model ? ` · default model ${state.default_model}` : "");
    const covered = w.covered_s < w.seconds - 5 && t.requests >= 400 ? ` (feed covers ${Math.round(w.covered_s)} s)` : "";
    $("routes-window").textContent = `last ${Math.round(w.seconds / 60)} min${covered}`;
    renderRoutes(w.routes, state.routes);
    renderModels(state.models);
    updateModelChoices(state);
    redrawCharts();
  }

  function renderRoutes(counts, declared) {
    const box = $("routes");
    clear(box);
    const names = Object.keys(counts);
    for (const name of declared || []) if (!(name in counts)) names.push(name);
    if (!names.length) {
      box.append(el("p", { class: "muted small", text: "No routes configured and no routed traffic yet." }));
      return;
    }
    const max = Math.max(1, ...Object.values(counts));
    for (const name of names) {
      const n = counts[name] || 0;
      box.append(el("div", { class: "bar-row", "data-route": name },
        el("span", { class: "bar-name", title: name, text: name }),
        el("span", { class: "bar-track" }, el("span", { class: "bar-fill", style: { width: `${(100 * n) / max}%` } })),
        el("span", { class: "bar-val", text: n })));
    }
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function prepareCanvas(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    return { ctx, width, height };
  }

  function niceMax(value) {
    // Four grid steps of a round size (1, 2, 2.5 or 5 times a power of ten).
    const raw = Math.max(value, 1e-9) / 4;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const step of [1, 2, 2.5, 5, 10]) if (raw <= step * power * (1 + 1e-9)) return 4 * step * power;
    return 40 * power;
  }

  function drawAxes(ctx, box, maxValue, format, points, bucketS) {
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = cssVar("--muted");
    ctx.strokeStyle = cssVar("--grid");
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const y = Math.round(box.top + box.height - (box.height * i) / 4) + 0.5;
      ctx.beginPath();
      ctx.moveTo(box.left, y);
      ctx.lineTo(box.left + box.width, y);
      ctx.stroke();
      ctx.fillText(format((maxValue * i) / 4), box.left - 6, y);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const n = points.length;
    const span = n * bucketS;
    for (const secondsAgo of [span, (span * 3) / 4, span / 2, span / 4, 0]) {
      const x = box.left + box.width * (1 - secondsAgo / span);
      ctx.fillText(secondsAgo === 0 ? "now" : `-${Math.round(secondsAgo)}s`, x, box.top + box.height + 6);
    }
  }

  function drawTraffic() {
    const canvas = $("traffic-chart");
    const state = ui.lastState;
    const { ctx, width, height } = prepareCanvas(canvas);
    if (!state) return;
    const series = state.window.series;
    const points = series.points;
    const box = { left: 40, top: 8, width: width - 52, height: height - 30 };
    const perSecond = points.map((p) => p.requests / series.bucket_s);
    const maxValue = niceMax(Math.max(0.5, ...perSecond));
    drawAxes(ctx, box, maxValue, (v) => (Number.isInteger(v) ? String(v) : v.toFixed(v < 1 ? 2 : 1)), points, series.bucket_s);
    const slot = box.width / points.length;
    const barW = Math.max(1, slot - 2);
    points.forEach((p, i) => {
      if (!p.requests) return;
      const x = box.left + i * slot + 1;
      const okH = (box.height * (p.requests - p.errors)) / series.bucket_s / maxValue;
      const errH = (box.height * p.errors) / series.bucket_s / maxValue;
      ctx.fillStyle = cssVar("--bar");
      ctx.fillRect(x, box.top + box.height - okH, barW, okH);
      ctx.fillStyle = cssVar("--err");
      ctx.fillRect(x, box.top + box.height - okH - errH, barW, errH);
    });
  }

  function drawLatency() {
    const canvas = $("latency-chart");
    const state = ui.lastState;
    const { ctx, width, height } = prepareCanvas(canvas);
    if (!state) return;
    const series = state.window.series;
    const points = series.points;
    const box = { left: 52, top: 8, width: width - 64, height: height - 30 };
    const values = points.flatMap((p) => [p.p50_ms, p.p95_ms]).filter((v) => v !== null);
    const maxValue = niceMax(Math.max(1, ...values));
    const axisMs = (v) => (v >= 1000 ? `${+(v / 1000).toFixed(2)}s` : `${+v.toFixed(1)}ms`);
    drawAxes(ctx, box, maxValue, axisMs, points, series.bucket_s);
    const slot = box.width / points.length;
    for (const [field, color] of [["p95_ms", cssVar("--p95")], ["p50_ms", cssVar("--p50")]]) {
      ctx.strokeStyle = color;
      ctx.fillStyle = color;
      ctx.lineWidth = 2;
      ctx.lineJoin = "round";
      let drawing = false;
      ctx.beginPath();
      points.forEach((p, i) => {
        const v = p[field];
        if (v === null) { drawing = false; return; }
        const x = box.left + (i + 0.5) * slot;
        const y = box.top + box.height - (box.height * v) / maxValue;
        if (drawing) ctx.lineTo(x, y); else ctx.moveTo(x, y);
        drawing = true;
      });
      ctx.stroke();
      points.forEach((p, i) => {
        const v = p[field];
        if (v === null) return;
        const x = box.left + (i + 0.5) * slot;
        const y = box.top + box.height - (box.height * v) / maxValue;
        ctx.beginPath();
        ctx.arc(x, y, 2.2, 0, Math.PI * 2);
        ctx.fill();
      });
    }
  }

  function redrawCharts() {
    drawTraffic();
    drawLatency();
  }

  // ---------- models and endpoints ----------
  function endpointStatus(e) {
    if (!e.healthy) return ["err", "down"];
    if (e.circuit === "open") return ["err", "ejected"];
    if (e.circuit === "half_open") return ["warn", "trial"];
    if (!e.available) return ["warn", "unavailable"];
    return ["ok", "up"];
  }

  function renderModels(models) {
    const box = $("models");
    clear(box);
    if (!models.length) {
      box.append(el("p", { class: "muted", text: "No endpoints configured." }));
      return;
    }
    const maxInFlight = Math.max(4, ...models.flatMap((m) => m.endpoints.map((e) => e.in_flight)));
    for (const model of models) {
      const mw = model.window || { requests: 0, rps: 0, p50_ms: null, errors: 0 };
      const head = el("div", { class: "model-head" },
        el("span", { class: `dot ${model.available === model.endpoints.length && model.endpoints.length ? "ok" : model.available ? "warn" : "err"}` }),
        el("span", { class: "mname", text: model.name }),
        el("span", { class: "meta", text: [model.policy, model.aliases.length ? "aliases " + model.aliases.join(", ") : ""].filter(Boolean).join(" · ") }),
        el("span", { class: "right" },
          el("span", null, el("b", { text: `${model.available}/${model.endpoints.length}` }), " up"),
          el("span", null, el("b", { text: model.in_flight }), " in flight"),
          el("span", null, el("b", { text: mw.rps.toFixed(2) }), " req/s"),
          el("span", null, "p50 ", el("b", { text: fmtMs(mw.p50_ms) }))));
      const tbody = el("tbody");
      for (const e of model.endpoints) {
        const [cls, label] = endpointStatus(e);
        const engine = e.engine
          ? `${e.engine.running}/${e.engine.waiting} · ${(100 * e.engine.kv_usage).toFixed(0)}%`
          : "–";
        const ew = e.window || { requests: 0, p50_ms: null };
        tbody.append(el("tr", { "data-endpoint": e.name },
          el("td", { title: e.url }, el("span", { text: e.name })),
          el("td", null, el("span", { class: `badge ${cls}`, text: label })),
          el("td", { class: "num" }, String(e.in_flight),
            el("span", { class: "meter" }, el("span", { style: { width: `${Math.min(100, (100 * e.in_flight) / maxInFlight)}%` } }))),
          el("td", { class: "num", text: e.requests }),
          el("td", { class: e.failures ? "num" : "num dim", text: e.failures }),
          el("td", { class: "num", text: ew.requests }),
          el("td", { class: "num", text: fmtMs(ew.p50_ms) }),
          el("td", { class: e.circuit === "closed" ? "dim" : "", text: e.circuit.replace("_", "-") }),
          el("td", { class: "dim", "data-field": "engine", text: engine,
            title: e.last_error ? "last error: " + e.last_error : "running / waiting · KV cache in use" })));
      }
      const table = el("table", { class: "table compact" },
        el("thead", null, el("tr", null,
          el("th", { text: "endpoint" }), el("th", { text: "state" }), el("th", { class: "num", text: "in flight" }),
          el("th", { class: "num", text: "total", title: "requests since start" }),
          el("th", { class: "num", text: "failed", title: "failures since start" }),
          el("th", { class: "num", text: "2 min", title: "requests in the window" }),
          el("th", { class: "num", text: "p50", title: "median latency in the window" }),
          el("th", { text: "breaker" }),
          el("th", { text: "engine", title: "running / waiting · KV cache in use (scraped)" }))),
        tbody);
      box.append(el("div", { class: "model", "data-model": model.name }, head, el("div", { class: "table-wrap" }, table)));
    }
  }

  function updateModelChoices(state) {
    const names = [...state.auto_models, ...state.models.flatMap((m) => [m.name, ...m.aliases])];
    const key = names.join("\u0000");
    if (ui.state.modelKey === key) return;
    ui.state.modelKey = key;
    const list = $("pg-models");
    clear(list);
    for (const name of names) list.append(el("option", { value: name }));
  }

  // ---------- live feed ----------
  function feedRow(r) {
    const conf = r.confidence === null || r.confidence === undefined ? "–" : r.confidence.toFixed(2);
    const model = r.model || r.requested_model || "–";
    const modelTitle = r.requested_model && r.requested_model !== r.model ? `asked for ${r.requested_model}` : null;
    const cache = r.cache
      ? el("span", { class: `badge ${r.cache === "hit" ? "info" : "dim"}`, text: r.cache })
      : el("span", { class: "dim", text: "–" });
    const guard = r.guard
      ? el("span", { class: `badge ${r.guard.startsWith("blocked") || r.guard.startsWith("jailbreak") ? "err" : "warn"}`, text: r.guard, title: r.guard })
      : el("span", { class: "dim", text: "–" });
    const statusText = r.error ? `${r.status} ${r.error}` : String(r.status);
    const row = el("tr", { "data-request-id": r.request_id, "data-seq": r.seq },
      el("td", { class: "mono dim", text: fmtTime(r.time) }),
      el("td", { class: "mono", text: r.request_id.length > 14 ? r.request_id.slice(0, 12) + "…" : r.request_id, title: r.request_id }),
      el("td", { "data-field": "route", text: r.route || "–", class: r.route ? "" : "dim" }),
      el("td", { "data-field": "model", text: model, title: modelTitle }),
      el("td", { "data-field": "endpoint", class: r.endpoint ? "" : "dim", text: r.endpoint || "–",
        title: r.attempts > 1 ? `${r.attempts} attempts` : null }),
      el("td", { class: "num", text: conf }),
      el("td", null, cache),
      el("td", null, guard),
      el("td", { class: "num", text: fmtMs(r.latency_ms) + (r.stream ? " ⇣" : ""), title: r.stream ? "streamed" : null }),
      el("td", null, el("span", { class: `badge ${statusClass(r.status)}`, text: statusText })));
    row.dataset.search = [r.request_id, r.route, r.model, r.requested_model, r.endpoint, r.category, r.guard, r.cache, r.status, r.error, r.tenant]
      .filter((v) => v !== null && v !== undefined).join(" ").toLowerCase();
    return row;
  }

  function renderFeed(feed) {
    const st = ui.state;
    const worker = String(feed.worker);
    if (feed.latest_seq < (st.seqByWorker[worker] || 0)) st.seqByWorker[worker] = 0; // restarted
    const body = $("feed-body");
    const filter = st.filter;
    for (const record of feed.records) {
      const key = `${worker}:${record.seq}`;
      st.seqByWorker[worker] = Math.max(st.seqByWorker[worker] || 0, record.seq);
      if (st.seen.has(key)) continue;
      st.seen.add(key);
      const row = feedRow(record);
      row.dataset.key = key;
      if (!st.firstFeed) row.classList.add("flash");
      if (filter && !row.dataset.search.includes(filter)) row.hidden = true;
      body.insertBefore(row, body.firstChild);
    }
    st.lastWorker = worker;
    st.firstFeed = false;
    while (body.children.length > MAX_ROWS) {
      st.seen.delete(body.lastChild.dataset.key);
      body.removeChild(body.lastChild);
    }
    $("feed-empty").hidden = body.children.length > 0;
    $("feed-count").textContent = body.children.length ? `${body.children.length} shown · newest first` : "";
  }

  function applyFilter() {
    ui.state.filter = $("feed-filter").value.trim().toLowerCase();
    for (const row of $("feed-body").children) {
      row.hidden = Boolean(ui.state.filter) && !row.dataset.search.includes(ui.state.filter);
    }
  }

  // ---------- config viewer ----------
  function renderJson(target, value) {
    clear(target);
    const text = JSON.stringify(value, null, 2);
    const token = /("(?:[^"\\]|\\.)*")(\s*:)?|\b(true|false|null)\b|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/g;
    let last = 0;
    let match;
    while ((match = token.exec(text)) !== null) {
      if (match.index > last) target.append(document.createTextNode(text.slice(last, match.index)));
      if (match[1] !== undefined) {
        const isKey = Boolean(match[2]);
        const redacted = !isKey && /^"\*\*\*/.test(match[1]);
        target.append(el("span", { class: isKey ? "k" : redacted ? "r" : "s", text: match[1] }));
        if (match[2]) target.append(document.createTextNode(match[2]));
      } else if (match[3] !== undefined) {
        target.append(el("span", { class: "b", text: match[3] }));
      } else {
        target.append(el("span", { class: "n", text: match[4] }));
      }
      last = token.lastIndex;
    }
    if (last < text.length) target.append(document.createTextNode(text.slice(last)));
  }

  // ---------- playground ----------
  function pgBody() {
    return {
      model: $("pg-model").value.trim() || "MoM",
      messages: [{ role: "user", content: $("pg-prompt").value }],
    };
  }

  function kvRow(list, label, value, field) {
    list.append(el("dt", { text: label }), el("dd", { "data-field": field || null, text: value === null || value === undefined || value === "" ? "–" : value }));
  }

  function showDecision(d) {
    const list = $("pg-decision");
    clear(list);
    kvRow(list, "route", d.route, "route");
    kvRow(list, "model", d.model, "model");
    kvRow(list, "category", d.category ? `${d.category} (confidence ${d.confidence})` : null, "category");
    kvRow(list, "reasoning", d.reasoning === null || d.reasoning === undefined ? null : d.reasoning ? "on" : "off", "reasoning");
    kvRow(list, "endpoint (would pick)", d.endpoint, "endpoint");
    kvRow(list, "route score", d.route_score, "route_score");
    kvRow(list, "matched routes", (d.matched_routes || []).join(", "), "matched");
    kvRow(list, "candidates", (d.candidates || []).map((c) => `${c.model} ${Number(c.score).toFixed(3)}`).join(" · "), "candidates");
    kvRow(list, "fallbacks", (d.fallbacks || []).map((f) => `${f.model}: ${f.reason}`).join(" · "), "fallbacks");
    const s = d.signals || {};
    const fired = [...(s.keywords || []).map((k) => "keyword " + k), ...(s.context || []).map((c) => "context " + c),
      ...Object.entries(s.categories || {}).map(([k, v]) => `category ${k} ${Number(v).toFixed(2)}`)];
    kvRow(list, "signals", fired.join(" · "), "signals");
    kvRow(list, "prompt tokens", s.prompt_tokens, "prompt_tokens");
    const system = ((d.request || {}).messages || []).find((m) => m.role === "system");
    kvRow(list, "system prompt", system ? String(system.content) : null, "system_prompt");
    kvRow(list, "decided in", d.processing_time_ms !== undefined ? fmtMs(d.processing_time_ms) : null, "time");
    const bars = $("pg-signals");
    clear(bars);
    const domain = Object.entries(s.domain || {}).sort((a, b) => b[1] - a[1]).slice(0, 5);
    for (const [name, p] of domain) {
      bars.append(el("div", { class: "bar-row" },
        el("span", { class: "bar-name", text: name }),
        el("span", { class: "bar-track" }, el("span", { class: "bar-fill", style: { width: `${100 * p}%` } })),
        el("span", { class: "bar-val", text: (100 * p).toFixed(0) + "%" })));
    }
    $("pg-result").hidden = false;
  }

  async function explain() {
    const body = pgBody();
    const decision = await api("/api/v1/route", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ messages: body.messages }),
    });
    showDecision(decision);
    return decision;
  }

  async function send() {
    const body = pgBody();
    const headers = { "content-type": "application/json", "x-mixroute-debug": "1" };
    const apiKey = $("pg-apikey").value.trim();
    if (apiKey) headers.authorization = "Bearer " + apiKey;
    const started = performance.now();
    const response = await fetch("/v1/chat/completions", { method: "POST", headers, body: JSON.stringify(body) });
    const elapsed = performance.now() - started;
    const data = await response.json().catch(() => null);
    const http = $("pg-http");
    http.className = "badge " + statusClass(response.status);
    http.textContent = `${response.status} · ${fmtMs(elapsed)}`;
    const tbody = $("pg-headers").tBodies[0];
    clear(tbody);
    const shown = [];
    response.headers.forEach((value, name) => {
      if (name.startsWith("x-mixroute-") || name === "x-request-id") shown.push([name, value]);
    });
    shown.sort((a, b) => a[0].localeCompare(b[0]));
    for (const [name, value] of shown) {
      tbody.append(el("tr", { "data-header": name }, el("td", { class: "mono dim", text: name }), el("td", { class: "mono", text: value })));
    }
    let answer = "";
    if (data && data.choices && data.choices[0]) {
      const choice = data.choices[0];
      answer = (choice.message && choice.message.content) || choice.text || "";
      if (choice.finish_reason) answer += `\n\n[finish_reason: ${choice.finish_reason}]`;
    } else if (data && data.error) {
      answer = `${data.error.code || data.error.type}: ${data.error.message}`;
    }
    $("pg-answer").textContent = answer || "(no content)";
    $("pg-response").hidden = false;
    $("pg-result").hidden = false;
    // A real request shows up in the feed: fetch it now rather than in up to a second.
    schedule(0);
    return response.headers.get("x-mixroute-model");
  }

  function isAuto(model) {
    const state = ui.lastState;
    return state ? state.auto_models.includes(model) : model === "MoM" || model === "auto";
  }

  async function runPlayground(withSend) {
    const status = $("pg-status");
    const buttons = [$("pg-explain"), $("pg-send")];
    buttons.forEach((b) => { b.disabled = true; });
    status.textContent = withSend ? "sending…" : "deciding…";
    try {
      $("pg-response").hidden = true;
      if (isAuto(pgBody().model)) {
        await explain();
      } else {
        clear($("pg-decision"));
        clear($("pg-signals"));
        kvRow($("pg-decision"), "model", pgBody().model + " (explicit: no routing decision)", "model");
        $("pg-result").hidden = false;
      }
      if (withSend) await send();
      status.textContent = "done";
    } catch (err) {
      if (err instanceof Unauthorized) { lock(""); status.textContent = ""; return; }
      status.textContent = "failed: " + (err.message || err);
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  // ---------- start ----------
  function start() {
    applyTheme(initialTheme());
    $("theme").addEventListener("click", () => {
      applyTheme(document.documentElement.getAttribute("data-theme") === "dark" ? "light" : "dark");
    });
    $("pause").addEventListener("click", () => {
      ui.state.paused = !ui.state.paused;
      $("pause").textContent = ui.state.paused ? "Resume" : "Pause";
      if (ui.state.paused) setConn("paused", "paused"); else schedule(0);
    });
    $("forget").addEventListener("click", forget);
    $("keyform").addEventListener("submit", unlock);
    $("feed-filter").addEventListener("input", applyFilter);
    $("config-refresh").addEventListener("click", loadConfig);
    $("pg-explain").addEventListener("click", () => runPlayground(false));
    $("pg-send").addEventListener("click", () => runPlayground(true));
    $("pg-prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) runPlayground(true);
    });
    window.addEventListener("resize", redrawCharts);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) schedule(0); });
    schedule(0);
  }

  start();
})();
