# The Kafka-compatible broker tansu (the binary scripts/brokers.sh builds and
# caches), in-memory storage, Kafka protocol on 9092. The host port is known
# only when the container is created, so the tests set
# ADVERTISED_LISTENER_URL=tcp://127.0.0.1:<host port> and publish that port.
# Ready when it logs "ready in".
ARG BASE
FROM ${BASE}
COPY tansu /usr/local/bin/tansu
ENV LISTENER_URL=tcp://0.0.0.0:9092 \
    ADVERTISED_LISTENER_URL=tcp://127.0.0.1:9092 \
    STORAGE_ENGINE=memory://tansu/
WORKDIR /var/lib/tansu
EXPOSE 9092
CMD ["/usr/local/bin/tansu", "broker"]
