#!/bin/sh
# The shared MLflow tracking server of a cluster: runs, metrics and the model registry in a database,
# artifacts (checkpoints, samples, registered models) on object storage, streamed through this server.
#
#   MLFLOW_BACKEND_STORE_URI=postgresql+psycopg://mlflow:PASSWORD@DB_HOST:5432/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://BUCKET/mlflow \
#   MLFLOW_HOST=0.0.0.0 MLFLOW_SERVER_ALLOWED_HOSTS='mlflow.example.internal:5000,localhost:*,127.0.0.1:*' \
#   AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... [MLFLOW_S3_ENDPOINT_URL=http://minio:9000] \
#   infra/mlflow/server.sh
#
# then every stage, Ray worker and `flm generate` logs to / reads from it with
#   export MLFLOW_TRACKING_URI=http://mlflow.example.internal:5000
# (the stages check that it answers before training: a dead server fails the stage in seconds).
#
# Settings (environment):
#   MLFLOW_BACKEND_STORE_URI      required; an SQLAlchemy URI (postgresql+psycopg://..., mysql+pymysql://...;
#                                 sqlite:////path/mlflow.db for one machine or a test)
#   MLFLOW_ARTIFACTS_DESTINATION  required; s3://BUCKET/PREFIX (gs://, wasbs:// and local paths work too)
#   MLFLOW_S3_ENDPOINT_URL        the endpoint of an S3-compatible store (MinIO, Ceph); unset for AWS S3
#   MLFLOW_HOST, MLFLOW_PORT      the address to bind (default 127.0.0.1:5000; 0.0.0.0 in a pod)
#   MLFLOW_WORKERS                server worker processes (default 2)
#   MLFLOW_SERVER_ALLOWED_HOSTS   the Host headers the server answers (comma separated, fnmatch patterns).
#                                 Unset: localhost and private IPs only; any other name (a Kubernetes
#                                 service name, a DNS name) gets HTTP 403 until listed here.
#
# Why --serve-artifacts with --artifacts-destination (and not --default-artifact-root s3://...):
# clients upload and download artifacts through the server (mlflow-artifacts:/ URIs), so only this
# process holds the object-store credentials; Ray workers, the driver and `flm generate` need none,
# and the bucket is reachable from one place. The cost is that artifact traffic passes through the
# server (checkpoints of the paper's models are a few hundred MB each: give it the bandwidth).
# MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: no job-runner subprocesses (about 500 MB instead of 2 GB).
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI to the database, e.g. postgresql+psycopg://mlflow:PASSWORD@DB_HOST:5432/mlflow}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION to the artifact store, e.g. s3://BUCKET/mlflow}"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
exec mlflow server \
    --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
    --serve-artifacts --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
    --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-2}"
