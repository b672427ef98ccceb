"""Defaults both Jobs, the status tool and the chart's documentation share: each written once.

The command's defaults (what to train on) live on `protocol.messages.Command`; these are
the waiting and heartbeat knobs each side has as flags.
"""

# GPU and TPU nodes can take many minutes to provision: wait generously for the other side.
START_TIMEOUT_S = 3600.0
# A heartbeat unchanged this long means the other side is gone.
PEER_TIMEOUT_S = 300.0
# Seconds between rewrites of status/<side>.json; written into every Status.
HEARTBEAT_INTERVAL_S = 10.0
