// Spends the login link's secret (in the URL fragment, which browsers never
// send to a server) and moves on to the console.
"use strict";
async function attempt() {
  const status = document.getElementById("status");
  const secret = window.location.hash.slice(1);
  // The fragment leaves the address bar and history at once.
  history.replaceState(null, "", "/web/login");
  if (!secret) {
    status.textContent = "You are not logged in.";
    return;
  }
  status.textContent = "Logging in…";
  status.className = "";
  try {
    const resp = await fetch("/web/api/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify({ secret: secret }),
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
// A link opened in a tab already on this page changes only the fragment.
window.addEventListener("hashchange", attempt);
attempt();
