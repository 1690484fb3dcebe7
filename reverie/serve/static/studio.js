// The studio's little script: send a message, follow its server events (steps, previews, images),
// the queue panel, pick and reject, reproduce, and the session kept across reloads.
// Everything from the server is put in the page with textContent or as attributes, never as HTML.
"use strict";

const SESSION_KEY = "reverie-session";

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function postJSON(url, body) {
  const res = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                body: JSON.stringify(body), credentials: "same-origin"});
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error((data.error && data.error.message) || res.statusText);
  return data;
}

function card(img) {
  const fig = el("figure", {"class": "card", "data-render": String(img.id)});
  const a = el("a", {"class": "thumb", "href": img.page});
  a.appendChild(el("img", {"src": img.url, "alt": "render " + img.id}));
  fig.appendChild(a);
  const cap = el("figcaption");
  const facts = el("span", {"class": "facts"});
  facts.appendChild(el("span", {"class": "score", "title": "composite score by the " + (img.scorer || "unknown") + " scorer"},
                       img.score === null ? "…" : img.score.toFixed(3)));
  if (img.scorer === "heuristic") facts.appendChild(el("span", {"class": "scorer"}, "heuristic"));
  facts.appendChild(el("span", {"class": "seed"}, "seed " + img.seed));
  cap.appendChild(facts);
  const choices = el("span", {"class": "choices"});
  choices.appendChild(el("button", {"class": "pick", "data-choice": "pick", "title": "pick", "aria-label": "pick"}, "♥"));
  choices.appendChild(el("button", {"class": "reject", "data-choice": "reject", "title": "reject", "aria-label": "reject"}, "✕"));
  choices.appendChild(el("a", {"class": "recipe", "href": "/?recipe=" + img.id, "aria-label": "use this recipe",
                               "title": "use this recipe: load its prompt, seed and settings into the form"}, "↻"));
  cap.appendChild(choices);
  fig.appendChild(cap);
  if (img.parent) {  // an edit: the image it was made from
    const from = el("span", {"class": "parent"}, "edit of ");
    if (img.parent.page) from.appendChild(el("a", {"href": img.parent.page}, "image " + img.parent.id));
    else from.appendChild(document.createTextNode("file " + img.parent.sha256.slice(0, 12)));
    fig.appendChild(from);
  }
  return fig;
}

function upsert(grid, img) {
  let fig = grid.querySelector(`.card[data-render="${img.id}"]`);
  if (!fig) { fig = card(img); grid.appendChild(fig); }
  fig.querySelector(".score").textContent = img.score === null ? "…" : img.score.toFixed(3);
  if (img.scorer === "heuristic" && !fig.querySelector(".scorer"))
    fig.querySelector(".score").after(el("span", {"class": "scorer"}, "heuristic"));
  return fig;
}

// The live part of a turn: its state line, a step bar and the newest preview.
function progressBox(turn) {
  let box = turn.querySelector(".progress");
  if (!box) {
    box = el("div", {"class": "progress"});
    box.appendChild(el("span", {"class": "steps"}, ""));
    const track = el("div", {"class": "bar-track"});
    track.appendChild(el("div", {"class": "bar-fill"}));
    box.appendChild(track);
    turn.querySelector(".grid").before(box);
  }
  return box;
}

function follow(events, turn) {
  const grid = turn.querySelector(".grid");
  const status = turn.querySelector(".status");
  const source = new EventSource(events);
  let rendered = 0, todo = null;
  const finish = () => {
    source.close();
    const box = turn.querySelector(".progress");
    if (box) box.remove();
  };
  source.onmessage = (msg) => {
    const e = JSON.parse(msg.data);
    if (e.kind === "loading") status.textContent = `loading the ${e.what || "engine"} for ${e.profile || "the profile"}…`;
    else if (e.kind === "run_started") status.textContent = "writing the prompt…";
    else if (e.kind === "queued") status.textContent = `queued on ComfyUI: ${e.ahead} ahead of ours`;
    else if (e.kind === "writing") status.textContent = `writing the prompt… ${e.tokens} tokens`;
    else if (e.kind === "expanded") {
      let box = turn.querySelector(".expanded");
      if (!box) {
        box = el("details", {"class": "expanded", "open": ""});
        box.appendChild(el("summary", {}, "prompt"));
        box.appendChild(el("p", {"class": "prompt"}, ""));
        grid.before(box);
      }
      box.querySelector(".prompt").textContent = e.prompt;
    } else if (e.kind === "round_started") {
      rendered = 0; todo = e.todo === undefined ? e.n : e.todo;
      status.textContent = `round ${e.round + 1}: waiting for the engine`;
    } else if (e.kind === "step" || (e.kind === "engine_progress" && e.step)) {  // ours, or a ComfyUI server's
      const box = progressBox(turn);
      box.querySelector(".steps").textContent = `image ${Math.min(rendered + 1, todo || rendered + 1)}/${todo || "?"} · step ${e.step}/${e.steps}`;
      box.querySelector(".bar-fill").style.width = `${Math.round(100 * e.step / e.steps)}%`;
      status.textContent = `rendering ${Math.min(rendered + 1, todo || rendered + 1)}/${todo || "?"}`;
      if (e.preview) {
        let img = box.querySelector("img.preview");
        if (!img) { img = el("img", {"class": "preview", "alt": "preview of the image rendering now"}); box.prepend(img); }
        img.src = e.preview;  // a data: URL made by the server from the latents
      }
    } else if (e.kind === "rendered" && e.image) { rendered += 1; upsert(grid, e.image); }
    else if (e.kind === "scored" && e.images) {
      e.images.forEach((img) => upsert(grid, img));
      status.textContent = rendered >= (todo || 0) ? `best ${e.best.toFixed(3)}` : `scoring… best ${e.best.toFixed(3)}`;
    }
    else if (e.kind === "judged") status.textContent = `round ${e.round + 1}: ${e.decision} (${e.reason || ""})`;
    else if (e.kind === "done") {
      finish();
      turn.classList.add("done");
      status.textContent = "done";
      (e.best || []).forEach((img) => upsert(grid, img).classList.add("best"));
      refreshTurn(turn, e.run_id);
      refreshGallery();
    } else if (e.kind === "cancelled") {
      finish();
      turn.classList.add("done");
      status.textContent = "stopped: the images so far are kept";
      (e.best || []).forEach((img) => upsert(grid, img));
      refreshGallery();
    } else if (e.kind === "failed") {
      finish();
      turn.classList.add("done", "failed");
      status.textContent = e.kind + (e.message ? ": " + e.message : "");
      status.classList.add("error");
    }
    if (turn.classList.contains("done")) { const b = turn.querySelector("button.stop"); if (b) b.remove(); }
    refreshQueue();
  };
  source.onerror = () => { if (turn.classList.contains("done")) source.close(); };
}

async function freshPage() {
  const res = await fetch(location.href, {credentials: "same-origin"});
  if (!res.ok) return null;
  return new DOMParser().parseFromString(await res.text(), "text/html");
}

// A finished turn as the server renders it (its prompt and the diff against the last turn); parsed, never executed.
async function refreshTurn(turn, runId) {
  if (!runId) return;
  const doc = await freshPage();
  const fresh = doc && doc.querySelector(`#turns .turn.done[data-run="${CSS.escape(runId)}"]`);
  if (fresh) turn.replaceWith(document.adoptNode(fresh));
}

async function refreshGallery() {
  const doc = await freshPage();
  const fresh = doc && doc.getElementById("gallery");
  const old = document.getElementById("gallery");
  if (fresh && old) old.replaceWith(document.adoptNode(fresh));
}

let queueTimer = null;
async function refreshQueue() {
  const list = document.getElementById("queue-list");
  if (!list) return;
  if (queueTimer) { clearTimeout(queueTimer); queueTimer = null; }
  let data;
  try {
    const res = await fetch("/api/queue", {credentials: "same-origin"});
    if (!res.ok) return;
    data = await res.json();
  } catch (err) { return; }
  list.replaceChildren();
  for (const r of data.requests) {
    const li = el("li", {"data-request": String(r.id)});
    li.appendChild(el("span", {"class": "what"}, r.what || r.kind));
    const where = r.position ? ` · #${r.position} in line` : "";
    li.appendChild(el("span", {"class": "state"}, (r.stopping ? "stopping… " : "") + r.state + where));
    const cancel = el("button", {"class": "stop", "type": "button", "title": "cancel: what rendered is kept"}, "cancel");
    cancel.addEventListener("click", () => postJSON(`/api/requests/${r.id}/stop`, {}).then(refreshQueue).catch(() => {}));
    li.appendChild(cancel);
    list.appendChild(li);
  }
  document.getElementById("queue-empty").hidden = data.requests.length > 0;
  if (data.requests.length) queueTimer = setTimeout(refreshQueue, 1000);
}

function liveTurn(message, requestId, events) {
  const turn = el("article", {"class": "turn live", "data-request": String(requestId)});
  const head = el("header");
  head.appendChild(el("span", {"class": "message"}, message));
  head.appendChild(el("span", {"class": "idea"}, ""));
  head.appendChild(el("span", {"class": "status"}, "queued"));
  const stop = el("button", {"class": "stop", "type": "button", "title": "stop; what rendered is kept"}, "stop");
  stop.addEventListener("click", () => postJSON(`/api/requests/${requestId}/stop`, {}).then(refreshQueue).catch(() => {}));
  head.appendChild(stop);
  turn.appendChild(head);
  turn.appendChild(el("div", {"class": "grid"}));
  return turn;
}

function numberOrNull(id) {
  const v = document.getElementById(id).value.trim();
  return v === "" ? null : Number(v);
}

// The session lives in the URL and in this browser: a reload, or coming back to /, finds it again.
function keepSession(session) {
  const params = new URLSearchParams(location.search);
  if (!params.get("session") && !params.get("fresh")) {
    const stored = localStorage.getItem(SESSION_KEY);
    if (stored && stored !== session) {
      params.set("session", stored);
      location.replace("/?" + params.toString());
      return false;
    }
  }
  localStorage.setItem(SESSION_KEY, session);
  params.delete("fresh");
  params.set("session", session);
  history.replaceState(null, "", "/?" + params.toString());
  return true;
}

function setupStudio() {
  const form = document.getElementById("send-form");
  if (!form) return;
  const session = form.dataset.session;
  if (!keepSession(session)) return;
  document.getElementById("new-session").addEventListener("click", () => localStorage.removeItem(SESSION_KEY));
  document.querySelectorAll("#turns .turn.live[data-events]").forEach((turn) => {
    const head = turn.querySelector("header");
    const stop = el("button", {"class": "stop", "type": "button", "title": "stop; what rendered is kept"}, "stop");
    stop.addEventListener("click", () => postJSON(`/api/requests/${turn.dataset.request}/stop`, {}).catch(() => {}));
    head.appendChild(stop);
    follow(turn.dataset.events, turn);
  });
  refreshQueue();
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const idea = document.getElementById("idea");
    const error = document.getElementById("send-error");
    error.hidden = true;
    const message = idea.value.trim();
    if (!message) {
      error.textContent = "Describe an image first, e.g. “a fox in the rain” (or say what to change in the last one).";
      error.hidden = false;
      idea.focus();
      return;
    }
    const body = {session, message, n: Number(document.getElementById("n").value),
                  quality: document.getElementById("quality").value,
                  steps: numberOrNull("steps"), cfg: numberOrNull("cfg"), seed: numberOrNull("seed"),
                  sampler: document.getElementById("sampler").value || null,
                  negative: document.getElementById("negative").value.trim() || null,
                  exact: document.getElementById("exact").checked,
                  style: document.getElementById("style") ? document.getElementById("style").value || null : null};
    try {
      const sent = await postJSON("/api/studio/send", body);
      const empty = document.getElementById("empty-session");
      if (empty) empty.remove();
      const turn = liveTurn(message, sent.request_id, sent.events);
      document.getElementById("turns").appendChild(turn);
      idea.value = "";
      follow(sent.events, turn);
      refreshQueue();
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    }
  });
  document.getElementById("idea").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) form.requestSubmit();
  });
}

function setupChoices() {
  document.addEventListener("click", async (ev) => {
    const button = ev.target.closest("button[data-choice]");
    if (!button) return;
    const holder = button.closest("[data-render]");
    try {
      const res = await postJSON("/api/pick", {render_id: Number(holder.dataset.render), choice: button.dataset.choice});
      holder.querySelectorAll("button[data-choice]").forEach((b) => b.classList.toggle("on", b.dataset.choice === res.standing));
      const standing = document.getElementById("standing");
      if (standing && holder.classList.contains("image-page")) standing.textContent = res.standing;
    } catch (err) { alert(err.message); }
  });
}

function setupReproduce() {
  const button = document.getElementById("reproduce");
  if (!button) return;
  button.addEventListener("click", async () => {
    const out = document.getElementById("reproduce-result");
    out.textContent = "rendering again from the stored spec…";
    try {
      const res = await postJSON(`/api/reproduce/${button.closest("[data-render]").dataset.render}`, {});
      out.textContent = (res.match ? "match: " : "mismatch: ") + res.message;
    } catch (err) { out.textContent = "error: " + err.message; }
  });
}

// The image page's Edit form: an edit run of this image, followed as a turn is; its results land
// below with their parent named.
function setupEdit() {
  const form = document.getElementById("edit-form");
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const instruction = document.getElementById("edit-instruction").value.trim();
    const n = Number(document.getElementById("edit-n").value || 2);
    const out = document.getElementById("edits");
    try {
      const res = await postJSON(`/api/images/${form.dataset.render}/edit`, {instruction, n});
      const turn = liveTurn(instruction, res.request_id, res.events);
      turn.querySelector(".idea").textContent = `edit of image ${res.source}`;
      out.prepend(turn);
      follow(res.events, turn);
    } catch (err) {
      out.prepend(el("p", {"class": "hint error"}, "edit refused: " + err.message));
    }
  });
}

setupStudio();
setupEdit();
setupChoices();
setupReproduce();
