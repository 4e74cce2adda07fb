// ipywidgets' HTML manager typesets widget labels with the MathJax 2 API (MathJax.Hub.Queue);
// the book serves MathJax 3, which has no Hub. This runs after Sphinx's `window.MathJax = {...}`
// configuration and before the deferred MathJax script: it keeps that configuration, gives the
// widgets a Hub that does nothing until MathJax is ready (its startup typesets the page anyway),
// then one that forwards to MathJax 3's typesetPromise.
(function () {
  var config = window.MathJax || {};
  var startup = config.startup || {};
  function forward(job) {
    var element = job && job[2];
    if (window.MathJax && window.MathJax.typesetPromise) {
      window.MathJax.typesetPromise(element ? [element] : undefined).catch(function () {});
    }
  }
  config.Hub = { Queue: function () {} };
  startup.ready = function () {
    window.MathJax.startup.defaultReady();
    window.MathJax.Hub = { Queue: forward };
  };
  config.startup = startup;
  window.MathJax = config;
})();
