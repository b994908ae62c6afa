"""The upgrade from the tier's duration strings (keepAlive: 15m) to seconds (keepAliveSeconds: 900).

What the README's upgrade notes promise, against the real API server: a lane stored under the earlier
CRD reads, once the new CRD is applied, without its keepAlive and rewarmInterval and with the new
fields' defaults (the API server drops fields its schema lacks), and re-applying it in the earlier
spelling is refused, naming the field. The earlier CRD is the shipped one with the two string fields
put back, as `v1alpha1` had them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml

from tests.integration.operator.harness import CRD_DIR, Cluster, Lane
from voicelane.operator.api import CRD_NAME

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(120)]

TIER_PROPERTIES = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/{tier}/properties/{field}"
EARLIER_FIELDS = {"keepAlive": "15m", "rewarmInterval": "30m"}


@pytest.fixture
def earlier_crd(cluster: Cluster) -> Iterator[None]:
    """The CRD with the tier's earlier duration strings; the shipped one is put back by the test."""
    patch = [
        {
            "op": "add",
            "path": TIER_PROPERTIES.format(tier=tier, field=field),
            "value": {"type": "string", "default": default},
        }
        for tier in ("fast", "deep")
        for field, default in EARLIER_FIELDS.items()
    ]
    cluster.kubectl("patch", "crd", CRD_NAME, "--type=json", "-p", json.dumps(patch))
    try:
        yield
    finally:
        cluster.kubectl("apply", "-f", str(CRD_DIR))


def test_a_lane_stored_with_the_earlier_spelling_takes_the_defaults_and_is_refused_in_it(
    cluster: Cluster, earlier_crd: None
) -> None:
    lane = Lane(cluster, "earlier-durations")
    manifest = lane.manifest()
    for tier in ("fast", "deep"):
        manifest["spec"][tier].pop("keepAliveSeconds", None)
        manifest["spec"][tier].pop("rewarmIntervalSeconds", None)
    manifest["spec"]["fast"]["keepAlive"] = "-1s"
    manifest["spec"]["deep"]["rewarmInterval"] = "20m"
    try:
        cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest))
        stored = lane.get()
        assert stored is not None
        assert (stored["spec"]["fast"]["keepAlive"], stored["spec"]["deep"]["rewarmInterval"]) == ("-1s", "20m")

        cluster.kubectl("apply", "-f", str(CRD_DIR))  # the upgrade

        upgraded = lane.get()
        assert upgraded is not None
        for tier in ("fast", "deep"):
            spec = upgraded["spec"][tier]
            assert not set(EARLIER_FIELDS) & set(spec), spec
            # Not what the lane said (-1s, 20m): the new fields' defaults, until the lane is applied again.
            assert (spec["keepAliveSeconds"], spec["rewarmIntervalSeconds"]) == (900, 1800)

        refused = cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest), check=False)
        assert refused.returncode != 0
        assert 'unknown field "spec.fast.keepAlive"' in refused.stderr
        assert 'unknown field "spec.deep.rewarmInterval"' in refused.stderr

        for tier, (old, new, value) in {
            "fast": ("keepAlive", "keepAliveSeconds", -1),
            "deep": ("rewarmInterval", "rewarmIntervalSeconds", 1200),
        }.items():
            manifest["spec"][tier][new] = value
            del manifest["spec"][tier][old]
        cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest))
        migrated = lane.get()
        assert migrated is not None
        assert (migrated["spec"]["fast"]["keepAliveSeconds"], migrated["spec"]["deep"]["rewarmIntervalSeconds"]) == (
            -1,
            1200,
        )
    finally:
        cluster.delete("voicelane", lane.name)
