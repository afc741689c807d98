"""The web console in a real headless browser (Debian's chromium through chromedriver,
driven by selenium): runs listed, a run's tree, live updates without reloading (at any
depth, and new runs in the list), abort and signal from the page, and a wrong token's
error. Screenshots go to tests/artifacts/.

The served app runs in its own thread (its own trio loop) so that the blocking selenium
calls of these synchronous tests do not stall it.
"""

from __future__ import annotations

import math
import shutil
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from actions_harness import DOMAIN, ORG, PROJECT, aid, condition_req, task_req, update_req
from flyteidl2.common import phase_pb2
from flyteidl2.core import types_pb2
from google.protobuf import json_format
from google.protobuf.message import Message
from servers import require_tool

from actions import naming
from actions.app import ActionsApplication, open_memory_store
from actions.config import Config
from connect_proto import RequestContext
from connect_proto._headers import Headers
from connect_proto._server.serve import make_config
from connect_proto._server.serve import serve as serve_asgi

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
TOKEN = "console-token"
TOKENS = f"tokens:\n  - {{name: operator, token: {TOKEN}, allow: ['*']}}\n"
ACTIONS = "/flyteidl2.actions.ActionsService/"
CONSOLE = "/flyte_actions.console.v1.ConsoleService/"
WAIT = 15.0

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


class ServerThread:
    """The app served on 127.0.0.1 in a thread until ``stop``."""

    def __init__(self, tmp: Path, *, auth: bool = True) -> None:
        tokens = tmp / "tokens.yaml"
        tokens.write_text(TOKENS)
        self.config = Config(port=0, auth_token_file=tokens if auth else None)
        self.port = 0
        self._started = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._thread = threading.Thread(target=lambda: trio.run(self._main), daemon=True)
        self.application: ActionsApplication | None = None

    async def _main(self) -> None:
        application = self.application = ActionsApplication(
            self.config, open_store=open_memory_store
        )
        with trio.CancelScope() as scope:
            self._cancel = scope
            self._token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                self.port = await nursery.start(
                    serve_asgi, application.app, make_config("127.0.0.1", 0, graceful_timeout=1)
                )
                self._started.set()
                await trio.sleep_forever()

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("the app did not start")

    def stop(self) -> None:
        if self._token is not None and self._cancel is not None:
            trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, function: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``function`` in the server's trio loop (to write to its store as an
        executor would) and return its result."""
        assert self._token is not None
        return trio.from_thread.run(function, trio_token=self._token)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    running = ServerThread(tmp_path_factory.mktemp("console"))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    require_tool(
        "chromium and chromedriver",
        chromium is not None and driver_path is not None,
        "apt-get install chromium chromium-driver (scripts/test.sh does)",
    )
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-gpu"):  # fmt: skip
        options.add_argument(arg)
    options.binary_location = chromium
    driver = webdriver.Chrome(service=webdriver.ChromeService(driver_path), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def rpc(server: ServerThread, path: str, request: Message | dict[str, Any]) -> dict[str, Any]:
    body = request if isinstance(request, dict) else json_format.MessageToDict(request)
    response = httpx.post(
        server.url + path,
        json=body,
        headers={"authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def get_run(server: ServerThread, run: str) -> dict[str, Any]:
    request = {"run": {"org": ORG, "project": PROJECT, "domain": DOMAIN, "name": run}}
    return {a["name"]: a for a in rpc(server, CONSOLE + "GetRun", request)["actions"]}


def wait_for(driver: Any, check: Callable[[Any], Any], what: str) -> Any:
    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(check, what)
    except TimeoutException:
        # What the page showed instead, for the CI artifacts.
        shot(driver, "timeout-" + "".join(c if c.isalnum() else "-" for c in what)[:60])
        raise


def shot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"console-{name}.png"))


def open_page(driver: Any, server: ServerThread, fragment: str = "", token: str = TOKEN) -> None:
    """Load the page, then enter ``token`` in its token field, as a person would."""
    driver.get(server.url + "/" + fragment)
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#token-form button").click()


def context() -> RequestContext:
    return RequestContext(
        method=ACTIONS + "Update", protocol="direct", request_headers=Headers(), deadline=math.inf
    )


def run_fragment(run: str) -> str:
    return f"#run={ORG}%2F{PROJECT}%2F{DOMAIN}%2F{run}"


def phase_in_tree(driver: Any, action: str) -> str | None:
    # Read in the page in one step: the tree is re-rendered by live updates.
    phase: str | None = driver.execute_script(
        "const n = document.querySelector(arguments[0]); return n ? n.textContent : null;",
        f'#tree .action[data-action="{action}"] .head .phase',
    )
    return phase


def live(driver: Any, what: str = "#live") -> None:
    """Wait until the page follows its stream (the snapshot is shown)."""
    wait_for(
        driver,
        lambda d: (
            d.execute_script(
                "const n = document.querySelector(arguments[0]); return n && n.dataset.state;",
                what,
            )
            == "live"
        ),
        f"{what} live",
    )


def text_of(driver: Any, css: str) -> str:
    text: str = driver.execute_script(
        "const n = document.querySelector(arguments[0]); return n ? n.textContent : '';", css
    )
    return text


def type_into(driver: Any, css: str, text: str) -> None:
    """Type ``text`` into the empty field ``css``, again if a re-render replaced the field
    before the keys arrived (the page keeps what was typed across re-renders)."""

    def attempt(d: Any) -> bool:
        try:
            field = d.find_element(By.CSS_SELECTOR, css)
            if field.get_attribute("value") != text:
                field.clear()
                field.send_keys(text)
            return bool(field.get_attribute("value") == text)
        except (StaleElementReferenceException, NoSuchElementException):
            return False

    wait_for(driver, attempt, f"typing into {css}")


def click(driver: Any, css: str) -> None:
    """Click the element ``css`` selects, again if a re-render replaced it meanwhile."""

    def attempt(d: Any) -> bool:
        try:
            d.find_element(By.CSS_SELECTOR, css).click()
        except (StaleElementReferenceException, NoSuchElementException):
            return False
        return True

    wait_for(driver, attempt, f"clicking {css}")


def test_lists_runs_and_shows_a_runs_tree(server: ServerThread, browser: Any) -> None:
    rpc(server, ACTIONS + "Enqueue", task_req(aid("a0", "list-1")))
    rpc(server, ACTIONS + "Enqueue", task_req(aid("a0", "list-2")))
    rpc(server, ACTIONS + "Enqueue", task_req(aid("b1", "list-2"), parent="a0"))
    rpc(server, ACTIONS + "Update", update_req(aid("b1", "list-2"), phase_pb2.ACTION_PHASE_RUNNING))
    open_page(browser, server)
    wait_for(browser, lambda d: "list-2" in d.find_element(By.ID, "runs").text, "the runs")
    assert "list-1" in browser.find_element(By.ID, "runs").text
    click(browser, f'#runs tbody tr[data-run="{ORG}/{PROJECT}/{DOMAIN}/list-2"]')
    wait_for(browser, lambda d: phase_in_tree(d, "b1") == "RUNNING", "b1 RUNNING in the tree")
    assert phase_in_tree(browser, "a0") in ("QUEUED", "RUNNING")
    assert browser.find_elements(By.CSS_SELECTOR, "#timeline svg rect")
    assert browser.find_element(By.ID, "error").is_displayed() is False
    shot(browser, "tree")

    # Filters: only runs whose root is RUNNING.
    rpc(server, ACTIONS + "Update", update_req(aid("a0", "list-1"), phase_pb2.ACTION_PHASE_RUNNING))
    Select(browser.find_element(By.ID, "f-phase")).select_by_visible_text("RUNNING")
    click(browser, "#filters button")
    wait_for(browser, lambda d: "list-2" not in d.find_element(By.ID, "runs").text, "filtered")
    rows = browser.execute_script(
        "return [...document.querySelectorAll('#runs tbody tr')].map(r => r.dataset.run);"
    )
    assert rows == [f"{ORG}/{PROJECT}/{DOMAIN}/list-1"]
    Select(browser.find_element(By.ID, "f-phase")).select_by_visible_text("any phase")


def test_live_update_appears_without_reload(server: ServerThread, browser: Any) -> None:
    rpc(server, ACTIONS + "Enqueue", task_req(aid("a0", "live")))
    rpc(server, ACTIONS + "Enqueue", task_req(aid("b1", "live"), parent="a0"))
    open_page(browser, server, run_fragment("live"))
    wait_for(browser, lambda d: phase_in_tree(d, "b1") == "QUEUED", "the tree")
    browser.execute_script("window.__sameDocument = true;")

    rpc(server, ACTIONS + "Update", update_req(aid("b1", "live"), phase_pb2.ACTION_PHASE_RUNNING))
    wait_for(browser, lambda d: phase_in_tree(d, "b1") == "RUNNING", "b1 turning RUNNING")
    rpc(server, ACTIONS + "Enqueue", task_req(aid("b2", "live"), parent="a0"))
    wait_for(browser, lambda d: phase_in_tree(d, "b2") == "QUEUED", "a new child appearing")
    rpc(server, ACTIONS + "Update", update_req(aid("b1", "live"), phase_pb2.ACTION_PHASE_SUCCEEDED))
    wait_for(browser, lambda d: phase_in_tree(d, "b1") == "SUCCEEDED", "b1 SUCCEEDED")
    assert browser.execute_script("return window.__sameDocument === true;")
    shot(browser, "live")


def test_abort_from_the_page_deletes_the_action(server: ServerThread, browser: Any) -> None:
    rpc(server, ACTIONS + "Enqueue", task_req(aid("a0", "abort")))
    rpc(server, ACTIONS + "Enqueue", task_req(aid("b1", "abort"), parent="a0"))
    open_page(browser, server, run_fragment("abort"))
    wait_for(browser, lambda d: phase_in_tree(d, "b1") == "QUEUED", "the tree")
    click(browser, 'button.abort[data-action="b1"]')
    wait_for(browser, lambda d: phase_in_tree(d, "b1") == "ABORTED", "b1 ABORTED")
    assert "b1" not in get_run(server, "abort")  # deleted from the store
    assert "a0" in get_run(server, "abort")
    shot(browser, "abort")


def test_signal_from_the_page_resolves_a_condition(server: ServerThread, browser: Any) -> None:
    rpc(server, ACTIONS + "Enqueue", task_req(aid("a0", "signal")))
    ask = condition_req(aid("replicas", "signal"), "a0", simple=types_pb2.INTEGER)
    ask.action.condition.prompt = "How many replicas?"
    rpc(server, ACTIONS + "Enqueue", ask)
    open_page(browser, server, run_fragment("signal"))
    form = 'form.signal[data-action="replicas"]'
    # The right conditions, not a pause: the page follows the run (its snapshot is shown),
    # and the condition is PAUSED with its form. Only a change of the condition itself
    # replaces its node (and the field being typed into) from here on.
    live(browser)
    wait_for(browser, lambda d: phase_in_tree(d, "replicas") == "PAUSED", "replicas PAUSED")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, form), "the condition's form")
    condition = browser.find_element(By.CSS_SELECTOR, '.action[data-action="replicas"]')
    assert "How many replicas?" in condition.text
    field = f"{form} input[name=value]"
    assert browser.find_element(By.CSS_SELECTOR, field).get_attribute("type") == "number"
    type_into(browser, field, "3")
    shot(browser, "signal-form")
    click(browser, f"{form} button")
    wait_for(browser, lambda d: phase_in_tree(d, "replicas") == "SUCCEEDED", "resolved")
    wait_for(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, '.action[data-action="replicas"] .value'),
        "the value it was resolved with",
    )
    stored = get_run(server, "signal")["replicas"]
    assert stored["phase"] == "SUCCEEDED"
    assert stored["condition"]["value"] == "3"
    shown = browser.execute_script(
        "return document.querySelector(arguments[0]).textContent;",
        '.action[data-action="replicas"] .value',
    )
    assert shown == "3"


def test_wrong_token_shows_the_error(server: ServerThread, browser: Any) -> None:
    open_page(browser, server, token="not-the-token")
    error = wait_for(
        browser,
        lambda d: d.find_element(By.ID, "error") if d.find_element(By.ID, "error").text else False,
        "the error banner",
    )
    assert error.is_displayed()
    assert "unauthenticated" in error.text
    assert browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr") == []
    assert browser.execute_script("return sessionStorage.getItem('actions-console-token')") == (
        "not-the-token"
    )
    shot(browser, "wrong-token")
    # With the right token the same tab works again.
    open_page(browser, server, token=TOKEN)
    wait_for(browser, lambda d: not d.find_element(By.ID, "error").is_displayed(), "no error")


def test_a_deep_change_appears_without_reload(server: ServerThread, browser: Any) -> None:
    """Six parents with children and actions three and four levels down: every one is
    live on one stream (the page used to follow at most four parents)."""
    run = "deep"
    rpc(server, ACTIONS + "Enqueue", task_req(aid("a0", run)))
    for i in range(1, 7):
        rpc(server, ACTIONS + "Enqueue", task_req(aid(f"b{i}", run), parent="a0"))
        rpc(server, ACTIONS + "Enqueue", task_req(aid(f"c{i}", run), parent=f"b{i}"))
    rpc(server, ACTIONS + "Enqueue", task_req(aid("d1", run), parent="c6"))
    rpc(server, ACTIONS + "Enqueue", task_req(aid("e1", run), parent="d1"))
    open_page(browser, server, run_fragment(run))
    live(browser)
    wait_for(browser, lambda d: phase_in_tree(d, "e1") == "QUEUED", "the tree")
    browser.execute_script("window.__sameDocument = true;")
    indent = browser.execute_script(
        "return document.querySelector('#tree .action[data-action=\"e1\"]').style.marginLeft;"
    )
    assert indent == "6rem"  # depth 4

    # A grandchild's grandchild under the last parent changes phase.
    rpc(server, ACTIONS + "Update", update_req(aid("d1", run), phase_pb2.ACTION_PHASE_RUNNING))
    wait_for(browser, lambda d: phase_in_tree(d, "d1") == "RUNNING", "d1 RUNNING")
    # A condition appears three levels down, with its prompt and form.
    ask = condition_req(aid("gate", run), "c5", simple=types_pb2.BOOLEAN)
    ask.action.condition.prompt = "Ship it?"
    rpc(server, ACTIONS + "Enqueue", ask)
    wait_for(browser, lambda d: phase_in_tree(d, "gate") == "PAUSED", "the condition PAUSED")
    assert "Ship it?" in text_of(browser, '.action[data-action="gate"] .prompt')
    assert browser.find_elements(By.CSS_SELECTOR, 'form.signal[data-action="gate"]')
    # The executor records an error four levels down.
    rpc(server, ACTIONS + "Update", update_req(aid("e1", run), phase_pb2.ACTION_PHASE_RUNNING))
    rpc(server, ACTIONS + "Update",
        update_req(aid("e1", run), phase_pb2.ACTION_PHASE_FAILED, attempt=2))  # fmt: skip

    async def record_error() -> None:
        assert server.application is not None and server.application.store is not None
        store = server.application.store
        obj = await store.get(naming.object_name(aid("e1", run)))
        obj["status"]["errorState"] = {"code": "OOM", "kind": "USER", "message": "out of memory"}
        await store.update_status(obj)

    server.call(record_error)
    wait_for(browser, lambda d: "out of memory" in text_of(d, '.action[data-action="e1"] .err'),
             "e1's error")  # fmt: skip
    assert "attempt 2" in text_of(browser, '.action[data-action="e1"] .head')
    history = text_of(browser, '.action[data-action="e1"] .history')
    assert history.startswith("QUEUED") and "FAILED" in history
    # An abort deep down: its reason stays on show with the deleted action.
    rpc(server, ACTIONS + "Abort", {"actionId": json_format.MessageToDict(aid("c3", run)),
                                    "reason": "wrong shard"})  # fmt: skip
    reason = '.action[data-action="c3"] .abort-reason'
    wait_for(browser, lambda d: "wrong shard" in text_of(d, reason), "c3's abort reason")
    assert phase_in_tree(browser, "c3") == "ABORTED"
    assert "deleted" in text_of(browser, '.action[data-action="c3"] .head')
    # The timeline has a bar for every action, the new ones too.
    bars = browser.execute_script(
        "return [...document.querySelectorAll("
        "'#timeline rect.bar-queued, #timeline rect.bar-waited')].map(r => r.dataset.action);"
    )
    assert {"e1", "gate", "c3"} <= set(bars)
    assert browser.execute_script("return window.__sameDocument === true;")
    assert browser.find_element(By.ID, "error").is_displayed() is False
    shot(browser, "deep-live")


def test_a_new_run_appears_in_the_list_without_reload(server: ServerThread, browser: Any) -> None:
    open_page(browser, server)
    live(browser, "#runs")
    browser.execute_script("window.__sameDocument = true;")
    row = f'#runs tbody tr[data-run="{ORG}/{PROJECT}/{DOMAIN}/newcomer"]'
    assert not browser.find_elements(By.CSS_SELECTOR, row)
    rpc(server, ACTIONS + "Enqueue", task_req(aid("a0", "newcomer")))
    wait_for(browser, lambda d: text_of(d, row + " .phase") == "QUEUED", "the new run listed")
    first = browser.execute_script("return document.querySelector('#runs tbody tr').dataset.run;")
    assert first == f"{ORG}/{PROJECT}/{DOMAIN}/newcomer"  # newest first
    rpc(
        server,
        ACTIONS + "Update",
        update_req(aid("a0", "newcomer"), phase_pb2.ACTION_PHASE_RUNNING),
    )
    wait_for(browser, lambda d: text_of(d, row + " .phase") == "RUNNING", "its phase changing")
    assert browser.execute_script("return window.__sameDocument === true;")
    shot(browser, "runs-live")

    # With a phase filter, a run that leaves the phase leaves the list.
    Select(browser.find_element(By.ID, "f-phase")).select_by_visible_text("RUNNING")
    click(browser, "#filters button")
    live(browser, "#runs")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, row), "the RUNNING run")
    rpc(server, ACTIONS + "Update",
        update_req(aid("a0", "newcomer"), phase_pb2.ACTION_PHASE_SUCCEEDED))  # fmt: skip
    wait_for(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, row), "it leaving the list")
    Select(browser.find_element(By.ID, "f-phase")).select_by_visible_text("any phase")
    click(browser, "#filters button")


def test_after_a_resync_the_page_reconnects_and_misses_nothing(
    server: ServerThread, browser: Any
) -> None:
    """The server ends every stream (as when one falls behind, or the store's change
    stream restarts): the page reconnects on its own, and a change made meanwhile shows
    from the fresh snapshot."""
    run = "resync"
    rpc(server, ACTIONS + "Enqueue", task_req(aid("a0", run)))
    rpc(server, ACTIONS + "Enqueue", task_req(aid("b1", run), parent="a0"))
    open_page(browser, server, run_fragment(run))
    live(browser)
    live(browser, "#runs")
    wait_for(browser, lambda d: phase_in_tree(d, "b1") == "QUEUED", "the tree")
    browser.execute_script("window.__sameDocument = true;")

    async def resync_and_change() -> None:
        application = server.application
        assert application is not None and application.fanout is not None
        application.fanout.resync_all("test")
        # Right away, before the page can have reconnected.
        await application.service.update(
            update_req(aid("b1", run), phase_pb2.ACTION_PHASE_RUNNING), context()
        )

    server.call(resync_and_change)
    wait_for(browser, lambda d: phase_in_tree(d, "b1") == "RUNNING", "b1 RUNNING after it")
    live(browser)
    rpc(server, ACTIONS + "Update", update_req(aid("b1", run), phase_pb2.ACTION_PHASE_SUCCEEDED))
    wait_for(browser, lambda d: phase_in_tree(d, "b1") == "SUCCEEDED", "b1 SUCCEEDED")
    live(browser, "#runs")
    assert browser.execute_script("return window.__sameDocument === true;")
    assert browser.find_element(By.ID, "error").is_displayed() is False
