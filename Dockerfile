# The exchange service image for people with Docker: the same content as
# `make images` builds without Docker (scripts/oci_image.py): a static musl binary, a CA
# bundle, numeric non-root user, no shell. The image `make images` writes is the one the
# manifests pin by digest; this one gets another digest (other timestamps and CA bundle).
#   docker build -t meshpass-exchange .
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN CC_x86_64_unknown_linux_musl=musl-gcc \
    cargo build --release -p meshpass-exchange --target x86_64-unknown-linux-musl \
    && mkdir -p /out/var/lib/meshpass /out/tmp && chmod 1777 /out/tmp

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build --chown=65532:65532 /out/var/lib/meshpass /var/lib/meshpass
COPY --from=build /out/tmp /tmp
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/meshpass-exchange /usr/local/bin/meshpass-exchange
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
WORKDIR /var/lib/meshpass
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/meshpass-exchange"]
CMD ["serve", "--config", "/etc/meshpass/exchange.toml"]
