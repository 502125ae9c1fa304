// kefu console: countdowns and live updates over Server-Sent Events. No inline script
// (the Content-Security-Policy allows none); every HTML fragment comes from the server,
// already escaped by its templates.
(function () {
  "use strict";

  function left(secs) {
    if (secs <= 0) return "已过期";
    var d = Math.floor(secs / 86400), h = Math.floor(secs % 86400 / 3600),
        m = Math.floor(secs % 3600 / 60), s = secs % 60;
    var two = function (n) { return (n < 10 ? "0" : "") + n; };
    return (d > 0 ? d + "天" : "") + two(h) + ":" + two(m) + ":" + two(s);
  }

  function tick() {
    var now = Math.floor(Date.now() / 1000);
    document.querySelectorAll("[data-expires]").forEach(function (el) {
      var at = parseInt(el.getAttribute("data-expires"), 10);
      el.textContent = at > 0 ? left(at - now) : "-";
    });
  }

  // With several accounts the page names its account (<body data-account>), and every URL
  // the script opens carries it: the live events and fragments are that account's.
  function withAccount(url) {
    var account = document.body && document.body.getAttribute("data-account");
    if (!account) return url;
    return url + (url.indexOf("?") < 0 ? "?" : "&") + "account=" + encodeURIComponent(account);
  }

  // A session that ended (signed out elsewhere, or idle) answers every console URL with the
  // sign-in page: go there instead of putting that page inside this one.
  function signedOut(r) {
    return r.redirected && /\/console\/login/.test(r.url);
  }

  function toLogin() {
    window.location.assign(withAccount("/console/login"));
  }

  function refresh(url, target) {
    return fetch(withAccount(url), { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (signedOut(r)) { toLogin(); return Promise.reject(401); }
        return r.ok ? r.text() : Promise.reject(r.status);
      })
      .then(function (html) { target.innerHTML = html; tick(); })
      .catch(function () { /* the next event tries again */ });
  }

  function live() {
    var region = document.querySelector("[data-live]");
    if (!region || !window.EventSource) return;
    var kind = region.getAttribute("data-live");
    var openid = region.getAttribute("data-openid");
    var pending = false;
    var es = new EventSource(withAccount("/console/events"));
    // The server ends the stream when the session ends; EventSource then retries, and a
    // retry without a session fails: check, and leave for the sign-in page if that is why.
    es.addEventListener("error", function () {
      fetch(withAccount("/console/fragments/conversations"), { credentials: "same-origin" })
        .then(function (r) { if (signedOut(r)) { es.close(); toLogin(); } })
        .catch(function () { /* kefu is restarting: EventSource keeps trying */ });
    });
    es.addEventListener("message", function (ev) {
      var rec;
      try { rec = JSON.parse(ev.data); } catch (e) { return; }
      if (pending) return;
      if (kind === "conversations") {
        pending = true;
        refresh("/console/fragments/conversations", document.getElementById("conversation-rows"))
          .then(function () { pending = false; });
      } else if (kind === "thread" && rec.openid === openid) {
        var typing = document.getElementById("reply-text");
        if (typing && typing.value) return; // never wipe a reply being written
        pending = true;
        refresh("/console/fragments/thread/" + encodeURIComponent(openid), region)
          .then(function () { pending = false; });
      }
    });
  }

  function confirms() {
    document.querySelectorAll("form[data-confirm]").forEach(function (f) {
      f.addEventListener("submit", function (ev) {
        if (!window.confirm(f.getAttribute("data-confirm"))) ev.preventDefault();
      });
    });
  }

  // The account switcher changes page as soon as an account is chosen (its button stays for
  // a browser without script).
  function switcher() {
    document.querySelectorAll("select[data-autosubmit]").forEach(function (s) {
      s.addEventListener("change", function () { if (s.form) s.form.submit(); });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    tick();
    setInterval(tick, 1000);
    live();
    confirms();
    switcher();
  });
})();
