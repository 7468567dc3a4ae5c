// Only what htmx cannot express: the keyboard, the scroll position, copying, editing a question, the
// conversations drawer on a phone, and telling the user when the session expired. No inline handlers
// anywhere (the Content-Security-Policy forbids them).
"use strict";
document.documentElement.classList.add("js");

const composer = () => document.getElementById("composer");
const scroller = () => document.getElementById("scroller");
const liveReply = () => document.querySelector("#messages .live");
let pinned = true; // follow the reply as it grows, until the user scrolls up

function say(message) {
  const status = document.getElementById("composer-status");
  if (!status) return;
  status.replaceChildren();
  if (message) {
    const line = document.createElement("p");
    line.textContent = message;
    status.append(line);
  }
}

// While a reply is being written, Stop stands where Send was (Send is also unavailable while a send is
// in flight: hx-disabled-elt). Focus on the one that leaves moves to the one that comes.
function syncBusy() {
  const form = composer();
  const send = form && form.querySelector(".send");
  const stop = form && form.querySelector(".stop-send");
  if (!send || !stop || !form.matches("[hx-post]")) return;
  const busy = Boolean(liveReply());
  if (send.hidden === busy && stop.hidden === !busy) return;
  const hadFocus = document.activeElement === (busy ? send : stop);
  send.hidden = busy;
  stop.hidden = !busy;
  if (hadFocus) (busy ? stop : send).focus();
}
function stopReply() {
  const form = liveReply() && liveReply().querySelector("form.stop");
  if (!form) return false;
  form.requestSubmit(); // htmx posts it; the reply's own stream brings the stopped bubble
  return true;
}
document.addEventListener("click", (event) => {
  if (event.target instanceof Element && event.target.closest("#composer .stop-send")) stopReply();
});

// --- keyboard: Enter sends, Shift+Enter is a newline, Esc stops the reply being written (or closes
// the drawer, or cancels an edit) ---
document.addEventListener("keydown", (event) => {
  const box = event.target;
  if (event.key === "Escape") {
    if (exportOpen()) { event.preventDefault(); setExport(false, { focus: true }); return; }
    if (drawerOpen()) { event.preventDefault(); setDrawer(false); return; }
    const editing = box instanceof Element && box.closest(".edit-form");
    if (editing) { event.preventDefault(); closeEdit(editing); return; }
    if (liveReply() && stopReply()) event.preventDefault();
    return;
  }
  if (event.key !== "Enter" || event.shiftKey || event.isComposing || !(box instanceof HTMLTextAreaElement)) return;
  if (!box.form || !(box.form.id === "composer" || box.form.classList.contains("edit-form"))) return;
  event.preventDefault();
  const send = box.form.querySelector("button[type='submit']");
  if (!box.value.trim() || (send && (send.disabled || send.hidden)) || box.form.classList.contains("htmx-request")) return;
  if (box.form.id === "composer" && liveReply()) {
    say("A reply is still being written: press Stop (or Esc) first, then send.");
    return;
  }
  box.form.requestSubmit();
});

// --- scrolling: stay pinned to the bottom unless the user scrolled up ---
let ourTop = -1; // where we last put the scroll position; above it means the user moved up
function follow() {
  const el = scroller();
  if (!el) return;
  const gap = el.scrollHeight - el.scrollTop - el.clientHeight;
  // Read now rather than waiting for the scroll event, which comes a frame later: a swap that
  // lands in between must not yank the view back down. (gap > 1: a shrinking tail clamps the
  // position down too, and that is no reason to stop following.)
  if (ourTop >= 0 && el.scrollTop < ourTop - 1 && gap > 1) pinned = false;
  if (!pinned) return;
  el.scrollTop = el.scrollHeight;
  ourTop = el.scrollTop;
}
document.addEventListener("scroll", (event) => {
  const el = event.target;
  if (!(el instanceof Element) || el.id !== "scroller") return;
  if (el.scrollHeight - el.scrollTop - el.clientHeight < 48) {
    pinned = true; // back at the bottom: follow again
    ourTop = el.scrollTop;
  } else if (el.scrollTop < ourTop - 1) {
    pinned = false;
  }
}, true);
const grows = new ResizeObserver(follow);

// --- copying: a code block, or a whole reply ---
async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
}
// A code block copies its code; a message copies its source: a reply's markdown, a question's text.
document.addEventListener("click", async (event) => {
  const button = event.target instanceof Element && event.target.closest(".copy-code, .copy-message");
  if (!button) return;
  const code = button.classList.contains("copy-code") && button.closest(".code-block").querySelector("code");
  const text = code ? code.innerText : button.dataset.source;
  if (text === undefined) return;
  await copyText(text);
  const label = button.textContent;
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = label; }, 1500);
});

// --- editing a question: its bubble becomes a box with the text; sending it asks again from there
// (the server hides the question and what followed, and the answer takes them off the page) ---
function openEdit(button) {
  const article = button.closest("article.message");
  if (!article || article.querySelector(".edit-form")) return;
  const form = document.createElement("form");
  form.className = "edit-form";
  form.method = "post";
  form.action = button.dataset.editUrl;
  form.setAttribute("hx-post", button.dataset.editUrl);
  form.setAttribute("hx-target", "#messages");
  form.setAttribute("hx-swap", "beforeend");
  form.setAttribute("hx-disabled-elt", "find button");
  const label = document.createElement("label");
  label.className = "visually-hidden";
  label.textContent = "Edit your message";
  label.htmlFor = `edit-${article.id}`;
  const area = document.createElement("textarea");
  area.id = label.htmlFor;
  area.name = "text";
  area.rows = 3;
  area.value = button.dataset.source;
  const row = document.createElement("div");
  row.className = "edit-actions";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "button quiet edit-cancel";
  cancel.textContent = "Cancel";
  const save = document.createElement("button");
  save.type = "submit";
  save.className = "button primary";
  save.textContent = "Save and send";
  row.append(cancel, save);
  form.append(label, area, row);
  article.classList.add("editing");
  article.append(form);
  htmx.process(form);
  area.focus();
  area.setSelectionRange(area.value.length, area.value.length);
}
function closeEdit(form) {
  const article = form.closest("article.message");
  form.remove();
  if (!article) return;
  article.classList.remove("editing");
  const edit = article.querySelector(".edit-message");
  if (edit) edit.focus();
}
document.addEventListener("click", (event) => {
  const target = event.target instanceof Element ? event.target : null;
  if (!target) return;
  const edit = target.closest(".edit-message");
  if (edit) { openEdit(edit); return; }
  const cancel = target.closest(".edit-cancel");
  if (cancel) closeEdit(cancel.closest(".edit-form"));
});

// --- the Export menu: its button opens it; Esc, a click elsewhere or a download closes it ---
function setExport(open, { focus = false } = {}) {
  const box = document.getElementById("export");
  if (!box) return;
  box.classList.toggle("open", open);
  const toggle = box.querySelector(".export-toggle");
  toggle.setAttribute("aria-expanded", String(open));
  if (open) box.querySelector(".menu a").focus();
  else if (focus) toggle.focus();
}
const exportOpen = () => Boolean(document.querySelector("#export.open"));
document.addEventListener("click", (event) => {
  const target = event.target instanceof Element ? event.target : null;
  if (target && target.closest(".export-toggle")) { setExport(!exportOpen()); return; }
  // A click outside the menu closes it; so does choosing a download.
  if (exportOpen() && (!target || !target.closest("#export") || target.closest("#export .menu a"))) setExport(false);
});

// --- the conversations drawer, below 48rem: focus moves into it; Esc, a tap outside it or choosing a
// conversation closes it; the chat behind it is inert meanwhile ---
const narrow = window.matchMedia("(max-width: 48rem)");
const drawerButton = () => document.querySelector(".drawer-button");
function drawerOpen() {
  const app = document.querySelector(".app");
  return Boolean(app && app.classList.contains("drawer-open"));
}
function setDrawer(open) {
  const app = document.querySelector(".app");
  const nav = document.getElementById("sidebar");
  const button = drawerButton();
  if (!app || !nav) return;
  app.classList.add("drawer-used");
  app.classList.toggle("drawer-open", open);
  if (button) button.setAttribute("aria-expanded", String(open));
  const main = document.getElementById("main");
  if (main) main.inert = open;
  if (open) {
    const first = nav.querySelector("input[type='search'], [aria-current='page'], a[href], button");
    if (first) first.focus();
  } else if (button && nav.contains(document.activeElement)) {
    button.focus();
  }
}
document.addEventListener("click", (event) => {
  const target = event.target instanceof Element ? event.target : null;
  if (!target) return;
  if (target.closest(".drawer-button")) { setDrawer(!drawerOpen()); return; }
  if (drawerOpen() && (!target.closest("#sidebar") || target.closest("#sidebar a[href]"))) {
    // A tap outside (on the dimmed chat) closes it; so does following a link in it.
    if (!target.closest("#sidebar")) event.preventDefault();
    setDrawer(false);
  }
}, true);
narrow.addEventListener("change", () => { if (!narrow.matches && drawerOpen()) setDrawer(false); });

// --- the session: an expired one gets a login prompt, never a login page in a bubble ---
function promptLogin() {
  const dialog = document.getElementById("dialog");
  if (!dialog || dialog.querySelector(".dialog-box")) return;
  const box = document.createElement("div");
  box.className = "dialog-box";
  const text = document.createElement("p");
  const strong = document.createElement("strong");
  strong.textContent = "Your session has expired.";
  text.append(strong, " Log in again to carry on; your conversations are saved.");
  const link = document.createElement("a");
  link.className = "button primary";
  link.textContent = "Log in again";
  link.href = `${document.body.dataset.loginUrl}?next=${encodeURIComponent(location.pathname)}`;
  box.append(text, link);
  dialog.replaceChildren(box);
  link.focus();
}

document.addEventListener("htmx:beforeSwap", (event) => {
  const xhr = event.detail.xhr;
  // An error page that is not ours (Django's bare 400, a proxy's 413) never lands in the thread; our
  // own error answers retarget themselves next to the composer. htmx:responseError says what happened.
  const target = event.detail.target;
  if (xhr && xhr.status >= 400 && !xhr.getResponseHeader("HX-Retarget") && target && target.id === "messages") {
    event.detail.shouldSwap = false;
    return;
  }
  // An error of ours that base.html's responseHandling does not swap (a 503: the server is full; a
  // 413: a message over the size limit) says so next to the composer, like a 429; it retargets itself
  // there. The same status from anything in between (a router, a proxy) has no such header.
  if (xhr && (xhr.status === 503 || xhr.status === 413) && xhr.getResponseHeader("HX-Retarget")) {
    event.detail.shouldSwap = true;
  }
  // login_required redirected an htmx request to the login page: keep the target as it is and
  // let the page's out-of-band login prompt (registration/session_expired.html) show instead.
  if (xhr && xhr.responseURL && new URL(xhr.responseURL).pathname === document.body.dataset.loginUrl) {
    event.detail.swapOverride = "none";
    event.detail.shouldSwap = true;
  }
});

document.addEventListener("htmx:sseError", async (event) => {
  const source = event.detail.source;
  if (!source) return;
  const response = await fetch(document.body.dataset.sessionUrl, { credentials: "same-origin" }).catch(() => null);
  // Nobody listening: a restart in place. The browser (or the extension, for a closed source) connects again.
  if (!response) { sayRestarting(); return; }
  if (source.readyState !== EventSource.CLOSED) return; // the browser is reconnecting by itself
  if (response.status === 401) {
    // Stop the extension from reconnecting for nothing, and say why.
    event.detail.elt.removeAttribute("sse-connect");
    source.close();
    promptLogin();
  }
});

// --- the reply as it streams (chat/streaming/relay.py): a text event's new text (type "message") is
// appended, as text, to the open block, so every token shows the moment it arrives; a `render` event puts
// the server's sanitised markdown in place: finished blocks appended once, the open tail replaced. `done`
// brings the finished message, whose body is the one already on the page when the stream rendered it. ---
const BLOCK = new Set(["DIV", "PRE", "UL", "OL", "LI", "BLOCKQUOTE", "TABLE", "THEAD", "TBODY", "TR", "TD", "TH",
  "P", "H1", "H2", "H3", "H4", "H5", "H6"]);
function openBlock(tail) {
  // The innermost block that ends the tail: new text continues it (a paragraph, a list item, a cell, code).
  let at = tail;
  for (;;) {
    let node = at.lastChild;
    while (node && node.nodeType === Node.TEXT_NODE && !node.data.trim()) node = node.previousSibling;
    if (!(node instanceof Element)) return at;
    if (node.tagName === "CODE" && at.tagName === "PRE") return node;
    if (!BLOCK.has(node.tagName) || node.classList.contains("code-head")) return at;
    at = node;
  }
}
function fragment(html) {
  const template = document.createElement("template");
  template.innerHTML = html; // inert: nothing in it runs or loads
  return template.content;
}
const appended = new WeakMap(); // per live reply: the text nodes added since its last render
function append(live, at, text) {
  const added = appended.get(live) || [];
  appended.set(live, added);
  const last = added[added.length - 1];
  if (last && last === at.lastChild) { last.appendData(text); return; } // one node per run of text
  const node = document.createTextNode(text); // text, never parsed as HTML
  at.append(node);
  added.push(node);
}
const tails = new WeakMap(); // per live reply: the HTML of its tail's last render, which the next one builds on
// Text goes on screen at the next frame, all that came in it at once; a render that comes first stands
// for it (the text that closes a code block never shows inside the block for a moment).
const queued = new WeakMap(); // per live reply: text received for the next frame
function queueText(live, text) {
  if (queued.has(live)) { queued.set(live, queued.get(live) + text); return; }
  queued.set(live, text);
  requestAnimationFrame(() => {
    const waiting = queued.get(live);
    queued.delete(live);
    if (waiting && live.isConnected) append(live, openBlock(live.querySelector(".tail")), waiting);
  });
}
function rendered(live, data) {
  if (queued.has(live)) queued.set(live, ""); // the render has it
  // A line of JSON, then HTML: the finished blocks and the tail, after the first `same` characters of the
  // last render, which they start with (only what changed is sent); the tail starts at `cut`.
  const line = data.indexOf("\n");
  const head = JSON.parse(data.slice(0, line));
  const whole = (tails.get(live) || "").slice(0, head.same) + data.slice(line + 1);
  const final = whole.slice(0, head.cut);
  const open = whole.slice(head.cut);
  tails.set(live, open);
  // The render stands for the text added since the last one.
  for (const node of appended.get(live) || []) node.remove();
  appended.delete(live);
  const blocks = live.querySelector("[id^='blocks-']");
  const tail = live.querySelector(".tail");
  if (head.replace) blocks.replaceChildren();
  if (final) blocks.append(fragment(final));
  tail.replaceChildren(fragment(open));
  if (head.rest) append(live, openBlock(tail), head.rest); // the space before the next word
}
// "Thinking…" while the model thinks; "Thought for N s" once it writes (done brings the stored figure).
function thoughtDone(live) {
  const from = Number(live.dataset.thinkingFrom);
  if (!from || live.dataset.thought) return;
  live.dataset.thought = "1";
  const summary = live.querySelector(".thinking > summary");
  if (summary) summary.textContent = `Thought for ${Math.max(1, Math.round((performance.now() - from) / 1000))} s`;
}
function finished(live, html) {
  const article = live.closest("article.message");
  const message = fragment(html).querySelector("article.message");
  if (!article || !message) return;
  const body = message.querySelector(".content[data-live]");
  if (body) {
    body.removeAttribute("data-live");
    body.append(...live.querySelector("[id^='blocks-']").childNodes, ...live.querySelector(".tail").childNodes);
  }
  article.replaceWith(message);
  htmx.process(message);
  syncBusy();
  follow();
}
document.addEventListener("htmx:sseBeforeMessage", (event) => {
  const type = event.detail.type;
  const live = event.target.closest(".live");
  if (!live) return;
  if (type === "message") {
    event.preventDefault(); // ours, not a swap
    thoughtDone(live);
    queueText(live, event.detail.data);
  } else if (type === "render") {
    event.preventDefault();
    thoughtDone(live);
    rendered(live, event.detail.data);
  } else if (type === "done") {
    event.preventDefault();
    finished(live, event.detail.data);
  } else if (type === "thinking") {
    if (!live.dataset.thinkingFrom) live.dataset.thinkingFrom = String(performance.now());
  } else if (type === "reset") {
    // The stream starts over (its worker restarted): empty the bubble; the next events refill it.
    if (queued.has(live)) queued.set(live, "");
    tails.delete(live);
    appended.delete(live);
    for (const part of live.querySelectorAll(".thinking-text, .content > div, .notice, .error")) part.replaceChildren();
  }
});

// --- the size of a message: a text over the limit is refused here, before it is sent; any refusal
// for size (ours, Django's, or a proxy's 413) names the limit, and the text stays in the box ---
const KEPT = "It is still in the box: shorten it and send it again.";
let sizeSaid = false; // the status line shows our size warning, to take back once the text fits
function characters(text) {
  // As the server counts (code points, after strip): a surrogate pair is one character.
  let count = text.length;
  if (count > 1) for (const _ of text.matchAll(/[\uD800-\uDBFF][\uDC00-\uDFFF]/g)) count--;
  return count;
}
const number = (n) => n.toLocaleString("en-US");
function limitOf(form) {
  const box = form && form.querySelector("textarea[data-max-chars]");
  return box ? Number(box.dataset.maxChars) : 0;
}
function overLimit(form) {
  const limit = limitOf(form);
  const box = form && form.querySelector("textarea");
  if (!limit || !box || box.value.length <= limit) return ""; // UTF-16 units >= characters: cheap first test
  const count = characters(box.value.trim());
  return count > limit ? `This message is ${number(count)} characters; the limit is ${number(limit)} characters. ${KEPT}` : "";
}
function megabytes(bytes) {
  return bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${Math.max(1, Math.round(bytes / 1e3))} KB`;
}
function refusedForSize(form, status) {
  const box = form.querySelector("textarea");
  const size = megabytes(new Blob([box ? box.value : ""]).size);
  const limit = limitOf(form);
  const named = limit ? `; the limit is ${number(limit)} characters` : "";
  const why = status === 413 ? `as too large (${size}, ${status})` : `(${status}; it is ${size})`;
  return `The server refused this message ${why}${named}. ${KEPT}`;
}
document.addEventListener("input", (event) => {
  const form = event.target instanceof HTMLTextAreaElement && event.target.form;
  if (!form || form.id !== "composer") return;
  const warning = overLimit(form);
  if (warning) { say(warning); sizeSaid = true; } else if (sizeSaid) { say(""); sizeSaid = false; }
});
// Capture: ahead of htmx's own submit handler on the form, and of a plain form's navigation.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || form.id !== "composer") return;
  const warning = overLimit(form);
  if (!warning) return;
  event.preventDefault();
  event.stopPropagation();
  say(warning);
  sizeSaid = true;
}, true);

// --- a restart in place: for the second or two while no process listens on the port, a send or a
// stream fails with a network error. Say so and try again; the text stays in the box. A repeated send
// carries the form's request_key, so one that did arrive is not stored twice. ---
const RESTARTING = "The server is restarting; retrying…";
const SEND_RETRY_DELAYS = [500, 1000, 1000, 2000, 2000, 3000, 3000, 5000, 5000, 5000]; // about 28 s in all
let sendRetries = 0;
let restartSaid = false;
function sayRestarting() { say(RESTARTING); restartSaid = true; }
function clearRestarting() { if (restartSaid) { restartSaid = false; say(""); } }
document.addEventListener("htmx:sendError", (event) => {
  const form = event.detail.elt;
  if (form.id !== "composer") { sayRestarting(); return; } // the poller asks again by itself
  if (sendRetries < SEND_RETRY_DELAYS.length) {
    sayRestarting();
    setTimeout(() => { if (form.isConnected) form.requestSubmit(); }, SEND_RETRY_DELAYS[sendRetries++]);
    return;
  }
  sendRetries = 0;
  restartSaid = false;
  say("Could not reach the server. Your message is still in the box: press Send to try again.");
});
// Any answer at all means somebody listens again (before the answer's own message is shown).
document.addEventListener("htmx:beforeOnLoad", (event) => {
  if (event.detail.elt.id === "composer") sendRetries = 0;
  clearRestarting();
});
document.addEventListener("htmx:sseOpen", clearRestarting);

// --- sending: the typed text stays in the box unless the message was accepted ---
document.addEventListener("htmx:beforeRequest", (event) => {
  const elt = event.detail.elt;
  const editing = elt.classList.contains("edit-form");
  if (!editing && elt.id !== "composer") return;
  if (editing || !restartSaid) say(""); // a retry of a send keeps saying why until an answer comes
  pinned = true;
  ourTop = -1;
});
document.addEventListener("htmx:responseError", (event) => {
  const xhr = event.detail.xhr;
  if (xhr.getResponseHeader("HX-Retarget")) return; // our own answer says why
  const form = event.detail.elt;
  if (form && form.id === "composer" && (xhr.status === 413 || xhr.status === 400)) {
    say(refusedForSize(form, xhr.status)); // a 400 not ours: Django's size limit, or a server without this page's
    return;
  }
  if (xhr.status < 500) return;
  const wait = xhr.status === 503 && xhr.getResponseHeader("Retry-After");
  say(wait
    ? `The server is busy. Your message is still in the box: press Send again in ${wait} s.`
    : `The server had a problem (${xhr.status}). Your message is still in the box: press Send to try again.`);
});

// --- after every swap: follow new content, keep Send in step, and keep focus somewhere useful ---
document.addEventListener("htmx:afterSettle", () => {
  const messages = document.getElementById("messages");
  if (messages) grows.observe(messages);
  syncBusy();
  follow();
});
document.addEventListener("htmx:sseClose", () => {
  setTimeout(() => {
    syncBusy();
    const box = composer() && composer().querySelector("textarea");
    if (box && (document.activeElement === document.body || !document.activeElement)) box.focus({ preventScroll: true });
  });
});
document.addEventListener("DOMContentLoaded", () => {
  const messages = document.getElementById("messages");
  if (messages) grows.observe(messages);
  follow();
  syncBusy();
});

// --- other tabs: the update poller may bring a message this tab already shows (its own send,
// racing the poll); keep the one on the page. A send brings its conversation's sidebar item to
// put at the top: that one replaces the item where it was. ---
document.addEventListener("htmx:oobBeforeSwap", (event) => {
  const fragment = event.detail.fragment;
  if (!fragment || !fragment.querySelectorAll) return;
  for (const message of fragment.querySelectorAll("article.message[id]")) {
    if (document.getElementById(message.id)) message.remove();
  }
  for (const item of fragment.querySelectorAll("li[id^='conversation-']")) {
    const old = document.getElementById(item.id);
    if (old) old.remove();
  }
});

// --- time zone ---
// The sidebar groups conversations by the user's own day (Today, Yesterday, ...): tell the server which
// zone that is, for chat/timezone.py. A zone that changes (travel) is picked up on the next page.
(() => {
  let zone = "";
  try {
    zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  } catch (error) {
    return;
  }
  if (!/^[A-Za-z0-9_+\-]+(\/[A-Za-z0-9_+\-]+)*$/.test(zone) || zone.length > 64) return;
  if (document.cookie.split("; ").includes(`tz=${zone}`)) return;
  const secure = location.protocol === "https:" ? "; secure" : "";
  document.cookie = `tz=${zone}; path=/; max-age=31536000; samesite=lax${secure}`;
})();
