# The image of capstan's GitHub container action (action.yml), also usable as a
# plain CLI image: `docker run IMAGE deploy --json` (the entrypoint is capstan;
# action.yml passes `action`).
#
# Two stages: the build stage compiles capstan (or takes a binary built
# outside); the runtime stage is Debian slim with the binary, the OpenSSH client
# (capstan's openssh master connections exec `ssh`) and CA certificates (HTTPS
# to the GitHub API and registries). Nothing else: no toolchain, no apt lists.
#
# The base images are build arguments so that a build can name local copies:
# tests/it/image.rs builds on a Debian rootfs it made with debootstrap, as no
# image can be pulled there.
ARG RUST_IMAGE=rust:1-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# A binary built outside is taken as is: the release workflow builds it in
# rust:1-slim-bookworm with cargo's cache, the image test uses its own build.
# It must be linked against a glibc no newer than the runtime stage's (bookworm:
# 2.36), so build it on bookworm. Otherwise compile here (what action.yml's
# `image: Dockerfile` does on every run).
RUN if [ -x dist/capstan ]; then \
        install -m 0755 dist/capstan /capstan; \
    else \
        cargo build --release --locked && install -m 0755 target/release/capstan /capstan; \
    fi

FROM ${RUNTIME_IMAGE}
# `apt-get clean` as well: the official slim image's apt config already drops
# downloaded packages and its binary caches, a RUNTIME_IMAGE without it would
# keep them (80 MB) in this layer.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssh-client ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /capstan /usr/local/bin/capstan
# The runner mounts the workspace here and starts the container in it.
WORKDIR /github/workspace
ENTRYPOINT ["/usr/local/bin/capstan"]
CMD ["action"]
