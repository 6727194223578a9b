"""A client for vaultd's agent socket (service ``vault.v1.Agent``)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import grpc

from . import _stubs
from .errors import from_rpc_error

#: Where vaultctl looks too when ``VAULT_SOCKET`` is not set.
DEFAULT_SOCKET = "/run/vaultd/agent.sock"

# grpc-core (since 1.57) sends the %-encoded socket path as :authority on a unix
# socket, which vaultd's HTTP/2 layer (h2) rejects as malformed with
# RST_STREAM(PROTOCOL_ERROR): send `localhost`, as grpc-go and tonic's clients do.
_CHANNEL_OPTIONS = [("grpc.default_authority", "localhost")]


class Secret:
    """One secret's current value as vaultd returned it. Its repr never shows the value."""

    __slots__ = ("env", "name", "version", "value")

    def __init__(self, env: str, name: str, version: int, value: bytes) -> None:
        self.env = env
        self.name = name
        self.version = version
        self.value = value

    def __repr__(self) -> str:
        return f"Secret(env={self.env!r}, name={self.name!r}, version={self.version}, value=[redacted])"


class Client:
    """Reads secrets from vaultd's agent socket.

    ``socket`` defaults to ``$VAULT_SOCKET``, else ``/run/vaultd/agent.sock``;
    ``env`` to ``$VAULT_ENV``, else the vault's default environment; ``token``
    (a bearer token, for agents the kernel cannot tell apart) to ``$VAULT_TOKEN``,
    else none -- all as vaultctl. Each call fails with
    :class:`~vaultd_client.Unavailable` after ``timeout`` seconds. Use it as a
    context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        env: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if socket is None:
            socket = os.environ.get("VAULT_SOCKET") or DEFAULT_SOCKET
        self.socket = os.path.abspath(os.fspath(socket))
        self.env = os.environ.get("VAULT_ENV", "") if env is None else env
        self.timeout = timeout
        token = os.environ.get("VAULT_TOKEN") if token is None else token
        # Kept out of every repr; sent only as call metadata.
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._stubs = _stubs.load()
        # An absolute path gives unix:///abs/path.
        self._channel = grpc.insecure_channel("unix://" + self.socket, options=_CHANNEL_OPTIONS)
        self._agent = self._stubs.pb2_grpc.AgentStub(self._channel)

    def _call(self, method: str, request: object) -> object:
        try:
            return getattr(self._agent, method)(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            # `from None`: the exception stands alone, with the status code and vaultd's message.
            raise from_rpc_error(err) from None

    def get_secret(self, name: str, env: str | None = None) -> Secret:
        """The current version of ``env``/``name`` (``env`` defaulting to the client's)."""
        request = self._stubs.pb2.GetSecretRequest(env=self.env if env is None else env, name=name)
        r = self._call("GetSecret", request)
        return Secret(r.env, r.name, r.version, r.value)

    def get(self, name: str, env: str | None = None) -> bytes:
        """The exact bytes of the secret's current value."""
        return self.get_secret(name, env).value

    def get_secrets(self, names: Iterable[str], env: str | None = None) -> list[Secret]:
        """Several secrets of one environment in one round trip (``GetSecrets``), in
        the order asked: all of them, or an exception for the first that fails."""
        if isinstance(names, str):
            raise TypeError("names must be a list of names, not one string")
        if not hasattr(self._stubs.pb2, "GetSecretsRequest"):
            raise NotImplementedError("this vaultd's proto has no Agent.GetSecrets: call get() for each name")
        request = self._stubs.pb2.GetSecretsRequest(env=self.env if env is None else env, names=list(names))
        r = self._call("GetSecrets", request)
        return [Secret(s.env, s.name, s.version, s.value) for s in r.secrets]

    def get_many(self, names: Iterable[str], env: str | None = None) -> dict[str, bytes]:
        """``{name: value}`` for several secrets, as :meth:`get_secrets`."""
        return {s.name: s.value for s in self.get_secrets(names, env)}

    def watch(self, names: Iterable[str], env: str | None = None) -> Iterator[list[Secret]]:
        """Follows secrets as they rotate (``WatchSecrets``): yields a list of
        :class:`Secret` per update. The first comes at once with every named
        secret (all or nothing, as :meth:`get_secrets`); each later one holds only
        the secrets whose current version changed. A slow reader gets the newest
        values, not a backlog.

        An error is raised from the iteration: first :class:`NotFound` and the
        like, as a read would; later :class:`Denied` (``PERMISSION_DENIED``) when
        access ends -- grant removed, client disabled, token revoked, revoke-all.
        Iteration ends without an error only if vaultd shuts down. ``timeout``
        does not apply (a watch is meant to last); closing the generator, or the
        client, cancels the call."""
        if isinstance(names, str):
            raise TypeError("names must be a list of names, not one string")
        if not hasattr(self._agent, "WatchSecrets"):
            raise NotImplementedError("this vaultd's proto has no Agent.WatchSecrets")
        request = self._stubs.pb2.GetSecretsRequest(env=self.env if env is None else env, names=list(names))
        # grpcio sends the request now; the generator below only reads the replies.
        call = self._agent.WatchSecrets(request, metadata=self._metadata)
        return self._updates(call)

    @staticmethod
    def _updates(call: grpc.Call) -> Iterator[list[Secret]]:
        try:
            for r in call:
                yield [Secret(s.env, s.name, s.version, s.value) for s in r.secrets]
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        finally:
            # A generator dropped early must not leave the stream open on vaultd.
            call.cancel()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(socket={self.socket!r}, env={self.env!r}, token={'[set]' if self._metadata else None})"
