"""Benchmark: throughput of the chaos bucket proxy (testkit/chaos_bucket.py) in front of
fake-gcs-server, against the emulator reached directly.

A gcsfs client in its own process (as the Jobs are) writes `--streams` objects of `--size`
bytes concurrently (multipart uploads), then reads them back concurrently; best of `--rounds`.
Rows: direct, through the proxy unshaped, and shaped at `--bandwidth` bytes/s per connection
(the cap for the whole run is streams x bandwidth), with the CPU time the proxy (a thread of
this process) spent per GB moved. `--mitmproxy` adds mitmdump in reverse mode
with streamed bodies, for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"  # before gcsfs is imported: no gRPC probe

from testkit import emulator
from testkit.chaos_bucket import ChaosBucket, shape

CLIENT = """
import json, os, sys, time
import gcsfs
endpoint, bucket, streams, size, rounds = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
fs = gcsfs.GCSFileSystem(endpoint_url=endpoint, token="anon", skip_instance_cache=True)
data, best = os.urandom(size), [0.0, 0.0]
for r in range(rounds):
    paths = {f"{bucket}/r{r}/part-{i}": data for i in range(streams)}
    t = time.perf_counter(); fs.pipe(paths, batch_size=streams); up = time.perf_counter() - t
    t = time.perf_counter(); got = fs.cat(list(paths), batch_size=streams); down = time.perf_counter() - t
    assert all(v == data for v in got.values())
    best = [max(best[0], streams * size / up / 1e6), max(best[1], streams * size / down / 1e6)]
    fs.rm(list(paths))
print(json.dumps(best))
"""


def measure(endpoint: str, bucket: str, args) -> list[float]:
    """[upload MB/s, download MB/s, CPU seconds this process (the proxy's thread) spent per GB moved]."""
    cpu = time.process_time()
    out = subprocess.run([sys.executable, "-c", CLIENT, endpoint, bucket, str(args.streams), str(args.size),
                          str(args.rounds)], check=True, capture_output=True, text=True).stdout
    moved = 2 * args.rounds * args.streams * args.size / 1e9
    return [*json.loads(out), (time.process_time() - cpu) / moved]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--size", type=int, default=8 << 20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bandwidth", type=float, default=25e6, help="bytes/s per connection when shaped")
    parser.add_argument("--mitmproxy", action="store_true", help="also measure mitmdump (pip install mitmproxy)")
    return parser.parse_args()


def main():
    args = parse_args()
    server, url = emulator.start()
    try:
        bucket = emulator.make_bucket(url)
        rows = [("direct", *measure(url, bucket, args)), *measure_proxy(url, bucket, args)]
        if args.mitmproxy:
            rows.append(("mitmdump, streamed", *measure_mitmproxy(url, bucket, args)))
    finally:
        emulator.stop(server)
    report(args, rows)


def measure_proxy(url: str, bucket: str, args) -> list[tuple]:
    """Rows through the chaos bucket: unshaped, then shaped per connection."""
    with ChaosBucket(url) as chaos:
        unshaped = ("chaos proxy, unshaped", *measure(chaos.url, bucket, args))
        chaos.add(shape(args.bandwidth))
        cap = args.streams * args.bandwidth / 1e6
        return [unshaped, (f"chaos proxy, {args.bandwidth / 1e6:g} MB/s per connection (cap {cap:g})",
                           *measure(chaos.url, bucket, args))]


def measure_mitmproxy(url: str, bucket: str, args) -> list[float]:
    port = emulator.free_port()
    mitm = subprocess.Popen([str(Path(sys.executable).parent / "mitmdump"), "--mode", f"reverse:{url}",
                             "--listen-host", "127.0.0.1", "-p", str(port), "-q", "--set", "stream_large_bodies=1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        emulator.wait_for_answer(f"http://127.0.0.1:{port}", mitm)
        return measure(f"http://127.0.0.1:{port}", bucket, args)
    finally:
        mitm.terminate()
        mitm.wait()


def report(args, rows: list[tuple]) -> None:
    print(f"{args.streams} concurrent objects of {args.size / 2**20:g} MiB, best of {args.rounds} (MB/s)")
    print(f"{'':56s} {'upload':>7s} {'download':>9s} {'proxy CPU s/GB':>15s}")
    for name, up, down, cpu in rows:
        print(f"{name:56s} {up:7.0f} {down:9.0f} {cpu:15.2f}" if "proxy," in name else f"{name:56s} {up:7.0f} {down:9.0f}")


if __name__ == "__main__":
    main()
