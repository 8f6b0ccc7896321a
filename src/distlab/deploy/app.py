"""The Flower app bundle of a deployed run, written out for `flwr run` to package.

Flower ships an app as a FAB (the app directory's pyproject.toml and Python files) to the
SuperLink and on to the SuperNodes. distlab's app is two one-line modules that import the
real ServerApp and ClientApp from the installed distlab, which every machine of the
federation has: the SuperLink and SuperNodes run with runtime dependency installation off,
so nothing is fetched or installed while a run starts.
"""

from __future__ import annotations

from pathlib import Path

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "distlab-federated"
version = "1.0.0"
description = "distlab's federated round loop on Flower's deployment engine"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "distlab"

[tool.flwr.app.components]
serverapp = "distlab_server:app"
clientapp = "distlab_client:app"

[tool.flwr.app.config]
job = ""
"""

SERVER = "from distlab.deploy.serverapp import make_app\n\napp = make_app()\n"
CLIENT = "from distlab.deploy.clientapp import make_app\n\napp = make_app()\n"


def write_app(directory: Path) -> Path:
    """The app directory `flwr run` takes."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(PYPROJECT)
    (directory / "distlab_server.py").write_text(SERVER)
    (directory / "distlab_client.py").write_text(CLIENT)
    return directory
