"""The chat page served at ``/``: one self-contained HTML file (no build step, no CDN).

Five sliders, -2 ... +2: the sign is the aspect (+ high, - low), the magnitude the strength,
0 leaves the trait alone. A method picker, and a toggle that also asks the plain model (no
personality) so that both answers stream side by side. Answers stream token by token:
``fetch`` on ``/v1/chat/completions`` with ``stream: true``, the server-sent events read off
the response body's ``ReadableStream``. Each column keeps its own conversation history.
"""

HTML = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pkt chat</title>
<style>
  :root { --bg: #f6f7f9; --panel: #fff; --ink: #1d2330; --muted: #6b7280; --line: #e3e6eb;
          --accent: #3158d4; --user: #e9efff; --base: #f1f2f4; --high: #1f9d55; --low: #c2410c; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
         color: var(--ink); background: var(--bg); height: 100vh; display: flex;
         flex-direction: column; }
  header { padding: 10px 18px; border-bottom: 1px solid var(--line); background: var(--panel);
           display: flex; align-items: baseline; gap: 14px; }
  header h1 { font-size: 17px; margin: 0; }
  header .meta { color: var(--muted); font-size: 13px; }
  main { flex: 1; display: flex; min-height: 0; }
  aside { width: 290px; padding: 14px 16px; border-right: 1px solid var(--line);
          background: var(--panel); overflow-y: auto; }
  aside h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .05em;
             color: var(--muted); margin: 4px 0 10px; }
  .trait { margin-bottom: 14px; }
  .trait label { display: flex; justify-content: space-between; font-weight: 600; }
  .trait .val { font-weight: 500; font-variant-numeric: tabular-nums; color: var(--muted); }
  .trait .val.high { color: var(--high); } .trait .val.low { color: var(--low); }
  .trait input { width: 100%; }
  .trait .ends { display: flex; justify-content: space-between; font-size: 11px;
                 color: var(--muted); }
  .row { margin: 10px 0; display: flex; align-items: center; gap: 8px; }
  .row select, .row input[type=number] { flex: 1; padding: 4px; }
  #spec { font: 12px ui-monospace, monospace; word-break: break-all; color: var(--muted);
          background: var(--bg); padding: 6px; border-radius: 4px; }
  section.chat { flex: 1; display: flex; flex-direction: column; min-width: 0; }
  #log { flex: 1; overflow-y: auto; padding: 16px 20px; }
  .turn { margin-bottom: 16px; }
  .user { background: var(--user); padding: 8px 12px; border-radius: 10px; max-width: 760px;
          margin-left: auto; white-space: pre-wrap; width: fit-content; }
  .answers { display: grid; gap: 12px; margin-top: 8px; }
  .answers.two { grid-template-columns: 1fr 1fr; }
  .answer { background: var(--panel); border: 1px solid var(--line); border-radius: 10px;
            padding: 8px 12px; white-space: pre-wrap; min-height: 40px; }
  .answer.base { background: var(--base); }
  .answer .who { display: block; font-size: 12px; color: var(--muted); margin-bottom: 4px;
                 white-space: normal; }
  .answer .note { display: block; font-size: 12px; color: var(--muted); margin-top: 6px; }
  .answer.error .text { color: #b91c1c; }
  .answer:not([data-done]) .text::after { content: "\258D"; color: var(--accent); }
  form { display: flex; gap: 8px; padding: 12px 20px; border-top: 1px solid var(--line);
         background: var(--panel); }
  textarea { flex: 1; resize: none; height: 54px; padding: 8px; font: inherit;
             border: 1px solid var(--line); border-radius: 8px; }
  button { padding: 0 18px; border: 0; border-radius: 8px; background: var(--accent);
           color: #fff; font: inherit; cursor: pointer; }
  button:disabled { opacity: .5; cursor: default; }
  button.plain { background: none; color: var(--accent); padding: 0; }
</style>
</head>
<body>
<header><h1>pkt chat</h1><span class="meta" id="meta">connecting...</span></header>
<main>
  <aside>
    <h2>Personality</h2>
    <div id="traits"></div>
    <div class="row"><label for="method">method</label>
      <select id="method"></select></div>
    <div class="row"><input type="checkbox" id="compare" checked>
      <label for="compare">answer also without induction</label></div>
    <div class="row"><label for="max_tokens">max tokens</label>
      <input type="number" id="max_tokens" min="1" max="2048" value="128"></div>
    <div class="row"><label for="temperature">temperature</label>
      <input type="number" id="temperature" min="0" max="2" step="0.1" value="0"></div>
    <div id="spec"></div>
    <div class="row"><button type="button" class="plain" id="reset">reset sliders</button>
      <button type="button" class="plain" id="clear">new conversation</button></div>
  </aside>
  <section class="chat">
    <div id="log"></div>
    <form id="form">
      <textarea id="input" placeholder="Ask something, e.g. What do you do on a free evening?"></textarea>
      <button id="send" type="submit">Send</button>
    </form>
  </section>
</main>
<script>
"use strict";
const TRAITS = [["openness", "closed", "open"], ["conscientiousness", "careless", "organised"],
                ["extraversion", "introverted", "extraverted"],
                ["agreeableness", "critical", "agreeable"], ["neuroticism", "calm", "anxious"]];
const $ = (id) => document.getElementById(id);
let model = "model";
let histories = {induced: [], base: []};

function buildSliders() {
  for (const [name, lo, hi] of TRAITS) {
    const d = document.createElement("div");
    d.className = "trait";
    d.innerHTML = `<label for="slider-${name}">${name}<span class="val" id="val-${name}">off</span></label>
      <input type="range" id="slider-${name}" min="-2" max="2" step="0.1" value="0">
      <div class="ends"><span>&minus; ${lo}</span><span>${hi} +</span></div>`;
    $("traits").appendChild(d);
    d.querySelector("input").addEventListener("input", update);
  }
}

function traits() {
  const out = {};
  for (const [name] of TRAITS) {
    const v = parseFloat($("slider-" + name).value);
    if (Math.abs(v) >= 0.05) out[name] = {aspect: v > 0 ? "high" : "low",
                                          strength: Math.round(Math.abs(v) * 10) / 10};
  }
  return out;
}

function shorthand() {
  const t = traits();
  const parts = Object.entries(t).map(([k, e]) => `${k}:${e.aspect}:${e.strength}`);
  return parts.length ? parts.join("+") + "@" + $("method").value : "";
}

function update() {
  for (const [name] of TRAITS) {
    const v = parseFloat($("slider-" + name).value), el = $("val-" + name);
    el.className = "val" + (v >= 0.05 ? " high" : v <= -0.05 ? " low" : "");
    el.textContent = Math.abs(v) < 0.05 ? "off" : `${v > 0 ? "high" : "low"} ${Math.abs(v).toFixed(1)}`;
  }
  const s = shorthand();
  $("spec").textContent = s ? `model: ${model}+${s}` : `model: ${model} (no personality)`;
}

function addTurn(text, columns) {
  const turn = document.createElement("div");
  turn.className = "turn";
  const u = document.createElement("div");
  u.className = "user";
  u.textContent = text;
  turn.appendChild(u);
  const grid = document.createElement("div");
  grid.className = "answers" + (columns.length > 1 ? " two" : "");
  const cells = {};
  for (const [key, who] of columns) {
    const a = document.createElement("div");
    a.className = "answer " + key;
    a.innerHTML = `<span class="who"></span><span class="text"></span><span class="note"></span>`;
    a.querySelector(".who").textContent = who;
    grid.appendChild(a);
    cells[key] = a;
  }
  turn.appendChild(grid);
  $("log").appendChild(turn);
  $("log").scrollTop = $("log").scrollHeight;
  return cells;
}

async function ask(cell, messages, personality) {
  const text = cell.querySelector(".text"), note = cell.querySelector(".note");
  const body = {model, messages, stream: true, stream_options: {include_usage: true},
                max_tokens: parseInt($("max_tokens").value) || 128,
                temperature: parseFloat($("temperature").value) || 0};
  if (personality) body.personality = personality;
  const t0 = performance.now();
  let answer = "", usage = null, finish = null;
  try {
    const r = await fetch("/v1/chat/completions", {method: "POST",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    if (!r.ok) {
      let msg = `HTTP ${r.status}`;
      try { msg = (await r.json()).error.message; } catch (e) {}
      throw new Error(msg);
    }
    const ident = r.headers.get("X-PKT-Identified");
    if (ident) note.textContent = `identified ${ident} (first use) \u2022 `;
    let waiting = !!r.headers.get("X-PKT-Identifying");  // progress comments until ready
    const reader = r.body.getReader(), dec = new TextDecoder();
    let buf = "";
    outer: while (true) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += dec.decode(value, {stream: true});
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, i);
        buf = buf.slice(i + 2);
        for (const line of event.split("\n")) {
          if (line.startsWith(": ")) {  // identification's progress, before the first chunk
            note.textContent = line.slice(2);
            waiting = true;
            continue;
          }
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") break outer;
          const j = JSON.parse(data);
          if (j.error) throw new Error(j.error.message);
          if (waiting && j.personality) {
            const got = j.personality.identified || [];
            note.textContent = got.length ?
              `identified ${got.join(",")} (first use) \u2022 ` : "";
            waiting = false;
          }
          if (j.usage) usage = j.usage;
          for (const c of j.choices || []) {
            if (c.delta && c.delta.content) { answer += c.delta.content; text.textContent = answer; }
            if (c.finish_reason) finish = c.finish_reason;
          }
          $("log").scrollTop = $("log").scrollHeight;
        }
      }
    }
    const secs = (performance.now() - t0) / 1000;
    note.textContent += usage ? `${usage.completion_tokens} tokens, ${secs.toFixed(1)} s` : "";
    if (finish === "length") note.textContent += " (max tokens)";
  } catch (e) {
    cell.classList.add("error");
    text.textContent = (answer ? answer + "\n" : "") + "error: " + e.message;
  }
  cell.dataset.done = "1";
  return answer;
}

async function send(ev) {
  ev.preventDefault();
  const q = $("input").value.trim();
  if (!q) return;
  $("input").value = "";
  $("send").disabled = true;
  const t = traits(), method = $("method").value, s = shorthand();
  const induced = Object.keys(t).length ? {traits: t, method} : null;
  const cols = [["induced", induced ? s : "no personality"]];
  const both = $("compare").checked && induced;
  if (both) cols.push(["base", "without induction"]);
  const cells = addTurn(q, cols);
  const jobs = [];
  for (const [key] of cols) {
    const h = histories[key];
    h.push({role: "user", content: q});
    jobs.push(ask(cells[key], h.slice(), key === "induced" ? induced : null).then((a) => {
      h.push({role: "assistant", content: a});
    }));
  }
  if (!both) {  // keep the other history in step
    histories.base.push({role: "user", content: q});
    jobs[0].then(() => histories.base.push(histories.induced[histories.induced.length - 1]));
  }
  await Promise.all(jobs);
  $("send").disabled = false;
  $("input").focus();
}

async function init() {
  buildSliders();
  try {
    const h = await (await fetch("/health")).json();
    model = h.model;
    for (const m of h.methods) {
      const o = document.createElement("option");
      o.value = o.textContent = m;
      if (m === h.method) o.selected = true;
      $("method").appendChild(o);
    }
    $("meta").textContent = `${h.model} \u2022 default method ${h.method}` +
      (h.identify ? "" : " \u2022 identification off");
  } catch (e) {
    $("meta").textContent = "server unreachable";
  }
  $("method").addEventListener("change", update);
  $("form").addEventListener("submit", send);
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("form").requestSubmit(); }
  });
  $("reset").addEventListener("click", () => {
    for (const [name] of TRAITS) $("slider-" + name).value = 0;
    update();
  });
  $("clear").addEventListener("click", () => {
    histories = {induced: [], base: []};
    $("log").innerHTML = "";
  });
  update();
  document.body.dataset.ready = "1";
}
init();
</script>
</body>
</html>
"""
