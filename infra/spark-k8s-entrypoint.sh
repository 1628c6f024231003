#!/usr/bin/env bash
# Entry point of infra/Dockerfile. Spark on Kubernetes starts its pods from the image with
# `driver ...` (cluster mode) or `executor` (settings in SPARK_* variables); every other
# command (spark-class, prefect, torchrun, embedpipe, bash) runs unchanged.
set -euo pipefail

case "${1:-}" in
  driver)
    shift
    # The driver pod runs the application in client mode from inside the cluster.
    exec spark-submit --deploy-mode client \
      --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS:-0.0.0.0}" "$@"
    ;;
  executor)
    # Spark passes the executor's JVM options as SPARK_JAVA_OPT_0, _1, ... in order.
    mapfile -t java_opts < <(env | grep '^SPARK_JAVA_OPT_' | sort -t_ -k4 -n | cut -d= -f2-)
    exec java "-Xms${SPARK_EXECUTOR_MEMORY}" "-Xmx${SPARK_EXECUTOR_MEMORY}" "${java_opts[@]}" \
      -cp "$SPARK_HOME/conf:$SPARK_HOME/jars/*" \
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
      --driver-url "$SPARK_DRIVER_URL" \
      --executor-id "$SPARK_EXECUTOR_ID" \
      --cores "$SPARK_EXECUTOR_CORES" \
      --app-id "$SPARK_APPLICATION_ID" \
      --hostname "$SPARK_EXECUTOR_POD_IP" \
      --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}" \
      --podName "${SPARK_EXECUTOR_POD_NAME:-$HOSTNAME}"
    ;;
  *)
    exec "$@"
    ;;
esac
