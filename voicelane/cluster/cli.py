"""`voicelane cluster up|down|build`: a local Kubernetes control plane with simulated nodes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "cluster",
        help="A local Kubernetes control plane on 127.0.0.1 (etcd, API server, controllers, scheduler, KWOK nodes).",
        description="Builds (once, cached) and runs a real Kubernetes control plane on 127.0.0.1 whose nodes "
        "and pods KWOK simulates: Deployments roll out and pods become Ready without containers.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="start the cluster (or reuse the one running in DIR)")
    up.add_argument("--dir", type=Path, default=None, help="state folder (default .voicelane/cluster)")
    up.add_argument("--nodes", type=int, default=1, help="simulated nodes (default 1)")
    up.add_argument("--node-cpu", default="16", help="CPU each node offers (default 16)")
    up.add_argument("--node-memory", default="64Gi", help="memory each node offers (default 64Gi)")
    up.add_argument("--node-pods", type=int, default=110, help="pods each node takes (default 110)")
    up.add_argument(
        "--node-ephemeral-storage", default="500Gi", help="ephemeral storage each node offers (default 500Gi)"
    )
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness (default 180)")
    up.set_defaults(handler=_up)
    down = actions.add_parser("down", help="stop every process the cluster in DIR runs and remove its state")
    down.add_argument("--dir", type=Path, default=None, help="state folder (default .voicelane/cluster)")
    down.set_defaults(handler=_down)
    build = actions.add_parser("build", help="build the control plane's binaries (cached per pinned version)")
    build.set_defaults(handler=_build)


def _up(args: argparse.Namespace) -> int:
    from voicelane.cluster.control_plane import DEFAULT_DIR, ClusterError, ControlPlane, NodeShape
    from voicelane.gobuild import BuildError

    shape = NodeShape(
        count=args.nodes,
        cpu=args.node_cpu,
        memory=args.node_memory,
        pods=args.node_pods,
        ephemeral_storage=args.node_ephemeral_storage,
    )
    plane = ControlPlane(args.dir or DEFAULT_DIR, nodes=shape, out=sys.stderr)
    try:
        kubeconfig = plane.up(timeout_s=args.timeout)
    except (BuildError, ClusterError) as exc:
        print(f"voicelane cluster up: {exc}", file=sys.stderr)
        return 1
    print(f"export KUBECONFIG={kubeconfig}")
    return 0


def _down(args: argparse.Namespace) -> int:
    from voicelane.cluster.control_plane import DEFAULT_DIR, ControlPlane

    plane = ControlPlane(args.dir or DEFAULT_DIR, out=sys.stderr)
    if not plane.state_file.exists():
        print(f"no cluster in {plane.folder}", file=sys.stderr)
        return 0
    plane.down()
    print(f"==> removed the cluster in {plane.folder}", file=sys.stderr)
    return 0


def _build(args: argparse.Namespace) -> int:
    from voicelane.cluster.build import ensure_all
    from voicelane.gobuild import BuildError

    try:
        for name, path in sorted(ensure_all(out=sys.stderr).items()):
            print(f"{name}\t{path}")
    except BuildError as exc:
        print(f"voicelane cluster build: {exc}", file=sys.stderr)
        return 1
    return 0
