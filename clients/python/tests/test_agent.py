#!/usr/bin/env python3
"""End-to-end tests of vaultd_client against a running vaultd's agent socket.

Plain unittest; tests/tests/python_client.rs runs it against a vaultd it started.
By hand, with a vault holding the secrets named below:

    VAULT_SOCKET=/path/agent.sock VAULT_TEST_NAME=telegram VAULT_TEST_VALUE_HEX=$(printf tok | xxd -p) \\
        python3 clients/python/tests/test_agent.py

Environment:
  VAULT_SOCKET                  the agent socket
  VAULT_TEST_NAME               a secret in the default environment ...
  VAULT_TEST_VALUE_HEX          ... and its value, hex-encoded
  VAULT_TEST_BINARY_NAME        optional: a second secret with a binary value ...
  VAULT_TEST_BINARY_VALUE_HEX   ... hex-encoded (its test is skipped without them)
  VAULT_TEST_EXPECT             `unlocked` (default) or `sealed`: which tests to run
VAULT_ENV and VAULT_TOKEN should be unset: the tests read the default environment as the vault's owner.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
import unittest
from pathlib import Path

# The package from this source tree; no install needed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vaultd_client  # noqa: E402
from vaultd_client import Client, InvalidArgument, NotFound, Sealed, Unavailable, VaultError  # noqa: E402
from vaultd_client import _stubs  # noqa: E402


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"test_agent.py: set {name} (see the docstring)")
    return value


SOCKET = _env("VAULT_SOCKET")
NAME = _env("VAULT_TEST_NAME")
VALUE = bytes.fromhex(_env("VAULT_TEST_VALUE_HEX"))
BINARY_NAME = os.environ.get("VAULT_TEST_BINARY_NAME", "")
BINARY_VALUE = bytes.fromhex(os.environ.get("VAULT_TEST_BINARY_VALUE_HEX", ""))


class LeakChecks(unittest.TestCase):
    def assert_no_value(self, text: str) -> None:
        """`text` shows no secret value in any spelling: raw, repr, hex."""
        for value in (VALUE, BINARY_VALUE):
            if not value:
                continue
            spellings = {repr(value), value.hex(), value.hex().upper(), value.decode("latin-1")}
            try:
                spellings.add(value.decode("utf-8"))
            except UnicodeDecodeError:
                pass
            for s in spellings:
                if len(s) >= 4:  # shorter spellings match by chance
                    self.assertNotIn(s, text, "a secret value appears in this text")

    def assert_error_clean(self, err: VaultError) -> None:
        self.assert_no_value(str(err))
        self.assert_no_value(repr(err))
        self.assert_no_value("".join(traceback.format_exception(type(err), err, err.__traceback__)))


class Unlocked(LeakChecks):
    """An unlocked vault holding VAULT_TEST_NAME (and VAULT_TEST_BINARY_NAME)."""

    def setUp(self) -> None:
        self.client = Client(SOCKET)
        self.addCleanup(self.client.close)

    def test_get_returns_the_exact_bytes(self) -> None:
        value = self.client.get(NAME)
        self.assertIsInstance(value, bytes)
        self.assertEqual(value, VALUE)

    def test_get_returns_a_binary_value_byte_for_byte(self) -> None:
        if not BINARY_NAME:
            self.skipTest("VAULT_TEST_BINARY_NAME not set")
        with self.assertRaises(UnicodeDecodeError, msg="the binary test value should not be UTF-8"):
            BINARY_VALUE.decode("utf-8")
        self.assertEqual(self.client.get(BINARY_NAME), BINARY_VALUE)

    def test_get_secret_has_metadata_and_a_redacted_repr(self) -> None:
        secret = self.client.get_secret(NAME)
        self.assertEqual((secret.env, secret.name, secret.value), ("default", NAME, VALUE))
        self.assertGreaterEqual(secret.version, 1)
        self.assertIn("[redacted]", repr(secret))
        self.assert_no_value(repr(secret))

    def test_default_environment_by_name(self) -> None:
        self.assertEqual(self.client.get(NAME, env="default"), VALUE)

    def test_socket_defaults_to_VAULT_SOCKET(self) -> None:
        with Client() as client:
            self.assertEqual(client.socket, os.path.abspath(SOCKET))
            self.assertEqual(client.get(NAME), VALUE)

    def test_get_many_is_all_or_nothing(self) -> None:
        names = [BINARY_NAME, NAME] if BINARY_NAME else [NAME]
        if not hasattr(_stubs.load().pb2, "GetSecretsRequest"):
            # A proto without GetSecrets: the client says so rather than guessing.
            with self.assertRaises(NotImplementedError):
                self.client.get_many(names)
            return
        got = self.client.get_many(names)
        self.assertEqual(list(got), names, "in the order asked")
        self.assertEqual(got, {NAME: VALUE, **({BINARY_NAME: BINARY_VALUE} if BINARY_NAME else {})})
        with self.assertRaises(NotFound) as caught:
            self.client.get_many([NAME, NAME + "-no-such-secret"])
        self.assert_error_clean(caught.exception)

    def test_a_token_is_never_shown(self) -> None:
        token = "vt_python_client_test_token_0123456789"
        with Client(SOCKET, token=token) as client:
            self.assertNotIn(token, repr(client))
            self.assertIn("[set]", repr(client))
        self.assertNotIn(token, repr(self.client))

    def test_unknown_secret_raises_not_found(self) -> None:
        with self.assertRaises(NotFound) as caught:
            self.client.get(NAME + "-no-such-secret")
        err = caught.exception
        self.assertIsInstance(err, VaultError)
        self.assertEqual(err.code.name, "NOT_FOUND")
        self.assertIn(NAME + "-no-such-secret", str(err))
        self.assert_error_clean(err)

    def test_other_environment_raises_not_found_without_the_value(self) -> None:
        with self.assertRaises(NotFound) as caught:
            self.client.get(NAME, env="no-such-env")
        self.assertIn("no-such-env", str(caught.exception))
        self.assert_error_clean(caught.exception)

    def test_invalid_name_raises_invalid_argument(self) -> None:
        with self.assertRaises(InvalidArgument) as caught:
            self.client.get("Not A Name/..")
        self.assert_error_clean(caught.exception)

    def test_no_daemon_raises_unavailable(self) -> None:
        with tempfile.TemporaryDirectory() as d, Client(os.path.join(d, "agent.sock"), timeout=5) as client:
            with self.assertRaises(Unavailable) as caught:
                client.get(NAME)
        self.assert_error_clean(caught.exception)


class SealedVault(LeakChecks):
    """The same vault, sealed: reads fail with Sealed."""

    def test_get_raises_sealed(self) -> None:
        with Client(SOCKET) as client, self.assertRaises(Sealed) as caught:
            client.get(NAME)
        self.assertEqual(caught.exception.code.name, "FAILED_PRECONDITION")
        self.assert_error_clean(caught.exception)


def main() -> int:
    expect = os.environ.get("VAULT_TEST_EXPECT", "unlocked")
    cases = {"unlocked": Unlocked, "sealed": SealedVault}
    if expect not in cases:
        raise SystemExit(f"test_agent.py: VAULT_TEST_EXPECT must be one of {sorted(cases)}, not {expect!r}")
    print(f"vaultd_client from {Path(vaultd_client.__file__).parent}; expecting the vault {expect}", file=sys.stderr)
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(cases[expect])
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
