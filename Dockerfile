# vitals: a static musl binary on distroless, running as non-root.
#   docker build -t vitals .
# Expected size: distroless/static (~2 MiB) plus the stripped binary (5.8 MB stripped here, glibc build): about 8 MiB.

FROM rust:1.95-alpine3.22 AS build
# musl-dev for the C parts of the dependency tree (none need OpenSSL: vitals speaks plain HTTP on loopback).
RUN apk add --no-cache musl-dev=1.2.5-r10
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY link ./link
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin vitals \
    && strip target/release/vitals

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/release/vitals /usr/local/bin/vitals
# nonroot is 65532; in a pod, runAsUser overrides it to the app's UID (see deploy/kubernetes).
USER 65532:65532
EXPOSE 19464 4317 4318
ENTRYPOINT ["/usr/local/bin/vitals"]
