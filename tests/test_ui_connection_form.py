"""The Segment Profiles connection form in Airflow's real UI, driven by headless Chromium.

A real ``airflow api-server`` (SimpleAuthManager, all admins) serves the UI; Playwright fills the *Add
Connection* form as a user does, and the connection is read back through the REST API and the CLI. The
test always saves a screenshot of the form to its tmp folder; with ``SEGMENT_PROFILES_UPDATE_SCREENSHOT=1``
it also replaces ``docs/images/connection-form.png``, which ``docs/connection.md`` shows.

Without Chromium (``/usr/bin/chromium``) or the ``playwright`` package the test skips with the reason,
except in CI (``CI`` set), where it fails. It also runs against Airflow 3.1 (see docs/connection.md), whose
form comes from the hook's classmethods: there the region sits under "Extra Fields" and its choices are the
bare region names.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
from pathlib import Path

import pytest
from airflow import __version__ as AIRFLOW_VERSION
from airflow_deployment import CHROMIUM, CHROMIUM_ARGS, AirflowDeployment, chromium_problem
from packaging.version import Version

from airflow_provider_segment_profiles.get_provider_info import CONN_FIELDS, REGION_SECTION
from airflow_provider_segment_profiles.testing import SegmentEmulator

pytestmark = pytest.mark.browser

DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "connection-form.png"
DOCS_EDIT_SCREENSHOT = DOCS_SCREENSHOT.with_name("connection-form-europe.png")
CONN_ID = "segment_profiles_eu"
#: Airflow 3.2+ builds the form from the provider info's conn-fields (sections, values_display).
DECLARATIVE_FORM = Version(AIRFLOW_VERSION) >= Version("3.2")
REGION_HEADING = REGION_SECTION if DECLARATIVE_FORM else "Extra Fields"
CHOICES = CONN_FIELDS["region"]["schema"]["values_display"] if DECLARATIVE_FORM else {}


@pytest.fixture
def chromium() -> str:
    problem = chromium_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {problem}")
        pytest.skip(problem)
    return CHROMIUM


@pytest.fixture
def api_server(tmp_path):
    with AirflowDeployment(tmp_path / "airflow_home", dags_folder=tmp_path / "dags") as airflow:
        (tmp_path / "dags").mkdir()
        airflow.migrate()
        airflow.start("api-server")
        yield airflow


def test_add_a_connection_through_the_form_and_read_it_back(chromium, api_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    write_key = "ui-" + secrets.token_hex(12)
    airflow = api_server

    # The api-server itself lists the type with its fields (what the form is built from).
    meta = airflow.api("GET", "/ui/connections/hook_meta")
    assert meta.status_code == 200, meta.text
    (segment,) = [h for h in meta.json() if h["connection_type"] == "segment_profiles"]
    assert segment["hook_name"] == "Segment Profiles"
    assert segment["standard_fields"]["password"]["title"] == "Write Key"
    assert segment["standard_fields"]["host"]["title"] == "Host"
    assert "127.0.0.1:8765" in segment["standard_fields"]["host"]["placeholder"]
    assert all(segment["standard_fields"][f]["hidden"] for f in ("login", "port", "url_schema"))
    assert segment["extra_fields"]["region"]["schema"]["title"] == "Endpoint Region"

    with SegmentEmulator(write_key=write_key) as emulator, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{airflow.base_url}/auth/token/login", wait_until="networkidle")  # all admins
            page.goto(f"{airflow.base_url}/connections", wait_until="networkidle")
            page.get_by_role("button", name="Add Connection").click()
            form = page.get_by_role("dialog")
            form.get_by_label("Connection ID").fill(CONN_ID)
            conn_type = form.get_by_role("combobox", name="Connection Type")
            conn_type.fill("Segment Profiles")
            page.get_by_role("option", name="Segment Profiles", exact=True).click()

            # The standard fields, as the provider labels them; the Write Key input is masked.
            key_input = form.get_by_label("Write Key", exact=True)
            expect(key_input).to_have_attribute("type", "password")
            key_input.fill(write_key)
            host = form.get_by_label("Host", exact=True)
            expect(host).to_have_attribute(
                "placeholder", "optional override, e.g. http://127.0.0.1:8765/v1 (emulator)"
            )
            # The region's section heading names the region and its default without being opened.
            region_heading = form.get_by_role("button", name=REGION_HEADING, exact=True)
            expect(region_heading).to_be_visible()
            # Taken before the Host is typed, so the picture shows its placeholder and the masked key.
            shot = tmp_path / "connection-form.png"
            form.screenshot(path=str(shot))
            if os.environ.get("SEGMENT_PROFILES_UPDATE_SCREENSHOT"):
                DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
                shutil.copyfile(shot, DOCS_SCREENSHOT)
            host.fill(emulator.url)

            region_heading.click()
            region = form.get_by_role("combobox", name="Endpoint Region")
            north_america = CHOICES.get("north_america", "north_america")
            europe = CHOICES.get("europe", "europe")
            # The selected value (3.1's dropdown also keeps its hidden options in the page).
            expect(form.get_by_text(north_america, exact=True).filter(visible=True)).to_be_visible()
            save = form.get_by_role("button", name="Save")
            if DECLARATIVE_FORM:  # a required field there: a cleared region blocks Save (3.1: optional)
                form.locator('button[aria-label="Clear selected options"]').click()  # aria-hidden: no role
                expect(save).to_be_disabled()
            region.click()
            page.get_by_role("option", name=europe, exact=True).click()
            expect(page.get_by_role("option", name=europe, exact=True)).to_be_hidden()  # the list closed
            expect(form.get_by_text(europe, exact=True).filter(visible=True)).to_be_visible()

            save.click()
            expect(form).to_be_hidden()
            expect(page.get_by_text(CONN_ID, exact=True)).to_be_visible()
            rendered = page.content()

            # The saved europe connection, opened again: its region heading names no other region, and the
            # dropdown shows europe.
            page.get_by_role("button", name="Edit Connection").click()
            form = page.get_by_role("dialog")
            heading = form.get_by_role("button", name=REGION_HEADING, exact=True)
            expect(heading).to_be_visible()
            assert "north_america" not in heading.inner_text()
            heading.click()
            expect(form.get_by_text(europe, exact=True).filter(visible=True)).to_be_visible()
            expect(form.get_by_text(north_america, exact=True).filter(visible=True)).to_be_hidden()
            edit_shot = tmp_path / "connection-form-europe.png"
            form.screenshot(path=str(edit_shot))
            if os.environ.get("SEGMENT_PROFILES_UPDATE_SCREENSHOT"):
                shutil.copyfile(edit_shot, DOCS_EDIT_SCREENSHOT)
            rendered += page.content()
        finally:
            browser.close()

        # What the form stored, through the REST API (which masks the password) and the CLI.
        stored = airflow.api("GET", f"/api/v2/connections/{CONN_ID}").json()
        assert stored["conn_type"] == "segment_profiles"
        assert stored["host"] == emulator.url
        assert json.loads(stored["extra"]) == {"region": "europe"}
        assert stored["password"] == "***"
        assert stored["login"] is None and stored["schema"] is None
        got = airflow.airflow("connections", "get", CONN_ID, "--output", "json")
        assert got.returncode == 0, got.stderr
        (conn,) = json.loads(got.stdout)
        key_stored = conn["password"] == write_key
        assert key_stored, "the connection's password is not the write key typed into the Write Key field"
        assert conn["extra_dejson"] == {"region": "europe"}

        # The documented Test-button workaround on 3.3 (docs/connection.md): the test endpoint without a
        # port reuses the stored write key and region, and the hook reaches the emulator with that key.
        tested = airflow.api(
            "POST",
            "/api/v2/connections/test",
            json={"connection_id": CONN_ID, "conn_type": "segment_profiles"},
        )
        assert tested.status_code == 200, tested.text
        assert tested.json()["status"] is True, tested.json()
        # The Host stands in for the region's API: the message says so and does not claim the europe API.
        message = tested.json()["message"]
        assert message.startswith(
            f"Reached the connection's Host {emulator.url}, which replaces the europe"
        ), message
        assert "Reached the europe tracking API" not in message
        (request,) = emulator.requests
        assert request.authorization == "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()

    assert shot.stat().st_size > 10_000
    assert write_key not in rendered
    assert write_key not in airflow.logs()
