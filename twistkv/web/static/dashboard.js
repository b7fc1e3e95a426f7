// twistkv dashboard: live updates over Server-Sent Events, the key explorer and the demo
// controls. Plain browser JavaScript, no library, nothing fetched from elsewhere.
//
// Every part of the page has one renderer, its Jinja2 template on the node: when an event
// says a part changed, the page asks /fragments for it and swaps it in. The event stream
// only says *when*; the node says *what*.
(function () {
  "use strict";

  var body = document.body;
  var liveBadge = document.getElementById("live");
  var ALL_PARTS = ["overview", "members", "ring", "timeline", "traffic", "demo", "rebalance"];
  //: What each kind of event changes on the page.
  var PARTS_FOR = {
    member: ["overview", "members", "ring", "timeline", "demo"],
    hints_queued: ["overview", "members", "timeline"],
    hints_delivered: ["overview", "members", "timeline"],
    read_repair: ["timeline"],
    quorum_failure: ["overview", "timeline"],
    pause: ["overview", "timeline", "demo"],
    resume: ["overview", "timeline", "demo"],
    traffic: ["overview", "members", "traffic"],
    // One progress bar per range stream; the bars are the "rebalance" part.
    rebalance_start: ["rebalance", "timeline"],
    rebalance_progress: ["rebalance"],
    rebalance_done: ["rebalance", "timeline", "members", "ring"],
    rebalance_failed: ["rebalance", "timeline"],
    reset: ALL_PARTS
  };

  // -- fragments ------------------------------------------------------------------------

  var pending = {};
  var inFlight = false;

  function refresh(parts) {
    parts.forEach(function (part) { pending[part] = true; });
    if (!inFlight) { fetchPending(); }
  }

  function fetchPending() {
    var parts = Object.keys(pending);
    if (!parts.length) { return; }
    pending = {};
    inFlight = true;
    fetch("/fragments?parts=" + parts.join(","), { headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (answer) {
        Object.keys(answer.parts).forEach(function (part) {
          var box = document.querySelector('[data-part="' + part + '"]');
          if (box) { box.innerHTML = answer.parts[part]; }
        });
      })
      .catch(function () { /* the node is unreachable: the badge already says so */ })
      .then(function () {
        inFlight = false;
        if (Object.keys(pending).length) { window.setTimeout(fetchPending, 100); }
      });
  }

  // -- the event stream -----------------------------------------------------------------

  function setLive(on, text) {
    if (!liveBadge) { return; }
    liveBadge.className = "live " + (on ? "on" : "off");
    liveBadge.textContent = text;
  }

  function connect() {
    if (!window.EventSource) {
      setLive(false, "no live updates in this browser; refreshing every 2 s");
      window.setInterval(function () { refresh(ALL_PARTS); }, 2000);
      return;
    }
    var url = "/api/events";
    if (body.dataset.streamEpoch) {
      // Replay whatever happened between rendering this page and opening the stream.
      url += "?since=" + encodeURIComponent(body.dataset.streamEpoch + "-" + body.dataset.lastEventId);
    }
    var source = new EventSource(url);
    source.onopen = function () { setLive(true, "live"); };
    source.onerror = function () { setLive(false, "connection lost, reconnecting…"); };
    var ringShown = Date.now();
    Object.keys(PARTS_FOR).forEach(function (kind) {
      source.addEventListener(kind, function () {
        var parts = PARTS_FOR[kind].slice();
        // The ring's key bars change with traffic, but its SVG is large: every 5 s is enough.
        if (parts.indexOf("ring") >= 0 || Date.now() - ringShown > 5000) {
          ringShown = Date.now();
          if (parts.indexOf("ring") < 0) { parts.push("ring"); }
        }
        refresh(parts);
      });
    });
  }

  // -- small DOM helpers (user data only ever goes in as text) ---------------------------

  function el(tag, text, className) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    if (className) { node.className = className; }
    return node;
  }

  function table(headers, rows) {
    var t = el("table");
    var head = t.createTHead().insertRow();
    headers.forEach(function (h) { head.appendChild(el("th", h)); });
    var tbody = t.createTBody();
    rows.forEach(function (cells) {
      var row = tbody.insertRow();
      cells.forEach(function (cell) { row.appendChild(el("td", cell)); });
    });
    return t;
  }

  function clock(vc) {
    return Object.keys(vc || {}).sort().map(function (k) { return k + ":" + vc[k]; }).join(" ");
  }

  function versionRows(versions) {
    return (versions || []).map(function (v) {
      var value = v.tombstone ? "(deleted)" : v.value;
      if (v.encoding === "base64" && !v.tombstone) { value = "base64:" + value; }
      return [value, clock(v.version.vector_clock), v.timestamp, v.version.node,
              v.expired ? "expired" : (v.ttl_ms !== null ? v.ttl_ms + " ms left" : "")];
    });
  }

  function show(box, title, document, extra) {
    box.textContent = "";
    box.appendChild(el("strong", title));
    if (extra) { box.appendChild(extra); }
    var pre = el("pre", JSON.stringify(document, null, 2));
    box.appendChild(pre);
  }

  function showError(box, title, status, document) {
    box.textContent = "";
    var message = document && document.error ? document.error.message : "no answer";
    box.appendChild(el("div", title + ": " + status + " " + message, "error"));
    if (document) { box.appendChild(el("pre", JSON.stringify(document, null, 2))); }
  }

  // -- the key explorer -----------------------------------------------------------------

  function explorer() {
    var form = document.getElementById("kv-form");
    if (!form) { return; }
    var result = document.getElementById("kv-result");

    function run(action) {
      var key = document.getElementById("kv-key").value;
      if (!key) { result.textContent = "Type a key first."; return; }
      var consistency = document.getElementById("kv-consistency").value;
      var query = consistency ? "consistency=" + encodeURIComponent(consistency) : "";
      var path = "/kv/" + encodeURIComponent(key);
      var request;
      if (action === "get") {
        request = fetch(path + "?format=json" + (query ? "&" + query : ""));
      } else if (action === "put") {
        request = fetch(path + "?format=json" + (query ? "&" + query : ""), {
          method: "PUT", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ value: document.getElementById("kv-value").value })
        });
      } else if (action === "delete") {
        request = fetch(path + (query ? "?" + query : ""), { method: "DELETE" });
      } else {
        request = fetch("/api/where/" + encodeURIComponent(key) + (query ? "?" + query : ""));
      }
      result.textContent = action + " " + key + "…";
      request.then(function (response) {
        return response.json().then(function (doc) { return [response.status, doc]; },
                                     function () { return [response.status, null]; });
      }).then(function (answer) {
        var status = answer[0], doc = answer[1];
        if (status >= 400) { showError(result, action.toUpperCase(), status, doc); return; }
        if (action === "get") {
          show(result, "GET " + status + ": " + doc.value, doc,
               table(["sibling", "vector clock", "timestamp", "writer", "ttl"], versionRows(doc.siblings)));
        } else if (action === "where") {
          var rows = doc.replicas.map(function (r) {
            var held = r.versions === null ? (r.error || "no answer")
              : (r.versions.length ? versionRows(r.versions).map(function (v) { return v[0] + " @ " + v[1]; }).join("; ") : "(nothing)");
            return [r.node, r.role, r.state, held];
          });
          var extra = table(["node", "role", "state", "holds"], rows);
          if (doc.error) { extra.insertBefore(el("caption", doc.error.message, "error"), extra.firstChild); }
          show(result, "Preference list (N=" + doc.n + ")", doc, extra);
        } else {
          show(result, action.toUpperCase() + " " + status, doc);
        }
      }).catch(function (error) { showError(result, action.toUpperCase(), "—", { error: { message: String(error) } }); });
    }

    form.addEventListener("submit", function (event) { event.preventDefault(); run("get"); });
    form.querySelectorAll("button[data-action]").forEach(function (button) {
      if (button.type === "button") {
        button.addEventListener("click", function () { run(button.dataset.action); });
      }
    });
  }

  // -- demo controls --------------------------------------------------------------------

  function demo() {
    var form = document.getElementById("demo-form");
    if (!form) { return; }
    var result = document.getElementById("demo-result");
    var tokenInput = document.getElementById("demo-token");
    try { tokenInput.value = window.sessionStorage.getItem("twistkv-admin-token") || ""; } catch (e) { /* storage off */ }

    function send(action) {
      var token = tokenInput.value;
      try { window.sessionStorage.setItem("twistkv-admin-token", token); } catch (e) { /* storage off */ }
      var payload = { node: document.getElementById("demo-node").value };
      if (action === "pause") { payload.seconds = Number(document.getElementById("demo-seconds").value); }
      if (action === "leave" && !window.confirm("Ask " + payload.node + " to leave the cluster? " +
          "It hands its ranges over, leaves the ring and shuts down.")) { return; }
      result.textContent = action + "…";
      fetch("/api/demo/" + action, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Twistkv-Admin-Token": token },
        body: JSON.stringify(payload)
      }).then(function (response) {
        return response.json().then(function (doc) { return [response.status, doc]; });
      }).then(function (answer) {
        if (answer[0] >= 400) { showError(result, action, answer[0], answer[1]); return; }
        show(result, action + " " + answer[0], answer[1]);
        refresh(["demo", "overview", "rebalance"]);
      }).catch(function (error) { showError(result, action, "—", { error: { message: String(error) } }); });
    }

    form.addEventListener("submit", function (event) { event.preventDefault(); send("pause"); });
    form.querySelector('button[data-action="resume"]').addEventListener("click", function () { send("resume"); });
    form.querySelector('button[data-action="leave"]').addEventListener("click", function () { send("leave"); });
  }

  explorer();
  demo();
  connect();
}());
