// Spends the login link's secret (in the URL fragment, which browsers never
// send to a server) and moves on to the console. The secret is spent only on
// a click: a page that opened or holds this window cannot log the browser
// into a session of its choosing by setting the fragment.
"use strict";
let secret = "";
function pick() {
  const status = document.getElementById("status");
  const button = document.getElementById("signin");
  const fresh = window.location.hash.slice(1);
  // The fragment leaves the address bar and history at once.
  history.replaceState(null, "", "/web/login");
  if (fresh) {
    secret = fresh;
  }
  if (!secret) {
    status.textContent = "You are not logged in.";
    button.hidden = true;
    return;
  }
  status.textContent =
    "A login link was opened. Sign in only if you ran `sigil admin login` just now; any session this browser has ends.";
  status.className = "";
  button.hidden = false;
  button.focus();
}
async function signIn() {
  const status = document.getElementById("status");
  const button = document.getElementById("signin");
  if (!secret) {
    return;
  }
  const spent = secret;
  secret = "";
  button.hidden = true;
  status.textContent = "Logging in…";
  try {
    const resp = await fetch("/web/api/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify({ secret: spent }),
    });
    if (resp.ok) {
      window.location.replace("/web/fleet");
      return;
    }
    const body = await resp.json().catch(() => ({}));
    status.textContent = "Login refused: " + (body.error || resp.statusText);
    status.className = "error";
  } catch (e) {
    status.textContent = "Login failed: " + e;
    status.className = "error";
  }
}
// The client certificate the browser presented on this connection, if any
// (the server asks for one only with --web-client-certificates).
async function offerCertificate() {
  const button = document.getElementById("signin-cert");
  try {
    const resp = await fetch("/web/api/certificate", { credentials: "same-origin" });
    const body = await resp.json();
    if (!resp.ok || !body.presented) {
      return;
    }
    button.textContent =
      "Sign in with your certificate" + (body.bot ? " (" + body.bot + ")" : "");
    button.hidden = false;
  } catch (e) {
    // No certificate login offered.
  }
}
async function signInWithCertificate() {
  const status = document.getElementById("status");
  const button = document.getElementById("signin-cert");
  button.hidden = true;
  status.textContent = "Logging in…";
  status.className = "";
  try {
    const resp = await fetch("/web/api/login/certificate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      credentials: "same-origin",
      body: "{}",
    });
    if (resp.ok) {
      window.location.replace("/web/fleet");
      return;
    }
    const body = await resp.json().catch(() => ({}));
    status.textContent = "Login refused: " + (body.error || resp.statusText);
    status.className = "error";
  } catch (e) {
    status.textContent = "Login failed: " + e;
    status.className = "error";
  }
}
document.getElementById("signin").addEventListener("click", signIn);
document.getElementById("signin-cert").addEventListener("click", signInWithCertificate);
offerCertificate();
// A link opened in a tab already on this page changes only the fragment.
window.addEventListener("hashchange", pick);
pick();
