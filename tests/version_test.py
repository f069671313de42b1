#!/usr/bin/env python3
"""The project's one version string (VERSION) is what every place that states a version says.

Usage: version_test.py SOURCE_DIR TITANS_SERVER TITANS_CLI
Checks `--version` of the programs, the Helm chart's appVersion and default image tag, the Python
package's version and licence, and that
the repository carries its Apache-2.0 LICENSE.
"""
import pathlib
import re
import subprocess
import sys


def main():
    source, server, cli = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    version = (source / "VERSION").read_text().strip()
    failures = []
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        failures.append(f"VERSION is not MAJOR.MINOR.PATCH: {version!r}")
    for program, name in ((server, "titans-server"), (cli, "titans-cli")):
        out = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=60)
        if out.stdout.strip() != f"{name} {version}":
            failures.append(f"{name} --version printed {out.stdout.strip()!r}")
    chart = (source / "helm/titans/Chart.yaml").read_text()
    app = re.search(r'^appVersion:\s*"?([^"\n]+)"?\s*$', chart, re.M)
    if not app or app.group(1) != version:
        failures.append(f"helm/titans/Chart.yaml appVersion is {app.group(1) if app else None!r}")
    values = (source / "helm/titans/values.yaml").read_text()
    tag = re.search(r'^\s+tag:\s*"?([^"\n]+)"?\s*$', values, re.M)
    if not tag or tag.group(1) != version:
        failures.append(f"helm/titans/values.yaml image.tag is {tag.group(1) if tag else None!r}")
    pyproject = (source / "python/pyproject.toml").read_text()
    declared = re.search(r'^version\s*=\s*"([^"]+)"', pyproject, re.M)
    if not declared or declared.group(1) != version:
        failures.append(f"python/pyproject.toml version is "
                        f"{declared.group(1) if declared else None!r}")
    if 'license = {text = "Apache-2.0"}' not in pyproject:
        failures.append("python/pyproject.toml does not declare the Apache-2.0 licence")
    module = (source / "python/titans/_version.py").read_text()
    stated = re.search(r'^__version__\s*=\s*"([^"]+)"', module, re.M)
    if not stated or stated.group(1) != version:
        failures.append(f"python/titans/_version.py says {stated.group(1) if stated else None!r}")
    license_text = (source / "LICENSE").read_text()
    if "Apache License" not in license_text or "Version 2.0" not in license_text:
        failures.append("LICENSE is not the Apache License 2.0")
    for f in failures:
        print("FAIL:", f)
    if failures:
        sys.exit(1)
    print(f"version {version}: programs, chart, Python package and licence agree")


if __name__ == "__main__":
    main()
