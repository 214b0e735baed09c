# leasehold as a container image: built in Rust's Debian 12 image, run in Debian 12 slim (the
# same glibc), as an unprivileged user, with the example configuration, the data directory as a
# volume, and a health check on GET /healthz.
#
#   docker build -t leasehold .
#   docker run -d --name leasehold -p 127.0.0.1:8080:8080 -e LEASEHOLD_INSECURE_ANONYMOUS=1 leasehold
#
# Inside the container leasehold listens on 0.0.0.0:8080 (LEASEHOLD_LISTEN), so it refuses to
# start without an API key: mount a configuration with [[auth.keys]] over
# /etc/leasehold/leasehold.toml, or give keys in RESOURCE_READ / RESOURCE_READ_LOCK /
# RESOURCE_WRITE, or (a trial on a port published to loopback only, as above) set
# LEASEHOLD_INSECURE_ANONYMOUS=1. Every key of the file has its LEASEHOLD_* variable (README,
# "Configuration"). tests/packaging.rs builds and runs this image when a Docker daemon answers.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUN_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The registry and target/ are cache mounts (BuildKit): a rebuild after a change to the code
# compiles only leasehold. The binary is copied out of the mount in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin leasehold \
    && install -D -m 0755 target/release/leasehold /out/leasehold

FROM ${RUN_IMAGE}
LABEL org.opencontainers.image.title="leasehold" \
      org.opencontainers.image.description="Fast, fair, durable locks and semaphores over HTTP" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
COPY --from=build /out/leasehold /usr/bin/leasehold
COPY config/leasehold.toml /etc/leasehold/leasehold.toml
COPY LICENSE-MIT LICENSE-APACHE /usr/share/doc/leasehold/
# The data directory belongs to the user leasehold runs as (no name needed: nothing looks it
# up), mode 0700 like systemd's StateDirectoryMode; a new volume mounted there inherits both.
RUN install -d -o 65532 -g 65532 -m 0700 /var/lib/leasehold
# docker stop waits 10 s before SIGKILL by default: the drain (server.drain_timeout_ms, 10 s
# by default) is kept below it. With `docker stop -t N`, raise it up to about N - 2 s.
ENV LEASEHOLD_LISTEN=0.0.0.0:8080 \
    LEASEHOLD_DATA_DIR=/var/lib/leasehold \
    LEASEHOLD_DRAIN_TIMEOUT_MS=8000
USER 65532:65532
VOLUME ["/var/lib/leasehold"]
EXPOSE 8080
STOPSIGNAL SIGTERM
# No curl in the slim image: bash's /dev/tcp sends GET /healthz to the port of the first
# LEASEHOLD_LISTEN address; healthy while the answer is 200. /healthz needs no key.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "a=${LEASEHOLD_LISTEN%%,*}; exec 3<>/dev/tcp/127.0.0.1/${a##*:} && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && read -r -t 2 _ status _ <&3 && [ \"$status\" = 200 ]"]
ENTRYPOINT ["/usr/bin/leasehold"]
CMD ["serve", "--config", "/etc/leasehold/leasehold.toml"]
