/* flywheel dashboard pages: each mounts its static parts once, then redraws its data region on every poll. */
"use strict";

function card(title, ...body) { return h("section", { class: "card" }, h("h3", {}, title), ...body); }
function kv(pairs) { return h("dl", { class: "kv" }, pairs.flatMap(([k, v, key]) => [h("dt", {}, k), h("dd", { "data-k": key }, v)])); }
function table(head, rows, caption) {
  return h("div", { class: "scroll" }, h("table", {}, caption ? h("caption", { class: "muted" }, caption) : null,
    h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col", class: c.endsWith("#") ? "num" : null }, c.replace(/#$/, ""))))),
    h("tbody", {}, rows)));
}
const ICON = { advance: "▲", promote: "★", hold: "‖", "roll back": "✖", pass: "✔" };
const TONE = { advance: "good", promote: "good", hold: "warn", "roll back": "bad" };
function badge(action) { return h("span", { class: `badge ${TONE[action] || "muted"}`, "data-k": "verdict" }, `${ICON[action] || "•"} ${action}`); }
function waiting(region, view) {
  if (view.status === "computing") { region.replaceChildren(h("p", { role: "status" }, "Computing… (the worker computes this in the background; the page asks again)")); return true; }
  if (view.status === "unavailable") { region.replaceChildren(h("p", { class: "error" }, `Not available: ${view.reason}`)); return true; }
  return false;
}
async function load(region, path) {
  const { status, body } = await api(path);
  if (status !== 200) { region.replaceChildren(h("p", { class: "error" }, `${status}: ${detail(body)}`)); return null; }
  return body;
}
async function currentExperiment() {
  if (app.experiment) return app.experiment;
  const { body } = await api("/v1/dashboard/overview");
  return (app.experiment = body && body.experiment);
}

function verdictBlock(v) {
  if (!v || v.status !== "ready") return h("p", { class: "muted" }, v && v.reason ? `No verdict: ${v.reason}` : "Computing the verdict…");
  const verdict = v.verdict;
  return h("div", {}, h("p", {}, badge(verdict.action), verdict.next_phase ? ` → ${verdict.next_phase}` : "", h("span", { class: "muted" }, ` (phase ${verdict.phase || "none"}, report ${Math.round(v.age_s)} s old)`)),
    h("ul", { class: "reasons", "data-k": "reasons" }, verdict.reasons.map((r) => h("li", {}, r))));
}

function actionsCard(you) {
  if (!you.deploy && !you.refresh) return card("Actions", h("p", { class: "muted", "data-k": "read-only" }, "Read-only: your role may view the loop but not change it."));
  const step = h("select", { id: "ramp-step", "aria-label": "Ramp step" });
  const buttons = [];
  if (you.deploy) {
    buttons.push(h("button", { type: "button", id: "promote", class: "primary", onclick: () => runAction("Promote", `Make the challenger ${fmt.short(app.deployment.challenger)} the champion?`, "/v1/dashboard/deployments/promote") }, "Promote"));
    buttons.push(h("button", { type: "button", id: "rollback", class: "danger", onclick: () => runAction("Roll back", `Remove the challenger ${fmt.short(app.deployment.challenger)}?`, "/v1/dashboard/deployments/rollback") }, "Roll back"));
    buttons.push(h("label", {}, "A/B ramp step", step));
    buttons.push(h("button", { type: "button", id: "set-step", onclick: () => runAction("Change ramp step", `Move the challenger to ${step.selectedOptions[0] ? step.selectedOptions[0].textContent : "?"}?`, "/v1/dashboard/deployments/mode", { mode: "ab", step: Number(step.value) }) }, "Set step"));
  }
  if (you.refresh) buttons.push(h("button", { type: "button", id: "refresh-now", onclick: () => runAction("Trigger refresh", "Run today's refresh now (select, curate, train, gate, deploy)?", "/v1/admin/refresh", {}) }, "Trigger refresh"));
  return card("Actions (admin)", h("div", { class: "actions" }, buttons), h("p", { id: "action-status", role: "status" }));
}

function syncActions(d) {
  const none = !d.challenger;
  for (const id of ["promote", "rollback", "set-step"]) { const b = document.getElementById(id); if (b) b.disabled = none; }
  const select = document.getElementById("ramp-step");
  if (!select) return;
  const from = d.mode === "ab" ? d.ramp_step + 1 : 0;
  const wanted = d.ramp.map((p, i) => [i, p]).filter(([i]) => i >= from);
  const key = wanted.map(([i]) => i).join(",");
  if (select.dataset.options !== key) {
    select.replaceChildren(...wanted.map(([i, p]) => h("option", { value: i }, `step ${i + 1}: ${p}%`)));
    select.dataset.options = key;
  }
  if (!wanted.length) document.getElementById("set-step").disabled = true;
}

const PAGES = {
  overview: {
    title: "Overview",
    mount(root) {
      const data = h("div", { class: "grid", id: "overview" });
      root.append(h("h2", {}, "Overview"), h("div", { class: "grid" }, actionsCard(app.you)), h("br"), data);
      return { data };
    },
    async update(ctx) {
      const view = await load(ctx.data, "/v1/dashboard/overview");
      if (!view) return false;
      const d = view.deployment;
      app.deployment = d; app.experiment = view.experiment;
      syncActions(d);
      const mode = !d.challenger ? "champion only" : d.mode === "shadow" ? `shadow (${fmt.pct(d.shadow_sample_rate, 0)} of requests copied)` : `A/B, challenger ${d.challenger_percent}%`;
      const live = (view.live || []).map((r) => h("tr", {}, h("td", {}, `${r.arm} (${r.role})`), h("td", { class: "num" }, fmt.num(r.requests_per_s, 2)), h("td", { class: "num" }, fmt.num(r.mean_latency_ms, 0)), h("td", { class: "num" }, fmt.num(r.p95_latency_ms, 0)), h("td", { class: "num" }, fmt.int(r.errors))));
      const lag = view.lag;
      const r = view.refresh;
      ctx.data.replaceChildren(
        card("Deployment", kv([["Champion", fmt.short(d.champion), "champion"], ["Challenger", fmt.short(d.challenger), "challenger"], ["Mode", mode, "mode"], ["Phase", d.phase, "phase"],
          ["Ramp", d.ramp.map((p, i) => (d.mode === "ab" && d.challenger && i === d.ramp_step ? `[${p}%]` : `${p}%`)).join(" → "), "ramp"], ["Experiment", h("a", { href: `#/experiment/${encodeURIComponent(view.experiment)}` }, view.experiment), "experiment"], ["Changed by", `${d.updated_by}, ${fmt.time(d.updated_at)}`, "updated"]])),
        card("Decision engine", verdictBlock(view.verdict)),
        card("Live traffic (last 5 minutes)", live.length ? table(["Arm", "req/s#", "mean ms#", "p95 ms#", "errors#"], live) : h("p", { class: "muted" }, "No responses in the last 5 minutes.")),
        card("Kafka consumer lag", h("p", {}, h("strong", { "data-k": "lag" }, lag.total === null ? "unknown" : `${lag.total} events`), lag.error ? h("span", { class: "muted" }, ` (${lag.error})`) : "")),
        card("Refresh", kv([["Last", r.last ? `${r.last.key}: ${r.last.status}` : "none yet", "last-refresh"], ["Running", r.running ? `${r.running.run} (${r.running.stage})` : "no", "running"], ["Next", r.next ? fmt.time(r.next) : "not scheduled on this worker", "next-refresh"]])),
        card("Experiments", h("ul", {}, view.experiments.map((e) => h("li", {}, h("a", { href: `#/experiment/${encodeURIComponent(e.experiment)}` }, e.experiment), ` · ${e.responses} responses · ${e.phases.join(", ")}`)))));
    },
  },

  experiment: {
    title: "Experiment",
    mount(root) {
      const phase = h("select", { id: "phase", onchange: () => refresh() });
      const data = h("div", { id: "experiment" });
      root.append(h("h2", {}, "Experiment"), h("div", { class: "filters" }, h("label", {}, "Phase", phase)), data);
      return { data, phase };
    },
    async update(ctx, arg) {
      const id = arg || (await currentExperiment());
      const view = await load(ctx.data, `/v1/dashboard/experiments/${encodeURIComponent(id)}`);
      if (!view || waiting(ctx.data, view)) return !!view;
      renderExperiment(ctx, view);
    },
  },

  shadow: {
    title: "Shadow comparison",
    mount(root) {
      const search = h("input", { id: "search", type: "search", placeholder: "words in the prompt or either answer" });
      let timer = null;
      search.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(refresh, 300); });
      const data = h("div", { id: "shadow" });
      root.append(h("h2", {}, "Shadow comparison"), data, h("h3", {}, "Largest disagreements (PII redacted)"),
        h("div", { class: "filters" }, h("label", { for: "search" }, "Search"), search), h("div", { id: "disagreements" }));
      return { data, search };
    },
    async update(ctx, arg) {
      const id = arg || (await currentExperiment());
      const q = ctx.search.value ? `?q=${encodeURIComponent(ctx.search.value)}` : "";
      const view = await load(ctx.data, `/v1/dashboard/experiments/${encodeURIComponent(id)}/shadow${q}`);
      if (!view || waiting(ctx.data, view)) return !!view;
      renderShadow(ctx, view);
    },
  },

  models: {
    title: "Models",
    mount(root) { const data = h("div", { id: "models" }); root.append(h("h2", {}, "Models: the registry's lineage"), data); return { data }; },
    async update(ctx) { const view = await load(ctx.data, "/v1/dashboard/models"); if (view) renderModels(ctx, view); return !!view; },
  },

  refreshes: {
    title: "Refresh history",
    mount(root) { const data = h("div", { id: "refreshes" }); root.append(h("h2", {}, "Refresh history"), data); return { data }; },
    async update(ctx) { const view = await load(ctx.data, "/v1/dashboard/refreshes"); if (view) renderRefreshes(ctx, view); return !!view; },
  },

  feedback: {
    title: "Feedback",
    mount(root) {
      const kind = h("select", { id: "kind", onchange: () => refresh() }, ["any", "up", "down", "rating", "comment", "correction"].map((k) => h("option", { value: k }, k)));
      const arm = h("select", { id: "arm", onchange: () => refresh() }, h("option", { value: "" }, "both"), h("option", { value: "champion" }, "champion"), h("option", { value: "challenger" }, "challenger"));
      const q = h("input", { id: "feedback-q", type: "search" });
      let timer = null;
      q.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(refresh, 300); });
      const data = h("div", { id: "feedback" });
      root.append(h("h2", {}, "Feedback and corrections"), h("div", { class: "filters" }, h("label", {}, "Kind", kind), h("label", {}, "Arm", arm), h("label", {}, "Search comments and corrections", q)), data);
      return { data, kind, arm, q };
    },
    async update(ctx) {
      const params = new URLSearchParams({ kind: ctx.kind.value, limit: "100" });
      if (ctx.arm.value) params.set("arm", ctx.arm.value);
      if (ctx.q.value) params.set("q", ctx.q.value);
      const rows = await load(ctx.data, `/v1/dashboard/feedback?${params}`);
      if (!rows) return false;
      ctx.data.replaceChildren(table(["When", "Thumb", "Rating#", "Comment", "Correction", "Arm", "Model"], rows.map((r) => h("tr", { "data-feedback": r.feedback_id },
        h("td", {}, fmt.time(r.ts)), h("td", {}, r.thumb ? (r.thumb === "up" ? "👍 up" : "👎 down") : ""), h("td", { class: "num" }, r.rating ?? ""),
        h("td", { class: "text" }, r.comment || ""), h("td", { class: "text" }, r.correction || ""), h("td", {}, r.arm || "?"), h("td", {}, fmt.short(r.model_version)))), `${rows.length} most recent`));
    },
  },
};
