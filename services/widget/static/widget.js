/* The postroom chat widget: a visitor token in localStorage, an EventSource for the conversation,
   POST for what the visitor writes, and acknowledgements of the replies shown (batched).
   The token only ever travels in an Authorization header: a stream's URL carries a stream ticket
   (valid a minute, good for nothing else), fetched afresh for every (re)connect.
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
  var cursor = "0";      // the last event id streamed: a reconnect continues after it

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

  function ticket(visitorToken) {
    return fetch(base + "/stream-ticket", {
      method: "POST", cache: "no-store", headers: { "Authorization": "Bearer " + visitorToken }
    }).then(function (r) {
      if (r.status === 200) { return r.json(); }
      // A token the service no longer knows starts over with a new visitor.
      if (r.status === 401) { window.localStorage.removeItem(storeKey); }
      var refused = new Error("ticket " + r.status);
      refused.unavailable = r.status === 404;
      throw refused;
    }).then(function (answer) { return answer.ticket; });
  }

  function listen(streamTicket) {
    var stream = new window.EventSource(base + "/events?ticket=" + encodeURIComponent(streamTicket) + "&after=" + cursor);
    source = stream;
    stream.onopen = function () { say(""); };
    stream.onmessage = function (e) {
      if (/^[0-9]+$/.test(e.lastEventId)) { cursor = e.lastEventId; }
      render(JSON.parse(e.data));
    };
    stream.onerror = function () {
      // Ended or dropped: its ticket may have expired by now, so reconnect with a fresh one
      // rather than let the browser retry the same URL.
      stream.close();
      if (source !== stream) { return; }
      source = null;
      window.setTimeout(start, 1000);
    };
  }

  function start() {
    if (source) { source.close(); source = null; }
    ensureVisitor().then(ticket).then(listen, function (err) {
      say(err && err.unavailable ? "This chat is not available." : "Connecting…");
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
