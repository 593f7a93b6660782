# syntax=docker/dockerfile:1
# The release workflow builds this for linux/amd64 and linux/arm64 from source. `make image`
# builds the same file with buildah (no Docker engine needed), see image/build.sh.
#
# Build arguments:
#   BUILD_IMAGE    the Rust toolchain image of the build stage.
#   RUNTIME_IMAGE  the runtime base: glibc, libgcc, CA certificates (reqwest verifies ilert's TLS
#                  against them), no shell, a nonroot user 65532. `make image` passes one made from
#                  Debian packages where distroless cannot be pulled.
#   BINARY         source (default): compile in the build stage. prebuilt: take
#                  target/image/ilert-rollout-controller from the build context, a release binary
#                  built on Debian bookworm (same glibc as the runtime base); CI uses it so the
#                  crate is not compiled twice.
ARG BUILD_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARY=source

FROM ${BUILD_IMAGE} AS source
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin ilert-rollout-controller \
    && cp target/release/ilert-rollout-controller /ilert-rollout-controller

FROM scratch AS prebuilt
COPY target/image/ilert-rollout-controller /ilert-rollout-controller

FROM ${BINARY} AS binary

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="ilert-rollout-controller" \
      org.opencontainers.image.description="Reports every finished Kubernetes rollout to ilert as a deployment event" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/iLert/ilert-rollout-controller" \
      org.opencontainers.image.vendor="ilert"
COPY --from=binary /ilert-rollout-controller /usr/local/bin/ilert-rollout-controller
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ilert-rollout-controller"]
CMD ["run"]
