"""PEP 517 build backend: setuptools, with a fallback for setuptools without bdist_wheel.

Every hook is setuptools.build_meta's whenever setuptools can build wheels (setuptools >= 70.1,
or the `wheel` package installed). Older setuptools, as bundled by `python3 -m venv` with Python
3.11 (setuptools 65, no `wheel`), cannot; there, so that

    python3 -m venv v && v/bin/pip install --no-build-isolation --no-index ./bindings/python

works offline, the wheel of this pure-Python package (one directory, no compiled code) is written
here directly from the [project] table of pyproject.toml.
"""

import base64
import hashlib
import io
import os
import zipfile

from setuptools import build_meta as _setuptools

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PACKAGE = "llamamoe"


def _setuptools_builds_wheels():
    try:
        import setuptools.command.bdist_wheel  # noqa: F401  (setuptools >= 70.1)
        return True
    except ImportError:
        pass
    try:
        import wheel.bdist_wheel  # noqa: F401
        return True
    except ImportError:
        return False


def _load_toml(path):
    try:
        import tomllib as toml
    except ImportError:
        try:
            import tomli as toml
        except ImportError:
            from setuptools.extern import tomli as toml
    with open(path, "rb") as f:
        return toml.load(f)


def _project():
    return _load_toml(os.path.join(_HERE, "pyproject.toml"))["project"]


def _dist_name(project):
    return "%s-%s" % (project["name"].replace("-", "_"), project["version"])


def _metadata(project):
    lines = ["Metadata-Version: 2.1", "Name: %s" % project["name"],
             "Version: %s" % project["version"]]
    if "description" in project:
        lines.append("Summary: %s" % project["description"])
    if "requires-python" in project:
        lines.append("Requires-Python: %s" % project["requires-python"])
    for c in project.get("classifiers", []):
        lines.append("Classifier: %s" % c)
    body = ""
    readme = project.get("readme")
    if isinstance(readme, str):
        lines.append("Description-Content-Type: text/markdown")
        with open(os.path.join(_HERE, readme), encoding="utf-8") as f:
            body = f.read()
    return "\n".join(lines) + "\n\n" + body


def _wheel_files(project, editable):
    """(archive name, bytes) of every file of the wheel but RECORD."""
    dist_info = _dist_name(project) + ".dist-info"
    files = []
    if editable:
        files.append(("__editable__.%s.pth" % _dist_name(project), (_HERE + "\n").encode()))
    else:
        root = os.path.join(_HERE, _PACKAGE)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if name.endswith((".pyc", ".pyo")):
                    continue
                path = os.path.join(dirpath, name)
                with open(path, "rb") as f:
                    files.append((os.path.relpath(path, _HERE).replace(os.sep, "/"), f.read()))
    files.append((dist_info + "/METADATA", _metadata(project).encode("utf-8")))
    files.append((dist_info + "/WHEEL", b"Wheel-Version: 1.0\nGenerator: llamamoe_build\n"
                                        b"Root-Is-Purelib: true\nTag: py3-none-any\n"))
    files.append((dist_info + "/top_level.txt", (_PACKAGE + "\n").encode()))
    return dist_info, files


def _write_wheel(wheel_directory, editable):
    project = _project()
    dist_info, files = _wheel_files(project, editable)
    name = _dist_name(project) + "-py3-none-any.whl"
    record = io.StringIO()
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w", zipfile.ZIP_DEFLATED) as z:
        for arcname, data in files:
            z.writestr(arcname, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.write("%s,sha256=%s,%d\n" % (arcname, digest.decode(), len(data)))
        record.write("%s/RECORD,,\n" % dist_info)
        z.writestr(dist_info + "/RECORD", record.getvalue())
    return name


def _write_metadata(metadata_directory):
    project = _project()
    dist_info, files = _wheel_files(project, editable=True)
    os.makedirs(os.path.join(metadata_directory, dist_info), exist_ok=True)
    for arcname, data in files:
        if arcname.startswith(dist_info + "/"):
            with open(os.path.join(metadata_directory, arcname), "wb") as f:
                f.write(data)
    return dist_info


# ---- PEP 517 / PEP 660 hooks ----

def get_requires_for_build_sdist(config_settings=None):
    return _setuptools.get_requires_for_build_sdist(config_settings)


def build_sdist(sdist_directory, config_settings=None):
    return _setuptools.build_sdist(sdist_directory, config_settings)


def get_requires_for_build_wheel(config_settings=None):
    if _setuptools_builds_wheels():
        return _setuptools.get_requires_for_build_wheel(config_settings)
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    if _setuptools_builds_wheels():
        return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)
    return _write_metadata(metadata_directory)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    if _setuptools_builds_wheels():
        return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    return _write_wheel(wheel_directory, editable=False)


def get_requires_for_build_editable(config_settings=None):
    if _setuptools_builds_wheels() and hasattr(_setuptools, "get_requires_for_build_editable"):
        return _setuptools.get_requires_for_build_editable(config_settings)
    return []


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    return prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    if _setuptools_builds_wheels() and hasattr(_setuptools, "build_editable"):
        return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    return _write_wheel(wheel_directory, editable=True)
