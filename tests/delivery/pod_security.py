"""The Pod Security Standards' "restricted" profile (which includes "baseline"), as checks on a pod.

Written from the Kubernetes Pod Security Standards definition (policy version "latest" as of 1.33), control by
control, so that every pod the chart, the samples or the operator render can be held to it in a unit test
without a cluster. `violations(metadata, spec)` returns one readable line per failed control, empty when
the pod is admitted under `pod-security.kubernetes.io/enforce: restricted`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# Baseline: capabilities that may be added beyond the runtime's defaults.
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
# Restricted: the only capability that may be added (after dropping ALL).
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
# Restricted: the only volume types allowed.
RESTRICTED_VOLUME_TYPES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
)
# Baseline: the "safe" sysctls.
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"
APPARMOR_ANNOTATION_VALUES = ("runtime/default", "localhost/")
SECCOMP_RESTRICTED_TYPES = frozenset({"RuntimeDefault", "Localhost"})
NON_VOLUME_KEYS = frozenset({"name"})


def containers(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every container of the pod, init and ephemeral ones included, as (label, container)."""
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(field) or []:
            yield f"{field}[{container.get('name')}]", container


def _container_setting(pod_security: Mapping[str, Any], container: Mapping[str, Any], key: str) -> Any:
    """A setting that may be made on the pod and overridden per container."""
    own = (container.get("securityContext") or {}).get(key)
    return own if own is not None else pod_security.get(key)


def violations(metadata: Mapping[str, Any], spec: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    pod_security: Mapping[str, Any] = spec.get("securityContext") or {}
    annotations: Mapping[str, str] = metadata.get("annotations") or {}

    # --- baseline ---
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"host namespaces: {field} is true")
    if (pod_security.get("windowsOptions") or {}).get("hostProcess"):
        problems.append("HostProcess: pod windowsOptions.hostProcess is true")
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            problems.append(f"hostPath volumes: volume {volume.get('name')} is a hostPath")
    for name, value in annotations.items():
        if name.startswith(APPARMOR_ANNOTATION_PREFIX) and not value.startswith(APPARMOR_ANNOTATION_VALUES):
            problems.append(f"AppArmor: annotation {name} is {value!r}")
    for label, profile in [("pod", pod_security.get("appArmorProfile"))] + [
        (label, (c.get("securityContext") or {}).get("appArmorProfile")) for label, c in containers(spec)
    ]:
        if profile and profile.get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"AppArmor: {label} appArmorProfile.type is {profile.get('type')!r}")
    for label, options in [("pod", pod_security.get("seLinuxOptions"))] + [
        (label, (c.get("securityContext") or {}).get("seLinuxOptions")) for label, c in containers(spec)
    ]:
        if not options:
            continue
        if options.get("type", "") not in SELINUX_TYPES:
            problems.append(f"SELinux: {label} seLinuxOptions.type is {options.get('type')!r}")
        if options.get("user") or options.get("role"):
            problems.append(f"SELinux: {label} sets seLinuxOptions.user or role")
    for sysctl in pod_security.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            problems.append(f"sysctls: {sysctl.get('name')} is not a safe sysctl")
    if (pod_security.get("seccompProfile") or {}).get("type") == "Unconfined":
        problems.append("seccomp: the pod's seccompProfile is Unconfined")

    for label, container in containers(spec):
        context: Mapping[str, Any] = container.get("securityContext") or {}
        if (context.get("windowsOptions") or {}).get("hostProcess"):
            problems.append(f"HostProcess: {label} windowsOptions.hostProcess is true")
        if context.get("privileged"):
            problems.append(f"privileged containers: {label} is privileged")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"host ports: {label} uses hostPort {port['hostPort']}")
        if context.get("procMount", "Default") != "Default":
            problems.append(f"/proc mount type: {label} procMount is {context.get('procMount')!r}")
        added = set((context.get("capabilities") or {}).get("add") or [])
        if added - BASELINE_CAPABILITIES:
            problems.append(f"capabilities (baseline): {label} adds {sorted(added - BASELINE_CAPABILITIES)}")

        # --- restricted ---
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"privilege escalation: {label} does not set allowPrivilegeEscalation: false")
        if _container_setting(pod_security, container, "runAsNonRoot") is not True:
            problems.append(f"running as non-root: {label} is not covered by runAsNonRoot: true")
        if _container_setting(pod_security, container, "runAsUser") == 0:
            problems.append(f"running as non-root user: {label} runs as uid 0")
        seccomp = _container_setting(pod_security, container, "seccompProfile") or {}
        if seccomp.get("type") not in SECCOMP_RESTRICTED_TYPES:
            problems.append(f"seccomp: {label} has no RuntimeDefault or Localhost seccomp profile")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"capabilities: {label} does not drop ALL")
        if added - RESTRICTED_CAPABILITIES:
            problems.append(f"capabilities: {label} adds {sorted(added - RESTRICTED_CAPABILITIES)}")

    if pod_security.get("runAsUser") == 0:
        problems.append("running as non-root user: the pod runs as uid 0")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - NON_VOLUME_KEYS
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume types: volume {volume.get('name')} is {sorted(kinds - RESTRICTED_VOLUME_TYPES)}")
    return problems
