#!/usr/bin/env python3
"""A long-running agent's integration with vaultd: fetch its secrets at startup,
then follow their rotations. The Python twin of proto/examples/agent.rs.

    pip install ./clients/python
    VAULT_SOCKET=/run/vaultd/agent.sock VAULT_TOKEN=vt_... python3 agent.py telegram anthropic

It prints what it got, never the values: an example gets copied, and a value
printed here would end up in someone's logs. It runs until vaultd ends the watch
(access revoked: exit 1) or it is interrupted.
"""

import sys

from vaultd_client import Client, VaultError


def run(names: list[str]) -> None:
    with Client() as vault:  # $VAULT_SOCKET, $VAULT_TOKEN and $VAULT_ENV, as vaultctl
        # Startup: every secret or a clear error, in one round trip.
        secrets = vault.get_many(names)
        for name in names:
            # flush: the lines must reach a pipe or the journal when printed.
            print(f"loaded {name}: {len(secrets[name])} bytes", flush=True)
        # A real agent builds its API clients here, from secrets[name], and looks
        # the value up again after each update below.

        # Rotations: the first update repeats every current value (so one that
        # rotated since get_many is not missed); later ones carry only what changed.
        first = True
        for update in vault.watch(names):
            for secret in update:
                if not first:
                    print(f"updated {secret.name}: version {secret.version}, {len(secret.value)} bytes", flush=True)
                secrets[secret.name] = secret.value
            if first:
                print(f"watching {len(names)} secrets", flush=True)
                first = False


def main() -> int:
    names = sys.argv[1:]
    if not names:
        print("usage: agent.py NAME...", file=sys.stderr)
        return 2
    try:
        run(names)
    except VaultError as err:
        # The error names the secret and vaultd's reason, never a value.
        print(f"agent: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
