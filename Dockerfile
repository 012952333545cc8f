# weft's container image: one static-ish binary on a distroless base.
#   docker build -t weft:0.1.0 .
# Every role runs from it (`weft collector|indexer|query|standalone`).

FROM docker.io/library/rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin weft \
 && strip target/release/weft

# glibc and libgcc only; no shell, no package manager. NVML is loaded at run
# time from the host driver (NVIDIA container toolkit), so no CUDA here.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/weft /usr/local/bin/weft
COPY --from=build /src/examples /usr/share/weft/examples
USER 65532:65532
EXPOSE 3100 4318 9500
ENTRYPOINT ["/usr/local/bin/weft"]
CMD ["standalone", "--logs", "/usr/share/weft/examples/pod-logs", "--import", "/usr/share/weft/examples/gpu-metrics.prom", "--data", "/tmp/weft-data", "--listen", "0.0.0.0:3100"]
