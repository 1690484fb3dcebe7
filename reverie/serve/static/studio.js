// The studio's little script: send a message, follow its server events, pick and reject, reproduce.
// Everything from the server is put in the page with textContent or as attributes, never as HTML.
"use strict";

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
  cap.appendChild(el("span", {"class": "score", "title": "composite score by the " + (img.scorer || "unknown") + " scorer"},
                     img.score === null ? "…" : img.score.toFixed(3)));
  if (img.scorer === "heuristic") cap.appendChild(el("span", {"class": "scorer"}, "heuristic"));
  cap.appendChild(el("span", {"class": "seed"}, "seed " + img.seed));
  const choices = el("span", {"class": "choices"});
  choices.appendChild(el("button", {"class": "pick", "data-choice": "pick", "title": "pick"}, "♥"));
  choices.appendChild(el("button", {"class": "reject", "data-choice": "reject", "title": "reject"}, "✕"));
  cap.appendChild(choices);
  fig.appendChild(cap);
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

function follow(events, turn) {
  const grid = turn.querySelector(".grid");
  const status = turn.querySelector(".status");
  const source = new EventSource(events);
  source.onmessage = (msg) => {
    const e = JSON.parse(msg.data);
    if (e.kind === "turn") turn.querySelector(".idea").textContent = "→ " + e.idea;
    else if (e.kind === "round_started") status.textContent = `round ${e.round + 1}: rendering ${e.n}`;
    else if (e.kind === "rendered" && e.image) upsert(grid, e.image);
    else if (e.kind === "scored" && e.images) { e.images.forEach((img) => upsert(grid, img)); status.textContent = `best ${e.best.toFixed(3)}`; }
    else if (e.kind === "judged") status.textContent = `round ${e.round + 1}: ${e.decision} (${e.reason || ""})`;
    else if (e.kind === "done") {
      source.close();
      turn.classList.add("done");
      status.textContent = "done";
      (e.best || []).forEach((img) => upsert(grid, img).classList.add("best"));
      refreshGallery();
    } else if (e.kind === "cancelled") {
      source.close();
      turn.classList.add("done");
      status.textContent = "stopped: the images so far are kept";
      (e.best || []).forEach((img) => upsert(grid, img));
      refreshGallery();
    } else if (e.kind === "failed") {
      source.close();
      status.textContent = e.kind + (e.message ? ": " + e.message : "");
      status.classList.add("error");
    }
    if (turn.classList.contains("done")) { const b = turn.querySelector("button.stop"); if (b) b.remove(); }
  };
  source.onerror = () => { if (turn.classList.contains("done")) source.close(); };
}

// The gallery as the server renders it now (escaped there); parsed, never executed.
async function refreshGallery() {
  const res = await fetch(location.href, {credentials: "same-origin"});
  if (!res.ok) return;
  const fresh = new DOMParser().parseFromString(await res.text(), "text/html").getElementById("gallery");
  const old = document.getElementById("gallery");
  if (fresh && old) old.replaceWith(document.adoptNode(fresh));
}

function setupStudio() {
  const form = document.getElementById("send-form");
  if (!form) return;
  const session = form.dataset.session;
  if (!new URLSearchParams(location.search).get("session"))
    history.replaceState(null, "", "/?session=" + encodeURIComponent(session));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const idea = document.getElementById("idea");
    const error = document.getElementById("send-error");
    error.hidden = true;
    const message = idea.value.trim();
    if (!message) return;
    try {
      const sent = await postJSON("/api/studio/send", {session, message, n: Number(document.getElementById("n").value),
                                                        quality: document.getElementById("quality").value});
      const empty = document.getElementById("empty-session");
      if (empty) empty.remove();
      const turn = el("article", {"class": "turn live", "data-request": String(sent.request_id)});
      const head = el("header");
      head.appendChild(el("span", {"class": "message"}, message));
      head.appendChild(el("span", {"class": "idea"}, ""));
      head.appendChild(el("span", {"class": "status"}, "queued"));
      const stop = el("button", {"class": "stop", "type": "button", "title": "stop between images; what rendered is kept"}, "stop");
      stop.addEventListener("click", () => postJSON(`/api/requests/${sent.request_id}/stop`, {}).catch(() => {}));
      head.appendChild(stop);
      turn.appendChild(head);
      turn.appendChild(el("div", {"class": "grid"}));
      document.getElementById("turns").appendChild(turn);
      idea.value = "";
      follow(sent.events, turn);
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

setupStudio();
setupChoices();
setupReproduce();
