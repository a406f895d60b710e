# RabbitMQ from Debian's rabbitmq-server (3.10), AMQP on 5672, no plugins.
# Built by scripts/containers.sh; ready when it logs "Server startup complete".
ARG BASE
FROM ${BASE}
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && echo '[].' > /etc/rabbitmq/enabled_plugins
COPY rabbitmq.conf /etc/rabbitmq/rabbitmq.conf
ENV RABBITMQ_NODENAME=rabbit@localhost HOME=/var/lib/rabbitmq
USER rabbitmq
EXPOSE 5672
CMD ["/usr/lib/rabbitmq/bin/rabbitmq-server"]
