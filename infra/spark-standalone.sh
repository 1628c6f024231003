#!/usr/bin/env bash
# A Spark standalone cluster on loopback from the pip-installed pyspark: one master, N workers.
#
#   infra/spark-standalone.sh start [WORKERS] [PORT]   # prints the master URL, spark://127.0.0.1:PORT
#   infra/spark-standalone.sh stop
#
# Each worker gets 1 core and 1 GiB. State (pids, logs, worker dirs) lives in $SPARK_RUN_DIR
# (default .spark-standalone/). Used by the cluster tests; on a real cluster use your own master.
set -euo pipefail

action=${1:?usage: $0 start [WORKERS] [PORT] | stop}
workers=${2:-2}
port=${3:-7077}
here=$(cd "$(dirname "$0")/.." && pwd)
# The checkout's .venv when there is one, else the python3 on PATH (an installed wheel, the image).
venv_python=$here/.venv/bin/python
[ -x "$venv_python" ] || venv_python=$(command -v python3)
python=${PYTHON:-$venv_python}
run_dir=${SPARK_RUN_DIR:-$here/.spark-standalone}
export SPARK_HOME=${SPARK_HOME:-$("$python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')}
export SPARK_LOCAL_IP=127.0.0.1
export PYSPARK_PYTHON=${PYSPARK_PYTHON:-$python}
export PATH="$(dirname "$python"):$PATH"
command -v java >/dev/null || [ -n "${JAVA_HOME:-}" ] || { echo "Spark needs Java 17+: apt-get install openjdk-17-jre-headless" >&2; exit 1; }

start_daemon() {  # name, class, args...
  local name=$1; shift
  nohup "$SPARK_HOME/bin/spark-class" "$@" >"$run_dir/$name.log" 2>&1 &
  echo $! >"$run_dir/$name.pid"
}

case $action in
  start)
    mkdir -p "$run_dir"
    start_daemon master org.apache.spark.deploy.master.Master \
      --host 127.0.0.1 --port "$port" --webui-port 0
    for _ in $(seq 1 60); do
      grep -q "I have been elected leader" "$run_dir/master.log" 2>/dev/null && break
      sleep 1
    done
    grep -q "I have been elected leader" "$run_dir/master.log" || { echo "master did not start; see $run_dir/master.log" >&2; exit 1; }
    for i in $(seq 1 "$workers"); do
      mkdir -p "$run_dir/worker-$i"
      start_daemon "worker-$i" org.apache.spark.deploy.worker.Worker \
        --host 127.0.0.1 --cores 1 --memory 1g --webui-port 0 \
        --work-dir "$run_dir/worker-$i" "spark://127.0.0.1:$port"
    done
    for i in $(seq 1 "$workers"); do
      for _ in $(seq 1 60); do
        grep -q "Successfully registered with master" "$run_dir/worker-$i.log" 2>/dev/null && break
        sleep 1
      done
    done
    echo "spark://127.0.0.1:$port"
    ;;
  stop)
    for pid_file in "$run_dir"/*.pid; do
      [ -e "$pid_file" ] || continue
      kill "$(cat "$pid_file")" 2>/dev/null || true
      rm -f "$pid_file"
    done
    ;;
  *) echo "unknown action $action" >&2; exit 2 ;;
esac
