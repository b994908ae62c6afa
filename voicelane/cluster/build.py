"""The local control plane's programs: etcd, the Kubernetes control plane and KWOK, each from its build module.

The build modules live in `voicelane/gobuild/modules/`; `voicelane.gobuild` builds and caches them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from voicelane.gobuild import Component, ensure_built

# The KWOK stages the simulated nodes and pods follow, from KWOK's own module (as kwokctl embeds them):
# nodes become Ready at once and keep a lease; pods become Running and Ready, and go when deleted.
KWOK_STAGES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)


def kubernetes_ldflags(version: str) -> str:
    # Without these a source build reports v0.0.0-master, which kubectl and helm read as a server too old.
    major, minor = version.lstrip("v").split(".")[:2]
    pairs = {
        "k8s.io/component-base/version.gitVersion": version,
        "k8s.io/component-base/version.gitMajor": major,
        "k8s.io/component-base/version.gitMinor": minor,
        "k8s.io/component-base/version.gitTreeState": "clean",
        "k8s.io/client-go/pkg/version.gitVersion": version,
        "k8s.io/client-go/pkg/version.gitMajor": major,
        "k8s.io/client-go/pkg/version.gitMinor": minor,
    }
    return "-s -w " + " ".join(f"-X {name}={value}" for name, value in pairs.items())


KUBERNETES = Component(
    "kubernetes",
    "k8s.io/kubernetes",
    {
        "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
        "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
        "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    },
    ldflags=kubernetes_ldflags,
)
ETCD = Component("etcd", "go.etcd.io/etcd/server/v3", {"etcd": "go.etcd.io/etcd/server/v3"})
KWOK = Component("kwok", "sigs.k8s.io/kwok", {"kwok": "sigs.k8s.io/kwok/cmd/kwok"}, extra_files=KWOK_STAGES)
COMPONENTS = (ETCD, KUBERNETES, KWOK)


def ensure_all(*, out: TextIO = sys.stderr) -> dict[str, Path]:
    """Every control-plane binary by name, building what the cache lacks."""
    binaries: dict[str, Path] = {}
    for component in COMPONENTS:
        folder = ensure_built(component, out=out)
        binaries.update({program: folder / program for program in component.programs})
        binaries.update({Path(name).name: folder / Path(name).name for name in component.extra_files})
    return binaries
