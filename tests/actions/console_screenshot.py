"""Makes docs/console.png, the README's picture of the web console (not a test).

    .venv/bin/python tests/actions/console_screenshot.py [docs/console.png]

Serves the app (memory store, no token) in a thread, plays a few runs through the RPCs
as an executor would, over about five seconds so that the timeline has a shape (one run
with a failed retry, a nested action and a paused condition), and saves what headless
chromium shows with that run open.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "support")]

from actions_harness import aid, condition_req, task_req, update_req  # noqa: E402
from flyteidl2.common import phase_pb2 as P  # noqa: E402
from flyteidl2.common.identifier_pb2 import ActionIdentifier  # noqa: E402
from flyteidl2.core import types_pb2  # noqa: E402
from google.protobuf.message import Message  # noqa: E402
from selenium import webdriver  # noqa: E402
from test_console_browser import ACTIONS, ServerThread, live, rpc  # noqa: E402

from actions import naming  # noqa: E402

ML = {"project": "ml"}
ANALYTICS = {"project": "analytics"}


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerThread(Path(tmp), auth=False)
        server.start()
        try:
            play(server)
            shoot(server, out)
        finally:
            server.stop()


def step(server: ServerThread, *calls: tuple[str, Message], pause: float = 0.0) -> None:
    for method, request in calls:
        rpc(server, ACTIONS + method, request)
    time.sleep(pause)


def play(server: ServerThread) -> None:
    for i, ending in enumerate((P.ACTION_PHASE_SUCCEEDED,) * 2 + (P.ACTION_PHASE_FAILED,)):
        root = aid("a0", f"nightly-{i}", **ANALYTICS)
        running = update_req(root, P.ACTION_PHASE_RUNNING)
        step(server, ("Enqueue", task_req(root)), ("Update", running),
             ("Update", update_req(root, ending)), pause=0.3)  # fmt: skip
    run = "train-7f3k"

    def a(name: str) -> ActionIdentifier:
        action_id: ActionIdentifier = aid(name, run, **ML)
        return action_id

    root = a("a0")
    step(server, ("Enqueue", task_req(root)), ("Update", update_req(root, P.ACTION_PHASE_RUNNING)))
    step(server, ("Enqueue", task_req(a("prepare"), parent="a0")), pause=0.2)
    step(server, ("Update", update_req(a("prepare"), P.ACTION_PHASE_RUNNING)), pause=0.4)
    step(server, ("Update", update_req(a("prepare"), P.ACTION_PHASE_SUCCEEDED)))
    for name in ("train-a", "train-b"):
        step(server, ("Enqueue", task_req(a(name), parent="a0")))
    time.sleep(0.3)
    for name in ("train-a", "train-b"):
        step(server, ("Update", update_req(a(name), P.ACTION_PHASE_RUNNING)))
    time.sleep(0.5)
    step(server, ("Update", update_req(a("train-b"), P.ACTION_PHASE_RUNNING, attempt=2)),
         ("Update", update_req(a("train-b"), P.ACTION_PHASE_FAILED, attempt=2)))  # fmt: skip

    async def oom() -> None:
        assert server.application is not None and server.application.store is not None
        store = server.application.store
        obj = await store.get(naming.object_name(a("train-b")))
        obj["status"]["errorState"] = {
            "kind": "USER", "code": "OOMKilled",
            "message": "container exceeded its 4Gi memory limit",
        }  # fmt: skip
        await store.update_status(obj)

    server.call(oom)
    step(server, ("Enqueue", task_req(a("eval"), parent="train-a")), pause=0.4)
    step(server, ("Update", update_req(a("eval"), P.ACTION_PHASE_RUNNING)), pause=0.3)
    ask = condition_req(a("approve"), "a0", simple=types_pb2.BOOLEAN)
    ask.action.condition.prompt = "Promote the model to production?"
    step(server, ("Enqueue", ask), pause=1.8)


def shoot(server: ServerThread, out: Path) -> None:
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-gpu", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium") or "chromium"
    service = webdriver.ChromeService(shutil.which("chromedriver") or "chromedriver")
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.get(server.url + "/#run=o%2Fml%2Fdevelopment%2Ftrain-7f3k")
        live(driver)
        live(driver, "#runs")
        time.sleep(0.5)  # a still picture: let the timeline's next tick draw
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/console.png"))
