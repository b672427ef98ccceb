"""The chaos bucket proxy (testkit/chaos_bucket.py): what it sees in gcsfs's requests, which
requests its rules select and when they fire, and each action against the real fake-gcs-server."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request

import aiohttp
import gcsfs
import pytest

from testkit.chaos_bucket import PRINCIPAL, Rule, describe, fail, forbid, lose, shape, stall

# ---- what a request is about -------------------------------------------------------------

MULTIPART = (b'--==0==\nContent-Type: application/json; charset=UTF-8\n\n{"name": "runs/x/\\"q\\".json"}'
             b"\n--==0==\nContent-Type: application/octet-stream\n\n{}\n--==0==--")


@pytest.mark.parametrize("method, target, body, expected", [
    ("GET", "/storage/v1/b/bk/o/epochs%2F000001%2Fready.json", b"", ("epochs/000001/ready.json", False)),
    ("DELETE", "/storage/v1/b/bk/o/a%20b%2Bc%25", b"", ("a b+c%", False)),
    ("GET", "/download/storage/v1/b/bk/o/dir%2Fpart-0?alt=media", b"", ("dir/part-0", False)),
    ("GET", "/storage/v1/b/bk/o/dir%2Fpart-0?alt=media&generation=3", b"", ("dir/part-0", False)),
    ("POST", "/upload/storage/v1/b/bk/o?uploadType=multipart&ifGenerationMatch=0", MULTIPART,
     ('runs/x/"q".json', True)),
    ("POST", "/upload/storage/v1/b/bk/o?uploadType=multipart", MULTIPART[:20], (None, False)),
    ("POST", "/upload/storage/v1/b/bk/o?name=dir/big&uploadType=resumable&ifGenerationMatch=0", b"",
     ("dir/big", True)),
    ("GET", "/storage/v1/b/bk/o?delimiter=/&prefix=epochs/&maxResults=1000", b"", ("epochs/", False)),
    ("GET", "/storage/v1/b/bk/o", b"", ("", False)),
    ("GET", "/storage/v1/b/bk", b"", (None, False)),
    ("POST", "/storage/v1/b?project=test", b"", (None, False)),
])
def test_describe_finds_the_object_name_and_create_only(method, target, body, expected):
    assert describe(method, target, 'multipart/related; boundary="==0=="', body) == expected


def test_rules_select_by_method_name_pattern_and_create_only():
    assert Rule("fail").selects("GET", None, False)
    assert Rule("fail", method="PUT").selects("PUT", "a", False)
    assert not Rule("fail", method=("PUT", "POST")).selects("GET", "a", False)
    assert Rule("fail", name="epochs/*/ready.json").selects("GET", "epochs/000003/ready.json", False)
    assert not Rule("fail", name="epochs/*/ready.json").selects("GET", "epochs/000003/part-0", False)
    assert not Rule("fail", name="*").selects("GET", None, False)  # bucket calls have no object name
    assert Rule("fail", create_only=True).selects("POST", "a", True)
    assert not Rule("fail", create_only=True).selects("POST", "a", False)
    assert not Rule("fail", create_only=False).selects("POST", "a", True)


def test_rules_fire_for_a_count_a_window_or_once_per_object():
    counted = Rule("fail", times=2)
    assert [counted.fire("a", 0) for _ in range(3)] == [True, True, False]
    windowed = Rule("fail", window=(1.0, 2.0))  # seconds after it was added (at 0 here)
    assert [windowed.fire("a", t) for t in (0.5, 1.0, 1.9, 2.0)] == [False, True, True, False]
    once = Rule("fail", once_per_object=True)
    assert [once.fire(n, 0) for n in ("a", "b", "a", "b", "c")] == [True, True, False, False, True]
    always = Rule("fail")
    assert all(always.fire("a", t) for t in range(5)) and always.fired == 5


# ---- through the proxy --------------------------------------------------------------------

def client(url: str, **kwargs) -> gcsfs.GCSFileSystem:
    return gcsfs.GCSFileSystem(endpoint_url=url, token="anon", skip_instance_cache=True,
                               use_listings_cache=False, **kwargs)


def request(method: str, url: str, data: bytes | None = None, timeout: float = 10, headers=None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers or {}, method=method),
                                    timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture
def setup(chaos_bucket, fake_gcs):
    """(chaos, a gcsfs client through it, one straight to the emulator, bucket name)."""
    chaos, url = chaos_bucket
    return chaos, client(chaos.url), client(fake_gcs), url.removeprefix("gs://")


def object_url(base: str, bucket: str, name: str) -> str:
    return f"{base}/storage/v1/b/{bucket}/o/{urllib.request.quote(name, safe='')}"


def create_only(base: str, bucket: str, name: str, data: bytes) -> int:
    """A create-only multipart upload, as gcsfs sends it (the emulator ignores ifGenerationMatch on media uploads)."""
    body = (b'--==0==\nContent-Type: application/json\n\n{"name": "%s"}\n--==0==\n'
            b"Content-Type: application/octet-stream\n\n%s\n--==0==--" % (name.encode(), data))
    return request("POST", f"{base}/upload/storage/v1/b/{bucket}/o?uploadType=multipart&ifGenerationMatch=0", body,
                   headers={"Content-Type": 'multipart/related; boundary="==0=="'})


def test_without_rules_every_gcsfs_call_passes_through_unchanged(setup):
    chaos, fs, direct, bucket = setup
    big = bytes(range(256)) * 4096 * 3  # 3 MiB in resumable chunks of 256 KiB
    fs.pipe_file(f"{bucket}/d/small.json", b"{}", mode="create")
    fs.pipe_file(f"{bucket}/d/big", big, chunksize=2**18)
    with fs.open(f"{bucket}/d/written", "wb", block_size=2**18) as f:
        f.write(big)
    assert direct.cat_file(f"{bucket}/d/big") == big == fs.cat_file(f"{bucket}/d/written")
    assert fs.cat_file(f"{bucket}/d/small.json") == b"{}"
    assert fs.open(f"{bucket}/d/big", "rb").read(10) == big[:10]
    assert sorted(fs.ls(f"{bucket}/d")) == [f"{bucket}/d/{n}" for n in ("big", "small.json", "written")]
    assert fs.exists(f"{bucket}/d/big") and not fs.exists(f"{bucket}/d/nope")
    fs.rm(f"{bucket}/d", recursive=True)
    assert not direct.ls(bucket)
    assert chaos.counts() == {"lose": 0, "fail": 0, "forbid": 0, "stall": 0, "shape": 0}


def test_resumable_chunks_carry_the_name_and_create_only_of_their_upload(setup):
    chaos, fs, direct, bucket = setup
    counter = chaos.add(shape(name="dir/big", create_only=True))  # no limits: only counts
    fs.pipe_file(f"{bucket}/dir/big", b"x" * 3 * 2**18, chunksize=2**18, mode="create")
    assert counter.fired == 4  # the init request and three chunks
    assert chaos.events == [("shape", "POST", "dir/big")] * 4
    assert direct.cat_file(f"{bucket}/dir/big") == b"x" * 3 * 2**18


def test_lose_commits_then_answers_503_and_a_create_only_retry_gets_412(setup):
    chaos, fs, direct, bucket = setup
    chaos.add(lose(name="run/*.json", create_only=True, times=1))
    fs.pipe_file(f"{bucket}/run/other", b"not selected", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(f"{bucket}/run/ready.json", b'{"epoch": 1}', mode="create")
    assert direct.cat_file(f"{bucket}/run/ready.json") == b'{"epoch": 1}'
    assert chaos.counts()["lose"] == 1 and chaos.events == [("lose", "POST", "run/ready.json")]


@pytest.mark.parametrize("create_only", [True, False])
def test_lose_by_reset_commits_then_resets_the_connection(setup, create_only):
    chaos, fs, direct, bucket = setup
    chaos.add(lose(reset=True, method="POST", times=1))
    if create_only:
        with pytest.raises(FileExistsError):
            fs.pipe_file(f"{bucket}/a.json", b"1", mode="create")
    else:
        fs.pipe_file(f"{bucket}/a.json", b"1")  # an overwrite's retry simply succeeds
    assert direct.cat_file(f"{bucket}/a.json") == b"1"
    assert chaos.counts()["lose"] == 1


def test_lose_answers_503_to_a_raw_client_after_the_server_committed(setup):
    chaos, fs, direct, bucket = setup
    chaos.add(lose(status=503, name="k"))
    assert create_only(chaos.url, bucket, "k", b"v") == 503
    chaos.clear()
    assert create_only(chaos.url, bucket, "k", b"v") == 412
    assert direct.cat_file(f"{bucket}/k") == b"v"


@pytest.mark.parametrize("status", [429, 503])
def test_fail_answers_without_forwarding(setup, status):
    chaos, fs, direct, bucket = setup
    chaos.add(fail(status, create_only=True, times=2))
    assert create_only(chaos.url, bucket, "k", b"v") == status
    assert not direct.exists(f"{bucket}/k")
    fs.pipe_file(f"{bucket}/j.json", b"2", mode="create")  # gcsfs retries; its first try never landed
    assert direct.cat_file(f"{bucket}/j.json") == b"2"
    assert chaos.counts() == {"lose": 0, "fail": 2, "forbid": 0, "stall": 0, "shape": 0}


def test_forbid_refuses_writes_in_gcs_words_and_lets_reads_through(setup):
    chaos, fs, direct, bucket = setup
    direct.pipe_file(f"{bucket}/r", b"x")
    chaos.add(forbid())
    with pytest.raises(OSError, match=f"Forbidden.*\n{PRINCIPAL} does not have storage.objects.create"):
        fs.pipe_file(f"{bucket}/k", b"v")
    with pytest.raises(OSError, match="Forbidden"):
        fs.rm(f"{bucket}/r")
    assert fs.cat_file(f"{bucket}/r") == b"x" and not direct.exists(f"{bucket}/k")
    assert chaos.counts()["forbid"] == 2


def test_fail_for_a_count(setup):
    chaos, fs, direct, bucket = setup
    direct.pipe_file(f"{bucket}/k", b"v")
    chaos.add(fail(times=2))
    assert [request("GET", object_url(chaos.url, bucket, "k")) for _ in range(3)] == [503, 503, 200]
    assert chaos.counts()["fail"] == 2


def test_fail_within_a_window(setup):
    chaos, fs, direct, bucket = setup
    direct.pipe_file(f"{bucket}/k", b"v")
    get = object_url(chaos.url, bucket, "k")
    chaos.add(fail(window=(0, 0.5)), fail(429, window=(0.8, 60)))
    assert request("GET", get) == 503
    time.sleep(0.6)
    assert request("GET", get) == 200
    time.sleep(0.3)
    assert request("GET", get) == 429
    assert chaos.counts()["fail"] == 2


def test_fail_once_per_object(setup):
    chaos, fs, direct, bucket = setup
    for name in ("a/1", "a/2", "b/1"):
        direct.pipe_file(f"{bucket}/{name}", b"v")
    chaos.add(fail(name="a/*", once_per_object=True))
    codes = [request("GET", object_url(chaos.url, bucket, n)) for n in ("a/1", "a/1", "a/2", "b/1", "a/2")]
    assert codes == [503, 200, 503, 200, 200]
    assert [e[2] for e in chaos.events] == ["a/1", "a/2"]


def test_fail_selects_by_method(setup):
    chaos, fs, direct, bucket = setup
    direct.pipe_file(f"{bucket}/k", b"v")
    chaos.add(fail(method="DELETE"))
    assert fs.cat_file(f"{bucket}/k") == b"v"
    assert request("DELETE", object_url(chaos.url, bucket, "k")) == 503
    assert direct.exists(f"{bucket}/k")


def test_stall_holds_the_request_unanswered_then_drops_it(setup):
    chaos, fs, direct, bucket = setup
    direct.pipe_file(f"{bucket}/k", b"v")
    chaos.add(stall(1.0, times=2))
    started = time.monotonic()
    with pytest.raises((socket.timeout, TimeoutError)):
        request("GET", object_url(chaos.url, bucket, "k"), timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 0.9
    started = time.monotonic()
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        request("GET", object_url(chaos.url, bucket, "k"), timeout=5)  # nothing, then a closed socket
    assert 1.0 <= time.monotonic() - started < 2.5
    assert chaos.counts()["stall"] == 2


def test_a_gcsfs_client_with_read_timeouts_retries_a_stalled_request(setup):
    chaos, fs, direct, bucket = setup
    chaos.add(stall(60, method="POST", times=1))  # far longer than the test: only a timeout gets past it
    fs = client(chaos.url, requests_timeout=aiohttp.ClientTimeout(sock_connect=2, sock_read=0.5))
    fs.pipe_file(f"{bucket}/k.json", b"1", mode="create")
    assert direct.cat_file(f"{bucket}/k.json") == b"1"
    assert chaos.counts()["stall"] == 1


def timed(action) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def test_shape_caps_each_connections_bandwidth_both_ways(setup):
    chaos, fs, direct, bucket = setup
    data, names = b"z" * 2**20, [f"{bucket}/k{i}" for i in range(3)]
    direct.pipe({name: data for name in names})
    fs.cat(names)  # a warm connection pool
    assert timed(lambda: fs.cat_file(names[0])) < 0.24
    chaos.add(shape(bandwidth=4e6))  # 1 MiB in 0.26 s
    assert 0.26 <= timed(lambda: fs.cat_file(names[0])) < 0.6
    assert 0.26 <= timed(lambda: fs.pipe_file(f"{bucket}/up", data)) < 0.6
    # a cap per connection, not for the whole proxy: three at once take about as long as one
    assert 0.26 <= timed(lambda: fs.cat(names)) < 0.6
    assert direct.cat_file(f"{bucket}/up") == data
    assert chaos.counts()["shape"] == 5


def test_shape_adds_latency_per_request(setup):
    chaos, fs, direct, bucket = setup
    direct.pipe_file(f"{bucket}/k", b"v")
    chaos.add(shape(latency=0.2, name="k"))
    assert 0.4 <= timed(lambda: [fs.cat_file(f"{bucket}/k") for _ in range(2)]) < 0.8
    assert timed(lambda: fs.exists(f"{bucket}/other")) < 0.15
    assert chaos.counts()["shape"] == 2


def test_shape_applies_together_with_a_fault(setup):
    chaos, fs, direct, bucket = setup
    direct.pipe_file(f"{bucket}/k", b"v")
    chaos.add(shape(latency=0.01), fail(times=1))
    assert request("GET", object_url(chaos.url, bucket, "k")) == 503
    assert request("GET", object_url(chaos.url, bucket, "k")) == 200
    assert chaos.counts() == {"lose": 0, "fail": 1, "forbid": 0, "stall": 0, "shape": 2}


def test_rules_change_while_clients_are_busy_and_clear_keeps_the_counts(setup):
    chaos, fs, direct, bucket = setup
    direct.pipe_file(f"{bucket}/k", b"v")
    stop, codes = threading.Event(), []

    def poll():
        while not stop.is_set():
            codes.append(request("GET", object_url(chaos.url, bucket, "k")))

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        time.sleep(0.2)
        chaos.add(fail(429))
        time.sleep(0.2)
        chaos.clear()
        time.sleep(0.2)
    finally:
        stop.set()
        poller.join()
    assert codes[0] == 200 and 429 in codes and codes[-1] == 200
    assert chaos.counts()["fail"] == codes.count(429) > 0


def test_a_separate_process_reaches_the_bucket_through_the_proxy(chaos_bucket, chaos_env):
    chaos, url = chaos_bucket
    assert chaos_env["STORAGE_EMULATOR_HOST"] == chaos.url
    chaos.add(lose(create_only=True, times=1))
    code = textwrap.dedent("""
        import sys
        import gcsfs
        fs = gcsfs.GCSFileSystem(token="anon")  # the endpoint comes from STORAGE_EMULATOR_HOST
        try:
            fs.pipe_file(sys.argv[1], b"mine", mode="create")
        except FileExistsError:
            print("lost, then 412 for", fs.cat_file(sys.argv[1]).decode())
    """)
    out = subprocess.run([sys.executable, "-c", code, f"{url}/command.json"], env=chaos_env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "lost, then 412 for mine"
    assert chaos.counts()["lose"] == 1
