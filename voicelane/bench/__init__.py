"""`voicelane bench`: suites that measure the lane against its reference, side by side, in one run.

Each suite starts the processes it needs on loopback (simulator or Ollama, sidecar,
operator and a local Kubernetes control plane), measures this project and its reference in the same run, and
writes one JSON document: the machine, the exact command, timestamps, raw figures and the
ratios between the two (absolute times drift on shared machines; ratios drift less).
"""
