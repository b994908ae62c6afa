"""VoiceLane: a low-latency voice lane for self-hosted LLMs on Kubernetes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("voicelane")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
