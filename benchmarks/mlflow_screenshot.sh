#!/usr/bin/env bash
# What a user sees of a run: start the MLflow UI on 127.0.0.1 over the run's SQLite store and
# save the run's page (overview, and the system metrics tab) as PNGs from headless Chromium.
#
#   benchmarks/mlflow_screenshot.sh mlflow.db RUN_ID [OUT_PREFIX]
#     -> OUT_PREFIX-overview.png, OUT_PREFIX-system-metrics.png (default prefix: mlflow-run)
#
# Needs Chromium (Debian: apt-get install -y chromium). Not part of CI: it is for looking.
set -euo pipefail
db=$(realpath "$1")
run_id=$2
prefix=${3:-mlflow-run}
port=${MLFLOW_UI_PORT:-5055}
store="sqlite:///$db"
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "mlflow_screenshot: no chromium; apt-get install -y chromium" >&2; exit 2; }

log=$(mktemp)
# Artifacts of a graftune store sit beside the SQLite file (graftune/tracking/tracker.py sets that location).
mlflow ui --backend-store-uri "$store" --default-artifact-root "$(dirname "$db")/mlartifacts" \
    --host 127.0.0.1 --port "$port" >"$log" 2>&1 &
ui=$!
trap 'kill "$ui" 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 180); do  # the first start of a store migrates its tables: allow minutes
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    kill -0 "$ui" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 1
done

experiment=$(python -c "
import sys
from mlflow.tracking import MlflowClient
print(MlflowClient(sys.argv[1]).get_run(sys.argv[2]).info.experiment_id)" "$store" "$run_id")
page="http://127.0.0.1:$port/#/experiments/$experiment/runs/$run_id"
for tab in overview system-metrics; do
    url=$page
    [ "$tab" = overview ] || url="$page/$tab"
    # The UI renders in the browser: give its scripts (virtual) time before the shot.
    "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
        --window-size=1600,2400 --virtual-time-budget=20000 \
        --screenshot="$prefix-$tab.png" "$url" 2>/dev/null
    echo "$prefix-$tab.png: $url"
done
