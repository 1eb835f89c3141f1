// mambabook: the widget manager is served from this site's own _static/widgets/ folder.
// embed-amd.js defines @jupyter-widgets/base, controls, output and the manager itself;
// this config only points any other @jupyter-widgets module name at local files, so no
// request ever leaves the site (there is no CDN behind the static pages).
(function () {
  var here = document.currentScript ? document.currentScript.src.replace(/[^/]*$/, "") : "";
  require.config({
    paths: {
      "@jupyter-widgets/html-manager/dist/libembed-amd": here + "embed-amd",
    },
    waitSeconds: 30,
  });
})();
