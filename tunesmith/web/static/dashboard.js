// tunesmith's dashboard: every page's data comes from the /v1 API, with the key kept in sessionStorage
// (none when the server is keyless). Text from the API goes into the page as text, never as HTML.
"use strict";

const KEY = "tunesmith-key";
const keyless = document.body.dataset.keyless === "true";
const $ = (sel, root = document) => root.querySelector(sel);
const TERMINAL = ["succeeded", "failed", "cancelled"];

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status; this.param = e.param; this.code = e.code;
  }
}

async function api(path, {method = "GET", json, form, raw} = {}) {
  const headers = {};
  if (!keyless) headers.Authorization = `Bearer ${sessionStorage.getItem(KEY) || ""}`;
  let body;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  if (form) body = form;
  const res = await fetch(`/v1${path}`, {method, headers, body});
  if (!res.ok) {
    const err = new ApiError(res.status, await res.json().catch(() => null));
    if (res.status === 401) askForKey(err.message);
    throw err;
  }
  return raw ? res : res.json();
}

// Every page of a list, oldest first (the API lists newest first).
async function listAll(path) {
  const rows = [];
  let after = null;
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(`${path}${sep}limit=100${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    rows.push(...page.data);
    if (!page.has_more) return rows.reverse();
    after = page.last_id;
  }
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}

function age(seconds) {
  const s = Math.max(0, Math.round(Date.now() / 1000 - seconds));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

// OpenAI's model names served as aliases of a base model: listed once, not as models of their own
const isAlias = (m) => m.owned_by.startsWith("tunesmith (alias of");
const fmt = (x) => typeof x === "number" ? (Number.isInteger(x) ? String(x) : x.toPrecision(4)) : String(x);
const showError = (node, err) => { node.textContent = err ? (err.param ? `${err.param}: ` : "") + err.message : ""; };

async function download(path, filename) {
  const blob = await (await api(path, {raw: true})).blob();
  const a = el("a", {href: URL.createObjectURL(blob), download: filename});
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// --- the key ------------------------------------------------------------------------------------
function askForKey(message) {
  sessionStorage.removeItem(KEY);
  $("#content").hidden = true;
  $("#key-form").hidden = false;
  $("#forget-key").hidden = true;
  $("#key-error").textContent = message || "";
}

async function start() {
  if (!keyless) {
    $("#key-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY, $("#key-input").value.trim());
      $("#key-input").value = "";
      start();
    });
    $("#forget-key").addEventListener("click", () => askForKey("Key forgotten."));
    if (!sessionStorage.getItem(KEY)) return askForKey("");
  }
  try {
    await api("/models");  // checks the key once, before any page shows
  } catch (err) {
    if (err.status !== 401) $("#status").textContent = err.message;
    return;
  }
  if (!keyless) { $("#key-form").hidden = true; $("#forget-key").hidden = false; }
  $("#content").hidden = false;
  const init = PAGES[document.body.dataset.page];
  try { await init(); } catch (err) { $("#status").textContent = err.message; }
}

// --- files --------------------------------------------------------------------------------------
async function filesPage() {
  const drop = $("#drop"), input = $("#file-input");
  for (const t of ["dragenter", "dragover"]) drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const t of ["dragleave", "drop"]) drop.addEventListener(t, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); if (e.dataTransfer.files[0]) uploadFile(e.dataTransfer.files[0]); });
  input.addEventListener("change", () => { if (input.files[0]) uploadFile(input.files[0]); });
  await listFiles();
}

async function uploadFile(file) {
  const out = $("#report");
  out.replaceChildren(el("p", {}, `Uploading ${file.name}…`));
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", file, file.name);
  try {
    const f = await api("/files", {method: "POST", form});
    await listFiles();
    await validateFile(f.id, f.filename);
  } catch (err) { out.replaceChildren(el("p", {class: "error"}, err.message)); }
}

async function validateFile(id, name) {
  const out = $("#report");
  out.replaceChildren(el("p", {}, `Validating ${name}…`));
  const r = await api(`/files/${id}/validate`, {method: "POST", json: {}});
  const problems = (list, cls) => el("ul", {class: cls}, list.map((p) =>
    el("li", {}, `${p.line ? `line ${p.line}` : "file"}${p.field ? `, ${p.field}` : ""}: ${p.message}`)));
  const stats = [["tokens", r.tokens], ["trained tokens", r.trained_tokens],
    ...Object.entries(r.pair_tokens || {}).map(([k, v]) => [`${k} tokens`, v])].filter(([, d]) => d);
  const hp = r.hyperparameters;
  out.replaceChildren(
    el("h2", {id: "report-title"}, `${name} (${id}): `, el("span", {class: r.ok ? "ok" : "error"},
      r.ok ? "ready to train" : `${r.errors.length} error(s)`)),
    el("p", {}, `Format ${r.format || "unknown"}, ${r.examples} usable examples, method ${r.method}, ${r.warnings.length} warning(s).`),
    r.errors.length ? el("div", {id: "report-errors"}, el("h3", {}, "Errors"), problems(r.errors, "error")) : "",
    r.warnings.length ? el("div", {id: "report-warnings"}, el("h3", {}, "Warnings"), problems(r.warnings, "")) : "",
    stats.length ? el("table", {class: "list", id: "report-tokens"},
      el("thead", {}, el("tr", {}, ["", "min", "median", "p95", "max", "total"].map((h) => el("th", {}, h)))),
      el("tbody", {}, stats.map(([label, d]) => el("tr", {}, el("td", {}, label),
        [d.min, d.median, Math.round(d.p95), d.max, d.total].map((v) => el("td", {}, fmt(v))))))) : "",
    hp ? el("p", {id: "report-hyperparameters"}, `"auto" hyperparameters: ${hp.n_epochs} epochs, batch size ${hp.batch_size}, ` +
      `learning-rate multiplier ${fmt(hp.learning_rate_multiplier)} (learning rate ${hp.learning_rate.toExponential(2)})` +
      (hp.beta ? `, beta ${hp.beta}` : "") + `; about ${r.estimated_training_tokens.toLocaleString()} training tokens.`) : "",
    r.ok ? el("p", {}, el("a", {href: `/jobs?training_file=${encodeURIComponent(id)}`}, "Create a job with this file →")) : "");
}

async function listFiles() {
  const files = (await listAll("/files")).reverse().filter((f) => f.purpose === "fine-tune");
  $("#files").replaceChildren(...files.map((f) => el("tr", {},
    el("td", {class: "mono"}, f.id), el("td", {}, f.filename), el("td", {}, f.bytes.toLocaleString()),
    el("td", {}, age(f.created_at)),
    el("td", {}, el("button", {type: "button", onclick: () => validateFile(f.id, f.filename)
      .catch((err) => $("#report").replaceChildren(el("p", {class: "error"}, err.message)))}, "Validate")))));
}

// --- jobs ---------------------------------------------------------------------------------------
// The moves a client may ask for, by status (tunesmith/jobs/lifecycle.py has the whole table; a failed
// job resumes only if it had started training, which the API's answer says).
const ACTIONS = {cancel: ["validating_files", "queued", "running", "paused"], pause: ["queued", "running"],
  resume: ["paused", "failed"]};
const allowed = (job) => Object.keys(ACTIONS).filter((a) => ACTIONS[a].includes(job.status));

async function jobAction(id, action) {
  await api(`/fine_tuning/jobs/${id}/${action}`, {method: "POST"});
}

async function jobsPage() {
  const form = $("#job-form");
  const [files, models] = await Promise.all([listAll("/files"), api("/models")]);
  const usable = files.filter((f) => f.purpose === "fine-tune").reverse();
  const opts = usable.map((f) => [f.id, `${f.filename} (${f.id})`]);
  form.training_file.append(...opts.map(([v, t]) => el("option", {value: v}, t)));
  form.validation_file.append(...opts.map(([v, t]) => el("option", {value: v}, t)));
  form.model.append(...models.data.filter((m) => !isAlias(m)).map((m) => el("option", {value: m.id}, m.id)));
  const wanted = new URLSearchParams(location.search).get("training_file");
  if (wanted) form.training_file.value = wanted;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError($("#job-error"), null);
    const v = Object.fromEntries(new FormData(form));
    const hp = {};
    for (const k of ["n_epochs", "batch_size"]) if (v[k].trim()) hp[k] = /^\d+$/.test(v[k].trim()) ? Number(v[k]) : v[k].trim();
    for (const k of ["learning_rate_multiplier", "beta"]) if (v[k].trim()) hp[k] = Number.isNaN(Number(v[k])) ? v[k].trim() : Number(v[k]);
    const own = {hyperparameters: hp};
    if (v.method === "reinforcement") {
      try { own.grader = JSON.parse(v.grader); } catch (err) {
        showError($("#job-error"), new Error(`The grader is not JSON: ${err.message}`));
        return;
      }
    }
    const body = {model: v.model, training_file: v.training_file, method: {type: v.method, [v.method]: own}};
    if (v.validation_file) body.validation_file = v.validation_file;
    if (v.suffix.trim()) body.suffix = v.suffix.trim();
    try {
      const job = await api("/fine_tuning/jobs", {method: "POST", json: body});
      location.href = `/jobs/${job.id}`;
    } catch (err) { showError($("#job-error"), err); }
  });
  await refreshJobs();
  setInterval(() => refreshJobs().catch(() => {}), 3000);
}

async function jobProgress(job) {
  if (job.status !== "running") return job.status === "succeeded" ? "100 %" : "";
  const last = (await api(`/fine_tuning/jobs/${job.id}/events?limit=20`)).data.find((e) => e.type === "metrics");
  return last ? `step ${last.data.step} / ${last.data.total_steps}` : "starting";
}

async function refreshJobs() {
  const jobs = (await api("/fine_tuning/jobs?limit=100")).data;
  const progress = await Promise.all(jobs.map(jobProgress));
  $("#jobs").replaceChildren(...jobs.map((j, i) => el("tr", {"data-job": j.id},
    el("td", {class: "mono"}, el("a", {href: `/jobs/${j.id}`}, j.id)),
    el("td", {}, el("span", {class: `badge ${j.status}`}, j.status)),
    el("td", {class: "mono"}, j.fine_tuned_model || j.model), el("td", {}, age(j.created_at)), el("td", {}, progress[i]),
    el("td", {}, allowed(j).map((a) => el("button", {type: "button", onclick: () =>
      jobAction(j.id, a).then(refreshJobs).catch((err) => showError($("#job-error"), err))}, a))))));
}

// --- one job ------------------------------------------------------------------------------------
const SERIES = {
  supervised: [["train_loss", "train loss", "#2459c7"], ["valid_loss", "validation loss", "#d9480f"],
    ["train_mean_token_accuracy", "token accuracy", "#2b8a3e"]],
  dpo: [["train_loss", "train loss", "#2459c7"], ["valid_loss", "validation loss", "#d9480f"],
    ["rewards/margins", "reward margin", "#2b8a3e"]],
  // a reinforcement job's grades lie in [0, 1]; its answers' lengths (tokens) get an axis of their own
  reinforcement: [["train_reward_mean", "reward mean", "#2459c7"], ["train_reward_std", "reward std", "#74c0fc"],
    ["valid_reward_mean", "validation reward", "#d9480f"], ["train_kl", "KL to reference", "#2b8a3e"],
    ["train_completion_length", "completion length (tokens)", "#868e96", "tokens"]],
};

async function jobPage() {
  const id = document.body.dataset.job;
  let events = new Map();  // id → event, newest first, kept across polls
  let chart = null, job = null;

  for (const b of document.querySelectorAll("[data-action]")) {
    b.addEventListener("click", () => jobAction(id, b.dataset.action).then(poll)
      .catch((err) => { $("#status").textContent = err.message; }));
  }
  $("#csv").addEventListener("click", () => download(`/files/${job.result_files[0]}/content`, `${id}-step_metrics.csv`));

  async function newEvents() {  // pages of the newest events until one already seen, put before those
    const fresh = [];
    let after = null;
    for (;;) {
      const page = await api(`/fine_tuning/jobs/${id}/events?limit=200${after ? `&after=${after}` : ""}`);
      let seen = false;
      for (const e of page.data) { if (events.has(e.id)) { seen = true; break; } fresh.push([e.id, e]); }
      if (seen || !page.has_more) break;
      after = page.last_id;
    }
    events = new Map([...fresh, ...events]);
  }

  function draw(ckpts) {
    const method = job.method.type in SERIES ? job.method.type : "supervised";
    const rows = new Map();  // step → metrics; validation metrics come with checkpoints and eval steps
    for (const e of events.values()) if (e.type === "metrics") rows.set(e.data.step, {...rows.get(e.data.step), ...e.data});
    for (const c of ckpts) rows.set(c.step_number, {...rows.get(c.step_number), ...c.metrics, step: c.step_number});
    const steps = [...rows.keys()].sort((a, b) => a - b);
    const series = SERIES[method].filter(([k]) => steps.some((s) => typeof rows.get(s)[k] === "number"));
    const data = [steps, ...series.map(([k]) => steps.map((s) => rows.get(s)[k] ?? null))];
    $("#chart").dataset.points = String(steps.filter((s) => typeof rows.get(s)[SERIES[method][0][0]] === "number").length);
    $("#chart").dataset.series = series.map(([k]) => k).join(" ");
    const width = Math.max(280, $("#chart").clientWidth);
    const best = bestStep(ckpts);
    const opts = {width, height: width < 500 ? 240 : 320, scales: {x: {time: false}},
      series: [{label: "step"}, ...series.map(([, label, stroke, scale = "y"]) => ({label, stroke, scale, spanGaps: true,
        points: {show: true, size: 7}, width: 2}))],
      axes: [{label: "step", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 100000]}, {},
        ...(series.some(([, , , scale]) => scale === "tokens") ? [{scale: "tokens", side: 1, label: "tokens",
          grid: {show: false}}] : [])],
      hooks: {draw: [(u) => {  // the guard's chosen checkpoint: a dashed line at its step
        if (best === null) return;
        const x = u.valToPos(best, "x", true), ctx = u.ctx;
        ctx.save(); ctx.setLineDash([6, 4]); ctx.strokeStyle = "#7048e8"; ctx.lineWidth = 2; ctx.beginPath();
        ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke(); ctx.restore();
      }]}};
    if (chart) chart.destroy();
    chart = steps.length ? new uPlot(opts, data, $("#chart")) : null;
    $("#chart-note").textContent = steps.length ? (best !== null ? `Dashed line: the chosen checkpoint (step ${best}).` : "")
      : "No steps yet.";
  }

  // The checkpoint the model is: the guard names it when it is not the last ("… the model is its
  // checkpoint (step N)"); otherwise a succeeded job's model is its last checkpoint.
  function bestStep(ckpts) {
    const named = [...events.values()].map((e) => e.message.match(/the model is its checkpoint \(step (\d+)\)/))
      .find(Boolean);
    if (named) return Number(named[1]);
    if (job.status !== "succeeded" || !ckpts.length) return null;
    return Math.max(...ckpts.map((c) => c.step_number));
  }

  async function poll() {
    job = await api(`/fine_tuning/jobs/${id}`);
    await newEvents();
    const ckpts = await listAll(`/fine_tuning/jobs/${id}/checkpoints`);
    $("#job-status").textContent = job.status;
    $("#job-status").className = `badge ${job.status}`;
    const hp = job.hyperparameters;
    const facts = [["Base model", job.model], ["Method", job.method.type], ["Tuned model", job.fine_tuned_model || "—"],
      ["Created", age(job.created_at)], ["Hyperparameters", Object.entries(hp).map(([k, v]) => `${k} ${v}`).join(", ")],
      ["Training file", job.training_file], ["Validation file", job.validation_file || "—"]];
    if (job.estimated_finish) facts.push(["Estimated finish", new Date(job.estimated_finish * 1000).toLocaleTimeString()]);
    if (job.trained_tokens) facts.push(["Trained tokens", job.trained_tokens.toLocaleString()]);
    if (job.error && job.error.message) facts.push(["Error", job.error.message]);
    $("#job-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    $("#csv").hidden = !job.result_files.length;
    for (const b of document.querySelectorAll("[data-action]")) b.hidden = !allowed(job).includes(b.dataset.action);
    const best = bestStep(ckpts);
    $("#checkpoints").replaceChildren(...ckpts.slice().reverse().map((c) => el("tr", {class: c.step_number === best ? "best" : ""},
      el("td", {}, c.step_number + (c.step_number === best ? " ★ chosen" : "")),
      el("td", {class: "mono"}, c.fine_tuned_model_checkpoint),
      el("td", {}, Object.entries(c.metrics).filter(([, v]) => typeof v === "number")
        .map(([k, v]) => `${k} ${fmt(v)}`).join(", ")))));
    $("#events").replaceChildren(...[...events.values()].map((e) => el("li", {class: e.level === "error" ? "error" : ""},
      `${new Date(e.created_at * 1000).toLocaleTimeString()} ${e.message}`)));
    draw(ckpts);
    $("#compare").hidden = !job.fine_tuned_model;
    return TERMINAL.includes(job.status);
  }

  const files = (await listAll("/files")).filter((f) => f.purpose === "fine-tune").reverse();
  $("#eval-form").file.append(...files.map((f) => el("option", {value: f.id}, `${f.filename} (${f.id})`)));
  $("#eval-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = Object.fromEntries(new FormData(ev.target));
    const button = ev.target.querySelector("button");
    button.disabled = true;
    $("#eval-status").textContent = "Evaluating both models (this runs every example through each)…";
    try {
      // a reinforcement job's grader scores its evaluations too: the score it was trained to raise
      const grader = job.method.reinforcement ? {grader: job.method.reinforcement.grader} : {};
      const r = await api("/evaluations", {method: "POST", json: {models: [job.model, job.fine_tuned_model],
        file: v.file, limit: Number(v.limit), max_tokens: Number(v.max_tokens), ...grader}});
      $("#eval-report").srcdoc = r.html;  // sandboxed: the report is self-contained, it runs no script
      $("#eval-report").hidden = false;
      $("#eval-status").textContent = "Done.";
    } catch (err) { showError($("#eval-status"), err); }
    button.disabled = false;
  });

  const done = await poll();
  if (!done) {
    const timer = setInterval(async () => {
      try { if (await poll()) clearInterval(timer); } catch (err) { $("#status").textContent = err.message; }
    }, 2000);
  }
}

// --- playground ---------------------------------------------------------------------------------
async function streamChat(model, messages, maxTokens, out) {
  const headers = {"Content-Type": "application/json"};
  if (!keyless) headers.Authorization = `Bearer ${sessionStorage.getItem(KEY) || ""}`;
  const res = await fetch("/v1/chat/completions", {method: "POST", headers,
    body: JSON.stringify({model, messages, max_tokens: maxTokens, stream: true})});
  if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", text = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return text;
    buffer += value;
    const events = buffer.split("\n\n");
    buffer = events.pop();
    for (const ev of events) {
      const data = ev.replace(/^data: /, "");
      if (data === "[DONE]") return text;
      const chunk = JSON.parse(data);
      text += chunk.choices?.[0]?.delta?.content || "";
      out.textContent = text;
    }
  }
}

async function playgroundPage() {
  const form = $("#chat-form");
  const models = (await api("/models")).data.filter((m) => !isAlias(m)).map((m) => m.id);
  form.model_a.append(...models.map((m) => el("option", {value: m}, m)));
  form.model_b.append(...models.map((m) => el("option", {value: m}, m)));
  const tuned = models.filter((m) => m.startsWith("ft:") && !m.includes(":ckpt-"));
  if (tuned.length) form.model_a.value = tuned[tuned.length - 1];
  const refreshCount = async () => {
    const c = await api("/votes");
    $("#vote-count").textContent = `${c.votes} vote(s), ${c.pairs} preference pair(s).`;
  };
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = Object.fromEntries(new FormData(form));
    const messages = [...(v.system.trim() ? [{role: "system", content: v.system}] : []), {role: "user", content: v.prompt}];
    const chosen = [v.model_a, v.model_b].filter(Boolean);
    $("#answers").replaceChildren(...chosen.map((model, i) => {
      const out = el("pre", {class: "text", "data-model": model});
      const vote = (up) => async (e) => {
        try {
          await api("/votes", {method: "POST", json: {messages, answer: out.textContent, model, vote: up ? "up" : "down"}});
          for (const b of e.target.parentNode.querySelectorAll(".vote")) b.classList.toggle("chosen", b === e.target);
          await refreshCount();
        } catch (err) { $("#status").textContent = err.message; }
      };
      return el("div", {class: "answer", id: `answer-${i}`}, el("strong", {class: "mono"}, model), out,
        el("button", {type: "button", class: "vote", "aria-label": "thumbs up", disabled: true, onclick: vote(true)}, "▲ good"), " ",
        el("button", {type: "button", class: "vote", "aria-label": "thumbs down", disabled: true, onclick: vote(false)}, "▼ bad"));
    }));
    await Promise.all(chosen.map(async (model, i) => {
      const box = $(`#answer-${i}`);
      try {
        await streamChat(model, messages, Number(v.max_tokens), $("pre", box));
        box.dataset.done = "true";
        for (const b of box.querySelectorAll(".vote")) b.disabled = false;
      } catch (err) { $("pre", box).textContent = err.message; $("pre", box).classList.add("error"); }
    }));
  });
  $("#export-votes").addEventListener("click", () => download("/votes/export", "preferences.jsonl")
    .catch((err) => { $("#status").textContent = err.message; }));
  await refreshCount();
}

// --- models -------------------------------------------------------------------------------------
async function modelsPage() {
  const status = $("#model-status");
  const refresh = async () => {
    const all = (await api("/models")).data, models = all.filter((m) => !isAlias(m));
    $("#aliases").textContent = `Also accepted, as aliases of a base model: ${all.filter(isAlias).map((m) => m.id).join(", ")}.`;
    $("#models").replaceChildren(...models.map((m) => {
      const tuned = m.id.startsWith("ft:");
      const format = el("select", {"aria-label": "export format"},
        ["peft", "hf", "gguf", "gguf-lora", "ollama"].map((f) => el("option", {value: f}, f)));
      return el("tr", {}, el("td", {class: "mono"}, m.id), el("td", {}, m.owned_by), el("td", {}, age(m.created)),
        el("td", {}, tuned ? [format, " ",
          el("button", {type: "button", onclick: () => exportModel(m.id, format.value)}, "Export"), " ",
          el("button", {type: "button", onclick: async () => {
            if (!confirm(`Delete ${m.id}?`)) return;
            try { await api(`/models/${encodeURIComponent(m.id)}`, {method: "DELETE"}); await refresh(); }
            catch (err) { showError(status, err); }
          }}, "Delete")] : "base model"));
    }));
  };
  async function exportModel(id, format) {
    status.textContent = `Exporting ${id} as ${format}…`;
    try {
      const res = await api(`/models/${encodeURIComponent(id)}/export`, {method: "POST", json: {format}, raw: true});
      const name = (res.headers.get("Content-Disposition") || "").match(/filename="?([^";]+)/)?.[1] || `${format}.tar`;
      const a = el("a", {href: URL.createObjectURL(await res.blob()), download: name});
      document.body.append(a); a.click(); a.remove();
      status.textContent = `Exported ${id} as ${name}.`;
    } catch (err) { showError(status, err); }
  }
  await refresh();
}

const PAGES = {files: filesPage, jobs: jobsPage, job: jobPage, playground: playgroundPage, models: modelsPage};
start();
