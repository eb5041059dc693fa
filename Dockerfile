# The image of capstan's GitHub container action (action.yml), also usable as a
# plain CLI image: `docker run IMAGE deploy --json` (the entrypoint is capstan;
# action.yml passes `action`).
#
# Three stages: the build stage compiles capstan (or takes a binary built
# outside); the rootfs stage installs what capstan needs at run time on Debian
# and gathers exactly those files; the image is that rootfs on `scratch`:
#   - capstan;
#   - the OpenSSH client: capstan's openssh master connections exec `ssh`, with
#     Debian's /etc/ssh/ssh_config;
#   - /bin/sh (dash, 130 kB): ssh runs a ProxyCommand or ProxyJump from a
#     user's ssh.config_file through it;
#   - the shared libraries these link (glibc, OpenSSL's libcrypto, Kerberos for
#     GSSAPI), as `ldd` lists them;
#   - CA certificates (HTTPS to the GitHub API and registries), /etc/passwd and
#     /etc/group (ssh looks its user up), /etc/nsswitch.conf, /tmp and /root.
# No package manager, no apt lists, no toolchain: about 20 MB besides capstan,
# where Debian slim alone is 75 MB. A static (musl) capstan would not remove
# glibc: ssh links it.
#
# The base images are build arguments so that a build can name local copies:
# tests/it/image.rs and tests/it/release.rs build on a Debian rootfs made with
# debootstrap, as no image can be pulled there.
ARG RUST_IMAGE=rust:1-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# A binary built outside is taken as is: the release workflow builds it in
# rust:1-slim-bookworm with cargo's cache, the image tests use their own build.
# It must be linked against a glibc no newer than the rootfs stage's (bookworm:
# 2.36), so build it on bookworm. Otherwise compile here (what action.yml's
# `image: Dockerfile` does on every run).
RUN if [ -x dist/capstan ]; then \
        install -m 0755 dist/capstan /capstan; \
    else \
        cargo build --release --locked && install -m 0755 target/release/capstan /capstan; \
    fi

FROM ${RUNTIME_IMAGE} AS rootfs
# `apt-get clean` as well: the official slim image's apt config already drops
# downloaded packages and its binary caches, a RUNTIME_IMAGE without it would
# keep them in this stage (none of it reaches the image either way).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssh-client ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /capstan /usr/local/bin/capstan
# The merged-/usr links (/lib -> usr/lib, ...) are kept as links, so that a
# library copied by the path ldd prints lands where Debian has it. A library
# ldd cannot find fails the build here, not the first deploy.
RUN set -eu; \
    r=/rootfs; \
    mkdir -p "$r/usr"; \
    for d in bin sbin lib lib32 lib64 libx32; do \
        if [ -L "/$d" ]; then cp -P "/$d" "$r/$d"; mkdir -p "$r/$(readlink "/$d")"; fi; \
    done; \
    ssh=$(command -v ssh); dash=$(command -v dash); \
    for exe in /usr/local/bin/capstan "$ssh" "$dash"; do \
        if ldd "$exe" | grep 'not found'; then echo "rootfs: $exe needs a library that is missing" >&2; exit 1; fi; \
        cp -L --parents "$exe" $(ldd "$exe" | grep -o '/[^ ]*') "$r/"; \
    done; \
    mkdir -p "$r/bin"; \
    ln -s "$dash" "$r/bin/sh"; \
    cp -a --parents /etc/ssh/ssh_config /etc/ssh/ssh_config.d /etc/ssl/certs/ca-certificates.crt \
        /etc/passwd /etc/group /etc/nsswitch.conf "$r/"; \
    mkdir -p -m 1777 "$r/tmp"; \
    mkdir -p -m 0700 "$r/root"; \
    mkdir -p "$r/github/workspace"

FROM scratch
COPY --from=rootfs /rootfs/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin
# The runner mounts the workspace here and starts the container in it.
WORKDIR /github/workspace
ENTRYPOINT ["/usr/local/bin/capstan"]
CMD ["action"]
