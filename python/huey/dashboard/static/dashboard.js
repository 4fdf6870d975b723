// Refreshes the server-rendered panel every few seconds and asks before destructive actions.
(function () {
  'use strict';
  var body = document.body;
  var url = body.getAttribute('data-panel-url');
  var every = parseFloat(body.getAttribute('data-refresh')) * 1000;

  function refresh() {
    fetch(url, {credentials: 'same-origin', cache: 'no-store'})
      .then(function (response) {
        if (!response.ok) { throw new Error('HTTP ' + response.status); }
        return response.text();
      })
      .then(function (html) {
        var open = {};
        document.querySelectorAll('#panel details[open]').forEach(function (el) {
          open[el.id] = true;
        });
        document.getElementById('panel').innerHTML = html;
        Object.keys(open).forEach(function (id) {
          var el = document.getElementById(id);
          if (el) { el.open = true; }
        });
        document.getElementById('refreshed').textContent = new Date().toLocaleTimeString();
        body.classList.remove('stale');
      })
      .catch(function () { body.classList.add('stale'); });
  }

  document.addEventListener('submit', function (event) {
    var question = event.target.getAttribute('data-confirm');
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });
  if (every > 0) { setInterval(refresh, every); }
})();
