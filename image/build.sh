#!/usr/bin/env bash
# `make image`: builds the controller's OCI image from the repository's Dockerfile with buildah
# (daemonless: no Docker engine needed) and prints its size and layers.
#
# IMAGE_BINARY=prebuilt (the default here) takes the release binary cargo just built on this
# (Debian bookworm) machine for the runtime stage, so CI does not compile the crate twice;
# IMAGE_BINARY=source compiles it inside the build stage, as the release workflow does.
# Where the Dockerfile's base images cannot be pulled (IMAGE_BASES=debian, the default), the
# runtime base is made from Debian packages with mmdebstrap (glibc, libgcc, CA certificates, a
# nonroot user 65532, like distroless/cc) and passed in as a build argument; IMAGE_BASES=pull uses
# the Dockerfile's defaults.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
image="${IMAGE:-localhost/ilert-rollout-controller:dev}"
binary="${IMAGE_BINARY:-prebuilt}"
bases="${IMAGE_BASES:-debian}"
suite=bookworm
packages=libc6,libgcc-s1,ca-certificates
cache_root="${IRC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ilert-rollout-controller}"
# vfs works wherever the tests run (no overlay mounts inside this VM's containers).
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
log() { printf '[image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

for tool in buildah mmdebstrap podman; do
  command -v "$tool" >/dev/null || { log "$tool is missing: apt-get install buildah podman runc mmdebstrap (.ci/run does)"; exit 1; }
done

# runtime_base -> the name of a local image like distroless/cc-debian12:nonroot, made once per
# day from Debian packages (security updates arrive that way) and cached in the cache directory.
runtime_base() {
  local name="localhost/ilert-rollout-controller-base/cc-$suite:$(date +%Y%m%d)"
  if buildah inspect --type image "$name" >/dev/null 2>&1; then echo "$name"; return; fi
  local dir="$cache_root/image-base/cc-$suite-$(date +%Y%m%d)"
  if [[ ! -f "$dir/rootfs.tar" ]]; then
    log "runtime base: mmdebstrap --variant=extract --include=$packages $suite"
    mkdir -p "$dir"
    rm -rf "$dir/rootfs" && mkdir "$dir/rootfs"
    mmdebstrap --quiet --variant=extract --include="$packages" "$suite" "$dir/rootfs" >&2
    local root="$dir/rootfs"
    # extract runs no maintainer scripts: make what update-ca-certificates and base-passwd would.
    mkdir -p "$root/etc/ssl/certs" "$root/home/nonroot" "$root/tmp"
    cat "$root"/usr/share/ca-certificates/*/*.crt > "$root/etc/ssl/certs/ca-certificates.crt"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$root/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' > "$root/etc/group"
    chown 65532:65532 "$root/home/nonroot"
    chmod 1777 "$root/tmp"
    # What distroless/cc leaves out too: documentation, the openssl tool, apt's state.
    rm -rf "$root"/usr/share/{doc,man,info,lintian} "$root"/usr/bin/* "$root"/usr/sbin/* "$root"/var/lib/apt "$root"/var/cache/*
    tar -C "$root" --numeric-owner -cf "$dir/rootfs.tar.tmp" .
    mv "$dir/rootfs.tar.tmp" "$dir/rootfs.tar"
    rm -rf "$root"
  fi
  # Yesterday's base goes: the image built on it is replaced by the next build anyway.
  buildah images --format '{{.Name}}:{{.Tag}}' | grep "^localhost/ilert-rollout-controller-base/cc-$suite:" \
    | xargs -r buildah rmi >/dev/null 2>&1 || true
  find "$(dirname "$dir")" -mindepth 1 -maxdepth 1 -name "cc-$suite-*" ! -path "$dir" -exec rm -rf {} +
  local ctr
  ctr="$(buildah from scratch)"
  buildah add --quiet "$ctr" "$dir/rootfs.tar" / >/dev/null
  buildah config --user 65532:65532 --workingdir /home/nonroot \
    --env PATH=/usr/local/bin:/usr/bin:/bin --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt "$ctr"
  buildah commit --quiet --rm "$ctr" "$name" >/dev/null
  echo "$name"
}

if [[ "${1:-}" == base ]]; then runtime_base; exit; fi

args=(--build-arg "BINARY=$binary" --build-arg "VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)")
if [[ "$bases" == debian ]]; then
  args+=(--build-arg "RUNTIME_IMAGE=$(runtime_base)" --pull=false)
fi
if [[ "$binary" == prebuilt ]]; then
  log "cargo build --release (the binary for the runtime stage)"
  cargo build --release --locked --bin ilert-rollout-controller >&2
  mkdir -p target/image
  cp target/release/ilert-rollout-controller target/image/ilert-rollout-controller
fi
start=$SECONDS
log "buildah bud -t $image (BINARY=$binary)"
previous="$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
containers_before="$(buildah containers --quiet --notruncate | sort)"
images_before="$(buildah images --all --quiet --no-trunc | sort)"
buildah bud --quiet "${args[@]}" -t "$image" -f Dockerfile . >/dev/null
current="$(podman image inspect --format '{{.Id}}' "$image")"
# vfs keeps whole copies: drop what this build left behind (buildah keeps the working container
# of a stage used by COPY --from, and its image) and the build it replaced. Only ours: never a
# prune of the whole store, which others may use.
comm -13 <(echo "$containers_before") <(buildah containers --quiet --notruncate | sort) | xargs -r buildah rm >/dev/null
comm -13 <(echo "$images_before") <(buildah images --all --quiet --no-trunc | sort) \
  | grep -v "${current#sha256:}" | xargs -r buildah rmi >/dev/null 2>&1 || true
if [[ -n "$previous" && "$previous" != "$current" ]]; then buildah rmi "$previous" >/dev/null 2>&1 || true; fi
log "built $image in $((SECONDS - start)) s"
podman image inspect --format '{{.Size}} {{.Id}}' "$image" | awk '{ printf "size: %.1f MiB (%d bytes), id %.12s\n", $1 / 1048576, $1, $2 }'
echo "layers:"
podman history --format '  {{.Size}}	{{.CreatedBy}}' "$image" | cut -c1-140
