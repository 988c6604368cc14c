// The Sigil console: renders /web/api/... answers with DOM calls only (never
// markup from data), and sends every change with the session's CSRF token.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function csrfToken() {
  const m = document.cookie.match(/(?:^|;\s*)__Host-sigil_csrf=([^;]+)/);
  return m ? m[1] : "";
}

async function api(path, options) {
  const opts = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
  if (opts.method && opts.method !== "GET") {
    opts.headers["X-Sigil-CSRF"] = csrfToken();
    if (opts.body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(opts.body);
    }
  }
  const resp = await fetch(path, opts);
  if (resp.status === 401) {
    window.location.replace("/web/login");
    throw new Error("not logged in");
  }
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.error || resp.statusText);
  return body;
}

function when(unix) {
  if (unix === null || unix === undefined) return "—";
  return new Date(unix * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

function ago(unix) {
  if (!unix) return "—";
  const s = Math.round(Date.now() / 1000 - unix);
  if (s < 90) return s + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

function badge(kind) {
  return el("span", { class: "badge " + kind }, kind);
}

function table(headers, rows, label) {
  const thead = el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { scope: "col" }, h))));
  const tbody = el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c)))));
  return el("table", { "aria-label": label }, thead, tbody);
}

function say(text, isError) {
  $("message").textContent = text || "";
  $("message").className = isError ? "error" : "";
}

/// A confirmation dialog; resolves to true on Confirm. `fields` are label
/// elements shown inside it (their inputs stay readable after closing).
function confirmDialog(title, text, okLabel, fields) {
  const d = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  $("confirm-fields").replaceChildren(...(fields || []));
  return new Promise((resolve) => {
    d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
    d.returnValue = "";
    d.showModal();
  });
}

function field(labelText, input) {
  return el("label", {}, labelText, input);
}

// ---- pages ----

async function fleet(view) {
  $("title").textContent = "Fleet";
  const data = await api("/web/api/bots");
  const rows = data.bots.map((b) => [
    el("a", { href: "/web/fleet/" + encodeURIComponent(b.name) }, b.name),
    b.roles.join(", ") || "—",
    b.instances === null ? "—" : String(b.instances),
    b.locked ? badge("locked") : "",
  ]);
  view.replaceChildren(
    rows.length ? table(["Bot", "Roles", "Instances", ""], rows, "Bots") : el("p", {}, "No bots yet."),
  );
}

async function lockInstance(inst) {
  const message = el("input", { type: "text", id: "lock-message", value: "locked from the web console" });
  const ttl = el("input", { type: "number", id: "lock-ttl", min: "0", value: "60" });
  const ok = await confirmDialog(
    "Lock this instance?",
    "Instance " + inst.instance_id + " of bot " + inst.bot +
      " will be refused every renewal and call until the lock is removed or expires.",
    "Lock instance",
    [field("Message", message), field("Lifetime in minutes (0: until removed)", ttl)],
  );
  if (!ok) return;
  try {
    await api("/web/api/locks", {
      method: "POST",
      body: {
        target_kind: "bot_instance",
        target_value: inst.instance_id,
        ttl_seconds: Math.max(0, parseInt(ttl.value || "0", 10)) * 60,
        message: message.value,
      },
    });
    say("Locked instance " + inst.instance_id + ".");
  } catch (e) {
    say("Locking failed: " + e.message, true);
  }
  await route();
}

async function instances(view, bot, pageToken) {
  $("title").textContent = "Bot " + bot;
  const q = new URLSearchParams({ bot: bot, limit: "50" });
  if (pageToken) q.set("page_token", pageToken);
  const data = await api("/web/api/instances?" + q.toString());
  const rows = data.instances.map((i) => {
    const hb = i.last_heartbeat;
    const auth = i.last_authentication;
    const attrs = Object.entries(i.join_attributes || {}).map(([k, v]) => k + "=" + v).join(", ");
    return [
      el("span", { class: "mono" }, i.instance_id),
      i.join_method + (attrs ? " (" + attrs + ")" : ""),
      String(i.generation),
      auth ? ago(auth.time) + " from " + auth.remote_addr : "—",
      hb ? ago(hb.time) + " — " + hb.hostname + ", " + hb.os + ", v" + hb.version + ", up " +
        Math.round(hb.uptime_seconds / 60) + " min" : "—",
      when(i.credential_expires),
      badge(i.health),
      i.health === "locked" ? "" :
        el("button", { type: "button", class: "danger", "data-instance": i.instance_id,
          "aria-label": "Lock instance " + i.instance_id, onclick: () => lockInstance(i) }, "Lock"),
    ];
  });
  const parts = [
    el("p", {}, el("a", { href: "/web/fleet" }, "← all bots")),
    rows.length
      ? table(["Instance", "Join method", "Generation", "Last authentication", "Last heartbeat",
        "Credential expires", "Health", ""], rows, "Instances of " + bot)
      : el("p", {}, "No instances."),
  ];
  if (data.next_page_token) {
    parts.push(el("button", { type: "button", id: "next-page",
      onclick: () => instances(view, bot, data.next_page_token) }, "Next page"));
  }
  view.replaceChildren(...parts);
}

async function removeLock(lock) {
  const ok = await confirmDialog("Remove this lock?",
    "Lock " + lock.metadata.name + " on " + targetText(lock) + " will stop refusing its target.",
    "Remove lock");
  if (!ok) return;
  try {
    await api("/web/api/locks/" + encodeURIComponent(lock.metadata.name), { method: "DELETE" });
    say("Removed lock " + lock.metadata.name + ".");
  } catch (e) {
    say("Removing failed: " + e.message, true);
  }
  await route();
}

function targetText(lock) {
  const t = lock.spec.target || {};
  const k = Object.keys(t)[0] || "?";
  return k + " " + t[k];
}

async function locks(view) {
  $("title").textContent = "Locks";
  const data = await api("/web/api/locks");
  const rows = data.locks.map((l) => [
    el("span", { class: "mono" }, l.metadata.name),
    targetText(l),
    l.spec.message || "—",
    l.spec.created_by || "—",
    l.metadata.expires ? l.metadata.expires : "never",
    el("button", { type: "button", "aria-label": "Remove lock " + l.metadata.name,
      onclick: () => removeLock(l) }, "Remove"),
  ]);
  const kind = el("select", { id: "new-lock-kind" },
    ...["bot", "bot_instance", "role", "token", "spiffe_id", "login", "db_user"]
      .map((k) => el("option", { value: k }, k)));
  // The target picker: the bots and roles there are, for the kinds named so
  // (left empty when this session may not list bots).
  const bots = await api("/web/api/bots").then((b) => b.bots, () => []);
  const suggestions = el("datalist", { id: "new-lock-suggestions" });
  const suggest = () => {
    const names = kind.value === "bot" ? bots.map((b) => b.name)
      : kind.value === "role" ? [...new Set(bots.flatMap((b) => b.roles))].sort() : [];
    suggestions.replaceChildren(...names.map((n) => el("option", { value: n })));
  };
  kind.addEventListener("change", suggest);
  suggest();
  const value = el("input", { type: "text", id: "new-lock-value", required: "required",
    list: "new-lock-suggestions", autocomplete: "off" });
  const ttl = el("input", { type: "number", id: "new-lock-ttl", min: "0", value: "60" });
  const message = el("input", { type: "text", id: "new-lock-message" });
  const form = el("form", { class: "inline", "aria-label": "Add a lock" },
    field("Target kind", kind), field("Target", value), suggestions,
    field("Lifetime in minutes (0: until removed)", ttl), field("Message", message),
    el("button", { type: "submit", id: "new-lock-add", class: "danger" }, "Add lock…"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const ok = await confirmDialog("Add this lock?",
      "Everything matching " + kind.value + " " + value.value + " will be refused at once.", "Add lock");
    if (!ok) return;
    try {
      await api("/web/api/locks", { method: "POST", body: {
        target_kind: kind.value, target_value: value.value,
        ttl_seconds: Math.max(0, parseInt(ttl.value || "0", 10)) * 60, message: message.value } });
      say("Lock added.");
    } catch (e) {
      say("Adding failed: " + e.message, true);
      return;
    }
    await route();
  });
  view.replaceChildren(
    el("h2", {}, "Add a lock"), form,
    el("h2", {}, "Locks in force"),
    rows.length ? table(["Lock", "Target", "Message", "By", "Expires", ""], rows, "Locks")
      : el("p", {}, "No locks."),
    data.more ? el("p", { class: "hint" }, "Only the first " + rows.length +
      " locks are shown; `sigil locks ls` lists them all.") : "",
  );
}

function summary(fields) {
  return Object.entries(fields || {})
    .map(([k, v]) => k + "=" + (typeof v === "string" ? v : JSON.stringify(v)))
    .join(", ");
}

async function audit(view) {
  $("title").textContent = "Audit log";
  const params = new URLSearchParams(window.location.search);
  const type = el("input", { type: "text", id: "audit-type", name: "type", value: params.get("type") || "",
    placeholder: "e.g. lock.created" });
  const bot = el("input", { type: "text", id: "audit-bot", name: "bot", value: params.get("bot") || "" });
  const since = el("input", { type: "datetime-local", id: "audit-since" });
  const sinceHidden = el("input", { type: "hidden", name: "since", value: params.get("since") || "" });
  if (params.get("since")) {
    since.value = new Date(parseInt(params.get("since"), 10) * 1000).toISOString().slice(0, 16);
  }
  const form = el("form", { class: "inline", method: "get", action: "/web/audit", "aria-label": "Filter" },
    field("Event type", type), field("Bot", bot), field("Since (UTC)", since), sinceHidden,
    el("button", { type: "submit", id: "audit-filter" }, "Filter"));
  form.addEventListener("submit", () => {
    sinceHidden.value = since.value ? String(Math.floor(Date.parse(since.value + "Z") / 1000)) : "";
  });
  const verifyBox = el("div", { class: "status-box", id: "audit-verify", role: "status" }, "Verifying the chain…");
  view.replaceChildren(form, verifyBox, el("p", { class: "muted" }, "Loading events…"));
  const q = new URLSearchParams();
  for (const k of ["type", "bot", "since"]) if (params.get(k)) q.set(k, params.get(k));
  const data = await api("/web/api/audit?" + q.toString());
  const rows = data.events.map((e) => [String(e.seq), e.time, e.event_type,
    el("span", { class: "mono" }, summary(e.fields))]);
  const events = table(["Seq", "Time", "Type", "Details"], rows, "Audit events");
  const live = el("input", { type: "checkbox", id: "audit-live" });
  live.addEventListener("change", () => {
    if (tailSource) { tailSource.close(); tailSource = null; }
    if (live.checked) startTail(events.tBodies[0], params, data.head_seq);
  });
  const liveLabel = el("label", { class: "checkbox" }, el("span", {}, live, " Live tail (new events appear at the top)"));
  view.replaceChildren(form, verifyBox, liveLabel, events);
  try {
    const v = await api("/web/api/audit/verify");
    verifyBox.replaceChildren(
      v.intact ? badge("intact") : badge("broken"), " ",
      v.intact ? "Chain intact: " + v.count + " events, " + v.checkpoints_checked + " checkpoints checked. Head hash "
        : "Chain BROKEN at seq " + v.bad_seq + ": " + v.reason + ". Head hash ",
      el("code", { id: "audit-head" }, v.head_hash));
  } catch (e) {
    verifyBox.replaceChildren(el("span", { class: "error" }, "Verification failed: " + e.message));
  }
}

async function tokens(view) {
  $("title").textContent = "Join tokens";
  const data = await api("/web/api/tokens");
  const rows = data.tokens.map((t) => [
    el("span", { class: "mono" }, t.metadata.name),
    t.spec.bot_name || "—",
    t.spec.join_method || "token",
    t.metadata.expires || "never",
    el("button", { type: "button", "aria-label": "Delete token " + t.metadata.name,
      onclick: () => removeToken(t) }, "Delete"),
  ]);
  const bot = el("input", { type: "text", id: "new-token-bot", required: "required" });
  const ttl = el("input", { type: "number", id: "new-token-ttl", min: "1", max: "10080", value: "15" });
  const form = el("form", { class: "inline", "aria-label": "Create a join token" },
    field("Bot", bot), field("Lifetime in minutes", ttl),
    el("button", { type: "submit", id: "new-token-add" }, "Create token"));
  const secretBox = el("div", { id: "new-token-secret" });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const t = await api("/web/api/tokens", { method: "POST",
        body: { bot: bot.value, ttl_seconds: Math.max(1, parseInt(ttl.value || "15", 10)) * 60 } });
      const code = el("code", { id: "new-token-value" }, t.token);
      const copy = el("button", { type: "button", id: "new-token-copy", onclick: async () => {
        try { await navigator.clipboard.writeText(t.token); copy.textContent = "Copied"; }
        catch (e) { copy.textContent = "Copy failed: select the text"; }
      } }, "Copy");
      secretBox.replaceChildren(el("div", { class: "status-box", role: "status" },
        "Token for bot " + t.bot + " (shown only now; expires " + when(t.expires_unix) + "): ", code, " ", copy,
        el("p", { class: "muted" }, "Join with: sigil agent start --auth-server " + t.auth_server +
          " --ca-pin " + t.ca_pin + " --token …")));
    } catch (e) {
      say("Creating failed: " + e.message, true);
    }
  });
  const methodTokens = data.tokens.filter((t) => t.spec.join_method && t.spec.join_method !== "token");
  const testName = el("select", { id: "token-test-name" },
    ...methodTokens.map((t) => el("option", { value: t.metadata.name }, t.metadata.name + " (" + t.spec.join_method + ")")));
  const claims = el("textarea", { id: "token-test-claims", rows: "4", cols: "50",
    placeholder: '{"repository": "acme/api"}' });
  const testResult = el("div", { id: "token-test-result", role: "status" });
  const testForm = el("form", { class: "inline", "aria-label": "Test a token's join rules" },
    field("Token", testName), field("Claims (JSON)", claims),
    el("button", { type: "submit", id: "token-test-run" }, "Test"));
  testForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    let parsed;
    try { parsed = JSON.parse(claims.value); } catch (e) {
      testResult.replaceChildren(el("p", { class: "error" }, "The claims are not JSON: " + e.message));
      return;
    }
    try {
      const r = await api("/web/api/token-test", { method: "POST", body: { name: testName.value, claims: parsed } });
      testResult.replaceChildren(el("div", { class: "status-box" },
        badge(r.allowed ? "allowed" : "denied"), " ",
        r.allowed ? "would join as bot " + r.bot : "no allow rule matches",
        el("ul", {}, ...r.explanation.map((l) => el("li", {}, l)))));
    } catch (e) {
      testResult.replaceChildren(el("p", { class: "error" }, "Test failed: " + e.message));
    }
  });
  view.replaceChildren(el("h2", {}, "Create a token"), form, secretBox, el("h2", {}, "Tokens"),
    rows.length ? table(["Token (hash form for secrets)", "Bot", "Join method", "Expires", ""], rows, "Tokens")
      : el("p", {}, "No tokens."),
    el("h2", {}, "Join-rule tester"),
    methodTokens.length ? testForm : el("p", {}, "No tokens of a method with rules (github, oidc, …)."),
    testResult);
}

async function removeToken(t) {
  const ok = await confirmDialog("Delete this token?",
    "Token " + t.metadata.name + " of bot " + t.spec.bot_name + " will no longer admit anyone.", "Delete token");
  if (!ok) return;
  try {
    await api("/web/api/tokens/" + encodeURIComponent(t.metadata.name), { method: "DELETE" });
    say("Deleted the token.");
  } catch (e) {
    say("Deleting failed: " + e.message, true);
  }
  await route();
}

async function cas(view) {
  $("title").textContent = "Certificate authorities";
  const data = await api("/web/api/cas");
  const rows = data.cas.map((c) => [
    c.purpose,
    c.key_algorithm + (c.key_manager && c.key_manager !== "software" ? " (" + c.key_manager + ")" : ""),
    el("span", { class: "mono" }, c.fingerprint),
    c.not_after ? when(c.not_after) : "never (SSH)",
    c.phase + (c.rotation_mode ? " (" + c.rotation_mode + ")" : "") +
      (c.next_phase ? ", next " + c.next_phase + " at " + when(c.next_phase_unix) : ""),
  ]);
  view.replaceChildren(
    el("p", {}, "CA pin for agents: ", el("code", { id: "ca-pin" }, data.ca_pin)),
    table(["Purpose", "Key", "Fingerprint", "Expires", "Rotation phase"], rows, "CAs"));
}

async function workloadIdentities(view) {
  $("title").textContent = "Workload identities";
  const data = await api("/web/api/workload-identities");
  const items = data.workload_identities;
  const rows = items.map((w) => [
    w.metadata.name,
    el("code", {}, (w.spec.spiffe || {}).id || "—"),
    el("pre", { class: "mono" }, JSON.stringify(w.spec.rules || {}, null, 1)),
    summary(w.metadata.labels || {}) || "—",
  ]);
  const name = el("select", { id: "wi-test-name" },
    ...items.map((w) => el("option", { value: w.metadata.name }, w.metadata.name)));
  const attrs = el("textarea", { id: "wi-test-attrs", rows: "4", cols: "50",
    placeholder: "workload.unix.uid=1000" });
  const result = el("div", { id: "wi-test-result", role: "status" });
  const form = el("form", { class: "inline", "aria-label": "Test a workload identity" },
    field("Workload identity", name), field("Attributes (one KEY=VALUE a line)", attrs),
    el("button", { type: "submit", id: "wi-test-run" }, "Test"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const attributes = {};
    for (const line of attrs.value.split("\n")) {
      const i = line.indexOf("=");
      if (i > 0) attributes[line.slice(0, i).trim()] = line.slice(i + 1).trim();
    }
    try {
      const r = await api("/web/api/workload-identities/test", { method: "POST",
        body: { name: name.value, attributes: attributes } });
      result.replaceChildren(el("div", { class: "status-box" },
        badge(r.allowed ? "allowed" : "denied"), " ",
        r.allowed ? "SPIFFE ID " : "", r.allowed ? el("code", {}, r.spiffe_id) : "",
        r.dns_sans && r.dns_sans.length ? ", DNS SANs " + r.dns_sans.join(", ") : "",
        el("p", {}, r.template_error || r.explanation)));
    } catch (e) {
      result.replaceChildren(el("p", { class: "error" }, "Test failed: " + e.message));
    }
  });
  view.replaceChildren(
    rows.length ? table(["Name", "SPIFFE ID template", "Rules", "Labels"], rows, "Workload identities")
      : el("p", {}, "No workload identities."),
    el("h2", {}, "Rule tester"), items.length ? form : el("p", {}, "Create one to test it."), result);
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

/// A bar chart of per-minute counts (oldest first), with a text alternative.
function barChart(id, title, values, colour) {
  const w = 600, h = 120, bw = w / values.length;
  const peak = Math.max(0, ...values);
  const max = Math.max(1, peak);
  const total = values.reduce((a, b) => a + b, 0);
  const chart = svg("svg", { id: id, viewBox: "0 0 " + w + " " + (h + 20), width: w, height: h + 20,
    role: "img", "aria-label": title + ": " + total + " in the last hour, at most " + peak + " a minute" });
  chart.append(svg("title", {}, title));
  values.forEach((v, i) => {
    const bh = (v / max) * h;
    chart.append(svg("rect", { x: i * bw + 1, y: h - bh, width: Math.max(1, bw - 2), height: bh, fill: colour },
      svg("title", {}, (60 - i) + " min ago: " + v)));
  });
  chart.append(svg("line", { x1: 0, y1: h, x2: w, y2: h, stroke: "#4a5260" }));
  chart.append(svg("text", { x: 0, y: h + 16, fill: "#1b1f24", "font-size": 12 }, "60 min ago"));
  chart.append(svg("text", { x: w, y: h + 16, fill: "#1b1f24", "font-size": 12, "text-anchor": "end" }, "now"));
  return el("figure", {}, chart, el("figcaption", {}, title + ": " + total + " in the last hour (peak " + peak + "/min)"));
}

async function overview(view) {
  $("title").textContent = "Overview";
  const o = await api("/web/api/overview");
  const facts = [
    ["Cluster", o.cluster + " (version " + o.version + ", up " + Math.round(o.uptime_seconds / 60) + " min)"],
    ["Bots", String(o.bots)],
    ["Bot instances", o.bot_instances === null ? "—" : String(o.bot_instances)],
    ["Join tokens", o.tokens === null ? "—" : String(o.tokens)],
    ["Locks in force", String(o.locks)],
    ["Audit log", o.audit_integrity],
    ["CA expiring first", o.first_ca_expiry ? o.first_ca_expiry.purpose + ", " + when(o.first_ca_expiry.not_after) : "—"],
  ];
  if (o.fleet) {
    const sample = o.fleet.sampled ? " (sample: the first " + o.fleet.instances_read + " instances)" : "";
    const methods = Object.entries(o.fleet.by_join_method).map(([m, n]) => m + ": " + n).join(", ");
    facts.push(["Instances by join method" + sample, methods || "—"],
      ["Credentials expiring within 24 h" + sample, String(o.fleet.expiring_within_24h)]);
  }
  const parts = [table(["Item", "Now"], facts, "Cluster facts")];
  if (o.per_minute) {
    const note = o.per_minute.lower_bound ? " (at least: the hour holds more events than are read)" : "";
    parts.push(el("h2", {}, "Last hour" + note),
      barChart("chart-renewals", "Renewals per minute", o.per_minute.renewals, "#0b57a4"),
      barChart("chart-denials", "Denials per minute", o.per_minute.denials, "#a4161a"));
  }
  view.replaceChildren(...parts);
}

let tailSource = null;

function startTail(tbody, params, after) {
  const q = new URLSearchParams();
  for (const k of ["type", "bot"]) if (params.get(k)) q.set(k, params.get(k));
  q.set("after", String(after));
  tailSource = new EventSource("/web/api/audit/tail?" + q.toString());
  tailSource.onmessage = (m) => {
    const e = JSON.parse(m.data);
    tbody.prepend(el("tr", { class: "new" }, el("td", {}, String(e.seq)), el("td", {}, e.time),
      el("td", {}, e.event_type), el("td", {}, el("span", { class: "mono" }, summary(e.fields)))));
  };
}

async function route() {
  const path = window.location.pathname.replace(/\/+$/, "");
  const view = $("view");
  for (const a of document.querySelectorAll("header nav a")) {
    if (path.startsWith(a.getAttribute("href"))) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  try {
    if (path === "/web" || path === "/web/fleet") await fleet(view);
    else if (path.startsWith("/web/fleet/")) await instances(view, decodeURIComponent(path.slice(11)));
    else if (path === "/web/locks") await locks(view);
    else if (path === "/web/audit") await audit(view);
    else if (path === "/web/tokens") await tokens(view);
    else if (path === "/web/cas") await cas(view);
    else if (path === "/web/overview") await overview(view);
    else if (path === "/web/workload-identities") await workloadIdentities(view);
    else $("title").textContent = "Not found";
  } catch (e) {
    say(e.message, true);
  }
}

async function start() {
  $("logout").addEventListener("click", async () => {
    try {
      await api("/web/api/logout", { method: "POST" });
    } finally {
      window.location.replace("/web/login");
    }
  });
  try {
    const s = await api("/web/api/session");
    $("who").textContent = s.actor + " @ " + s.cluster;
  } catch (e) {
    return;
  }
  await route();
}

start();
