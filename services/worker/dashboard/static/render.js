/* flywheel dashboard: the experiment, shadow, models and refresh views' data regions. */
"use strict";

function pickPhase(ctx, phases) {
  const key = phases.map((p) => p.phase).join(",");
  if (ctx.phase.dataset.options !== key) {
    const withMetrics = phases.filter((p) => p.metrics.length);
    const chosen = (withMetrics[withMetrics.length - 1] || phases[phases.length - 1] || {}).phase;
    ctx.phase.replaceChildren(...phases.map((p) => h("option", { value: p.phase, selected: p.phase === chosen }, p.phase)));
    ctx.phase.dataset.options = key;
  }
  return phases.find((p) => p.phase === ctx.phase.value) || phases[phases.length - 1];
}

function srmBlock(phase) {
  if (!phase.srm) return h("p", { "data-k": "srm" }, "SRM: not checked (no expected split in this phase)");
  const bad = phase.srm.p_value < phase.srm.threshold;
  return h("p", { "data-k": "srm" }, h("span", { class: `badge ${bad ? "bad" : "good"}` }, bad ? "✖ sample-ratio mismatch" : "✔ no sample-ratio mismatch"),
    " p = ", h("span", { "data-k": "srm-p" }, fmt.num(phase.srm.p_value, 4)), ` (threshold ${phase.srm.threshold}); units `,
    Object.entries(phase.units).map(([arm, n]) => `${arm} ${n}`).join(", "), "; expected shares ",
    Object.entries(phase.srm.expected_share).map(([arm, p]) => `${arm} ${fmt.pct(p, 1)}`).join(", "));
}

function metricRow(m) {
  const better = m.relative.estimate === null ? "" : (m.relative.estimate > 0) === m.higher_is_better ? " (better)" : " (worse)";
  return h("tr", { "data-metric": m.name },
    h("th", { scope: "row" }, m.name, h("span", { class: "muted" }, m.higher_is_better ? " ↑" : " ↓")),
    h("td", { class: "num", "data-k": "champion" }, fmt.num(m.champion.value, 4)),
    h("td", { class: "num", "data-k": "challenger" }, fmt.num(m.challenger.value, 4)),
    h("td", { class: "num", "data-k": "lift" }, fmt.pct(m.relative.estimate), h("span", { class: "muted" }, better)),
    h("td", { class: "num", "data-k": "ci" }, fmt.ci(m.relative.ci)),
    h("td", { class: "num", "data-k": "seq-ci" }, fmt.ci(m.sequential_relative.ci)),
    h("td", { class: "num", "data-k": "p" }, fmt.num(m.relative.p_value, 4)),
    h("td", { class: "num", "data-k": "adjusted-p" }, fmt.num(m.adjusted_p_value, 4)),
    h("td", { class: "num", "data-k": "chance" }, fmt.pct(m.bayesian.chance_to_win, 1)));
}

function renderExperiment(ctx, view) {
  const report = view.report;
  const phase = pickPhase(ctx, report.phases);
  const parts = [h("p", { class: "muted" }, `Experiment ${report.experiment} · report computed ${fmt.time(report.generated_at)} (${Math.round(view.age_s)} s ago) · the numbers of flywheel report`),
    card("Decision engine", verdictBlock({ status: "ready", verdict: report.verdict, age_s: view.age_s }))];
  if (phase) {
    parts.push(h("h3", {}, `Phase ${phase.phase}`), srmBlock(phase));
    if (phase.metrics.length) {
      const rows = phase.metrics.map((m) => ({ name: m.name, est: m.relative.estimate, lo: m.relative.ci[0], hi: m.relative.ci[1], slo: m.sequential_relative.ci[0], shi: m.sequential_relative.ci[1] }));
      parts.push(card("Every metric: relative lift with its interval", forestPlot(rows, `Forest plot of ${rows.length} metrics, phase ${phase.phase}`),
        legend(["fixed-horizon 95% interval", "always-valid (sequential) interval"]),
        table(["Metric", "Champion#", "Challenger#", "Lift#", "Interval#", "Sequential#", "p#", "Adjusted p#", "Chance to win#"], phase.metrics.map(metricRow))));
      const tl = phase.timeline.map((p) => ({ t: p.day, y: p.lift, lo: p.ci[0], hi: p.ci[1] }));
      parts.push(card(`Sequential interval over time (${report.settings.primary_metric}, cumulative by cohort)`, lineChart([{ name: "lift", points: tl }], "Cumulative lift of the primary metric with its always-valid interval"), legend(["relative lift (band: always-valid interval)"])));
    } else {
      parts.push(h("p", { class: "muted" }, "This phase has no A/B comparison (shadow or champion only); see the shadow page."));
    }
  }
  const traffic = (view.series && view.series.traffic) || [];
  const expected = phase && phase.expected_split ? phase.expected_split.challenger : null;
  const series = [{ name: "challenger share", points: traffic.map((p) => ({ t: p.t, y: p.challenger_share })) }];
  if (expected !== null) series.push({ name: "expected", points: traffic.map((p) => ({ t: p.t, y: expected })) });
  parts.push(card("Traffic split over time (served responses)", lineChart(series, "Challenger share of served responses over time"), legend(series.map((sr) => sr.name)),
    table(["Bucket", "Champion#", "Challenger#", "Share#"], traffic.slice(-8).map((p) => h("tr", {}, h("td", {}, fmt.time(p.t)), h("td", { class: "num" }, p.champion), h("td", { class: "num" }, p.challenger), h("td", { class: "num" }, fmt.pct(p.challenger_share, 1)))), "the latest buckets")));
  ctx.data.replaceChildren(...parts);
}

function renderShadow(ctx, view) {
  const sh = view.shadow;
  const parts = [];
  if (!sh) parts.push(h("p", { class: "muted" }, "No shadow pairs in this experiment."));
  else {
    parts.push(h("div", { class: "grid" },
      card("Agreement", kv([["Pairs", fmt.int(sh.pairs), "pairs"], ["Exact match", fmt.pct(sh.exact_match, 1), "exact"], ["Normalized match", fmt.pct(sh.normalized_match, 1), "normalized"], ["Mean ROUGE-L", fmt.num(sh.mean_similarity, 3), "similarity"], ["Sample scored", fmt.int(sh.similarity_sample), "sample"]])),
      card("Guardrails", kv([["Error rate", `${fmt.pct(sh.champion_error_rate)} → ${fmt.pct(sh.challenger_error_rate)}`, "errors"], ["p95 latency (ms)", `${fmt.num(sh.champion_latency_p95, 0)} → ${fmt.num(sh.challenger_latency_p95, 0)}`, "p95"]])),
      card("Paired tests (challenger − champion)", table(["Metric", "Mean diff#", "95% CI#", "t-test p#", "Wilcoxon p#"], sh.tests.map((t) => h("tr", {}, h("th", { scope: "row" }, t.metric), h("td", { class: "num" }, fmt.num(t.mean_diff, 3)), h("td", { class: "num" }, `[${fmt.num(t.ci[0], 3)}, ${fmt.num(t.ci[1], 3)}]`), h("td", { class: "num" }, fmt.num(t.t_p_value, 4)), h("td", { class: "num" }, fmt.num(t.wilcoxon_p_value, 4))))))));
  }
  const agreement = (view.series && view.series.agreement) || [];
  const names = ["exact match", "normalized match", "mean ROUGE-L"];
  parts.push(card("Agreement and similarity over time", lineChart(names.map((name, i) => ({ name, points: agreement.map((p) => ({ t: p.t, y: [p.exact_match, p.normalized_match, p.mean_similarity][i] })) })), "Shadow agreement and similarity over time"), legend(names)));
  ctx.data.replaceChildren(...parts);
  const rows = view.disagreements;
  const region = document.getElementById("disagreements");
  if (!rows) { region.replaceChildren(h("p", { role: "status" }, "Scoring pairs…")); return; }
  region.replaceChildren(table(["Similarity#", "Prompt", "Champion answer", "Challenger answer"], rows.map((r) => h("tr", { "data-interaction": r.interaction_id },
    h("td", { class: "num" }, fmt.num(r.rouge_l, 3)), h("td", { class: "text" }, r.prompt), h("td", { class: "text" }, r.champion), h("td", { class: "text" }, r.challenger))), `${rows.length} least similar pairs${ctx.search.value ? " matching the search" : ""}`));
}

function json(value) { return h("details", {}, h("summary", {}, "details"), h("pre", {}, JSON.stringify(value, null, 2))); }

function renderModels(ctx, view) {
  const versions = view.versions;
  if (!versions.length) { ctx.data.replaceChildren(h("p", { class: "muted" }, `No adapter versions yet; the champion is ${fmt.short(view.champion)}.`)); return; }
  const rows = versions.slice().reverse().map((v) => {
    const gate = v.gate || {};
    const held = gate.heldout || {};
    return h("tr", { "data-version": v.version }, h("td", {}, h("code", {}, v.version.slice(0, 12))), h("td", {}, v.parent ? h("code", {}, v.parent.slice(0, 12)) : "base"),
      h("td", { "data-k": "state" }, v.state, v.deployed ? ` ★ ${v.deployed}` : ""), h("td", {}, fmt.time(v.created)),
      h("td", {}, v.gate_passed === null || v.gate_passed === undefined ? "n/a" : v.gate_passed ? "✔ passed" : "✖ refused"),
      h("td", { class: "num" }, held.n ? `${fmt.num(held.champion_loss, 4)} → ${fmt.num(held.candidate_loss, 4)}` : "n/a"),
      h("td", {}, json({ dataset_manifest: v.dataset_manifest, training: v.training, selection: v.selection, gate: v.gate, history: v.history })));
  });
  ctx.data.replaceChildren(card("Lineage (parent → child)", lineageGraph(versions, `Lineage graph of ${versions.length} adapter versions`)),
    card("Versions", table(["Version", "Parent", "State", "Created", "Gate", "Held-out loss#", "Manifest, training, gate"], rows, "newest first")));
}

function renderRefreshes(ctx, view) {
  const head = h("p", {}, view.running ? `Running: ${view.running.run} (${view.running.stage}). ` : "No refresh running. ", `Next scheduled: ${view.next ? fmt.time(view.next) : "not scheduled on this worker"}.`);
  if (!view.runs.length) { ctx.data.replaceChildren(head, h("p", { class: "muted" }, "No refresh has run yet.")); return; }
  const runs = view.runs.map((r) => {
    const stages = r.curation ? Object.entries(r.curation).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`) : [];
    const t = r.training || {};
    const curve = (t.loss_curve || []).length > 1 ? curveChart(t.loss_curve, `Training loss of ${r.key}, step by step: ${fmt.num(t.first_loss, 3)} to ${fmt.num(t.last_loss, 3)}`, (v) => fmt.num(v, 3)) : t.first_loss !== undefined && t.first_loss !== null ? lineChart([{ name: "loss", points: [{ t: r.starts.length ? r.starts[0].at : r.key, y: t.first_loss }, { t: r.finished || r.key, y: t.last_loss }] }], `Training loss of ${r.key}: first and last step`, (v) => fmt.num(v, 3)) : h("p", { class: "muted" }, "no training");
    const gate = r.gate ? h("p", {}, r.gate.passed ? "✔ gate passed" : "✖ gate refused", h("ul", { class: "reasons" }, (r.gate.reasons || []).map((x) => h("li", {}, typeof x === "string" ? x : x.message || JSON.stringify(x))))) : h("p", { class: "muted" }, "no gate");
    return card(`${r.key}: ${r.status}`, h("p", {}, r.message || ""), h("div", { class: "grid" },
      h("div", {}, h("h3", {}, "Selection"), kv(Object.entries(r.selection).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)]))),
      h("div", {}, h("h3", {}, "Curation by stage"), stages.length ? h("ul", {}, stages.map((x) => h("li", {}, x))) : h("p", { class: "muted" }, "n/a")),
      h("div", {}, h("h3", {}, `Training (${t.steps ?? 0} steps)`), curve, h("h3", {}, "Gate"), gate)));
  });
  ctx.data.replaceChildren(head, ...runs);
}
