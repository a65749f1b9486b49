// Live progress: every element with data-poll fetches its JSON once a second and writes the numbers into
// the [data-job] / [data-stage] / [data-field] elements below it (textContent only: no markup from data).
(function () {
  function put(scope, field, value) {
    scope.querySelectorAll('[data-field="' + field + '"]').forEach(function (el) {
      if (el.closest('[data-stage]') && !scope.matches('[data-stage]')) return;  // a stage's own cell
      el.textContent = String(value);
    });
  }
  function apply(job) {
    document.querySelectorAll('[data-job="' + job.job + '"]').forEach(function (scope) {
      if (scope.matches('[data-stage]')) return;
      ['status', 'done', 'dead_tasks'].forEach(function (f) { put(scope, f, job[f]); });
    });
    job.stages.forEach(function (s) {
      document.querySelectorAll('[data-job="' + job.job + '"][data-stage="' + s.stage + '"], [data-job="' +
          job.job + '"] [data-stage="' + s.stage + '"]').forEach(function (scope) {
        ['scored', 'errors', 'queued', 'running'].forEach(function (f) { put(scope, f, s[f]); });
      });
    });
  }
  function poll(el) {
    fetch(el.dataset.poll, {credentials: 'same-origin', cache: 'no-store'})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (data) { (Array.isArray(data) ? data : [data]).forEach(apply); }
      })
      .catch(function () {})
      .finally(function () { setTimeout(function () { poll(el); }, 1000); });
  }
  document.addEventListener('DOMContentLoaded', function () {
    document.querySelectorAll('[data-poll]').forEach(poll);
  });
})();
