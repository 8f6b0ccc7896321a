// The distlab dashboard page: follows /api/stream (server-sent events) and draws the run
// list and the open run. The run is chosen by the URL hash, #run=<path inside RUNS_DIR>.
// Every text that comes from a run (names, addresses, reasons) is set as text, never HTML.
"use strict";

(() => {
  const COLORS = {
    accent: "#4f46e5", train: "#4f46e5", test: "#f59e0b", accuracy: "#059669",
    training: "#6366f1", transfer: "#f59e0b", aggregation: "#10b981", unsplit: "#94a3b8",
    sent: "#6366f1", recv: "#14b8a6",
  };
  const RANK_COLORS = ["#4f46e5", "#0ea5e9", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#ec4899", "#64748b"];

  const state = { runs: null, selected: null, detail: null, source: null, offset: 0 };

  // --- the token: taken from the first URL, kept for this tab, dropped from the address bar
  const query = new URLSearchParams(location.search);
  const token = query.get("token") || sessionStorage.getItem("distlab-dashboard-token");
  if (query.has("token")) {
    sessionStorage.setItem("distlab-dashboard-token", token);
    history.replaceState(null, "", location.pathname + location.hash);
  }
  function withToken(url) {
    if (!token) return url;
    return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
  }

  // --- small helpers ------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const known = (v) => v !== null && v !== undefined && !(typeof v === "number" && !isFinite(v));
  function fmt(v, digits = 4) {
    if (!known(v)) return "–";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return v.toLocaleString();
    const abs = Math.abs(v);
    if (abs >= 1000) return v.toLocaleString(undefined, { maximumFractionDigits: 1 });
    if (abs > 0 && abs < 1e-3) return v.toExponential(2);
    return String(Number(v.toFixed(digits)));
  }
  const pct = (v) => (known(v) ? (100 * v).toFixed(1) + "%" : "–");
  function bytes(v) {
    if (!known(v)) return "–";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (Math.abs(v) >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
    return (i === 0 ? v : v.toFixed(1)) + " " + units[i];
  }
  function clock(epoch) {
    if (!known(epoch)) return "–";
    const d = new Date(epoch * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }
  function ago(seconds) {
    if (!known(seconds)) return "";
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 90) return seconds + " s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
    return Math.round(seconds / 3600) + " h ago";
  }
  // 0,1,2,3,5 -> "0–3, 5": a round's clients stay short however many were sampled
  function ranges(ids) {
    if (!ids || !ids.length) return "";
    if (!ids.every(Number.isInteger)) return ids.join(", ");
    const sorted = [...ids].sort((a, b) => a - b);
    const parts = [];
    let start = sorted[0], prev = sorted[0];
    for (const id of sorted.slice(1).concat([null])) {
      if (id === prev + 1) { prev = id; continue; }
      parts.push(start === prev ? String(start) : `${start}–${prev}`);
      start = prev = id;
    }
    return parts.join(", ");
  }
  const serverNow = () => Date.now() / 1000 + state.offset;
  const isLive = (run) => run && run.status === "running";

  function runHref(path) {
    return "#run=" + encodeURIComponent(path).replace(/%2F/g, "/");
  }
  function selectedFromHash() {
    const match = location.hash.match(/^#run=(.+)$/);
    return match ? decodeURIComponent(match[1]) : null;
  }

  // --- the stream ------------------------------------------------------------------------
  function setLive(kind, text) {
    $("live").dataset.state = kind;
    $("live-text").textContent = text || kind;
  }

  function connect() {
    if (state.source) state.source.close();
    let url = "api/stream";
    if (state.selected) url += "?run=" + encodeURIComponent(state.selected);
    const source = new EventSource(withToken(url));
    state.source = source;
    source.addEventListener("runs", (e) => {
      state.runs = JSON.parse(e.data);
      state.offset = state.runs.now - Date.now() / 1000;
      renderRuns();
    });
    source.addEventListener("run", (e) => {
      state.detail = JSON.parse(e.data);
      if (state.detail.path === state.selected || selectedFromHash() === state.selected) renderRun();
    });
    source.addEventListener("missing", (e) => showEmpty(`No run "${JSON.parse(e.data).path}" in this folder.`));
    source.onopen = () => setLive("live");
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        setLive("offline", "offline, retrying");
        setTimeout(() => { if (state.source === source) connect(); }, 3000);
      } else {
        setLive("reconnecting");
      }
    };
  }

  function select(path) {
    if (path === state.selected && state.source) return;
    state.selected = path;
    state.detail = null;
    if (path) showEmpty("Loading " + path + " …");
    else showEmpty("Pick a run on the left.");
    markSelected();
    connect();
  }

  // --- run list ---------------------------------------------------------------------------
  function renderRuns() {
    const data = state.runs;
    $("root").textContent = data.root;
    const running = data.runs.filter((r) => r.status === "running").length;
    $("run-count").textContent = `${data.runs.length} runs` + (running ? `, ${running} running` : "");
    const groups = new Map([[null, []]]);
    for (const run of data.runs) {
      if (!groups.has(run.group)) groups.set(run.group, []);
      groups.get(run.group).push(run);
    }
    const sweeps = new Map(data.sweeps.map((s) => [s.path, s]));
    const list = $("runs");
    list.replaceChildren();
    for (const [group, runs] of groups) {
      if (group !== null) list.append(groupHead(group, sweeps.get(group)));
      else if (groups.size > 1 && runs.length) list.append(el("div", { class: "group-head", text: "runs" }));
      for (const run of runs) list.append(runItem(run));
    }
    if (!data.runs.length) {
      list.append(el("p", { class: "group-head", text: "No runs here yet: distlab run --out-dir " + data.root }));
    }
    markSelected();
  }

  function groupHead(group, sweep) {
    const head = el("div", { class: "group-head" }, sweep ? "sweep " : "",
      el("span", { class: "group-name", text: sweep ? sweep.name : group }), " ");
    if (sweep) {
      const counts = Object.entries(sweep.status).map(([s, n]) => `${n} ${s}`).join(", ");
      head.append(el("span", { class: "sweep-cells", text: `· ${sweep.cells} cells: ${counts}` }));
    }
    return head;
  }

  function runItem(run) {
    const done = run.unit === "round" ? run.rounds : run.steps;
    const unit = run.unit + (done === 1 && !known(run.total) ? "" : "s");
    const progress = known(done) ? `${fmt(done)}${known(run.total) ? "/" + fmt(run.total) : ""} ${unit}` : "";
    const meta = [run.strategy, run.dataset, run.model].filter(known).join(" · ");
    return el(
      "a",
      { class: "run-item", href: runHref(run.path), "data-path": run.path, "data-status": run.status },
      el("div", { class: "run-line" },
        runName(run),
        el("span", { class: "badge " + run.status, text: run.status })),
      el("div", { class: "run-meta", text: meta }),
      el("div", { class: "run-figures" },
        el("span", { text: progress }),
        el("span", { text: known(run.accuracy) ? "acc " + pct(run.accuracy) : "" }),
        el("span", { class: "muted", text: clock(run.started) })),
    );
  }

  // Auto-named runs (STRATEGY-DATASET-MODEL-DATE-TIME[-N]) differ at the end: a long name
  // loses its middle, never its time stamp (or last characters), and the whole name (and
  // path) shows on hover; strategy, dataset and model are on the line below anyway.
  const STAMP = /-\d{8}-\d{6}(-\d+)?$/;
  function runName(run) {
    const name = String(run.name);
    const title = run.path === name ? name : `${name}\n${run.path}`;
    const stamp = name.match(STAMP);
    const cut = stamp ? stamp.index : Math.max(0, name.length - 12);
    return el("span", { class: "run-name", title },
      el("span", { class: "run-name-head", text: name.slice(0, cut) }),
      el("span", { class: "run-name-tail", text: name.slice(cut) }));
  }

  function markSelected() {
    for (const item of document.querySelectorAll(".run-item")) {
      item.classList.toggle("selected", item.dataset.path === state.selected);
    }
  }

  // --- one run ----------------------------------------------------------------------------
  function showEmpty(text) {
    $("run").hidden = true;
    $("empty").hidden = false;
    $("empty-text").textContent = text;
  }

  function renderRun() {
    const run = state.detail;
    $("empty").hidden = true;
    $("run").hidden = false;
    renderHead(run);
    renderTiles(run);
    renderCurves(run);
    const fed = run.federated;
    $("federated").hidden = !fed;
    if (fed) renderFederated(run, fed);
    $("data-parallel").hidden = !run.ranks;
    if (run.ranks) renderRanks(run.ranks);
    renderConfig(run.config || {});
    tick();
  }

  function renderHead(run) {
    $("run-group").textContent = run.group ? run.group + " /" : "";
    $("run-name").textContent = run.name;
    const badge = $("run-status");
    badge.className = "badge " + run.status;
    badge.textContent = run.status;
    const parts = [["strategy", run.strategy], ["dataset", run.dataset], ["model", run.model]];
    if (known(run.clients)) parts.push(["clients", run.clients]);
    else if (known(run.workers)) parts.push(["workers", run.workers]);
    parts.push(["started", clock(run.started)]);
    const meta = $("run-meta");
    meta.replaceChildren();
    parts.forEach(([label, value], i) => {
      if (i) meta.append(" · ");
      meta.append(label + " ", el("b", { text: String(value) }));
    });
    if (isLive(run) && known(run.updated)) meta.append(" · updated ", el("span", { "data-since": run.updated }));
    const error = $("run-error");
    error.hidden = !run.error;
    error.textContent = run.error || "";
  }

  function renderTiles(run) {
    const p = run.progress;
    const rounds = p.unit === "round" || p.rounds > 0;
    $("tile-rounds").hidden = !rounds;
    $("tile-steps").hidden = rounds && !p.steps;
    $("round-counter").textContent = String(p.rounds);
    const plan = known(p.total) ? " / " + p.total : "";  // null once the run has finished
    $("round-total").textContent = p.unit === "round" ? plan : "";
    $("step-counter").textContent = String(p.steps);
    $("step-total").textContent = p.unit === "step" ? plan : "";
    $("tile-accuracy").textContent = pct(p.accuracy);
    $("tile-best").textContent = pct(p.best_accuracy);
    const losses = run.curves.train.loss.filter(known);
    $("tile-loss").textContent = losses.length ? fmt(losses[losses.length - 1]) : "–";
    $("tile-seconds").textContent = known(p.seconds) ? fmt(p.seconds, 1) : "–";
  }

  // --- charts -----------------------------------------------------------------------------
  function layout(extra) {
    const axis = { gridcolor: "#eef0f3", zeroline: false, linecolor: "#d1d5db", automargin: true };
    const base = {
      margin: { l: 56, r: 16, t: 10, b: 44 },
      height: 280,
      font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12, color: "#374151" },
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" },
      uirevision: state.selected,
      hoverlabel: { font: { size: 12 } },
    };
    return {
      ...base,
      ...extra,
      xaxis: { ...axis, ...(extra.xaxis || {}) },
      yaxis: { ...axis, ...(extra.yaxis || {}) },
    };
  }

  // Draw the chart, or show the card's "no data" note instead when there is nothing to draw.
  function plot(id, traces, extra) {
    const div = $(id);
    const note = div.parentElement.querySelector(".no-data");
    const empty = !traces.length;
    div.hidden = empty;
    if (note) note.hidden = !empty;
    if (empty) { Plotly.purge(div); return; }
    Plotly.react(div, traces, layout(extra), { displayModeBar: false, responsive: true });
  }

  // Ticks of an axis that counts (rounds, steps, clients): whole numbers only, a 1-2-5 step
  // that gives at most about ten of them up to `top`.
  function integerTicks(top) {
    let step = 1;
    for (let scale = 1; top / step > 10; scale *= 10) {
      step = [1, 2, 5].map((m) => m * scale).find((s) => top / s <= 10) || 10 * scale;
    }
    return { tickmode: "linear", tick0: 0, dtick: step };
  }

  // An axis of rounds or steps: from 0, with whole-number ticks
  function countAxis(title, xs) {
    const top = Math.max(0, ...xs.filter(known));
    return { title: { text: title }, rangemode: "tozero", ...integerTicks(top) };
  }

  // Fixed histogram bins (so that the tallest bar is known here, for integer count ticks)
  function histogram(values, bins) {
    const lo = Math.min(...values), hi = Math.max(...values);
    const size = hi > lo ? (hi - lo) / bins : Math.max(Math.abs(hi) * 0.05, 1e-3);
    const start = hi > lo ? lo : lo - size / 2;
    const counts = new Map();
    for (const v of values) {
      const bin = Math.floor((v - start) / size);
      counts.set(bin, (counts.get(bin) || 0) + 1);
    }
    return { xbins: { start, end: hi + size, size }, tallest: Math.max(...counts.values()) };
  }

  function line(name, x, y, color, extra) {
    return { type: "scatter", mode: x.length > 60 ? "lines" : "lines+markers", name, x, y,
      line: { color, width: 2 }, marker: { color, size: 6 }, ...extra };
  }

  function renderCurves(run) {
    const c = run.curves;
    const traces = [];
    const trainLabel = c.unit === "round" ? "train loss (clients' mean)" : "train loss";
    if (c.train.x.length) traces.push(line(trainLabel, c.train.x, c.train.loss, COLORS.train));
    const sameAxis = c.eval.unit === c.unit || !c.train.x.length;
    if (c.eval.x.length && sameAxis) traces.push(line("test loss", c.eval.x, c.eval.loss, COLORS.test, { line: { color: COLORS.test, width: 2, dash: "dot" } }));
    plot("chart-loss", traces, { xaxis: countAxis(c.unit, c.train.x.concat(c.eval.x)), yaxis: { title: { text: "loss" } } });
    const acc = c.eval.x.length ? [line("test accuracy", c.eval.x, c.eval.accuracy, COLORS.accuracy)] : [];
    plot("chart-accuracy", acc, {
      xaxis: countAxis(c.eval.unit || "eval", c.eval.x),
      yaxis: { title: { text: "accuracy" }, tickformat: ".0%", range: [0, 1.02] },
      showlegend: false,
    });
  }

  function renderFederated(run, fed) {
    renderClients(run, fed);
    renderRoundTable(fed.rounds);
    const rounds = fed.rounds;
    const x = rounds.map((r) => r.round);
    const part = (key, name, color) => ({ type: "bar", name, x, y: rounds.map((r) => r[key]), marker: { color },
      hovertemplate: `%{y:.3f} s<extra>${name}</extra>` });
    const split = [];
    if (rounds.some((r) => known(r.training))) split.push(part("training", "client training (slowest)", COLORS.training));
    if (rounds.some((r) => known(r.transfer))) split.push(part("transfer", "transfer & waiting", COLORS.transfer));
    if (rounds.some((r) => known(r.unsplit))) split.push(part("unsplit", "clients (training + transfer)", COLORS.unsplit));
    if (rounds.some((r) => known(r.aggregation))) split.push(part("aggregation", "aggregation", COLORS.aggregation));
    plot("chart-round-split", rounds.length ? split : [], {
      barmode: "stack", xaxis: { ...countAxis("round", x), rangemode: "normal" },
      yaxis: { title: { text: "seconds" } },
    });
    const bins = fed.train_seconds.length ? histogram(fed.train_seconds, 24) : null;
    const times = bins
      ? [{ type: "histogram", x: fed.train_seconds, marker: { color: COLORS.training, line: { color: "#fff", width: 1 } }, xbins: bins.xbins, name: "clients" }]
      : [];
    plot("chart-train-times", times, {
      xaxis: { title: { text: "seconds of local training" } },
      yaxis: { title: { text: "client rounds" }, rangemode: "tozero", ...integerTicks(bins ? bins.tallest : 1) },
      showlegend: false, bargap: 0.04,
    });
    const shown = fed.val_accuracy.slice(-40);
    const boxes = shown.length
      ? [{
        type: "box", name: "val accuracy",
        x: shown.flatMap((r) => r.values.map(() => String(r.round))),
        y: shown.flatMap((r) => r.values),
        boxpoints: "all", jitter: 0.35, pointpos: 0,
        marker: { color: COLORS.accent, size: 4, opacity: 0.6 }, line: { color: COLORS.accent, width: 1.5 },
        fillcolor: "rgba(79,70,229,0.12)",
      }]
      : [];
    plot("chart-val-accuracy", boxes, {
      xaxis: { title: { text: "round" }, type: "category" },
      yaxis: { title: { text: "client validation accuracy" }, tickformat: ".0%" },
      showlegend: false,
    });
  }

  function renderClients(run, fed) {
    const counts = {};
    for (const c of fed.clients) counts[c.status] = (counts[c.status] || 0) + 1;
    $("client-count").textContent = `${fed.clients.length} · ` + Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(", ");
    const body = $("clients").querySelector("tbody");
    body.replaceChildren();
    for (const c of fed.clients) {
      const seen = el("td", { class: "mono" }, known(c.last_seen) ? fmt(c.last_seen, 1) + " s" : "–");
      if (isLive(run) && known(c.last_seen) && known(run.started)) {
        seen.append(" ", el("span", { class: "muted", "data-since": run.started + c.last_seen }));
      }
      body.append(el("tr", { class: "client-row", "data-client": String(c.client), "data-status": c.status || "" },
        el("td", { class: "mono", text: String(c.client) }),
        el("td", {}, c.status ? el("span", { class: "badge " + c.status, text: c.status }) : "–"),
        el("td", { class: "mono", text: c.address || "–" }),
        el("td", { class: "mono muted", text: c.node || "–" }),
        el("td", { class: "num", text: fmt(c.rounds) }),
        seen,
        el("td", { class: "num", text: fmt(c.loss) }),
        el("td", { class: "num", text: pct(c.val_accuracy) }),
        el("td", { class: "num", text: fmt(c.train_seconds, 2) }),
        el("td", { class: "note", text: c.reason || "" })));
    }
    const refused = $("refused");
    refused.hidden = !fed.refused.length;
    refused.textContent = fed.refused.length
      ? "Refused: " + fed.refused.map((r) => `node ${r.node || "?"}${known(r.client) ? " (client " + r.client + ")" : ""}: ${r.reason || "no reason"}`).join("; ")
      : "";
  }

  function renderRoundTable(rounds) {
    const body = $("rounds").querySelector("tbody");
    body.replaceChildren();
    for (const r of rounds.slice(-200).reverse()) {
      const rejected = Object.entries(r.rejected).map(([c, why]) => (why ? `${c} (${why})` : c)).join(", ");
      // a failed client that was lost (no reply) says why; injected failures are just ids
      const lost = r.failed.filter((c) => r.lost[String(c)]);
      const failed = [ranges(r.failed.filter((c) => !r.lost[String(c)])),
        ...lost.map((c) => `${c} (${r.lost[String(c)]})`)].filter(Boolean).join(", ");
      body.append(el("tr", { class: "round-row", "data-round": String(r.round) },
        el("td", { class: "num", text: fmt(r.round) }),
        el("td", { class: "mono nowrap", text: `${ranges(r.sampled)} (${r.sampled.length})` }),
        el("td", { class: "note bad", text: failed }),
        el("td", { class: "note bad", text: rejected }),
        el("td", { class: "num", text: fmt(r.attempts) }),
        el("td", { class: "num", text: fmt(r.duration, 3) }),
        el("td", { class: "num", text: fmt(r.loss) })));
    }
  }

  function renderRanks(ranks) {
    const steps = ranks.filter((r) => r.duration.length).map((r, i) =>
      line(`rank ${r.rank}`, r.step, r.duration.map((d) => d * 1000), RANK_COLORS[i % RANK_COLORS.length], { line: { width: 1.2, color: RANK_COLORS[i % RANK_COLORS.length] } }));
    const silent = ranks.length - steps.length;
    $("step-note").textContent = silent ? `(${silent} rank${silent > 1 ? "s" : ""} record totals only)` : "";
    plot("chart-step-times", steps, { xaxis: countAxis("step", ranks.flatMap((r) => r.step)), yaxis: { title: { text: "step time (ms)" }, rangemode: "tozero" } });
    const counted = ranks.filter((r) => r.bytes_sent || r.bytes_recv);
    const names = counted.map((r) => `rank ${r.rank}`);
    const bars = counted.length
      ? [
        { type: "bar", name: "sent", x: names, y: counted.map((r) => r.bytes_sent / 1e6), marker: { color: COLORS.sent }, hovertemplate: "%{y:.2f} MB<extra>sent</extra>" },
        { type: "bar", name: "received", x: names, y: counted.map((r) => r.bytes_recv / 1e6), marker: { color: COLORS.recv }, hovertemplate: "%{y:.2f} MB<extra>received</extra>" },
      ]
      : [];
    plot("chart-bytes", bars, { barmode: "group", yaxis: { title: { text: "MB" } } });
    const body = $("ranks").querySelector("tbody");
    body.replaceChildren();
    for (const r of ranks) {
      body.append(el("tr", { class: "rank-row", "data-rank": String(r.rank) },
        el("td", { class: "num", text: String(r.rank) }),
        el("td", { text: r.role || "–" }),
        el("td", { class: "num", text: fmt(r.steps) }),
        el("td", { class: "num", text: known(r.step_mean) ? fmt(r.step_mean * 1000, 2) : "–" }),
        el("td", { class: "num", text: known(r.step_median) ? fmt(r.step_median * 1000, 2) : "–" }),
        el("td", { class: "num", text: bytes(r.bytes_sent) }),
        el("td", { class: "num", text: bytes(r.bytes_recv) }),
        el("td", { class: "num", text: fmt(r.comm_seconds, 3) })));
    }
  }

  function renderConfig(config) {
    const flat = [];
    const walk = (prefix, value) => {
      if (value && typeof value === "object" && !Array.isArray(value)) {
        for (const [k, v] of Object.entries(value)) walk(prefix ? `${prefix}.${k}` : k, v);
      } else {
        flat.push([prefix, value]);
      }
    };
    walk("", config);
    $("config").replaceChildren(...flat.map(([k, v]) => el("div", {}, el("span", { text: k + " = " }), JSON.stringify(v))));
  }

  // "12 s ago" texts move on between pushes
  function tick() {
    for (const node of document.querySelectorAll("[data-since]")) {
      const text = ago(serverNow() - Number(node.dataset.since));
      node.textContent = node.closest("td") ? `(${text})` : text;
    }
  }

  window.addEventListener("hashchange", () => select(selectedFromHash()));
  window.addEventListener("DOMContentLoaded", () => {
    setInterval(tick, 1000);
    select(selectedFromHash());
  });
})();
