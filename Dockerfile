# CPU image on Debian 12. The same setup script as the README installs every dependency.
# (The CUDA variant and a slim runtime stage come with the deployment work, issue 8.)
FROM debian:bookworm
WORKDIR /opt/titans
COPY . .
RUN scripts/setup.sh && scripts/build.sh titans-server titans-cli titans-generate
RUN useradd --system --uid 10001 titans
USER titans
EXPOSE 50051
ENTRYPOINT ["/opt/titans/build/server/titans-server", "--model_dir", "/opt/titans/models/default"]
