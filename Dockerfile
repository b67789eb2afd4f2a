# Plumbline operator image: the operator binary on a minimal base, running as non-root
# (uid 65532, as the chart's securityContext expects), with no shell needed at run time.
#
# The binary is built outside the image, the same way the tests build it, so what is tested
# is what ships. Two variants (docker build --target …):
#
#   full (default) — libvirt and vSphere. The libvirt adapter links libvirt's client library
#   (libvirt.so.0) dynamically, so this is the glibc binary on debian-slim plus libvirt0 only:
#     cargo build --release -p plumbline-operator --all-features
#     docker build -t plumbline/plumbline:0.1.0 .
#
#   static — vSphere only, a static musl binary on distroless/static (no libc, no shell):
#     rustup target add x86_64-unknown-linux-musl
#     cargo build --release -p plumbline-operator --target x86_64-unknown-linux-musl
#     docker build --target static -t plumbline/plumbline:0.1.0-static .
#
# The root filesystem can stay read-only: the chart mounts an emptyDir at /tmp.

FROM gcr.io/distroless/static-debian12:nonroot AS static
COPY --chmod=0555 target/x86_64-unknown-linux-musl/release/plumbline /usr/local/bin/plumbline
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/plumbline"]
CMD ["run"]

FROM debian:bookworm-slim AS full
# libvirt0: the client library only (no daemon); ca-certificates: vCenter without caBundle.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libvirt0 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && rm -f /bin/su /usr/bin/passwd /usr/bin/chsh /usr/bin/chfn /usr/bin/newgrp /usr/bin/gpasswd
COPY --chmod=0555 target/release/plumbline /usr/local/bin/plumbline
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/plumbline"]
CMD ["run"]
