#!/usr/bin/env python3
"""End-to-end tests of vaultd_client as an agent with a bearer token: reads, a
denied read, and watch (a rotated value arrives; the watch ends with
PERMISSION_DENIED when access ends).

Plain unittest; tests/tests/python_client.rs runs it against a vaultd it started.
Each test sets up its own secrets, client and token through vaultctl, so it needs
the admin socket too. By hand, against an unlocked vault you own:

    VAULT_SOCKET=/path/agent.sock VAULT_ADMIN_SOCKET=/path/admin.sock VAULTCTL=target/debug/vaultctl \\
        python3 clients/python/tests/test_watch.py

Environment:
  VAULT_SOCKET, VAULT_ADMIN_SOCKET   the daemon's sockets
  VAULTCTL                           the vaultctl binary
  VAULT_TEST_TAG                     optional: a marker put in every value, so the
                                     runner can check no value was printed
VAULT_ENV and VAULT_TOKEN should be unset.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import traceback
import unittest
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

# The package from this source tree; no install needed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vaultd_client import Client, Denied, NotFound, Secret, VaultError  # noqa: E402


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"test_watch.py: set {name} (see the docstring)")
    return value


SOCKET = _env("VAULT_SOCKET")
VAULTCTL = _env("VAULTCTL")
_env("VAULT_ADMIN_SOCKET")  # read by vaultctl
TAG = os.environ.get("VAULT_TEST_TAG") or os.urandom(8).hex()

#: How long a test waits for an update before failing (rather than hanging).
WAIT = 10.0

_ids = itertools.count(1)


def vaultctl(*args: str, stdin: bytes = b"") -> bytes:
    """Runs vaultctl against the test's daemon (no token: as the vault's owner)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VAULT_TOKEN", "VAULT_ENV")}
    out = subprocess.run([VAULTCTL, *args], input=stdin, capture_output=True, env=env, timeout=30)
    if out.returncode != 0:
        raise AssertionError(f"vaultctl {' '.join(args)} exited {out.returncode}: {out.stderr.decode()}")
    return out.stdout


class Follower:
    """Reads a watch in a thread, so a test can wait for the next update with a
    timeout instead of hanging when one never comes."""

    _END = object()

    def __init__(self, updates: Iterator[list[Secret]]) -> None:
        self._queue: queue.Queue[object] = queue.Queue()
        threading.Thread(target=self._read, args=(updates,), daemon=True).start()

    def _read(self, updates: Iterator[list[Secret]]) -> None:
        try:
            for update in updates:
                self._queue.put(update)
            self._queue.put(self._END)
        except VaultError as err:
            self._queue.put(err)

    def next(self) -> list[Secret] | VaultError | None:
        """The next update, the error the watch ended with, or None if it ended cleanly."""
        try:
            item = self._queue.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"no update within {WAIT} s") from None
        return None if item is self._END else item  # type: ignore[return-value]


class Agent(unittest.TestCase):
    """A client `py-bot-N` with a token, granted `default/py-N-a` and `default/py-N-b`
    (each holding a value with TAG in it); `default/py-N-c` exists and is not granted."""

    def setUp(self) -> None:
        n = next(_ids)
        self.a, self.b, self.c = (f"py-{n}-{x}" for x in "abc")
        self.values = {name: f"{name}-v1-{TAG}".encode() for name in (self.a, self.b, self.c)}
        for name, value in self.values.items():
            vaultctl("put", name, stdin=value)
        self.bot = f"py-bot-{n}"
        grants = ["--allow", f"default/{self.a}", "--allow", f"default/{self.b}"]
        vaultctl("client", "add", self.bot, "--uid", "4242", *grants)
        created = json.loads(vaultctl("--json", "token", "create", "--client", self.bot, "--any-uid"))
        self.token, self.accessor = created["token"], created["accessor"]
        self.client = Client(SOCKET, token=self.token)
        self.addCleanup(self.client.close)

    def assert_clean(self, err: VaultError) -> None:
        """Neither the error nor its traceback shows a value or the token."""
        text = "".join([str(err), repr(err), *traceback.format_exception(type(err), err, err.__traceback__)])
        self.assertNotIn(TAG, text)
        self.assertNotIn(self.token, text)

    def test_get_and_get_many_with_the_token_from_VAULT_TOKEN(self) -> None:
        with mock.patch.dict(os.environ, {"VAULT_TOKEN": self.token}), Client(SOCKET) as client:
            self.assertIn("token=[set]", repr(client))
            self.assertEqual(client.get(self.a), self.values[self.a])
            got = client.get_many([self.b, self.a])
            self.assertEqual(list(got.items()), [(self.b, self.values[self.b]), (self.a, self.values[self.a])])
        # The token argument works the same way.
        self.assertEqual(self.client.get(self.b), self.values[self.b])

    def test_a_read_not_granted_is_not_found(self) -> None:
        # Without the token, the same process is the vault's owner and may read it:
        # the token is what the refusal is about.
        with Client(SOCKET, token="") as owner:
            self.assertEqual(owner.get(self.c), self.values[self.c])
        for what, read in [
            ("get", lambda: self.client.get(self.c)),
            ("get_many", lambda: self.client.get_many([self.a, self.c])),
            ("no such secret", lambda: self.client.get(self.c + "-none")),
        ]:
            with self.subTest(what), self.assertRaises(NotFound) as caught:
                read()
            self.assertEqual(caught.exception.code.name, "NOT_FOUND")
            self.assert_clean(caught.exception)

    def test_a_revoked_token_is_denied(self) -> None:
        self.assertEqual(self.client.get(self.a), self.values[self.a])
        vaultctl("token", "revoke", self.accessor)
        with self.assertRaises(Denied) as caught:
            self.client.get(self.a)
        self.assertEqual(caught.exception.code.name, "UNAUTHENTICATED")
        self.assert_clean(caught.exception)

    def test_watch_yields_every_value_then_the_rotated_one(self) -> None:
        watch = Follower(self.client.watch([self.a, self.b]))
        first = watch.next()
        self.assertIsInstance(first, list)
        want = [(self.a, 1, self.values[self.a]), (self.b, 1, self.values[self.b])]
        self.assertEqual([(s.name, s.version, s.value) for s in first], want)
        self.assertNotIn(TAG, repr(first))
        rotated = f"{self.b}-v2-{TAG}".encode()
        vaultctl("rotate", self.b, stdin=rotated)
        update = watch.next()
        self.assertIsInstance(update, list)
        self.assertEqual([(s.env, s.name, s.version, s.value) for s in update], [("default", self.b, 2, rotated)])
        self.assertEqual(self.client.get(self.b), rotated)

    def test_watch_ends_with_permission_denied_when_the_grant_is_removed(self) -> None:
        self._assert_watch_ends(lambda: vaultctl("client", "ungrant", self.bot, f"default/{self.b}"))

    def test_watch_ends_with_permission_denied_when_the_token_is_revoked(self) -> None:
        self._assert_watch_ends(lambda: vaultctl("token", "revoke", self.accessor))

    def _assert_watch_ends(self, end_access: Callable[[], object]) -> None:
        updates = self.client.watch([self.a, self.b])
        watch = Follower(updates)
        self.assertIsInstance(watch.next(), list)
        end_access()
        ended = watch.next()
        self.assertIsInstance(ended, Denied)
        self.assertEqual(ended.code.name, "PERMISSION_DENIED")
        self.assertIn("ended", str(ended))
        self.assert_clean(ended)
        with self.assertRaises(StopIteration, msg="nothing after the error"):
            next(updates)

    def test_watch_of_a_secret_not_granted_is_not_found(self) -> None:
        with self.assertRaises(NotFound) as caught:
            next(self.client.watch([self.a, self.c]))
        self.assert_clean(caught.exception)

    def test_watch_wants_a_list_of_names(self) -> None:
        with self.assertRaises(TypeError):
            self.client.watch(self.a)


def main() -> int:
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(Agent)
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
