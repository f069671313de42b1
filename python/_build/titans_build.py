"""The PEP 517 build backend of the titans package: builds its wheel with the standard library.

Why our own backend and not setuptools: `pip install ./python` runs the build in an isolated
environment and first installs the backend named in pyproject.toml into it from the package
index. The machines this project targets are often offline (Debian's packages only), so
setuptools cannot be fetched there and the install fails. A backend with no requirements builds
anywhere. The packages (titans, titans_torch) are pure Python with committed stubs, so a wheel is just its files, their
metadata (from pyproject.toml's [project] table) and a RECORD; sdists and editable installs are
supported too.
"""
import base64
import hashlib
import io
import os
import pathlib
import re
import tarfile
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent  # python/
PACKAGES = ("titans", "titans_torch")


def _project():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:
        tomllib = None
    if tomllib is not None:
        return tomllib.loads(text)["project"]
    return _read_project_table(text)


def _read_project_table(text):
    """[project] of our own pyproject.toml on Python < 3.11 (no tomllib): strings, lists of
    strings, inline tables of strings and [project.*] tables of lists, all that file uses."""
    start = text.index("[project]")
    end = re.search(r"^\[(?!project[\].])", text[start + 1:], re.M)
    body = text[start:start + 1 + end.start()] if end else text[start:]
    project, table = {}, None
    for match in re.finditer(r'^\[project\.([\w-]+)\]|^([\w-]+)\s*=\s*(".*?"|\[.*?\]|\{.*?\})',
                             body, re.S | re.M):
        if match.group(1):
            table = project.setdefault(match.group(1), {})
            continue
        value = match.group(3)
        if value.startswith("["):
            parsed = re.findall(r'"(.*?)"', value)
        elif value.startswith("{"):
            parsed = dict(re.findall(r'([\w-]+)\s*=\s*"(.*?)"', value))
        else:
            parsed = value[1:-1]
        (table if table is not None else project)[match.group(2)] = parsed
    return project


def _dist_name(project):
    return re.sub(r"[-_.]+", "_", project["name"]).lower()


def _metadata(project):
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {project['version']}",
        f"Summary: {project.get('description', '')}",
        f"License: {project.get('license', {}).get('text', '')}",
        f"Requires-Python: {project.get('requires-python', '>=3.9')}",
    ]
    lines += [f"Requires-Dist: {req}" for req in project.get("dependencies", [])]
    for extra, reqs in project.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f'Requires-Dist: {req}; extra == "{extra}"' for req in reqs]
    readme = ROOT / "README.md"
    if readme.exists():
        lines.append("Description-Content-Type: text/markdown")
        return "\n".join(lines) + "\n\n" + readme.read_text(encoding="utf-8")
    return "\n".join(lines) + "\n"


def _license_file():
    for candidate in (ROOT / "LICENSE", ROOT.parent / "LICENSE"):
        if candidate.exists():
            return candidate
    return None


def _package_files():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                yield path.relative_to(ROOT).as_posix(), path.read_bytes()


def _dist_info_files(project):
    info = f"{_dist_name(project)}-{project['version']}.dist-info"
    files = [
        (f"{info}/METADATA", _metadata(project).encode()),
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: titans_build\n"
                          b"Root-Is-Purelib: true\nTag: py3-none-any\n"),
    ]
    license_file = _license_file()
    if license_file:
        files.append((f"{info}/LICENSE", license_file.read_bytes()))
    return info, files


def _write_wheel(directory, members):
    project = _project()
    info, meta = _dist_info_files(project)
    name = f"{_dist_name(project)}-{project['version']}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(os.path.join(directory, name), "w", zipfile.ZIP_DEFLATED) as wheel:
        for arcname, data in list(members) + meta:
            wheel.writestr(arcname, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{arcname},sha256={digest.decode()},{len(data)}")
        record.append(f"{info}/RECORD,,")
        wheel.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return name


# PEP 517 / PEP 660 hooks.

def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    info, files = _dist_info_files(_project())
    for arcname, data in files:
        path = pathlib.Path(metadata_directory) / arcname
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return info


prepare_metadata_for_build_editable = prepare_metadata_for_build_wheel


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return _write_wheel(wheel_directory, _package_files())


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    # A .pth file puts python/ on sys.path: edits to the sources take effect without reinstalling.
    return _write_wheel(wheel_directory, [("_titans_editable.pth", f"{ROOT}\n".encode())])


def build_sdist(sdist_directory, config_settings=None):
    project = _project()
    base = f"{_dist_name(project)}-{project['version']}"
    name = f"{base}.tar.gz"
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz") as sdist:
        def add(arcname, data):
            entry = tarfile.TarInfo(f"{base}/{arcname}")
            entry.size, entry.mode = len(data), 0o644
            sdist.addfile(entry, io.BytesIO(data))
        for arcname, data in _package_files():
            add(arcname, data)
        for extra in ("pyproject.toml", "README.md", "_build/titans_build.py"):
            if (ROOT / extra).exists():
                add(extra, (ROOT / extra).read_bytes())
        license_file = _license_file()
        if license_file:
            add("LICENSE", license_file.read_bytes())
        add("PKG-INFO", _metadata(project).encode())
    return name
