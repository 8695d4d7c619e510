#!/usr/bin/env bash
# Installs the peers of bench/run when missing, each from its own registry, into
# folders of this checkout (gitignored), and nothing leaves the machine afterwards:
#   Debian: node + npm (only if `node` is missing), redis-server, redis-tools, wrk,
#           python3-venv / python3-dev (only when the venv or uWSGI's build needs them)
#   PyPI:   supervisor, superlance (memmon), uwsgi, gunicorn  -> bench/.venv
#   npm:    pm2                                                -> bench/.node
# Prints one line per peer: "name version".
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=$root/bench/.venv
node_dir=$root/bench/.node
export DEBIAN_FRONTEND=noninteractive
# npm: no update notice, no funding/audit requests.
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false

need=()
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || need+=(redis-tools)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v cc >/dev/null 2>&1 || need+=(gcc)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
python3 -c 'import sysconfig, os, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)' \
    || need+=(python3-dev)
if ((${#need[@]})); then
    echo "bench/peers: apt-get install ${need[*]}" >&2
    apt-get update -qq >&2
    apt-get install -y -qq "${need[@]}" >&2
fi

if [[ ! -x $venv/bin/uwsgi || ! -x $venv/bin/gunicorn || ! -x $venv/bin/supervisord || ! -x $venv/bin/memmon ]]; then
    echo "bench/peers: pip install supervisor superlance uwsgi gunicorn into bench/.venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check supervisor superlance uwsgi gunicorn >&2
fi
if [[ ! -x $node_dir/node_modules/.bin/pm2 ]]; then
    echo "bench/peers: npm install pm2 into bench/.node" >&2
    npm install -s --prefix "$node_dir" pm2 >&2
fi
