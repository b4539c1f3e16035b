"""Reading a KV bucket: the follower, and the race-free history and key readers."""

from __future__ import annotations

import asyncio

from nats.js.api import KeyValueConfig

from psvn import devnet
from psvn.backbone.kvwatch import KVFollower, read_history, read_keys
from tests.conftest import Network


async def test_history_and_keys_read_every_entry_by_sequence(network: Network) -> None:
    nc = await devnet.broker_connect(network.layout, network.nats.url)
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(KeyValueConfig(bucket="t_kvwatch", history=5))
        assert await read_history(js, "t_kvwatch", "a") == []
        assert await read_keys(js, "t_kvwatch") == []
        for i in range(7):
            await kv.put("a", f"a{i}".encode())
        await kv.put("b", b"b0")
        await kv.put("c", b"c0")
        await kv.delete("c")

        history = await read_history(js, "t_kvwatch", "a")
        # the bucket keeps 5 per key, oldest first, revisions rising, each value intact
        assert [e.value for e in history] == [b"a2", b"a3", b"a4", b"a5", b"a6"]
        assert [e.revision for e in history] == sorted(e.revision for e in history)
        assert not any(e.deleted for e in history)
        deleted = await read_history(js, "t_kvwatch", "c")
        assert [(e.value or b"", e.deleted) for e in deleted] == [(b"c0", False), (b"", True)]
        assert await read_keys(js, "t_kvwatch") == ["a", "b"]  # the deleted key is not live

        # repeated reads are exact every time (nats-py's watcher-based history was not)
        for _ in range(20):
            assert len(await read_history(js, "t_kvwatch", "a")) == 5

        seen: dict[str, bytes | None] = {}
        follower = KVFollower()
        await follower.follow(js, "t_kvwatch", lambda k, v, _rev: seen.__setitem__(k, v))
        assert seen == {"a": b"a6", "b": b"b0", "c": None}
        await kv.put("b", b"b1")
        for _ in range(200):
            if seen["b"] == b"b1":
                break
            await asyncio.sleep(0.01)
        assert seen["b"] == b"b1"
        await follower.stop()
    finally:
        await nc.close()
