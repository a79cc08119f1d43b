// Tollgate console: live updates of the approvals queue. The page works
// without this script (reload to refresh); with it, the list is replaced
// by the server's own rendering whenever the pending set changes.
"use strict";
(function () {
  var target = document.querySelector("[data-live]");
  if (!target || !window.EventSource) { return; }
  var url = target.getAttribute("data-live");
  var refresh = function () {
    fetch(url, { credentials: "same-origin", headers: { "accept": "text/html" } })
      .then(function (r) {
        if (r.status === 401) { window.location.assign("/console/signin"); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        // The fragment is the server's escaped rendering, same origin.
        if (html !== null) { target.innerHTML = html; }
      })
      .catch(function () {});
  };
  var events = new EventSource("/console/events");
  events.addEventListener("approvals", refresh);
})();
