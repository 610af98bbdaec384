"""The dashboard (``/ui``) in headless Chromium (Debian's ``chromium`` + ``chromium-driver``, through
selenium), in front of the real ``llmdock serve`` and one real deployment (the transformers CPU engine
image, the tiny model), shared by the tests in file order:

load the page (refused, then the admin key typed in) → the deployment become ready → GPUs (none here:
host memory split by deployment; then one H100 from a fake nvidia-smi) → stream a chat answer in the
playground → follow its log → usage per key and model appear → plan a what-if deployment and see its
memory table → stop it through the confirmation dialog → switch to Chinese → plan the same deployment
again and start it from the plan (the same spec: the same container starts) → remove it.

Each page is photographed; ``UI_SCREENSHOTS=DIR`` keeps the PNGs there (``scripts/screenshots``
writes docs/screenshots/ that way), else they go to the test's temporary folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import struct
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import cli, own_home
from tests.support.gateway import Served, serve

pytestmark = [pytest.mark.docker, pytest.mark.slow]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT_S = 20.0
READY_S = 180.0  # the engine container's start on two busy cores
GPU_CSV = Path(__file__).parents[1] / "fixtures" / "nvidia-smi" / "h100-gpus.csv"
FAKE_SMI = """#!/bin/sh
# nvidia-smi for the dashboard test: the GPUs of {csv} while that file exists, else no driver.
case "$1" in
  --query-gpu=*) [ -f {csv} ] && exec cat {csv}
    echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver" >&2; exit 9 ;;
esac
"""


@dataclass
class Dash:
    gw: Served
    name: str
    admin_key: str
    ci_key: str
    driver: Any
    shots: Path
    smi_csv: Path  # what the gateway's nvidia-smi prints while it exists (no GPU while it does not)

    def open(self, page: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.CSS_SELECTOR, f'#nav a[data-page="{page}"]').click()
        self.wait(lambda: not self.find(f"#page-{page}").get_attribute("hidden"), f"the {page} page")

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def text(self, css: str) -> str:
        found = self.all(css)
        return str(found[0].text) if found else ""

    def wait(self, check: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        def probe(_: Any) -> Any:
            try:
                return check()
            except StaleElementReferenceException:  # the table was redrawn under us: look again
                return False

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(probe)
        except TimeoutException:
            status = self.text("#status")
            raise AssertionError(f"timed out waiting for {what} (status line: {status!r})") from None

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def click(self, css: str) -> None:
        """Click what ``css`` finds, looking again when the table was redrawn between find and click."""
        self.wait(lambda: self.find(css).click() or True, f"a click on {css}")

    def row(self, css: str = "") -> str:
        return self.text(f'#deployments tr[data-name="{self.name}"] {css}'.strip())


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture(scope="module")
def dhome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with own_home(tmp_path_factory.mktemp("dash-home")) as home:
        yield home


@pytest.fixture(scope="module")
def dash(
    dhome: Path,
    engine_image: str,
    tiny_model: Path,
    docker_client: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Dash]:
    import docker
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            pytest.fail(
                f"{path} is missing — run scripts/ci-setup first (it installs chromium, chromium-driver)"
            )
    name = f"ui-{uuid.uuid4().hex[:6]}"
    keys = {}
    for key, flags in (
        ("admin", ["--admin"]),
        ("ci", ["--models", name, "--rpm", "60", "--tokens-per-day", "100000"]),
    ):
        made = cli("keys", "create", key, *flags, "--json")
        assert made.returncode == 0, made.stderr
        keys[key] = json.loads(made.stdout)["key"]
    done = cli("up", str(tiny_model), "--engine", "transformers", "--name", name, "--no-wait", "--json")
    assert done.returncode == 0, done.stderr
    shots = Path(os.environ.get("UI_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,800",
        "--lang=en-US",
    ):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"intl.accept_languages": "en-US,en"})
    bin_dir = tmp_path_factory.mktemp("dash-bin")
    smi_csv = bin_dir / "gpus.csv"
    (bin_dir / "nvidia-smi").write_text(FAKE_SMI.format(csv=shlex.quote(str(smi_csv))))
    (bin_dir / "nvidia-smi").chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    try:
        with serve(tmp_path_factory.mktemp("dash-serve"), env={"PATH": path}) as gw:
            driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
            try:
                yield Dash(gw, name, keys["admin"], keys["ci"], driver, shots, smi_csv)
            finally:
                driver.quit()
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.containers.get(name).remove(force=True)


def test_page_asks_for_the_admin_key_then_shows_the_deployment_become_ready(dash: Dash) -> None:
    dash.driver.get(dash.gw.url + "/ui")
    dash.wait(lambda: "admin key" in dash.text("#status").lower(), "the refusal that asks for a key")
    dash.find("#api-key").send_keys(dash.admin_key)
    dash.find("#key-save").click()
    dash.wait(lambda: dash.row(), "the deployment's row")
    assert dash.driver.execute_script("return sessionStorage.getItem('llmdock.key')") == dash.admin_key
    assert dash.row("td:nth-child(5)") == "CPU" and "transformers" in dash.row()
    dash.wait(lambda: dash.row(".phase") == "ready", "the deployment to become ready", READY_S)
    dash.wait(lambda: dash.row("td:nth-child(2)") == "ready", "the derived state to say ready", 10)
    assert f"model {dash.name}" in dash.row()
    assert dash.gw.url + "/v1" in dash.row()
    dash.shot("deployments")


def test_gpus_page_shows_host_memory_by_deployment_and_the_gpus_nvidia_smi_lists(dash: Dash) -> None:
    dash.open("gpus")
    dash.wait(lambda: dash.all("#no-gpu"), "the no-GPU note")
    segment = dash.wait(
        lambda: dash.all(f'.bar span[data-deployment="{dash.name}"]'), "the deployment's share"
    )
    width = float(segment[0].value_of_css_property("width").removesuffix("px"))
    assert width > 0
    assert dash.name in dash.text(".gpu .legend")
    dash.shot("gpus")
    shutil.copy(GPU_CSV, dash.smi_csv)  # now the gateway's nvidia-smi lists one H100 (80 GB, 480 MiB used)
    try:
        dash.open("deployments")
        dash.open("gpus")
        title = dash.wait(
            lambda: dash.text(".gpu h3").startswith("GPU 0") and dash.text(".gpu h3"), "the GPU"
        )
        assert "H100" in title and "480 MiB of 79.6 GiB used" in title
        assert not dash.all("#no-gpu")
        assert dash.all(".gpu .bar span.other")  # used, and held by no deployment
        dash.shot("gpus-fixture")
    finally:
        dash.smi_csv.unlink()


def test_playground_streams_an_answer_through_the_gateway(dash: Dash) -> None:
    dash.open("chat")
    dash.wait(lambda: dash.all(f'#chat-model option[value="{dash.name}"]'), "the model in the list")
    from selenium.webdriver.support.ui import Select

    Select(dash.find("#chat-model")).select_by_value(dash.name)
    dash.find("#chat-max").clear()
    dash.find("#chat-max").send_keys("12")
    dash.find("#chat-input").send_keys("Say hello to llmdock.")
    dash.find("#chat-send").click()
    done = dash.wait(lambda: dash.all('.msg.assistant[data-done="true"]'), "the streamed answer", 60)
    assert done[0].find_element("css selector", ".text").text.strip()
    assert int(done[0].get_attribute("data-chunks")) >= 2  # it arrived in pieces, as they came
    assert "completion tokens" in dash.text("#chat-usage")
    dash.shot("chat")


def test_logs_follow_the_engine(dash: Dash) -> None:
    dash.open("logs")
    dash.wait(lambda: dash.all(f'#logs-name option[value="{dash.name}"]'), "the deployment in the list")
    from selenium.webdriver.support.ui import Select

    Select(dash.find("#logs-name")).select_by_value(dash.name)
    dash.find("#logs-form button[type=submit]").click()
    dash.wait(lambda: "/v1/chat/completions" in dash.find("#logs-out").text, "the chat request in the log")
    assert dash.find("#logs-stop").is_enabled()  # still following
    before = dash.find("#logs-out").text.count("/v1/chat/completions")
    reply = httpx.post(
        dash.gw.url + "/v1/chat/completions",
        json={"model": dash.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        headers={"Authorization": f"Bearer {dash.ci_key}"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    dash.wait(
        lambda: dash.find("#logs-out").text.count("/v1/chat/completions") > before,
        "a new line, followed live",
    )
    dash.shot("logs")
    dash.find("#logs-stop").click()


def test_usage_appears_per_key_and_model(dash: Dash) -> None:
    dash.open("keys")
    for key in ("admin", "ci"):
        dash.wait(
            lambda key=key: dash.all(
                f'#usage-charts .chart[data-key="{key}"][data-model="{dash.name}"] rect.v'
            ),
            f"the chart of {key}",
        )
        row = dash.find(f'#usage-table tr[data-key="{key}"][data-model="{dash.name}"]')
        assert int(row.find_elements("css selector", "td")[2].text) >= 1
    assert {r.get_attribute("data-name") for r in dash.all("#keys tr")} == {"admin", "ci"}
    ci = dash.text('#keys tr[data-name="ci"]')
    assert "tokens/day 100,000" in ci and "Requests/min 60" in ci
    dash.shot("keys")


def test_plan_shows_the_memory_table_before_starting(dash: Dash, tiny_model: Path) -> None:
    dash.open("plan")
    dash.find('#plan-form input[name="model"]').send_keys(str(tiny_model))
    dash.find('#plan-form input[name="name"]').send_keys("planned")
    dash.find('#plan-form input[name="assume_gpus"]').send_keys("2xH100")
    dash.find("#plan-form button[type=submit]").click()
    verdict = dash.wait(lambda: dash.all(".verdict"), "the plan")
    assert verdict[0].get_attribute("data-verdict") == "would", dash.text("#plan-out")
    rows = dash.all("table.memory tbody tr")
    assert len(rows) >= 1 and rows[0].find_elements("css selector", "td")[0].text == "0"
    assert "KV" in dash.text("table.memory thead")
    assert "vllm serve" in dash.text("#plan-out") or "--max-model-len" in dash.text("#plan-out")
    assert not dash.find("#plan-up").is_enabled()  # a what-if plan cannot be started here
    dash.shot("plan")
    listed = httpx.get(
        dash.gw.url + "/admin/v1/deployments", headers={"Authorization": f"Bearer {dash.admin_key}"}
    ).json()
    assert "planned" not in {d["name"] for d in listed}  # planning created nothing


def test_stop_asks_first_then_stops(dash: Dash, docker_client: Any) -> None:
    dash.open("deployments")
    stop = f'#deployments tr[data-name="{dash.name}"] button[data-action="stop"]'
    dash.click(stop)
    dash.wait(lambda: dash.find("#confirm").get_attribute("open") is not None, "the confirmation")
    assert dash.name in dash.text("#confirm-text")
    dash.shot("stop-confirm")
    dash.find('#confirm button[value="cancel"]').click()
    assert docker_client.containers.get(dash.name).status == "running"  # cancel stops nothing
    dash.click(stop)
    dash.wait(lambda: dash.find("#confirm").get_attribute("open") is not None, "the confirmation again")
    dash.find("#confirm-ok").click()
    dash.wait(lambda: dash.row("td:nth-child(2)") == "stopped", "the row to say stopped", 60)
    assert docker_client.containers.get(dash.name).status == "exited"
    assert dash.all(f'#deployments tr[data-name="{dash.name}"] button[data-action="start"]')


def test_switch_to_chinese_and_it_stays(dash: Dash) -> None:
    from selenium.webdriver.support.ui import Select

    Select(dash.find("#lang")).select_by_value("zh")
    dash.wait(lambda: dash.text('#nav a[data-page="deployments"]') == "部署", "Chinese labels")
    assert dash.driver.execute_script("return document.documentElement.lang") == "zh-CN"
    assert dash.row("td:nth-child(2)") == "已停止"  # the table is redrawn in Chinese too
    assert dash.row(".phase") == "—"  # not "ready" from the gateway's last probe
    dash.driver.refresh()
    dash.wait(lambda: dash.text('#nav a[data-page="deployments"]') == "部署", "Chinese after a reload")
    assert dash.driver.execute_script("return sessionStorage.getItem('llmdock.key')") == dash.admin_key


def test_a_plan_of_the_stopped_deployment_starts_it_after_confirming(dash: Dash, tiny_model: Path) -> None:
    from selenium.webdriver.support.ui import Select

    dash.open("plan")
    for field in ("model", "name", "assume_gpus"):
        dash.find(f'#plan-form input[name="{field}"]').clear()
    dash.find('#plan-form input[name="model"]').send_keys(str(tiny_model))
    dash.find('#plan-form input[name="name"]').send_keys(dash.name)
    Select(dash.find('#plan-form select[name="engine"]')).select_by_value("transformers")
    dash.find("#plan-form button[type=submit]").click()
    dash.wait(lambda: dash.find("#plan-up").is_enabled(), "a plan that can start")
    assert dash.find(".verdict").get_attribute("data-verdict") == "would"
    assert "可以部署" in dash.text(".verdict")  # drawn in the language chosen before
    dash.shot("plan-zh")
    dash.find("#plan-up").click()
    dash.wait(lambda: dash.find("#confirm").get_attribute("open") is not None, "the confirmation")
    dash.find("#confirm-ok").click()
    dash.wait(lambda: dash.row(".phase") == "就绪", "the same deployment ready again", READY_S)  # same spec
    assert dash.row("td:nth-child(2)") == "就绪"  # the derived state, not Docker's "running"
    assert len(dash.all("#deployments tr[data-name]")) >= 1
    dash.shot("deployments-zh")
    for shot in dash.shots.glob("*.png"):
        width, height = png_size(shot)
        assert (width, height) >= (1000, 600), shot


def test_remove_asks_first_then_removes(dash: Dash, docker_client: Any) -> None:
    import docker

    dash.click(f'#deployments tr[data-name="{dash.name}"] button[data-action="rm"]')
    dash.wait(lambda: dash.find("#confirm").get_attribute("open") is not None, "the confirmation")
    assert dash.name in dash.text("#confirm-text")
    dash.find("#confirm-ok").click()
    dash.wait(lambda: not dash.all(f'#deployments tr[data-name="{dash.name}"]'), "the row to go")
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(dash.name)
