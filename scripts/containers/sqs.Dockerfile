# The SQS emulator moto (moto[server] from PyPI) through scripts/moto_server.py
# (moto with a faster clock), SQS API on 4566. Ready when it logs "Running on".
ARG BASE
FROM ${BASE}
# ca-bundle.crt is the build host's CA bundle, so that pip reaches PyPI from
# the build wherever the host can (e.g. through a TLS-inspecting proxy).
COPY ca-bundle.crt /etc/ssl/certs/build-host-ca-bundle.crt
ARG MOTO_SPEC
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/moto \
 && PIP_CERT=/etc/ssl/certs/build-host-ca-bundle.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    /opt/moto/bin/pip install -q --no-cache-dir "${MOTO_SPEC}"
COPY moto_server.py /opt/moto/moto_server.py
EXPOSE 4566
CMD ["/opt/moto/bin/python", "/opt/moto/moto_server.py", "-H", "0.0.0.0", "-p", "4566"]
