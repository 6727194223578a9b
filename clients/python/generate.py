#!/usr/bin/env python3
"""Generates the Python gRPC stubs for vault.v1.Agent from ../../proto/proto.

    python3 generate.py            # into the cache vaultd_client uses (what its first call does)
    python3 generate.py OUT_DIR    # into OUT_DIR, to read them (OUT_DIR/vault/v1/agent_pb2*.py)

Same as: python3 -m grpc_tools.protoc -I ../../proto/proto --python_out=OUT_DIR \\
    --grpc_python_out=OUT_DIR ../../proto/proto/vault/v1/agent.proto
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vaultd_client import _stubs  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) > 2:
        sys.exit(__doc__)
    if len(sys.argv) == 2:
        out = _stubs.generate(Path(sys.argv[1]))
    else:
        out = _stubs._generated_dir()
    print(out / "vault" / "v1")
