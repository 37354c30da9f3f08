#!/usr/bin/env bash
# One command for the gateway benchmark (issue 7). Usage: bench/gateway/run.sh [--quick] [run.py options]
# Needs Debian's nginx (+ echo module for the 200 ms upstream), wrk and taskset; py-spy in the venv for profiles;
# optionally a LiteLLM proxy in /tmp/litellm-venv for the side-by-side figures.
set -euo pipefail
cd "$(dirname "$0")/../.."
missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
command -v taskset >/dev/null || missing+=(util-linux)
[ -e /usr/lib/nginx/modules/ngx_http_echo_module.so ] || missing+=(libnginx-mod-http-echo)
if [ ${#missing[@]} -gt 0 ]; then
  echo "missing: ${missing[*]}" >&2
  echo "install:  apt-get update && apt-get install -y nginx wrk util-linux libnginx-mod-http-echo" >&2
  echo "(without libnginx-mod-http-echo the run goes on and skips the 1,000-in-flight test)" >&2
  command -v nginx >/dev/null && command -v wrk >/dev/null && command -v taskset >/dev/null || exit 2
fi
PY=.venv/bin/python
[ -x "$PY" ] || { echo "no .venv: create it first (see README.md)" >&2; exit 2; }
[ -x .venv/bin/py-spy ] || echo "note: no py-spy in .venv (.venv/bin/pip install py-spy): profiles are skipped" >&2
[ -x /tmp/litellm-venv/bin/litellm ] || echo "note: no LiteLLM (python3 -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'): its figures are skipped" >&2
exec "$PY" bench/gateway/run.py "$@"
