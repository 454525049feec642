/* django_poolguard dashboard: refresh the page body from the JSON view every few seconds.
   Without JavaScript the page is a static snapshot with a Reload link. Open <details>
   (stacks, SQL) stay open across refreshes, and refreshing pauses while the tab is hidden. */
"use strict";
(function () {
    const root = document.getElementById("poolguard-dashboard");
    if (!root || !window.fetch) {
        return;
    }
    const url = root.dataset.url;
    const seconds = Math.max(1, parseInt(root.dataset.refresh, 10) || 5);
    const stateNote = document.getElementById("poolguard-refresh-state");
    document.querySelectorAll(".pg-js-only").forEach(function (el) { el.hidden = false; });

    function openKeys() {
        const keys = new Set();
        root.querySelectorAll("details[open][data-key]").forEach(function (el) { keys.add(el.dataset.key); });
        return keys;
    }

    function refresh() {
        if (document.hidden) {
            return schedule();
        }
        fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
            .then(function (response) {
                if (!response.ok) {
                    throw new Error("the server answered " + response.status);
                }
                // An expired session is redirected to the login page, which is HTML.
                if ((response.headers.get("Content-Type") || "").indexOf("application/json") !== 0) {
                    throw new Error("signed out? reload the page");
                }
                return response.json();
            })
            .then(function (data) {
                const keep = openKeys();
                root.innerHTML = data.html;
                root.querySelectorAll("details[data-key]").forEach(function (el) {
                    if (keep.has(el.dataset.key)) {
                        el.open = true;
                    }
                });
                root.dataset.updated = data.generated_at;
                if (stateNote) {
                    stateNote.textContent = "";
                }
                schedule();
            })
            .catch(function (error) {
                // Logged out, no permission or server down: say so and keep trying, slower.
                if (stateNote) {
                    stateNote.textContent = " (last refresh failed: " + error.message + ")";
                }
                schedule(4);
            });
    }

    function schedule(factor) {
        window.setTimeout(refresh, seconds * 1000 * (factor || 1));
    }

    schedule();
})();
