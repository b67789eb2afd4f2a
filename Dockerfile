# Plumbline operator image: one static binary on a distroless base, running as non-root.
#
# The binary is built outside the image, the same way the tests build it, so what is tested
# is what ships:
#
#   rustup target add x86_64-unknown-linux-musl      # needs the musl target once
#   cargo build --release -p plumbline-operator --target x86_64-unknown-linux-musl
#   docker build -t plumbline/plumbline:0.1.0 .
#
# Without the musl target (e.g. an offline machine), build the gnu target and use the
# glibc base instead; the binary then links glibc dynamically:
#
#   cargo build --release -p plumbline-operator
#   docker build --build-arg BASE=gcr.io/distroless/cc-debian12:nonroot \
#                --build-arg BINARY=target/release/plumbline -t plumbline/plumbline:0.1.0 .
#
# The operator needs no shell, no package manager and no writable root filesystem (the chart
# mounts an emptyDir at /tmp), so distroless "static" is enough. TLS roots for the API server
# come from the service-account CA; for vCenter from the provider's caBundle, and the
# distroless image also carries the usual CA certificates.
ARG BASE=gcr.io/distroless/static-debian12:nonroot
FROM ${BASE}
ARG BINARY=target/x86_64-unknown-linux-musl/release/plumbline
COPY --chmod=0555 ${BINARY} /usr/local/bin/plumbline
# 65532 is distroless's "nonroot"; the chart's securityContext uses the same ids.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/plumbline"]
CMD ["run"]
