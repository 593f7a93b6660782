# syntax=docker/dockerfile:1
# Built by CI elsewhere (no Docker engine on the development machines); linted here by hadolint.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin ilert-rollout-controller

# distroless/cc: glibc, CA certificates (reqwest verifies ilert's TLS against them), no shell,
# runs as the nonroot user 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="ilert-rollout-controller" \
      org.opencontainers.image.description="Reports every finished Kubernetes rollout to ilert as a deployment event" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/iLert/ilert-rollout-controller" \
      org.opencontainers.image.vendor="ilert"
COPY --from=build /src/target/release/ilert-rollout-controller /usr/local/bin/ilert-rollout-controller
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ilert-rollout-controller"]
CMD ["run"]
