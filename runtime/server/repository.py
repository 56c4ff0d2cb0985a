"""The model repository: ``ROOT/name/version/model.nimbus``.

Names are ``[A-Za-z0-9][A-Za-z0-9_.-]*`` (at most 128 characters, no ``..``), versions positive
integers. Only paths built from a validated name and version under ROOT are ever opened, and a
path that resolves outside ROOT (a link) is refused: nothing a request carries becomes a path.
Loading an artifact reads and verifies it completely (checksums, format version, plan
validation: ``Session`` construction) before it can serve.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ..artifact import ArtifactError
from ..session import Session
from .errors import RequestError

log = logging.getLogger("nimbus.server")

ARTIFACT = "model.nimbus"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_VERSION = re.compile(r"[1-9][0-9]{0,8}")


def valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name)) and ".." not in name


def valid_version(version: str) -> bool:
    return isinstance(version, str) and bool(_VERSION.fullmatch(version))


def version_key(version: str) -> int:
    return int(version) if version.isdigit() else 0


class Repository:
    def __init__(self, root: Path | str, target: str = "cpu"):
        self.root = Path(root)
        self.target = target  # where its sessions run: "cpu" or "cuda"
        if not self.root.is_dir():
            raise ValueError(f"model repository {root} is not a folder")
        self._resolved = self.root.resolve()

    def _inside(self, path: Path) -> bool:
        try:
            return path.resolve().is_relative_to(self._resolved)
        except OSError:
            return False

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and valid_name(p.name) and self._inside(p))

    def versions(self, name: str) -> list[str]:
        """The versions of ``name`` present in the folder, oldest first."""
        if not valid_name(name):
            return []
        folder = self.root / name
        if not folder.is_dir() or not self._inside(folder):
            return []
        found = [p.name for p in folder.iterdir()
                 if valid_version(p.name) and (p / ARTIFACT).is_file() and self._inside(p / ARTIFACT)]
        return sorted(found, key=version_key)

    def load(self, name: str, version: str) -> Session:
        """A verified Session for one version; RequestError 404 when it is not in the folder,
        400 naming the problem when the artifact is bad (the message never names host paths)."""
        if not valid_name(name):
            raise RequestError(400, "invalid model name")
        if not valid_version(version):
            raise RequestError(400, f"model '{name}': version must be a positive integer, "
                               f"got {str(version)[:32]!r}")
        path = self.root / name / version / ARTIFACT
        shown = f"{name}/{version}/{ARTIFACT}"
        if not path.is_file() or not self._inside(path):
            raise RequestError(404, f"the model repository has no {shown}")
        try:
            return Session(path, self.target)
        except (ArtifactError, ValueError, OSError) as err:
            message = str(err).replace(str(path), shown).replace(str(self.root), "<repository>")
            raise RequestError(400, f"{shown} is not a valid artifact: {message}") from None

    def load_all(self, name: str, versions: list[str] | None = None) -> dict[str, Session]:
        """Every given (default: every present) version of ``name``, all verified, or none."""
        versions = self.versions(name) if versions is None else versions
        if not versions:
            raise RequestError(404, f"the model repository has no versions of '{name}'")
        return {version: self.load(name, version) for version in versions}
