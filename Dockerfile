# Multi-stage build: compile pgcapi, then run it from a small image as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
# Only what the binary is built from: no target/ or .git in the build context's copy.
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY sql sql
COPY examples examples
RUN cargo build --release --locked --bin pgcapi

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin pgcapi
COPY --from=build /src/target/release/pgcapi /usr/local/bin/pgcapi
COPY examples/pgcapi.toml /etc/pgcapi/pgcapi.toml
USER 10001
ENTRYPOINT ["pgcapi"]
CMD ["run", "--config", "/etc/pgcapi/pgcapi.toml"]
