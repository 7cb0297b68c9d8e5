# The gateway's image: built with the same toolchains as `cargo xtask
# build --release` (stable for the agent, nightly + bpf-linker for the
# eBPF programs it embeds), shipped on a distroless base that has only
# glibc. Build from the repository root:
#   docker build -t registry.example/gateway:0.1.0 .
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
# Toolchains and packages first: this layer outlives source changes.
RUN rustup toolchain install nightly --profile minimal --component rust-src \
 && apt-get update -q \
 && apt-get install -y -q --no-install-recommends iproute2 python3-prometheus-client python3-venv \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo xtask setup && cargo xtask build --release \
 && cp target/release/gateway /gateway

# Runs as root inside the container: the DaemonSet grants only the
# capabilities it lists (BPF, NET_ADMIN, PERFMON, SYS_RESOURCE,
# NET_BIND_SERVICE) and drops the rest.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /gateway /usr/local/bin/gateway
ENTRYPOINT ["/usr/local/bin/gateway"]
CMD ["run", "--source=kubernetes"]
