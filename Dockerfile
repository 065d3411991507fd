# token-limits: built with the official Rust image, run on distroless (glibc, CA certificates,
# no shell, no package manager) as the nonroot user.

FROM docker.io/library/rust:1-slim-bookworm AS build
WORKDIR /src

# Dependencies first, in a layer of their own: it is rebuilt only when Cargo.toml or Cargo.lock
# change. The stubs stand in for the crate's targets (the lib, the binary, and the bench that
# Cargo.toml names, which cargo requires to exist).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/firestore_load.rs \
 && cargo build --release --locked \
 && rm -r src

# The crate itself. COPY keeps the files' own mtimes, which may be older than the stub build:
# touch them so that cargo really rebuilds the lib and the binary.
COPY src ./src
COPY dashboard ./dashboard
RUN find src -type f -exec touch {} + \
 && cargo build --release --locked \
 && mkdir /data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/token-limits /token-limits
# SQLite's directory, owned by nonroot so that the service can create its file. Mount a volume
# there to keep the figures (without one they live and die with the container); in production
# use STORE=firestore.
COPY --from=build --chown=65532:65532 /data /data

# A container must listen on every interface (the service otherwise keeps to loopback in
# emulator mode); Cloud Run sets PORT (8080 unless told otherwise) and reads JSON log lines.
ENV HOST=0.0.0.0 \
    LOG_FORMAT=json \
    SQLITE_PATH=/data/token-limits.db
USER 65532:65532
EXPOSE 8080
# Exec form: the service is PID 1 and gets SIGTERM itself, then drains and exits 0.
ENTRYPOINT ["/token-limits"]
