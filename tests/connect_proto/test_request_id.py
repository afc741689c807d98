"""Request ids: random, unique, and not repeated by a forked worker."""

from __future__ import annotations

import itertools
import subprocess
import sys

from connect_proto._app.request_id import new_request_id, request_id_from


def test_ids_are_random_hex_and_unique() -> None:
    ids = [new_request_id() for _ in range(5000)]  # spans several draws of the pool
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    # Not a counter: consecutive ids share no long common prefix.
    assert sum(a[:8] == b[:8] for a, b in itertools.pairwise(ids)) < 5


def test_a_forked_child_draws_its_own_ids() -> None:
    code = (
        "import os\n"
        "from connect_proto._app.request_id import new_request_id\n"
        "new_request_id()\n"
        "read, write = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.write(write, new_request_id().encode()); os._exit(0)\n"
        "os.wait()\n"
        "child = os.read(read, 64).decode()\n"
        "assert child != new_request_id(), 'the child repeated the parent'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_sane_caller_id_is_kept_and_another_replaced() -> None:
    assert request_id_from("abc-123") == "abc-123"
    assert request_id_from("bad id\n") != "bad id\n"
    assert len(request_id_from(None)) == 32
