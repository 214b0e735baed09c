(function () {
  "use strict";
  var state = JSON.parse(document.getElementById("room-state").textContent);
  var position = document.getElementById("position");
  var queueLength = document.getElementById("queue-length");
  var eta = document.getElementById("eta");
  var lastPosition = state.position;
  var lastEta = state.eta_ms;
  // How long the "your turn" note shows before the page moves on.
  var ADMITTED_PAUSE_MS = 1500;
  function etaText(ms) {
    if (ms === null || ms === undefined) { return "unknown"; }
    if (ms < 60000) { return "less than a minute"; }
    var minutes = Math.ceil(ms / 60000);
    if (minutes < 120) { return "about " + minutes + " minutes"; }
    return "about " + Math.round(minutes / 60) + " hours";
  }
  function moveOn() {
    window.location.reload();
  }
  if (!window.EventSource || !state.events) { return; }
  var source = new EventSource(state.events);
  source.addEventListener("position", function (event) {
    var data = JSON.parse(event.data);
    if (typeof data.position === "number") {
      if (data.eta_ms !== undefined && data.eta_ms !== null) {
        lastEta = data.eta_ms;
      } else if (typeof lastEta === "number" && typeof lastPosition === "number" && lastPosition > 0) {
        lastEta = Math.round(lastEta * data.position / lastPosition);
      }
      lastPosition = data.position;
      position.textContent = String(data.position);
    }
    if (typeof data.queue_length === "number") { queueLength.textContent = String(data.queue_length); }
    eta.textContent = etaText(lastEta);
  });
  // Admitted: the visitor is told, and taken in a moment later (the reload's answer sets
  // the session cookie and sends them on).
  source.addEventListener("acquired", function () {
    source.close();
    document.body.setAttribute("data-state", "admitted");
    document.getElementById("turn").hidden = false;
    window.setTimeout(moveOn, ADMITTED_PAUSE_MS);
  });
  ["expired", "released", "dropped"].forEach(function (name) {
    source.addEventListener(name, function () { source.close(); moveOn(); });
  });
  source.onerror = function () {
    if (source.readyState === EventSource.CLOSED) { window.setTimeout(moveOn, state.refresh_s * 1000); }
  };
})();
