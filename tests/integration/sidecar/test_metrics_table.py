"""The README's metrics table is what a running sidecar's /metrics exports: names, types and labels."""

from __future__ import annotations

import re
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

README = Path(__file__).resolve().parents[3] / "README.md"
LABEL_NAME = re.compile(r"[a-z_]+")


def documented_metrics() -> dict[str, tuple[str, set[str]]]:
    """Each metric name in the README's table with its type and label names."""
    section = README.read_text(encoding="utf-8").split("### Metrics", 1)[1].split("\n### ", 1)[0]
    table: dict[str, tuple[str, set[str]]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        names, kind, labels = cells
        # "role (leader, joiner)": the values in brackets are examples, not label names.
        label_names = set(LABEL_NAME.findall(re.sub(r"\([^)]*\)", "", labels)))
        for name in re.findall(r"`([a-z_]+)`", names):
            table[name] = (kind, label_names)
    return table


def exported_metrics(metrics_text: str) -> dict[str, tuple[str, set[str] | None]]:
    """Each family as a scraper sees it; labels are None for a family with no series yet."""
    exported: dict[str, tuple[str, set[str] | None]] = {}
    for family in text_string_to_metric_families(metrics_text):
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = {label for sample in family.samples for label in sample.labels} - {"le"}
        exported[name] = (family.type, labels if family.samples else None)
    return exported


def test_the_readme_lists_every_metric_the_sidecar_exports_as_it_exports_it(start_sim, start_sidecar) -> None:
    sim = start_sim()
    sidecar = start_sidecar(sim.url)
    spoken = requests.post(sidecar.url + "/v1/speak", json={"text": "Hej Anna, vi ses.", "source": "chat"}, timeout=30)
    assert spoken.status_code == 200
    exported = exported_metrics(requests.get(sidecar.url + "/metrics", timeout=10).text)
    documented = documented_metrics()

    assert len(exported) > 20  # the scrape parsed: a broken table check must not pass on nothing
    assert sorted(set(exported) - set(documented)) == [], "exported but not in the README's table"
    assert sorted(set(documented) - set(exported)) == [], "in the README's table but not exported"
    for name, (kind, labels) in exported.items():
        documented_kind, documented_labels = documented[name]
        assert documented_kind == kind, name
        if labels is not None:
            assert documented_labels == labels, name
