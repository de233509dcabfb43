/* The postroom chat widget: a visitor token in localStorage, an EventSource for the conversation,
   POST for what the visitor writes, and acknowledgements of the replies shown (batched).
   Every message is shown once, keyed by its id: a stream may send a reply again (after a
   reconnect, or while it is unacknowledged). No framework, no inline script (the page's CSP). */
(function () {
  "use strict";
  var body = document.body;
  var base = body.dataset.base;
  var storeKey = "postroom-widget:" + body.dataset.inbox;
  var log = document.getElementById("log");
  var form = document.getElementById("compose");
  var text = document.getElementById("text");
  var button = document.getElementById("send");
  var status = document.getElementById("status");
  var shown = {};        // message id -> its element
  var toAck = [];        // reply ids shown and not yet acknowledged
  var ackTimer = null;
  var source = null;

  function token() { return window.localStorage.getItem(storeKey); }

  function say(line) { status.textContent = line || ""; }

  function uuid4() {
    var b = new Uint8Array(16);
    window.crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.prototype.map.call(b, function (x) { return (x + 0x100).toString(16).slice(1); }).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  function ensureVisitor() {
    var known = token();
    if (known) { return Promise.resolve(known); }
    return fetch(base + "/visitors", { method: "POST", cache: "no-store" }).then(function (r) {
      if (r.status !== 201) { throw new Error("visitor " + r.status); }
      return r.json();
    }).then(function (answer) {
      window.localStorage.setItem(storeKey, answer.token);
      return answer.token;
    });
  }

  function place(element, id) {
    var after = null;
    for (var i = 0; i < log.children.length; i++) {
      var child = log.children[i];
      if (child.dataset.id && Number(child.dataset.id) > id) { after = child; break; }
    }
    log.insertBefore(element, after);
    log.scrollTop = log.scrollHeight;
  }

  function render(m) {
    var element = shown[m.id];
    if (element) { element.classList.remove("pending"); return; }
    element = document.createElement("p");
    element.className = "msg " + (m.direction === "inbound" ? "visitor" : "reply");
    element.dataset.id = String(m.id);
    element.dataset.author = m.author || "";
    element.textContent = m.body;
    shown[m.id] = element;
    place(element, m.id);
    if (m.direction === "outbound") { acknowledge(m.id); }
  }

  function acknowledge(id) {
    toAck.push(id);
    if (ackTimer === null) { ackTimer = window.setTimeout(flushAcks, 200); }
  }

  function flushAcks() {
    ackTimer = null;
    var ids = toAck.splice(0, 200);
    if (!ids.length || !token()) { return; }
    fetch(base + "/ack", {
      method: "POST", cache: "no-store",
      headers: { "Content-Type": "application/json", "Authorization": "Bearer " + token() },
      body: JSON.stringify({ ids: ids })
    }).then(function (r) {
      if (r.status >= 500) { throw new Error("ack " + r.status); }
    }).catch(function () {
      toAck = ids.concat(toAck);
      if (ackTimer === null) { ackTimer = window.setTimeout(flushAcks, 2000); }
    });
    if (toAck.length && ackTimer === null) { ackTimer = window.setTimeout(flushAcks, 200); }
  }

  function listen(visitorToken) {
    var url = base + "/events?token=" + encodeURIComponent(visitorToken);
    source = new window.EventSource(url);
    source.onopen = function () { say(""); };
    source.onmessage = function (e) { render(JSON.parse(e.data)); };
    source.onerror = function () {
      if (source.readyState !== window.EventSource.CLOSED) { return; }  // the browser reconnects by itself
      // Refused (not a dropped connection): a token the service no longer knows starts over.
      fetch(url, { method: "HEAD", cache: "no-store" }).then(function (r) {
        if (r.status === 401) { window.localStorage.removeItem(storeKey); }
        if (r.status === 404) { say("This chat is not available."); }
      }).catch(function () { /* unreachable: try again below */ }).then(function () {
        window.setTimeout(start, 2000);
      });
    };
  }

  function start() {
    if (source) { source.close(); source = null; }
    ensureVisitor().then(listen, function () {
      say("Connecting…");
      window.setTimeout(start, 3000);
    });
  }

  function post(message, attempt) {
    return fetch(base + "/messages", {
      method: "POST", cache: "no-store",
      headers: { "Content-Type": "application/json", "Authorization": "Bearer " + token() },
      body: JSON.stringify(message)
    }).then(function (r) {
      if (r.status === 202) { return r.json(); }
      if (r.status === 429 && attempt < 5) {
        var wait = Number(r.headers.get("Retry-After") || "1");
        say("Sending too fast; waiting a moment…");
        return new Promise(function (done) { window.setTimeout(done, wait * 1000); }).then(function () {
          return post(message, attempt + 1);
        });
      }
      if (r.status >= 500 && attempt < 3) { return post(message, attempt + 1); }
      return r.json().then(function (answer) { throw new Error(answer.error ? answer.error.message : String(r.status)); });
    }, function (err) {
      if (attempt < 3) { return post(message, attempt + 1); }  // same client_id: stored at most once
      throw err;
    });
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var value = text.value.trim();
    if (!value || !token()) { return; }
    button.disabled = true;
    post({ client_id: uuid4(), body: value }, 0).then(function (answer) {
      text.value = "";
      say("");
      render({ id: answer.id, direction: "inbound", author: null, body: value });
    }, function (err) {
      say("Not sent: " + err.message);
    }).then(function () { button.disabled = false; text.focus(); });
  });

  text.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
  });

  start();
}());
