"""The README's examples work as written: its config validates and its grpcurl commands run."""

from __future__ import annotations

import asyncio
import re
import shlex
import sys
from pathlib import Path

import pytest

from llmproxy.server.config import load_settings
from tests.support.running import running_app, settings_for

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
GRPCURL = str(Path(sys.executable).with_name("grpcurl"))


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def test_config_example_validates(tmp_path):
    path = tmp_path / "llmproxy.yaml"
    path.write_text(blocks("yaml")[0])
    names = set(re.findall(r"\$\{([A-Z0-9_]+)", blocks("yaml")[0]))
    settings = load_settings(path, env={name: "x" for name in names})
    assert [g.name for g in settings.groups] == ["fast", "experiment"]
    assert settings.auth.enabled and settings.budgets[0].key_id == "team-a"


def grpcurl_commands() -> list[list[str]]:
    text = "\n".join(blocks("sh")).replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines() if line.startswith("grpcurl ")]


async def test_every_grpcurl_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default SQLite ledger file lands here
    commands = grpcurl_commands()
    assert len(commands) >= 9
    async with running_app(settings_for()) as app:
        for argv in commands:
            argv = [
                GRPCURL,
                *(a.replace("localhost:50051", f"127.0.0.1:{app.grpc_port}") for a in argv[1:]),
            ]
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            _, err = await asyncio.wait_for(proc.communicate(), 20)
            assert proc.returncode == 0, (argv, err.decode())


@pytest.mark.parametrize("command", ["make run", "make test"])
def test_setup_commands_are_in_the_makefile(command):
    target = command.split()[1]
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert re.search(rf"^{target}:", makefile, re.M)
    assert f"```sh\n{command}\n```" in README
