"""The sidecar: a loopback proxy beside each app container that turns text into speech fast."""
