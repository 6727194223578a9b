"""A Python client for vaultd's agent socket, over gRPC with stubs generated from proto/.

    from vaultd_client import Client, NotFound

    with Client() as vault:                    # $VAULT_SOCKET, else /run/vaultd/agent.sock;
                                               # $VAULT_TOKEN and $VAULT_ENV if set
        token = vault.get("telegram")          # bytes
        other = vault.get("openai", env="prod")
        keys = vault.get_many(["openai", "anthropic"])   # {name: bytes}, all or nothing (GetSecrets)
        for update in vault.watch(["telegram"]):         # [Secret]: all at once, then each rotation
            ...                                          # raises Denied when access ends
"""

from .client import DEFAULT_SOCKET, Client, Secret
from .errors import Denied, InvalidArgument, NotFound, RateLimited, Sealed, Unavailable, VaultError

__all__ = [
    "DEFAULT_SOCKET",
    "Client",
    "Denied",
    "InvalidArgument",
    "NotFound",
    "RateLimited",
    "Sealed",
    "Secret",
    "Unavailable",
    "VaultError",
]
