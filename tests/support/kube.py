"""The Kubernetes API the cluster tier runs against: the local control plane, or a cluster of the user's.

By default one local control plane (`voicelane cluster`, KWOK nodes) serves the whole pytest session and
is removed at its end. `VOICELANE_TEST_KUBECONFIG` names a cluster of the user's instead (then nothing is
started); `VOICELANE_TEST_CLUSTER_DIR` names the folder of a running `voicelane cluster up`, which is reused
and left running (quick local iterations).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from voicelane.cluster.control_plane import ControlPlane, NodeShape

# Room for every pod the tests' lanes ask for at once (a hundred sample lanes in the burst test: 300 pods,
# 1,000 CPUs); a simulated node costs the same whatever it offers.
TEST_NODE = NodeShape(count=1, cpu="2000", memory="8Ti", pods=1000)


@dataclasses.dataclass(frozen=True)
class KubeTarget:
    kubeconfig: Path
    local: ControlPlane | None  # None: a cluster of the user's, which the tests must not assume is KWOK's

    @property
    def simulated_nodes(self) -> bool:
        return self.local is not None


def kube_target(scratch: Path) -> Iterator[KubeTarget]:
    """Yield the target for a session; stops the control plane afterwards if it started it."""
    user_kubeconfig = os.environ.get("VOICELANE_TEST_KUBECONFIG")
    if user_kubeconfig:
        yield KubeTarget(Path(user_kubeconfig), None)
        return
    reuse = os.environ.get("VOICELANE_TEST_CLUSTER_DIR")
    plane = ControlPlane(Path(reuse) if reuse else scratch / "cluster", nodes=TEST_NODE, out=sys.stderr)
    was_running = plane.running()
    plane.up()
    try:
        yield KubeTarget(plane.kubeconfig, plane)
    finally:
        if not was_running and not reuse:
            plane.down()
