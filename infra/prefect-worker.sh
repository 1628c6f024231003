#!/usr/bin/env bash
# A Prefect process work pool and a worker that polls it: flow runs of the deployments in
# prefect.yaml start as child processes of this worker, on this machine.
#
#   PREFECT_API_URL=http://HOST:4200/api infra/prefect-worker.sh [POOL]   # default embedpipe-process
#
# The worker runs flows from EMBEDPIPE_HOME (default: this checkout), with its Python
# (.venv/bin, or PYTHON). Start the server first: `prefect server start --host 0.0.0.0`.
set -euo pipefail

pool=${1:-embedpipe-process}
here=$(cd "$(dirname "$0")/.." && pwd)
venv_python=$here/.venv/bin/python  # else the python3 on PATH (an installed wheel, the image)
[ -x "$venv_python" ] || venv_python=$(command -v python3)
python=${PYTHON:-$venv_python}
export EMBEDPIPE_HOME=${EMBEDPIPE_HOME:-$here}
export PATH="$(dirname "$python"):$PATH"
export PREFECT_SERVER_ANALYTICS_ENABLED=${PREFECT_SERVER_ANALYTICS_ENABLED:-false}
: "${PREFECT_API_URL:?set PREFECT_API_URL to the server, e.g. http://127.0.0.1:4200/api}"

if ! prefect work-pool inspect "$pool" >/dev/null 2>&1; then
  prefect work-pool create "$pool" --type process
fi
cd "$EMBEDPIPE_HOME"
exec prefect worker start --pool "$pool" --type process
