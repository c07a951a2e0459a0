// The console's one script: pages that ask for it (data-refresh on <main>) refresh their content
// every N seconds while the tab is visible, without reloading the page (focus and scroll stay).
"use strict";
(function () {
  const main = document.querySelector("main[data-refresh]");
  if (!main) return;
  const seconds = Math.max(1, parseInt(main.dataset.refresh, 10) || 15);
  let timer = null;
  async function refresh() {
    if (document.hidden || main.contains(document.activeElement) && document.activeElement !== main) return;
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (response.redirected || !response.ok) return; // signed out, or the service is away: leave the page as it is
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.querySelector("main");
      if (!fresh) return;
      main.innerHTML = fresh.innerHTML;
      if (!fresh.hasAttribute("data-refresh")) window.clearInterval(timer); // done (a finished job): stop asking
    } catch (error) {
      // offline for a moment: try again next time
    }
  }
  timer = window.setInterval(refresh, seconds * 1000);
})();

// Copy buttons: <button data-copy="ELEMENT_ID"> puts that element's text on the clipboard.
document.addEventListener("click", async function (event) {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copy);
  if (!source) return;
  try {
    await navigator.clipboard.writeText(source.textContent.trim());
    button.textContent = "Copied";
  } catch (error) {
    window.getSelection().selectAllChildren(source); // no clipboard (plain http): select it to copy by hand
    button.textContent = "Selected: press Ctrl+C";
  }
});
