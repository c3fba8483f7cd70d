#!/bin/sh
# Start the model server the way the API image does.
#   MODELCYCLE_MODELS   models to serve, space-separated NAME@ALIAS (default twins@champion)
#   HOST, PORT          where to listen (default 0.0.0.0:8000)
#   MLFLOW_TRACKING_URI a tracking server to read the registry from (default: the workspace)
#   MODELCYCLE_SERVE_ARGS extra overrides, e.g. "serve.workers=2 serve.max_batch=64"
set -eu
models="${MODELCYCLE_MODELS:-twins@champion}"
set -- serve.host="${HOST:-0.0.0.0}" serve.port="${PORT:-8000}"
if [ -n "${MLFLOW_TRACKING_URI:-}" ]; then
    set -- "$@" logger.uri="${MLFLOW_TRACKING_URI}"
fi
# Word splitting is wanted here: both variables hold space-separated lists.
# shellcheck disable=SC2086
exec modelcycle serve ${models} "$@" ${MODELCYCLE_SERVE_ARGS:-}
