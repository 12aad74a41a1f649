"""Installed names live under the `llmproxy` namespace, and every package ships."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def test_every_server_package_is_listed_in_pyproject():
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    for init in (ROOT / "server").rglob("__init__.py"):
        name = "llmproxy.server" + ".".join(("", *init.parent.relative_to(ROOT / "server").parts))
        assert name.rstrip(".") in listed, name


def test_wheel_has_no_bare_top_level_modules(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("llmproxy-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"llmproxy"}
    for module in (
        "llmproxy/v1/llmproxy_pb2.py",
        "llmproxy/server/app.py",
        "llmproxy/client/cli.py",
        "llmproxy/server/assets/DejaVuSans.ttf",
    ):
        assert module in names


def _requirements(group: str | None = None) -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] if group is None else project["optional-dependencies"][group]
    return {(r := Requirement(d)).name: r for d in deps}


def _generated(name: str) -> str:
    return (ROOT / "generated" / "llmproxy" / "v1" / name).read_text()


def _grpc_generated_version() -> Version:
    found = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", _generated("llmproxy_pb2_grpc.py"))
    assert found is not None
    return Version(found[1])


def test_grpc_floors_admit_no_grpcio_the_stubs_refuse():
    """The stubs raise at import under a grpcio older than the one that generated them."""
    floor = _grpc_generated_version()
    below = f"{floor.major}.{floor.minor}.{floor.micro - 1}" if floor.micro else f"{floor.major}.0"
    for name in ("grpcio", "grpcio-health-checking", "grpcio-reflection", "grpcio-status"):
        spec = _requirements()[name].specifier
        assert spec.contains(str(floor)), name
        assert not spec.contains(below), f"{name} {spec} admits {below}"


def test_protobuf_range_admits_no_runtime_the_stubs_refuse():
    """The messages raise at import under an older protobuf, or one of another major."""
    gencode = re.search(
        r"ValidateProtobufRuntimeVersion\(\s*\S+,\s*(\d+),\s*(\d+),\s*(\d+),",
        _generated("llmproxy_pb2.py"),
    )
    assert gencode is not None
    major, minor, patch = (int(g) for g in gencode.groups())
    spec = _requirements()["protobuf"].specifier
    assert spec.contains(f"{major}.{minor}.{patch}")
    assert not spec.contains(f"{major}.{minor}.{patch - 1}" if patch else f"{major}.{minor - 1}.0")
    assert not spec.contains(f"{major - 1}.99.0")
    assert not spec.contains(f"{major + 1}.0.0")


def test_the_stub_generator_is_pinned_to_the_version_that_wrote_generated():
    """`make check-proto` regenerates and diffs; another grpcio-tools writes other headers,
    so an unpinned one would fail CI on its next release with no change here."""
    (pin,) = _requirements("dev")["grpcio-tools"].specifier
    assert (pin.operator, Version(pin.version)) == ("==", _grpc_generated_version())


def test_the_linter_is_pinned():
    """`make lint` fails on whatever a new ruff release adds to the selected rules or the
    format, so an unpinned ruff would fail CI with no change here."""
    (pin,) = _requirements("dev")["ruff"].specifier
    assert pin.operator == "=="
