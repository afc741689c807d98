"""The Connect stubs that ship inside flyteidl2 (``actions_service_connect.py``) on the
connectrpc version the Flyte SDK pins, against the Actions Service served as
``actions-service serve --memory`` serves it.

With connectrpc 0.13 (the main venv) those shipped stubs fail before any I/O
(tests/interop/test_flyteidl2_stubs.py); with the SDK's own pins (.venv-sdk, see
scripts/sdk-venv.sh) they are what the SDK uses, so here they must work unchanged over
every protocol, codec and HTTP version that connectrpc offers. The scenario itself is in
tests/support/sdk/stubs_driver.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sdk.support import run_driver, sdk_python, served_actions

COMBOS = [
    "connect-proto-h1",
    "connect-json-h1",
    "connect-proto-h2",
    "connect-json-h2-identity",
    "grpc-proto-h2",
    "grpc-json-h2",
    "grpcweb-proto-h1",
    "grpcweb-json-h2",
    "sync-connect-proto-h1",
    "sync-grpc-proto-h2",
]


@pytest.fixture
def sdk() -> Path:
    return sdk_python()


@pytest.mark.parametrize("http", ["h1", "h2"])
async def test_shipped_stubs_all_rpcs(sdk: Path, http: str) -> None:
    """Every combination over one HTTP version, which the server checks it was served."""
    combos = [c for c in COMBOS if http in c.split("-")]
    assert combos
    async with served_actions() as (port, application):
        report = await run_driver("stubs_driver.py", f"http://127.0.0.1:{port}", *combos)
        seen = dict(application.http_versions.seen)
    versions = report["versions"]
    assert versions["connectrpc"].startswith("0.10."), versions
    failed = {combo: why for combo, why in report["results"].items() if why != "ok"}
    assert not failed, "\n".join(f"{c}: {w}" for c, w in failed.items())
    assert set(report["results"]) == set(combos)
    assert set(seen) == {"1.1" if http == "h1" else "2"}, seen
