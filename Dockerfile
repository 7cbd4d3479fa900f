# syntax=docker/dockerfile:1.7
#
# agentmon: one image, three entry points.
#
#   docker build --target watcher      -t agentmon/watcher .
#   docker build --target bot-bridge   -t agentmon/bot-bridge .
#   docker build --target fake-discord -t agentmon/fake-discord .
#
# Why per-binary targets rather than one ENTRYPOINT-less image: distroless has no shell, so
# an image without an ENTRYPOINT cannot be "run" without the caller spelling out the binary,
# and probes, compose files and the chart would each have to repeat it. Every target is the
# same `runtime` stage (the same layers, all three binaries in /usr/local/bin) plus its own
# ENTRYPOINT, EXPOSE and container-friendly defaults, so building all three costs one
# compile and registries store the layers once. `docker build .` without --target gives
# the last stage, the watcher sidecar. Any target can still run another binary with
# `--entrypoint /usr/local/bin/<name>`.
#
# Runtime needs: the binaries use rustls (no OpenSSL) and a bundled SQLite; `ldd` on the
# release build shows only glibc (libc, libm), libgcc_s and the loader, which is exactly what
# gcr.io/distroless/cc-debian12 carries. The builder is Debian 12 (bookworm) too, so the
# glibc the binaries were linked against is the one they run on.
#
# Read-only root filesystem: nothing is written outside /var/lib/agentmon (STATE_DIR of the
# watcher, the SQLite store of bot-bridge) and /tmp. Mount a volume or emptyDir on
# /var/lib/agentmon and a tmpfs on /tmp. The image ships both directories owned by 65532, so
# an empty Docker named volume mounted there is initialised with that owner; the same holds
# for /home/nonroot/.claude/projects, the watcher's default transcript discovery root.

ARG RUST_VERSION=1.95.0

############################################################################################
# builder: release build of every binary in the workspace
############################################################################################
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src

# The whole workspace, because every member (tests/ included) must exist for cargo to load
# the workspace. .dockerignore keeps target/, .git and the deploy/docs trees out of the
# context. No separate dependency-only layer: the cache mounts below keep the registry and
# the target dir between builds, so a source change recompiles only what changed, without
# the dummy-crate juggling a dependency layer needs for a six-member workspace.
COPY . .

# Cache mounts: the crates.io registry/git checkouts and the target dir survive between
# builds (BuildKit only). The target dir is a cache mount, so the binaries are copied out
# of it within the same RUN.
RUN --mount=type=cache,id=agentmon-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=agentmon-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=agentmon-target,target=/src/target \
    cargo build --release --locked --bins \
 && mkdir -p /out/bin /out/state /out/claude/projects \
 && cp target/release/watcher target/release/bot-bridge target/release/fake-discord /out/bin/

############################################################################################
# runtime: distroless, non-root, all three binaries
############################################################################################
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime

# Set by the release pipeline, e.g.
#   --build-arg REVISION="$(git rev-parse HEAD)" --build-arg CREATED="$(date -u +%FT%TZ)"
ARG VERSION=0.1.0
ARG REVISION=
ARG CREATED=
LABEL org.opencontainers.image.title="agentmon" \
      org.opencontainers.image.description="Streams a Claude Code agent's transcript into Discord (watcher sidecar, bot-bridge service, fake Discord for demos)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://example.invalid/agentmon" \
      org.opencontainers.image.url="https://example.invalid/agentmon" \
      org.opencontainers.image.documentation="https://example.invalid/agentmon/blob/main/docs/DESIGN.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="agentmon" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=builder /out/bin/ /usr/local/bin/
# State and discovery directories, owned by the runtime user (see the header comment).
# COPY creates the destination directories, and --chown gives new directories that owner.
COPY --from=builder --chown=65532:65532 /out/state/ /var/lib/agentmon/
COPY --from=builder --chown=65532:65532 /out/claude/ /home/nonroot/.claude/

# nonroot:nonroot of distroless; numeric so that runAsNonRoot can verify it.
USER 65532:65532
WORKDIR /var/lib/agentmon

############################################################################################
# fake-discord: the strict fake Discord API (demo, tests). Admin API under /_admin.
############################################################################################
FROM runtime AS fake-discord
ENV FAKE_DISCORD_ADDR=0.0.0.0:8900
EXPOSE 8900
ENTRYPOINT ["/usr/local/bin/fake-discord"]

############################################################################################
# bot-bridge: runs API + interactions on 8080, ops (/metrics /livez /readyz /healthz) on 9090
############################################################################################
FROM runtime AS bot-bridge
ENV API_ADDR=0.0.0.0:8080 \
    OPS_ADDR=0.0.0.0:9090 \
    DATABASE_URL=sqlite:///var/lib/agentmon/bot-bridge.db
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/bot-bridge"]

############################################################################################
# watcher: the sidecar; ops on 9090 (the binary's own default is loopback-only, useless in a
# container). Operator input (INPUT_ADDR) stays off unless configured.
############################################################################################
FROM runtime AS watcher
ENV OPS_ADDR=0.0.0.0:9090 \
    STATE_DIR=/var/lib/agentmon
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/watcher"]
