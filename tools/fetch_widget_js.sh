#!/usr/bin/env bash
# Fetch the browser-side files the website needs, from the npm registry as pinned,
# hash-checked tarballs, into _widgets_js/ (Sphinx copies it into the site's _static/):
#   widgets/  the ipywidgets HTML manager (embed-amd.js bundles base, controls, output)
#             and require.js, so widgets render with no CDN;
#   mathjax/  MathJax 3 (tex-mml-chtml with its fonts and TeX extensions), so math
#             renders with no CDN.
# A reader needs nothing: only whoever builds the site needs npm.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=_widgets_js
HM=@jupyter-widgets/html-manager@1.0.14; HM_SHA1=d86d9345d5d8e588fa072b37fa40b702c0f1818b
RJ=requirejs@2.3.7;                     RJ_SHA1=0b22032e51a967900e0ae9f32762c23a87036bd0
MJ=mathjax@3.2.2;                       MJ_SHA1=c754d7b46a679d7f3fa03543d6b8bf124ddf9f6b
STAMP="$OUT/.ok-$HM_SHA1-$RJ_SHA1-$MJ_SHA1"
[ -f "$STAMP" ] && exit 0
command -v npm >/dev/null || { echo "fetch_widget_js: npm is needed to build the site (apt-get install npm)"; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fetch() {  # fetch SPEC SHA1 -> unpacked into $tmp/<name>/package
  local spec=$1 sha=$2 dir="$tmp/$(echo "$1" | tr '/@' '__')"
  mkdir -p "$dir"
  local file; file=$(cd "$dir" && npm pack --silent "$spec" | tail -n 1)
  echo "$sha  $dir/$file" | sha1sum -c --quiet - || { echo "fetch_widget_js: checksum mismatch for $spec"; exit 1; }
  tar xzf "$dir/$file" -C "$dir"
  echo "$dir/package"
}
hm=$(fetch $HM $HM_SHA1); rj=$(fetch $RJ $RJ_SHA1); mj=$(fetch $MJ $MJ_SHA1)
rm -rf "$OUT/widgets.new" "$OUT/mathjax"; mkdir -p "$OUT/widgets.new" "$OUT/mathjax/output/chtml/fonts" "$OUT/mathjax/input/tex"
# the manager's CSS refers to its icon fonts by relative URL: keep them beside embed-amd.js
find "$hm/dist" -maxdepth 1 -type f ! -name '*.map' ! -name 'embed.js*' ! -name 'libembed-amd.js' -exec cp {} "$OUT/widgets.new/" \;
cp "$rj/require.js" "$OUT/widgets.new/require.js"
cp "$OUT/widgets/require-config.js" "$OUT/widgets.new/require-config.js"
rm -rf "$OUT/widgets"; mv "$OUT/widgets.new" "$OUT/widgets"
cp "$mj/es5/tex-mml-chtml.js" "$OUT/mathjax/"
cp -r "$mj/es5/output/chtml/fonts/woff-v2" "$OUT/mathjax/output/chtml/fonts/"
cp -r "$mj/es5/input/tex/extensions" "$OUT/mathjax/input/tex/"
cp -r "$mj/es5/ui" "$mj/es5/a11y" "$OUT/mathjax/"
touch "$STAMP"
echo "fetch_widget_js: $HM, $RJ, $MJ in $OUT/"
