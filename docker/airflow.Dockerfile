# Airflow 3.3 image with the Stancewatch package installed (docker-compose.yml builds it).
#
#   docker compose build            # or: docker build -f docker/airflow.Dockerfile -t stancewatch-airflow .
#
# The project is copied to /opt/stancewatch and installed in editable mode so that the
# package finds its project files (config/, kibana/, model/, data/) next to itself, exactly
# as in a source checkout. dags/ and config/ are mounted over the copies at run time, so
# editing a DAG or feeds.yaml needs no rebuild.
FROM apache/airflow:3.3.2-python3.11

USER root
# State shared by every task (staging files, spool, outbox): a named volume is mounted
# here; creating it in the image gives the volume the airflow user's ownership.
RUN mkdir -p /opt/stancewatch /opt/stancewatch-data \
    && chown -R airflow:root /opt/stancewatch /opt/stancewatch-data

USER airflow
# Optional extra package index for CPU-only torch wheels (the default torch wheels pull
# about 3 GB of CUDA libraries a CPU-only deployment never uses). Set it in .env as
# PIP_EXTRA_INDEX_URL; empty means the default index only.
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL} \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    STANCEWATCH_CONFIG=/opt/stancewatch/config \
    STANCEWATCH_DATA_DIR=/opt/stancewatch-data

COPY --chown=airflow:root . /opt/stancewatch

# The image's Elasticsearch *provider* (remote task logs, unused here) pins an older
# Elasticsearch client; Stancewatch needs the 9.x client that matches the 9.x server.
# constraints.txt is the project's full resolved set (the same pins CI tests with).
RUN pip uninstall --yes apache-airflow-providers-elasticsearch \
    && pip install --no-cache-dir -c /opt/stancewatch/constraints.txt \
        -e "/opt/stancewatch[airflow]" \
    && python -c "import pipeline.airflow_settings, pipeline.runner; print('stancewatch ok')"
