# syntax=docker/dockerfile:1
# The EnvProxy image: envproxy-agent (agent and webhook), the envproxy CLI (for `envproxy admin`
# through `kubectl exec`), libenvproxy.so for glibc and musl, and the runtime hooks under
# /usr/lib/envproxy, which the agent installs onto each node.
#
#   docker build -t registry.example/envproxy:0.1.0 .
#
# Reproducible builds: dependencies come from Cargo.lock (--locked), paths of the build machine
# are remapped out of the binaries, and SOURCE_DATE_EPOCH fixes timestamps. Pin both base images
# by digest (FROM image@sha256:...) to get the same bytes from the same commit.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
# javac and jar for the Java hook: the build script of envproxy-java-hook (hooks/java/build.rs)
# compiles it with `javac --release 17` and writes hooks/java/envproxy-javaagent.jar. Without a
# JDK that script only warns, so the build checks that the jar exists. SOURCE_DATE_EPOCH below
# also fixes the times of the jar's entries.
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jdk-headless \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ENV CARGO_INCREMENTAL=0 \
    SOURCE_DATE_EPOCH=0 \
    RUSTFLAGS="--remap-path-prefix=/src=. --remap-path-prefix=/usr/local/cargo=cargo"
RUN cargo build --release --locked -p envproxy-agent -p envproxy-cli -p envproxy-preload \
        -p envproxy-java-hook \
    && test -f hooks/java/envproxy-javaagent.jar

# The musl build of the library, for Alpine and other musl images. A preloaded library must use
# the process's own dynamic musl libc, so scripts/build-musl.sh turns static linking off, links
# with musl-gcc, and takes the unwinder (which catches panics before they cross into the host
# program) from Rust's static libunwind: the library needs nothing but musl's libc.
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build-musl
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
ENV CARGO_INCREMENTAL=0 \
    SOURCE_DATE_EPOCH=0 \
    RUSTFLAGS="--remap-path-prefix=/src=. --remap-path-prefix=/usr/local/cargo=cargo"
RUN scripts/build-musl.sh --release

# distroless/cc has glibc and libgcc, which envproxy-agent needs, and no shell. Its default user
# is nonroot (65532), which the webhook runs as; the agent's DaemonSet sets runAsUser 0 because
# it reads other processes' /proc entries.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /src/target/release/envproxy-agent /usr/bin/envproxy-agent
COPY --from=build /src/target/release/envproxy /usr/bin/envproxy
COPY --from=build /src/target/release/libenvproxy.so /usr/lib/envproxy/lib/libenvproxy.so
COPY --from=build-musl /src/target/x86_64-unknown-linux-musl/release/libenvproxy.so /usr/lib/envproxy/lib/musl/libenvproxy.so
# NOTE: one COPY per runtime hook under hooks/. A hook added to the repository needs its own line
# here, or the agent does not install it on the nodes (the deployment test checks this). hooks/go
# is a Go module that programs build in, so nothing of it is installed.
COPY hooks/python/sitecustomize.py hooks/python/envproxy_hook.py /usr/lib/envproxy/hooks/python/
COPY --from=build /src/hooks/java/envproxy-javaagent.jar /usr/lib/envproxy/hooks/java/envproxy-javaagent.jar
COPY hooks/perl/EnvProxy /usr/lib/envproxy/hooks/perl/EnvProxy/
USER 65532:65532
ENTRYPOINT ["/usr/bin/envproxy-agent"]
