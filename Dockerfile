# Multi-stage build: compile pgcapi, then run it from a small image as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin pgcapi

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 pgcapi
COPY --from=build /src/target/release/pgcapi /usr/local/bin/pgcapi
COPY examples/ /etc/pgcapi/
USER pgcapi
ENTRYPOINT ["pgcapi"]
CMD ["run", "--config", "/etc/pgcapi/pgcapi.toml"]
