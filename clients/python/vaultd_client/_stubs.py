"""The gRPC stubs for vault.v1.Agent, generated from the package's own copy of the proto.

The package ships ``vault/v1/agent.proto`` (``_proto/``, a link to proto/ in the
source tree that an install copies), so it needs neither the source tree nor an
environment variable. Nothing generated is committed or installed: the first call
to :func:`load` runs grpcio-tools' protoc on that proto into a per-user cache
directory keyed by the proto's contents and the grpcio-tools and protobuf
versions, then imports the result. A changed proto or an upgraded toolchain
regenerates.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

#: The proto file, relative to the proto root (its import path, as vaultd's own build uses it).
PROTO = "vault/v1/agent.proto"


class Stubs(NamedTuple):
    pb2: ModuleType
    """The messages: ``GetSecretRequest``, ``GetSecretResponse``."""
    pb2_grpc: ModuleType
    """The service: ``AgentStub``."""


_lock = threading.Lock()
_loaded: Stubs | None = None


def proto_root() -> Path:
    """Where ``vault/v1/agent.proto`` lives: ``$VAULTD_PROTO_PATH`` (to try another
    proto), else the copy inside this package."""
    env = os.environ.get("VAULTD_PROTO_PATH")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent / "_proto"


def generate(out_dir: Path, root: Path | None = None) -> Path:
    """Runs protoc (grpcio-tools) on the agent proto into ``out_dir``, which gets
    ``vault/v1/agent_pb2.py`` and ``vault/v1/agent_pb2_grpc.py`` (plus empty
    ``__init__.py`` files, so the generated ``vault`` package is a regular one).
    Returns ``out_dir``."""
    from grpc_tools import protoc  # only needed here: generation, not calls

    root = proto_root() if root is None else root
    proto = root / PROTO
    if not proto.is_file():
        raise FileNotFoundError(
            f"{proto} not found: the package is incomplete (reinstall it with `pip install ./clients/python`), "
            "or VAULTD_PROTO_PATH names a directory without it"
        )
    # The well-known types (google/protobuf/*.proto) ship inside grpcio-tools.
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(proto),
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed (exit {code}) generating stubs from {proto}; its errors are above")
    for package in (out_dir / "vault", out_dir / "vault" / "v1"):
        (package / "__init__.py").touch()
    return out_dir


def _cache_key(root: Path) -> str:
    h = hashlib.sha256()
    h.update((root / PROTO).read_bytes())
    for dist in ("grpcio-tools", "protobuf"):
        h.update(b"\0" + dist.encode() + b"=" + importlib.metadata.version(dist).encode())
    return h.hexdigest()[:20]


def _cache_base() -> Path:
    explicit = os.environ.get("VAULTD_CLIENT_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "vaultd-client"


def _generated_dir() -> Path:
    """The cache directory holding this proto's stubs, generating them if needed.
    Generation goes to a fresh temp dir renamed into place, so concurrent first
    uses never see a half-written tree. Falls back to a private temp dir when the
    cache is not writable."""
    root = proto_root()
    key = _cache_key(root) if (root / PROTO).is_file() else "missing"
    base = _cache_base()
    final = base / key
    if (final / "vault" / "v1" / "agent_pb2_grpc.py").is_file():
        return final
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=base))
    except OSError:
        # Not the shared /tmp directly: a dir only this process created.
        return generate(Path(tempfile.mkdtemp(prefix="vaultd-client-")), root)
    try:
        generate(staging, root)
        try:
            os.rename(staging, final)
        except OSError:
            if not (final / "vault" / "v1" / "agent_pb2_grpc.py").is_file():
                raise
            # Another process got there first with the same inputs: use theirs.
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def load() -> Stubs:
    """The stub modules, generated (once per cache key) and imported (once per process)."""
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        existing = sys.modules.get("vault")
        directory = _generated_dir()
        if existing is not None and Path(directory / "vault") not in {Path(p) for p in getattr(existing, "__path__", [])}:
            raise ImportError(
                f"another module named 'vault' is already imported ({existing!r}); "
                "vaultd_client's generated stubs need that top-level name"
            )
        entry = str(directory)
        sys.path.insert(0, entry)
        try:
            pb2 = importlib.import_module("vault.v1.agent_pb2")
            pb2_grpc = importlib.import_module("vault.v1.agent_pb2_grpc")
        finally:
            sys.path.remove(entry)
        _loaded = Stubs(pb2, pb2_grpc)
        return _loaded
