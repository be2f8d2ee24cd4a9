// opengato serve: the page. Plain JavaScript, no build step, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
let INFO = null;

// One JSON (or raw file) request; a failure throws an Error carrying the server's message.
async function api(method, url, body, headers = {}) {
  const opts = { method, headers: { ...headers } };
  if (body instanceof Blob) {
    opts.body = body;
  } else if (body !== undefined) {
    opts.body = JSON.stringify(body);
    opts.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(url, opts);
  } catch (e) {
    throw new Error("the server did not answer (is `opengato serve` still running?)");
  }
  let data;
  try {
    data = await response.json();
  } catch (e) {
    data = { detail: `${response.status} ${response.statusText}` };
  }
  if (!response.ok) throw new Error(data.detail || `${response.status} ${response.statusText}`);
  return data;
}

function showError(id, message) {
  const el = $(id);
  el.textContent = message || "";
  el.hidden = !message;
}

function fmt(x, digits = 2) {
  if (x === null || x === undefined) return "–";
  return Number(x).toLocaleString("en", { maximumFractionDigits: digits });
}

function pct(x) {
  return x === null || x === undefined ? "–" : `${Math.round(100 * x)}%`;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// ------------------------------------------------------------------ one episode, shown in a panel

class Player {
  constructor(root, title) {
    this.root = root;
    this.id = null;
    this.view = null;
    root.replaceChildren();
    root.classList.add("panel");
    this.title = root.appendChild(el("div", "panel-title", title || ""));
    const stage = root.appendChild(el("div", "stage"));
    const figure = stage.appendChild(el("figure"));
    this.frame = figure.appendChild(el("img", "frame"));
    this.frame.alt = "the environment";
    // Small renders (Meta-World's 64 x 64 camera) are scaled up without blurring.
    this.frame.addEventListener("load", () =>
      this.frame.classList.toggle("pixelated-frame", this.frame.naturalWidth < 200));
    this.mission = figure.appendChild(el("figcaption", "mission"));
    const side = stage.appendChild(el("div", "side"));
    this.stats = side.appendChild(el("dl", "stats"));
    this.notes = side.appendChild(el("ul", "notes"));
    side.appendChild(el("div", "label", "Action tokens sampled (latest first)"));
    this.tokens = side.appendChild(el("ol", "tokens"));
    this.root.hidden = true;
  }

  get done() {
    return !this.view || this.view.done;
  }

  async start(task, seed, checkpoint) {
    this.close();
    const view = await api("POST", "/api/episodes", { task, seed, checkpoint });
    this.id = view.id;
    this.reference = view.reference;
    this.tokens.replaceChildren();
    this.notes.replaceChildren(...view.notes.map((n) => el("li", "", n)));
    this.title.textContent = view.checkpoint;
    this.title.title = view.checkpoint;
    this.root.hidden = false;
    this.show(view);
  }

  async step() {
    if (this.done) return;
    const id = this.id;
    const view = await api("POST", `/api/episodes/${id}/step`);
    if (id === this.id) this.show(view); // not a step of an episode replaced meanwhile
  }

  close() {
    if (this.id) api("DELETE", `/api/episodes/${this.id}`).catch(() => {});
    this.id = null;
  }

  clear() {
    this.close();
    this.view = null;
    this.root.hidden = true;
  }

  show(view) {
    this.view = view;
    if (view.frame) this.frame.src = view.frame;
    this.mission.textContent = view.mission ? `mission: ${view.mission}` : "";
    this.showStats(view);
    if (view.action_tokens) {
      const li = el("li");
      li.append(el("span", "t", `t=${view.step - 1}`), el("code", "", `[${view.action_tokens.join(", ")}]`),
                " → ", el("code", "", JSON.stringify(view.action)));
      this.tokens.prepend(li);
      while (this.tokens.children.length > 40) this.tokens.lastChild.remove();
    }
  }

  showStats(v) {
    const ref = this.reference || {};
    const bySuccess = ref.metric === "success_rate";
    const score = (who) => bySuccess
      ? `success ${pct(ref[`${who}_success_rate`])}, return ${fmt(ref[who])}`
      : `return ${fmt(ref[who])}`;
    let status = v.done ? "done" : "playing";
    if (v.error) status = `error: ${v.error.trim().split("\n").pop()}`;
    else if (v.done && v.success !== null) status = v.success ? "done: success" : "done: no success";
    const rows = [
      ["Task", v.task], ["Seed", v.seed], ["Step", v.step],
      ["Return so far", fmt(v.return)], ["Last reward", fmt(v.reward, 3)],
      ["Expert", score("expert")], ["Random policy", score("random")],
      ["Normalised", v.normalized === null ? "– (at the end)" : fmt(v.normalized, 1)],
      ["Status", status],
    ];
    this.stats.replaceChildren(...rows.flatMap(([k, val]) => [el("dt", "", k), el("dd", "", String(val))]));
    this.stats.dataset.done = v.done;
  }
}

// ------------------------------------------------------------------ playing players in a loop

class Runner {
  constructor(players, pauseButton, errorId, delay) {
    this.players = players;
    this.pauseButton = pauseButton;
    this.errorId = errorId;
    this.delay = delay;
    this.generation = 0;
    this.running = false;
    pauseButton.addEventListener("click", () => (this.running ? this.pause() : this.resume()));
  }

  async start(starts) {
    this.pause();
    showError(this.errorId, "");
    try {
      for (const start of starts) await start();
    } catch (e) {
      this.players.forEach((p) => p.clear()); // all start, or none
      this.pause();
      showError(this.errorId, e.message);
      return;
    }
    this.resume();
  }

  pause() {
    this.running = false;
    this.generation += 1;
    const over = this.players.every((p) => p.done);
    this.pauseButton.textContent = over ? "Pause" : "Resume";
    this.pauseButton.disabled = over;
    this.onChange?.();
  }

  resume() {
    this.running = true;
    this.pauseButton.textContent = "Pause";
    this.pauseButton.disabled = false;
    this.onChange?.();
    this.loop(++this.generation);
  }

  async stepOnce() {
    try {
      await Promise.all(this.players.map((p) => p.step()));
    } catch (e) {
      showError(this.errorId, e.message);
      return false;
    }
    return true;
  }

  async loop(generation) {
    while (generation === this.generation && this.players.some((p) => !p.done)) {
      if (!(await this.stepOnce())) break;
      await sleep(this.delay());
    }
    if (generation === this.generation) this.pause();
  }
}

// ------------------------------------------------------------------ the four views

function setupPlay() {
  const player = new Player($("play-panel"));
  const runner = new Runner([player], $("play-pause"), "play-error", () => Number($("play-delay").value));
  runner.onChange = () => ($("play-step").disabled = runner.running || player.done);
  $("play-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const task = $("play-task").value, seed = Number($("play-seed").value);
    runner.start([() => player.start(task, seed, null)]);
  });
  $("play-step").addEventListener("click", async () => {
    await runner.stepOnce();
    runner.onChange();
  });
  return [player];
}

function setupCompare() {
  const left = new Player($("compare-left"), "A"), right = new Player($("compare-right"), "B");
  const runner = new Runner([left, right], $("compare-pause"), "compare-error", () => 100);
  $("compare-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const task = $("compare-task").value, seed = Number($("compare-seed").value);
    const side = (player, name, path) => () =>
      player.start(task, seed, path).catch((err) => { throw new Error(`Checkpoint ${name}: ${err.message}`); });
    runner.start([side(left, "A", $("compare-a").value), side(right, "B", $("compare-b").value)]);
  });
  return [left, right];
}

function setupCaption() {
  $("caption-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    showError("caption-error", "");
    const file = $("caption-file").files[0];
    if (!file) return showError("caption-error", "choose an image file first");
    const limit = INFO ? INFO.max_upload_mb : 10;
    if (file.size > limit * 1e6) {
      return showError("caption-error",
        `${file.name} is ${(file.size / 1e6).toFixed(1)} MB; the limit is ${limit} MB (--max-upload-mb)`);
    }
    $("caption-result").hidden = true;
    try {
      const out = await api("POST", "/api/caption", file, {
        "Content-Type": file.type || "application/octet-stream",
        "X-Filename": encodeURIComponent(file.name),
      });
      $("caption-image").src = out.image;
      $("caption-text").textContent = out.caption || "(empty: the model ended the text at once)";
      $("caption-result").hidden = false;
    } catch (err) {
      showError("caption-error", err.message);
    }
  });
}

function setupChat() {
  $("chat-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    showError("chat-error", "");
    const message = $("chat-input").value;
    if (!message.trim()) return showError("chat-error", "type a question first");
    const log = $("chat-log");
    log.appendChild(el("div", "bubble you", message));
    $("chat-input").value = "";
    try {
      const out = await api("POST", "/api/chat", { message });
      log.appendChild(el("div", "bubble gato", out.answer || "(empty: the model ended the text at once)"));
    } catch (err) {
      log.lastChild.remove();
      $("chat-input").value = message;
      showError("chat-error", err.message);
    }
    log.scrollTop = log.scrollHeight;
  });
}

function setupNav() {
  document.querySelectorAll("nav button").forEach((button) => {
    button.addEventListener("click", () => {
      document.querySelectorAll("nav button, .view").forEach((x) => x.classList.remove("active"));
      button.classList.add("active");
      $(`view-${button.dataset.view}`).classList.add("active");
    });
  });
}

async function main() {
  setupNav();
  const players = [...setupPlay(), ...setupCompare()];
  setupCaption();
  setupChat();
  // Close this tab's episodes on the server when the tab goes away.
  window.addEventListener("pagehide", () => players.forEach((p) => {
    if (p.id) fetch(`/api/episodes/${p.id}`, { method: "DELETE", keepalive: true });
  }));
  try {
    INFO = await api("GET", "/api/info");
  } catch (e) {
    $("served").textContent = `not connected: ${e.message}`;
    return;
  }
  const step = INFO.step === null || INFO.step === undefined ? "" : `, step ${INFO.step}`;
  const int8 = INFO.weights === "int8" ? "; int8 weights (opt-in, not the model's own)" : "";
  $("served").textContent = `${INFO.checkpoint} (${INFO.model || "no model"}${step}${int8})`;
  $("served").title = INFO.checkpoint;
  $("task-list").replaceChildren(...INFO.tasks.map((t) => Object.assign(el("option"), { value: t })));
  $("play-task").value = $("compare-task").value = INFO.default_task;
  $("play-seed").value = $("compare-seed").value = INFO.default_seed;
  $("compare-a").value = INFO.checkpoint;
  $("upload-limit").textContent = INFO.max_upload_mb;
  document.body.dataset.ready = "1";
}

main();
