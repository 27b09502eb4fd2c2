# SPDX-License-Identifier: Apache-2.0
# Container image: drain-loop as a non-root user, the spool in a volume, the PKCS#11 module and PIN mounted in.
# This project's CI has no container engine, so the image is not built or
# tested there; see docs/operations.md ("Container").
#   docker build -t attesto-local-vault .
#   docker run --read-only -v attesto-spool:/var/lib/attesto \
#     -v /opt/vendor/pkcs11:/opt/pkcs11:ro -v /etc/attesto/pkcs11-pin:/run/secrets/pkcs11-pin:ro \
#     --env-file /etc/attesto/local-vault.env attesto-local-vault

FROM debian:12-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake pkg-config libp11-kit-dev \
      libssl-dev libsqlite3-dev libcurl4-openssl-dev libcjson-dev libsystemd-dev libmicrohttpd-dev \
 && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN cmake -S /src -B /build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=/usr -DLV_TESTS=OFF \
 && cmake --build /build -j2 \
 && DESTDIR=/out cmake --install /build --strip

FROM debian:12-slim
# Runtime libraries only; a token module brings its own (see operations.md).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libp11-kit0 libssl3 libsqlite3-0 \
      libcurl4 libcjson1 libsystemd0 libmicrohttpd12 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 attesto \
 && useradd --system --uid 10001 --gid attesto --home-dir /var/lib/attesto \
      --shell /usr/sbin/nologin attesto \
 && install -d -o attesto -g attesto -m 0750 /var/lib/attesto
COPY --from=build /out/usr/bin/attesto-local-vault /usr/bin/attesto-local-vault
COPY --from=build /out/usr/share/doc/attesto-local-vault/copyright /usr/share/doc/attesto-local-vault/copyright
ENV ATTESTO_LOCAL_VAULT_SPOOL_DB=/var/lib/attesto/local-vault.sqlite3 \
    ATTESTO_LOCAL_VAULT_WITNESS_DB=/var/lib/attesto/local-vault-witness.sqlite3 \
    ATTESTO_LOCAL_VAULT_PKCS11_MODULE=/opt/pkcs11/module.so \
    ATTESTO_LOCAL_VAULT_PIN_FILE=/run/secrets/pkcs11-pin
USER attesto:attesto
VOLUME ["/var/lib/attesto"]
ENTRYPOINT ["/usr/bin/attesto-local-vault"]
CMD ["drain-loop"]
