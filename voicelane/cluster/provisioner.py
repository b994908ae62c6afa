"""A volume provisioner for the local control plane, which has no storage of its own.

A real cluster's default StorageClass names a provisioner (a CSI driver) that creates a
PersistentVolume for each new claim and removes it once the claim is gone. KWOK simulates pods, not
storage, so this process plays that provisioner's part through the API, as the external-provisioner
sidecar would: for every claim of the `kwok-local` class it creates a bound PersistentVolume (a
hostPath nothing mounts: no kubelet runs), and it deletes each of its volumes the PV controller
marks Released. Everything else (binding, protection finalizers, garbage collection) is the real
controller manager's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

STORAGE_CLASS = "kwok-local"
PROVISIONER = "voicelane.dev/kwok-local"
POLL_S = 0.5


def storage_class() -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
        "allowVolumeExpansion": True,
    }


def volume_for(claim: dict[str, Any]) -> dict[str, Any]:
    """The PersistentVolume that satisfies `claim`, bound to it."""
    metadata = claim["metadata"]
    spec = claim.get("spec") or {}
    size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{metadata['uid']}",
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "hostPath": {"path": f"/var/lib/kwok-local/{metadata['uid']}"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": metadata["namespace"],
                "name": metadata["name"],
                "uid": metadata["uid"],
            },
        },
    }


class Api:
    def __init__(self, api_url: str, pki: Path) -> None:
        self.api_url = api_url
        self.context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            self.api_url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10, context=self.context) as response:
            return json.loads(response.read() or b"null")


def sync(api: Api) -> None:
    """One pass: a volume for each new claim of the class, and released volumes removed."""
    volumes = api.call("GET", "/api/v1/persistentvolumes")["items"]
    provisioned = {
        volume["metadata"]["name"]: volume
        for volume in volumes
        if (volume["metadata"].get("annotations") or {}).get("pv.kubernetes.io/provisioned-by") == PROVISIONER
    }
    for claim in api.call("GET", "/api/v1/persistentvolumeclaims")["items"]:
        spec = claim.get("spec") or {}
        if spec.get("storageClassName") != STORAGE_CLASS or spec.get("volumeName"):
            continue
        if claim["metadata"].get("deletionTimestamp") or f"pvc-{claim['metadata']['uid']}" in provisioned:
            continue
        with contextlib.suppress(urllib.error.HTTPError):  # 409: made meanwhile
            api.call("POST", "/api/v1/persistentvolumes", volume_for(claim))
    for name, volume in provisioned.items():
        if (volume.get("status") or {}).get("phase") in ("Released", "Failed"):
            with contextlib.suppress(urllib.error.HTTPError):
                api.call("DELETE", f"/api/v1/persistentvolumes/{name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voicelane.cluster.provisioner", description=__doc__)
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--pki", type=Path, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    api = Api(args.api_url, args.pki)
    while True:
        try:
            api.call("POST", "/apis/storage.k8s.io/v1/storageclasses", storage_class())
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 409:
                break
            time.sleep(POLL_S)
        except OSError:
            time.sleep(POLL_S)
    while True:
        try:
            sync(api)
        except (OSError, urllib.error.URLError, KeyError, ValueError) as exc:
            print(f"provisioner: {exc}", file=sys.stderr, flush=True)
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main())
