"""The model-side gate: one priority queue, guardian and single-flight for every caller of one model server.

A sidecar holds the lane's promises inside one app pod; the gate, a second container of each tier
pod, holds them across all app pods at once (`voicelane gate`; the HTTP shell is `server.py`).
"""
