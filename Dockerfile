# Herald in a container: build with the Rust toolchain, run as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
# The dependencies first, in a layer of their own: it is built again only when
# a manifest or the lock file changes, not for every change to Herald's code.
COPY Cargo.toml Cargo.lock ./
COPY domain/Cargo.toml domain/
COPY commands/Cargo.toml commands/
COPY nats/Cargo.toml nats/
COPY projections/Cargo.toml projections/
COPY api/Cargo.toml api/
COPY bench/Cargo.toml bench/
COPY vendor/ vendor/
RUN for crate in domain commands nats projections api bench; do \
        mkdir -p "$crate/src/bin" && touch "$crate/src/lib.rs"; \
    done \
    && for bin in api/src/main.rs bench/src/bin/herald_load.rs bench/src/bin/plain_cqrs.rs; do \
        echo 'fn main() {}' > "$bin"; \
    done \
    && cargo build --release --locked -p api --bin herald \
    && rm -r domain/src commands/src nats/src projections/src api/src bench/src
COPY . .
# The copied sources keep their own times, older than the placeholders built
# above: touching them makes cargo build Herald's crates again.
RUN find domain commands nats projections api bench -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p api --bin herald

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home herald \
    && mkdir -p /var/lib/herald/attachments && chown -R herald /var/lib/herald
COPY --from=build /src/target/release/herald /usr/local/bin/herald
USER herald
ENV HERALD_LISTEN=0.0.0.0:8080
# Attachments, when kept in a local directory.
ENV HERALD_ATTACHMENTS_DIR=/var/lib/herald/attachments
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health/ready || exit 1
ENTRYPOINT ["herald"]
CMD ["up"]
