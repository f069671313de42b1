# CPU image on Debian 12. The same setup script as the README installs every dependency.
# (The CUDA variant and a slim runtime stage come with the deployment work, issue 8.)
FROM debian:bookworm
WORKDIR /opt/titans
COPY . .
RUN scripts/setup.sh && scripts/build.sh titans-generate titans-init-model
RUN useradd --system --uid 10001 titans
USER titans
ENTRYPOINT ["/opt/titans/build/tools/titans-generate", "--model_dir", "/opt/titans/models/default"]
