#!/bin/sh
# run.sh - `meson test`'s entry to the browser test (test_page.mjs).
#
# Makes sure node_modules holds exactly the playwright-core of the committed
# package-lock.json (else `npm ci` from the npm registry, install scripts off,
# one install at a time: build/ and build-asan/ may run this together), then
# runs the test under node's own runner, whose TAP output meson counts.
# Needs node (>= 18), npm, ffmpeg, espeak-ng, python3 and /usr/bin/chromium;
# .ci/install-deps test installs them. Anything missing fails the test with a
# message; only the backbone's tests skip (with the reason) when ../shared
# lacks its checkpoint.
set -eu
here=$(cd "$(dirname "$0")" && pwd)

for tool in node npm ffmpeg ffprobe espeak-ng python3 /usr/bin/chromium flock; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "Bail out! $tool is missing (run .ci/install-deps test)"
    exit 1
  fi
done

installed() {
  node -e '
    const [lock, dir] = process.argv.slice(1);
    const want = require(lock).packages["node_modules/playwright-core"].version;
    let have = null;
    try { have = require(dir + "/node_modules/playwright-core/package.json").version; } catch (e) {}
    process.exit(want === have ? 0 : 1);' "$here/package-lock.json" "$here"
}

if ! installed; then
  exec 9<"$here" # a directory opens read-only, and can be locked
  flock -w 600 9
  if ! installed; then
    # npm's chatter goes to stderr: stdout is TAP.
    if ! (cd "$here" && npm ci --ignore-scripts --no-audit --no-fund) >&2 || ! installed; then
      echo "Bail out! npm ci in $here failed (is the npm registry reachable?)"
      exit 1
    fi
  fi
  exec 9<&-
fi

exec node --test --test-reporter=tap "$here/test_page.mjs"
