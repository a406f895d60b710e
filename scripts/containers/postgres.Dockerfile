# PostgreSQL from Debian's postgresql (15), on 5432, for mq-outbox's tests:
# superuser postgres, trust authentication from anywhere (a test database),
# fsync off. Ready when it logs "database system is ready to accept connections".
ARG BASE
FROM ${BASE}
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends postgresql >/dev/null \
 && rm -rf /var/lib/apt/lists/*
USER postgres
RUN set -e; bin=$(ls -d /usr/lib/postgresql/*/bin | tail -n 1); \
    "$bin/initdb" -D /var/lib/postgresql/mq -U postgres -A trust -E UTF8 --no-sync >/dev/null; \
    printf 'host all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n' >>/var/lib/postgresql/mq/pg_hba.conf; \
    ln -s "$bin/postgres" /var/lib/postgresql/postgres
EXPOSE 5432
CMD ["/var/lib/postgresql/postgres", "-D", "/var/lib/postgresql/mq", "-h", "*", "-k", "", \
     "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
