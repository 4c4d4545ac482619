# Container image of the backend and the paper broker. NOT exercised on our machines (no
# Docker engine runs there); it mirrors what CI builds: `cargo build --release --locked`.
#
#   docker build -t backend:0.1.0 .
#   docker run -p 8000:8000 -e DATABASE_URL=... -e REDIS_URL=... backend:0.1.0
#   docker run backend:0.1.0 migrate                      # any backend subcommand
#   docker run --entrypoint paper-broker backend:0.1.0 --bind 0.0.0.0:9100   # the simulator

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p backend -p paper-broker \
 && cp target/release/backend target/release/paper-broker /usr/local/bin/

# Small runtime: Debian slim (glibc, CA certificates) and the two binaries, no shell tools.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 backend \
 && useradd --system --uid 10001 --gid backend --home-dir /var/lib/backend --create-home backend
COPY --from=build /usr/local/bin/backend /usr/local/bin/paper-broker /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/backend
ENV BIND_ADDR=0.0.0.0:8000 \
    DATA_DIR=/var/lib/backend \
    LOG_FORMAT=json
EXPOSE 8000
# `backend healthcheck` probes /health/live on BIND_ADDR: no curl needed in the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["backend", "healthcheck"]
# SIGTERM starts the drain (readiness 503 for SHUTDOWN_DRAIN_DELAY, then a graceful stop).
STOPSIGNAL SIGTERM
ENTRYPOINT ["backend"]
CMD ["serve"]
