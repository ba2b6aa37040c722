"""The HTML report: structure, escaping of hostile names, and a real headless browser rendering it offline."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import doctor
from doctor.engine import analyze
from doctor.loader import load_run
from doctor.report import downsample, render_report, write_report

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
HOSTILE = "<script>alert('x')</script>"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _figures(html: str) -> dict:
    raw = re.search(r'<script type="application/json" id="doctor-figures">(.*?)</script>', html, re.S).group(1)
    return json.loads(raw)


def test_faulty_report_has_cards_charts_citations_and_dashboards(zoo_analysis):
    html = render_report(zoo_analysis("rnn_l2"))
    assert html.count('class="card error"') == 1 and 'data-rule="over_regularized_rnn"' in html
    assert "000_430f9255a679334f.txt § Ответы" in html and "Gradient Clipping" in html
    figures = _figures(html)
    assert {"finding-0-0", "finding-0-1"} <= set(figures)
    assert sum(1 for k in figures if k.startswith("dash-")) >= 8
    spectra = figures["finding-0-0"]
    assert spectra["layout"]["shapes"][0]["y0"] == 1.0  # the sigma = 1 line is drawn
    assert "cdn.plot.ly" not in html.split("<script>", 1)[0]
    assert html.count("Plotly.newPlot") == 1


def test_healthy_report_says_so_and_still_has_dashboards(zoo_analysis):
    html = render_report(zoo_analysis("healthy_mlp"))
    assert "No problems found" in html and 'class="card' not in html
    assert sum(1 for k in _figures(html) if k.startswith("dash-")) >= 6


def _hostile_log(path: Path) -> Path:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.add_module(HOSTILE, nn.Linear(4, 8))
            self.add_module("<img src=x onerror=alert(1)>", nn.ReLU())
            self.out = nn.Linear(8, 2)

        def forward(self, x):
            for module in self.children():
                x = module(x)
            return x

    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        getattr(model, HOSTILE).bias.fill_(-50.0)  # every unit dead: a finding that names the layer
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with doctor.watch(model, optimizer, log=path, name=HOSTILE) as run:
        for _ in range(120):
            loss = nn.functional.cross_entropy(model(torch.randn(16, 4)), torch.randint(0, 2, (16,)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.log(loss=loss, **{"</script><b>x</b>": 1.0})
    return path


def test_hostile_names_are_escaped(tmp_path, rules):
    analysis = analyze(load_run(_hostile_log(tmp_path / "hostile.log")), rules)
    named = " ".join(layer for f in analysis.findings for layer in f.layers)
    assert "<img src=x onerror=alert(1)>" in named  # the dead ReLU layer is named in a finding
    html = render_report(analysis)
    assert HOSTILE not in html and "<img src=x" not in html and "</script><b>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html


def test_downsampling_keeps_spikes_and_bounds_points():
    import numpy as np

    x = np.arange(100_000)
    y = np.ones(100_000)
    y[54_321] = 1e6
    xs, ys = downsample(x, y, 2000)
    assert len(xs) <= 2000 and ys.max() == 1e6 and 54_321 in xs


def test_report_is_written_atomically_with_normal_permissions(zoo_analysis, tmp_path):
    target = write_report(zoo_analysis("healthy_mlp"), tmp_path / "sub" / "r.html")
    assert target.exists() and oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert [p.name for p in target.parent.iterdir()] == ["r.html"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("DOCTOR_REQUIRE_BROWSER"):
            pytest.fail("DOCTOR_REQUIRE_BROWSER is set but no chromium was found (apt-get install chromium)")
        pytest.skip("no chromium on this machine (CI installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield b
        b.close()


def _open(browser, path: Path, shot: str, dark: bool = False):
    page = browser.new_page(viewport={"width": 1280, "height": 900}, color_scheme="dark" if dark else "light")
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
    page.goto(path.resolve().as_uri())
    page.wait_for_function(
        "document.body.dataset.chartsTotal && document.body.dataset.chartsDrawn === document.body.dataset.chartsTotal",
        timeout=30_000,
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / shot), full_page=False)
    return page, errors, [r for r in requests if not r.startswith("file://")]


@pytest.mark.parametrize("scenario", ["rnn_l2", "exploding_rnn", "healthy_cnn_bn"])
def test_report_renders_offline_in_a_real_browser(browser, zoo_analysis, tmp_path, scenario):
    path = write_report(zoo_analysis(scenario), tmp_path / f"{scenario}.html")
    page, errors, requests = _open(browser, path, f"report-{scenario}.png", dark=scenario == "healthy_cnn_bn")
    assert errors == [] and requests == []
    total = int(page.get_attribute("body", "data-charts-total"))
    assert total >= 8
    assert page.locator(".chart .main-svg").count() >= total  # every chart drawn as SVG
    assert page.locator("#verdict").inner_text().strip()
    page.close()


def test_hostile_report_runs_no_script_in_the_browser(browser, tmp_path, rules):
    analysis = analyze(load_run(_hostile_log(tmp_path / "hostile.log")), rules)
    path = write_report(analysis, tmp_path / "hostile.html")
    page, errors, requests = _open(browser, path, "report-hostile.png")
    assert errors == [] and requests == []  # no alert() dialog fired, nothing fetched
    assert HOSTILE in page.locator("h1").inner_text()  # shown as text
    page.close()


def test_comparison_of_document_000s_pair_renders_offline_and_names_the_difference(browser, zoo_analysis, tmp_path):
    from doctor.compare import config_differences, write_compare

    analyses = [zoo_analysis("rnn_l2"), zoo_analysis("healthy_lstm")]
    differences = {d["key"]: d["values"] for d in config_differences([a.run for a in analyses])}
    assert differences["optimizer.group0.weight_decay"] == ["0.001", "0"]
    assert differences["param rnn.weight_hh_l0.weight_decay"] == ["0.001", "0"]
    assert next(iter(differences)).endswith(".weight_decay")  # the usual suspects come first
    path = write_compare(analyses, tmp_path / "cmp.html")
    page, errors, requests = _open(browser, path, "compare-rnn-l2.png")
    assert errors == [] and requests == []
    names = [page.locator(".chart").nth(i).get_attribute("data-name") for i in range(page.locator(".chart").count())]
    assert {"Training loss", "Validation loss", "Learning rate", "Gradient norm", "Recurrent spectra"} <= set(names)
    assert page.locator(".chart .main-svg").count() >= len(names)
    assert "over_regularized_rnn" in page.locator("#runs").inner_text().lower()  # badges are upper-cased by CSS
    page.close()


def test_hostile_names_are_escaped_in_a_comparison(tmp_path, rules):
    from doctor.compare import render_compare

    analysis = analyze(load_run(_hostile_log(tmp_path / "hostile.log")), rules)
    html = render_compare([analysis, analysis])
    assert "<script>alert" not in html and "&lt;script&gt;" in html


def test_a_report_of_a_log_recorded_without_doctor_renders_offline(browser, zoo_log, rules, tmp_path):
    from tests.test_external_logs import export_lightning_csv

    csv_path = export_lightning_csv(load_run(zoo_log("fast_exponential_decay")), tmp_path / "csv")
    path = write_report(analyze(load_run(csv_path), rules), tmp_path / "external.html")
    page, errors, requests = _open(browser, path, "report-external-csv.png")
    assert errors == [] and requests == []
    assert int(page.get_attribute("body", "data-charts-total")) >= 2  # the finding's charts and the loss/LR dashboard
    assert "lr_decay_too_fast" in page.content() and "doctor.watch" in page.inner_text("body")
    page.close()
