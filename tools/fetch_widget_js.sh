#!/usr/bin/env bash
# Fetch the ipywidgets HTML manager and require.js from the npm registry as pinned,
# hash-checked tarballs, into _widgets_js/widgets/ (copied to the site's _static/widgets/).
# The website then renders widgets with no CDN; a reader needs no Node.js (only the builder).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=_widgets_js/widgets
HM_VERSION=1.0.14
HM_SHA1=d86d9345d5d8e588fa072b37fa40b702c0f1818b
RJ_VERSION=2.3.7
RJ_SHA1=0b22032e51a967900e0ae9f32762c23a87036bd0
if [ -f "$DEST/.ok-$HM_VERSION-$RJ_VERSION" ]; then exit 0; fi
command -v npm >/dev/null || { echo "fetch_widget_js: npm is needed to fetch the widget manager (apt-get install npm)"; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "@jupyter-widgets/html-manager@$HM_VERSION" "requirejs@$RJ_VERSION" >/dev/null)
check() { echo "$2  $1" | sha1sum -c --quiet - || { echo "fetch_widget_js: checksum mismatch for $1"; exit 1; }; }
check "$tmp/jupyter-widgets-html-manager-$HM_VERSION.tgz" $HM_SHA1
check "$tmp/requirejs-$RJ_VERSION.tgz" $RJ_SHA1
rm -rf "$DEST"; mkdir -p "$DEST" "$tmp/hm" "$tmp/rj"
tar xzf "$tmp/jupyter-widgets-html-manager-$HM_VERSION.tgz" -C "$tmp/hm"
tar xzf "$tmp/requirejs-$RJ_VERSION.tgz" -C "$tmp/rj"
# embed-amd.js bundles the manager with the base, controls and output widgets; the font
# files beside it are the icons its CSS refers to by relative URL.
find "$tmp/hm/package/dist" -maxdepth 1 -type f ! -name '*.map' ! -name 'embed.js*' ! -name 'libembed-amd.js' -exec cp {} "$DEST/" \;
cp "$tmp/rj/package/require.js" "$DEST/require.js"
touch "$DEST/.ok-$HM_VERSION-$RJ_VERSION"
echo "fetch_widget_js: html-manager $HM_VERSION and requirejs $RJ_VERSION in $DEST"
