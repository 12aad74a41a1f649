"""Installed names live under the `llmproxy` namespace, and every package ships."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

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
