"""Where the Redis protocol used to live, kept so that ``from governor.protocol.queue import X``
goes on working (the package, tests, bench/, etc/demo.py and producers' code import from here).

The protocol is in four layers now, each importing only the ones before it: scripts.py
(loading and running the Lua scripts), keys.py (``QueueKeys``: one queue's keys and the script
calls built from them), records.py (what Redis answers, read as untrusted), and the client
(client_base.py, client_ops.py, client.py: ``Client``). New code imports from those.
"""

from governor.protocol.client import (
    DEFAULT_PRIORITY,
    JOB_ID,
    JOB_ID_RULE,
    MAX_DELAY,
    MAX_PRIORITY,
    MAX_RETRIES,
    MAX_TIMEOUT,
    Client,
)
from governor.protocol.client_base import (
    DEFAULT_MAX_PAYLOAD,
    MAX_NAME_BYTES,
    MAX_QUEUES_READ,
    MAX_REGISTRY_BYTES,
    ClientBase,
)
from governor.protocol.client_ops import OPS_BATCH, SEARCH_BATCH, QueueOperations
from governor.protocol.keys import ACK_WAKE, JOB_STATES, NO_RULES, QueueKeys
from governor.protocol.records import (
    FailOutcome,
    NotReplicated,
    Reserved,
    ReserveReply,
    _record,
    lease_of,
    parse_lease,
    partition_count,
    partition_of,
    register_partitions,
    wait_replicas,
)
from governor.protocol.retried import Retried
from governor.protocol.scripts import RESERVE_LANE_KEYS, Call, hash_tag, run, settle_and_reserve

__all__ = [
    "ACK_WAKE", "DEFAULT_MAX_PAYLOAD", "DEFAULT_PRIORITY", "JOB_ID", "JOB_ID_RULE", "JOB_STATES", "MAX_DELAY",
    "MAX_NAME_BYTES", "MAX_PRIORITY", "MAX_QUEUES_READ", "MAX_REGISTRY_BYTES", "MAX_RETRIES", "MAX_TIMEOUT",
    "NO_RULES", "OPS_BATCH", "RESERVE_LANE_KEYS", "SEARCH_BATCH", "Call", "Client", "ClientBase", "FailOutcome",
    "NotReplicated", "QueueKeys", "QueueOperations", "Reserved", "ReserveReply", "Retried", "_record", "hash_tag", "lease_of",
    "parse_lease", "partition_count", "partition_of", "register_partitions", "run", "settle_and_reserve",
    "wait_replicas",
]
