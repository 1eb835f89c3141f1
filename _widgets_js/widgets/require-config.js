// mambabook: the widget manager is served from this site's own _static/widgets/ folder.
// embed-amd.js defines @jupyter-widgets/base, controls, output and the manager itself;
// this config points the manager's module name at the local file, so no request ever
// leaves the site (there is no CDN behind the static pages).
(function () {
  var here = document.currentScript ? document.currentScript.src.replace(/[^/]*$/, "") : "";
  require.config({
    paths: { "@jupyter-widgets/html-manager/dist/libembed-amd": here + "embed-amd" },
    waitSeconds: 30,
  });
  // The manager typesets widget labels with MathJax 2's MathJax.Hub.Queue; the site loads
  // MathJax 3. Give it a Hub.Queue that forwards to MathJax 3's typesetPromise, both on the
  // configuration object (before MathJax starts) and on MathJax itself once it is ready.
  function hub() {
    return {
      Queue: function (job) {
        var el = job && job[2];
        if (el && window.MathJax && window.MathJax.typesetPromise) {
          window.MathJax.typesetPromise([el]).catch(function () {});
        }
      },
    };
  }
  var mj = (window.MathJax = window.MathJax || {});
  mj.Hub = hub();
  mj.startup = mj.startup || {};
  var ready = mj.startup.ready;
  mj.startup.ready = function () {
    if (ready) ready(); else window.MathJax.startup.defaultReady();
    window.MathJax.Hub = hub();
  };
})();
