# The exchange service image for people with Docker: the same content as
# `make images` builds without Docker (scripts/oci_image.py): a static musl binary, a CA
# bundle, /etc/passwd and /etc/group naming the numeric non-root user 65532, no shell,
# /tmp (1777) and /var/lib/meshpass (0700, the user's) writable. The image `make images`
# writes is the one the manifests pin by digest; this one gets another digest (other
# timestamps, compiler and CA bundle). The suite does not build it (no Docker daemon on
# the development machines); keep its file list in step with oci_image.py's `entries`.
#   docker build -t meshpass-exchange .
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
# COPY resets ownership to root but keeps modes, and copies a directory's contents, not
# the directory: the tree is laid out under /out/root (root's) and /out/data (the
# user's /var/lib/meshpass; /var/lib already exists, root's, when it is copied) so
# that every directory arrives with its mode and owner.
RUN CC_x86_64_unknown_linux_musl=musl-gcc \
    cargo build --release -p meshpass-exchange --target x86_64-unknown-linux-musl \
    && mkdir -p /out/root/etc/meshpass /out/root/etc/ssl/certs /out/root/tmp \
       /out/root/usr/local/bin /out/root/var/lib /out/data/meshpass \
    && chmod 1777 /out/root/tmp && chmod 0700 /out/data/meshpass \
    && printf 'root:x:0:0:root:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n' \
       > /out/root/etc/passwd \
    && printf 'root:x:0:\nnonroot:x:65532:\n' > /out/root/etc/group \
    && cp /etc/ssl/certs/ca-certificates.crt /out/root/etc/ssl/certs/ \
    && cp target/x86_64-unknown-linux-musl/release/meshpass-exchange /out/root/usr/local/bin/

FROM scratch
COPY --from=build /out/root/ /
COPY --from=build --chown=65532:65532 /out/data/ /var/lib/
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
WORKDIR /var/lib/meshpass
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/meshpass-exchange"]
CMD ["serve", "--config", "/etc/meshpass/exchange.toml"]
