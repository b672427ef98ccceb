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

# Slices per epoch (DESIGN.md "Past one pod"), when the trainer's --slices does not say: one
# for every set one pod holds (ml-100k to ml-20m and their synthetic peers keep the one-slice
# epoch), 16 for MovieLens 1B: 1.2B positives in slices of about 76M, a 3 GB buffer each.
SLICES_BY_DATASET = {"ml-20mx16x32": 16, "synthetic-20mx16x32": 16}


def default_slices(dataset: str) -> int:
    return SLICES_BY_DATASET.get(dataset, 1)


# The bucket (DESIGN.md "What a real bucket does"). Each may be overridden by an environment
# variable of the same name prefixed NCF_ (the fault tests shorten them; production never needs to).
# Every request: seconds to open a connection, and seconds a response may go without a byte.
BUCKET_CONNECT_TIMEOUT_S = 20.0
BUCKET_READ_TIMEOUT_S = 60.0
# A read or write the Job cannot go on without treats transient bucket errors (408, 429, 5xx,
# resets, timeouts) as passing for this long (google-cloud-storage's default deadline), then fails.
BUCKET_DEADLINE_S = 120.0
# Google credentials that are not there yet (a pod's metadata server may start after it) are
# waited for this long, then the Job exits 2 saying how to provide them.
CREDENTIALS_WAIT_S = 60.0
# A 403 on the first writes: a fresh roles/storage.objectUser grant takes 2-7+ minutes to apply.
PERMISSION_WAIT_S = 600.0
PERMISSION_WAIT_HELP = ("seconds a 403 on the write probe or the first bucket writes is retried (a fresh IAM "
                        "grant takes 2-7+ minutes to apply), then exit 2 naming the principal and the role")
# On exit, how long a Job waits for its final status/<side>.json to land (the bucket may be down).
HEARTBEAT_FLUSH_S = 60.0
# A peer's `failed` status stamped more than this before this process started (by the peer's
# clock against ours) is an earlier attempt's; within it, it is taken as a failure seen live.
CLOCK_SKEW_S = 30.0
