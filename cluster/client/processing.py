"""Exactly-once consume-transform-produce (the equivalent of Kafka Streams `exactly_once_v2`).

    from semel.client.processing import Processor

    def process(record, ctx):                       # called once per input record, in order
        n = int(ctx.store.get(record.key) or b"0") + 1
        ctx.store.put(record.key, str(n).encode())
        ctx.send("counts", str(n).encode(), key=record.key)

    Processor("host:port", group_id="counter", transactional_id="counter-1", input_topics=["words"],
              process=process, state_dir="/var/lib/counter", store_name="counts").run()

How it works:

* One group consumer (read_committed, no auto-commit) and one transactional producer per
  processor (KIP-447: the group's member epoch fences zombies, so one transactional id per
  process is enough; restart a crashed process with the *same* id to fence its zombie and
  abort its open transaction at once).
* Every `commit_interval_ms` (100 ms) the current transaction commits **outputs, state-store
  changelog records and input offsets** together: `send_offsets_to_transaction` with the
  consumer's `group_metadata()`, then `commit_transaction`. A transaction that fails (an
  abortable error, a removed member, a deliberate abort) is aborted and every owned input
  partition is rewound to its committed offset (fetched with require_stable), the store's
  uncommitted writes are dropped: nothing of it is visible and it is redone.
* Rebalances: partitions being revoked are committed first (inside the consumer's
  `on_revoked`); lost partitions (the member was removed) are dropped with their
  uncommitted work. A newly assigned partition starts from its committed offset; the
  consumer waits out a pending transactional commit of the previous owner (UNSTABLE_OFFSET_COMMIT).
* State store (optional): a RocksDB key-value store per input partition
  (`semel.storage.kv`, in `state_dir`), backed by the compacted-by-design changelog topic
  `<group_id>-<store_name>-changelog` (same partition count as the input; changelog partition
  = input partition). Writes go to the changelog inside the transaction and reach RocksDB
  only after the commit, in one RocksDB batch with a *checkpoint*: the changelog offset after
  this transaction's last record. On assignment the store catches up from its checkpoint to
  the changelog's end with read_committed (waiting out open transactions), so a processor that
  restarts on its own state_dir, or gets its partition back, replays only what others wrote
  meanwhile; without a checkpoint (or one outside the changelog) it is wiped and restored from
  the beginning. A commit whose outcome stays unknown re-syncs the stores from their
  checkpoints before the input is rewound, so they hold the transaction's writes if it did
  commit.
* A fenced producer (another process took the transactional id) ends `run()` with
  `ProducerFencedError`: this process is the zombie.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from semel.client import errors as client_errors
from semel.client.consumer import AssignConsumer
from semel.client.group import Consumer
from semel.client.records import ConsumerRecord
from semel.clock import monotonic_ms

log = logging.getLogger("semel.processing")

COMMIT_INTERVAL_MS_DEFAULT = 100
TRANSACTION_TIMEOUT_MS_DEFAULT = 10_000   # a crashed processor's transaction is aborted after this at the latest
RESTORE_TIMEOUT_S = 120.0
_DELETE_HEADER = ("semel.store.op", b"delete")
_FENCED_PRODUCER = (client_errors.ProducerFencedError, client_errors.InvalidProducerEpochError)


class _PartitionStore:
    """The store of one input partition: committed state in RocksDB + this transaction's writes.

    The checkpoint is the changelog offset the RocksDB contents correspond to: every committed
    changelog record below it is applied, none at or above it (records of this processor's
    committed transactions; records of other owners and restores move it too). It is written
    in the same RocksDB batch as the changes, so a crash leaves an older checkpoint with the
    matching state, or newer writes beyond it that a replay from it applies again in order."""

    _OFFSET = b"offset"

    def __init__(self, kv: Any, name: str, tp: tuple[str, int]) -> None:
        from semel.storage.kv import KvStore

        self.kv = kv
        self.ns = KvStore.namespace(f"store/{name}/{tp[0]}/{tp[1]}")
        self.checkpoint_ns = KvStore.namespace(f"checkpoint/{name}/{tp[0]}/{tp[1]}")
        self.pending: dict[bytes, bytes | None] = {}
        self.sent: list[Any] = []  # futures of this transaction's changelog records

    def get(self, key: bytes) -> bytes | None:
        if key in self.pending:
            return self.pending[key]
        return self.kv.get(self.ns, key)

    def checkpoint(self) -> int | None:
        raw = self.kv.get(self.checkpoint_ns, self._OFFSET)
        return None if raw is None else int.from_bytes(raw, "big", signed=True)

    def drop_pending(self) -> None:
        self.pending.clear()
        self.sent.clear()

    def wipe(self) -> None:
        from semel.storage.kv import KvBatch

        batch = KvBatch()
        batch.delete_range(self.ns, b"", None)
        batch.delete(self.checkpoint_ns, self._OFFSET)
        self.kv.write(batch)
        self.drop_pending()

    def apply(self, changes: Iterable[tuple[bytes, bytes | None]], checkpoint: int | None = None,
              forget_checkpoint: bool = False) -> None:
        from semel.storage.kv import KvBatch

        batch = KvBatch()
        for key, value in changes:
            if value is None:
                batch.delete(self.ns, key)
            else:
                batch.put(self.ns, key, value)
        if checkpoint is not None:
            batch.put(self.checkpoint_ns, self._OFFSET, checkpoint.to_bytes(8, "big", signed=True))
        elif forget_checkpoint:
            batch.delete(self.checkpoint_ns, self._OFFSET)
        if len(batch):
            self.kv.write(batch)

    def commit_pending(self) -> None:
        """This transaction committed: its writes reach RocksDB with the checkpoint after its
        last changelog record (unknown offsets: no checkpoint, the next assignment restores all)."""
        checkpoint, forget = None, False
        if self.sent:
            try:
                checkpoint = max(f.result(timeout=0).offset for f in self.sent) + 1
            except Exception:
                forget = True
        self.apply(self.pending.items(), checkpoint, forget)
        self.drop_pending()


class KeyValueStore:
    """What `process` sees as `ctx.store`: the store of the current record's input partition."""

    def __init__(self, processor: Processor, store: _PartitionStore, tp: tuple[str, int]) -> None:
        self._p = processor
        self._store = store
        self._tp = tp

    def get(self, key: bytes | str) -> bytes | None:
        return self._store.get(_b(key))

    def put(self, key: bytes | str, value: bytes | str) -> None:
        k, v = _b(key), _b(value)
        self._store.pending[k] = v
        self._p._send_changelog(self._tp, k, v)

    def delete(self, key: bytes | str) -> None:
        k = _b(key)
        self._store.pending[k] = None
        self._p._send_changelog(self._tp, k, None)


class Context:
    """Passed to `process(record, ctx)`: `send` outputs inside the transaction, `store`."""

    def __init__(self, processor: Processor, record: ConsumerRecord) -> None:
        self._p = processor
        self.record = record
        self.topic_partition: tuple[str, int] = (record.topic, record.partition)

    def send(self, topic: str, value: bytes | str, key: bytes | str | None = None, partition: int | None = None,
             headers: Sequence[tuple[str, bytes]] | None = None) -> None:
        self._p._producer.send(topic, value, key=key, partition=partition, headers=headers)

    @property
    def store(self) -> KeyValueStore:
        store = self._p._stores.get(self.topic_partition)
        if store is None:
            raise client_errors.ConfigError("no state store: pass state_dir and store_name to Processor")
        return KeyValueStore(self._p, store, self.topic_partition)


def _b(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


class Processor:
    """See the module docstring. `run()` blocks until `stop()` (or `idle_exit_s` without input)."""

    def __init__(
        self,
        bootstrap: str | Sequence[str] | None,
        *,
        group_id: str,
        transactional_id: str,
        input_topics: Sequence[str],
        process: Callable[[ConsumerRecord, Context], None],
        commit_interval_ms: int = COMMIT_INTERVAL_MS_DEFAULT,
        state_dir: str | None = None,
        store_name: str | None = None,
        changelog_replication_factor: int | None = None,
        transaction_timeout_ms: int = TRANSACTION_TIMEOUT_MS_DEFAULT,
        abort_hook: Callable[[], bool] | None = None,
        consumer_options: dict[str, Any] | None = None,
        producer_options: dict[str, Any] | None = None,
    ) -> None:
        if (state_dir is None) != (store_name is None):
            raise client_errors.ConfigError("a state store needs both state_dir and store_name")
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.transactional_id = transactional_id
        self.input_topics = list(input_topics)
        self.process = process
        self.commit_interval_ms = commit_interval_ms
        self.store_name = store_name
        self.changelog_topic = f"{group_id}-{store_name}-changelog" if store_name else None
        self.abort_hook = abort_hook
        self.transactions = {"committed": 0, "aborted": 0}
        self._stop = threading.Event()
        self._producer_options = dict(producer_options or {}, transaction_timeout_ms=transaction_timeout_ms)
        self._producer = self._new_producer()
        self._consumer = Consumer(bootstrap, group_id=group_id, isolation_level="read_committed",
                                  auto_offset_reset="earliest", enable_auto_commit=False,
                                  **(consumer_options or {}))
        self._kv: Any = None
        self._stores: dict[tuple[str, int], _PartitionStore] = {}
        if state_dir is not None:
            from semel.storage.kv import KvStore

            self._kv = KvStore.open(state_dir)
            self._ensure_changelog(changelog_replication_factor)
        self._in_txn = False
        self._txn_started_ms = 0

    # --- setup ------------------------------------------------------------------------------------
    def _new_producer(self) -> Any:
        from semel.client import Producer

        producer = Producer(self.bootstrap, transactional_id=self.transactional_id, acks="all",
                            **self._producer_options)
        producer.init_transactions()
        return producer

    def _ensure_changelog(self, replication_factor: int | None) -> None:
        from semel.client import Admin

        assert self.changelog_topic is not None
        with Admin(self.bootstrap) as admin:
            partitions = max(len(self._consumer.partitions_for(t)) for t in self.input_topics)
            try:
                admin.create_topic(self.changelog_topic, partitions, replication_factor)  # None: the cluster's default
            except client_errors.TopicAlreadyExistsError:
                pass

    # --- the loop ------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self, idle_exit_s: float = 0.0) -> None:
        self._consumer.subscribe(self.input_topics, on_assigned=self._on_assigned, on_revoked=self._on_revoked,
                                 on_lost=self._on_lost)
        last_input = time.monotonic()
        try:
            while not self._stop.is_set():
                wait_ms = 100
                if self._in_txn:
                    wait_ms = max(0, int(self.commit_interval_ms - (monotonic_ms() - self._txn_started_ms)))
                try:
                    records = self._consumer.poll(min(wait_ms, 100))
                except (client_errors.RetriableError, client_errors.BrokerUnreachableError) as exc:
                    log.info("poll: %s; retrying", exc)  # e.g. the coordinator moved while adopting partitions
                    time.sleep(0.1)
                    continue
                if records:
                    last_input = time.monotonic()
                    self._process_all(records)
                if self._in_txn and monotonic_ms() - self._txn_started_ms >= self.commit_interval_ms:
                    self._commit()
                if idle_exit_s and not self._in_txn and time.monotonic() - last_input > idle_exit_s:
                    return
        finally:
            self.close()

    def _process_all(self, records: list[ConsumerRecord]) -> None:
        owned = set(self._consumer.assignment())
        for record in records:
            tp = (record.topic, record.partition)
            if tp not in owned:
                continue  # revoked meanwhile
            if not self._in_txn:
                self._producer.begin_transaction()
                self._in_txn = True
                self._txn_started_ms = monotonic_ms()
            try:
                self.process(record, Context(self, record))
            except _FENCED_PRODUCER:
                raise
            except client_errors.SemelError as exc:
                log.warning("processing failed (%s); aborting the transaction", exc)
                self._abort_and_rewind()
                return

    def _send_changelog(self, tp: tuple[str, int], key: bytes, value: bytes | None) -> None:
        assert self.changelog_topic is not None
        headers = [_DELETE_HEADER] if value is None else None
        future = self._producer.send(self.changelog_topic, value or b"", key=key, partition=tp[1], headers=headers)
        self._stores[tp].sent.append(future)

    # --- transactions ------------------------------------------------------------------------------------
    def _commit(self) -> None:
        """Commit outputs + changelog + input offsets, or abort and rewind."""
        if not self._in_txn:
            return
        committing = False
        try:
            offsets = self._consumer.positions()
            # Outputs first: their AddPartitionsToTxn must be done before the offsets join the
            # transaction (an abort racing a retried AddPartitionsToTxn fences the producer).
            self._producer.flush()
            if offsets:
                self._producer.send_offsets_to_transaction(offsets, self._consumer.group_metadata())
            if self.abort_hook is not None and self.abort_hook():
                self._abort_and_rewind()
                return
            committing = True
            self._commit_transaction()
        except _FENCED_PRODUCER:
            raise
        except client_errors.SemelError as exc:
            log.info("transaction failed (%s: %s); aborting and rewinding", type(exc).__name__, exc)
            # a commit that failed may still have committed: then the stores must get its writes
            self._abort_and_rewind(resync_stores=committing)
            return
        self._in_txn = False
        self.transactions["committed"] += 1
        for store in self._stores.values():
            store.commit_pending()

    def _commit_transaction(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                self._producer.commit_transaction()
                return
            except client_errors.RetriableError:  # outcome unknown: committing again is idempotent
                if time.monotonic() >= deadline:
                    raise

    def _abort_and_rewind(self, resync_stores: bool = False) -> None:
        """Abort (or, if the producer is beyond that, replace it), drop uncommitted store writes,
        and rewind every owned partition to its committed offset. `resync_stores`: the
        transaction's outcome is unknown, so the stores catch up from their checkpoints with
        whatever the changelogs committed (the rewound offsets include it if it committed)."""
        if self._in_txn:
            try:
                self._producer.abort_transaction()
            except _FENCED_PRODUCER:
                raise
            except client_errors.SemelError as exc:
                log.info("abort failed (%s); replacing the producer", exc)
                self._replace_producer()
            self.transactions["aborted"] += 1
        self._in_txn = False
        for store in self._stores.values():
            store.drop_pending()
        if resync_stores:
            for tp, store in sorted(self._stores.items()):
                self._restore(store, tp)
        self._rewind(self._consumer.assignment())

    def _replace_producer(self) -> None:
        try:
            self._producer.close(timeout_s=0)
        except Exception:
            pass
        self._producer = self._new_producer()  # init_transactions aborts whatever was open

    def _rewind(self, partitions: Iterable[tuple[str, int]]) -> None:
        parts = sorted(partitions)
        if not parts:
            return
        try:
            committed = self._consumer.committed(parts, timeout_ms=60_000)
        except client_errors.SemelError as exc:  # the member may have been removed: the rebalance resets
            log.info("rewind: cannot fetch committed offsets (%s)", exc)
            return
        for tp in parts:
            if tp not in self._consumer.assignment():
                continue
            offset = committed.get(tp, -1)
            if offset >= 0:
                self._consumer.seek(tp[0], tp[1], offset)
            else:
                self._consumer.seek_to_beginning([tp])

    # --- rebalance callbacks (run inside consumer.poll) -------------------------------------------------
    def _on_revoked(self, partitions: set[tuple[str, int]]) -> None:
        self._commit()  # the outgoing partitions' work commits before they are released
        for tp in partitions:
            self._stores.pop(tp, None)

    def _on_lost(self, partitions: set[tuple[str, int]]) -> None:
        if self._in_txn:  # its offset commit would be fenced: abort; the next owner redoes the work
            try:
                self._producer.abort_transaction()
            except _FENCED_PRODUCER:
                raise
            except client_errors.SemelError:
                self._replace_producer()
            self._in_txn = False
            self.transactions["aborted"] += 1
        for store in self._stores.values():
            store.drop_pending()
        for tp in partitions:
            self._stores.pop(tp, None)

    def _on_assigned(self, partitions: set[tuple[str, int]]) -> None:
        if self._kv is None or self.store_name is None:
            return
        for tp in sorted(partitions):
            store = _PartitionStore(self._kv, self.store_name, tp)
            self._restore(store, tp)
            self._stores[tp] = store

    def _restore(self, store: _PartitionStore, tp: tuple[str, int]) -> None:
        """Bring the store of `tp` up to the committed end of its changelog: replay from its
        checkpoint, or wipe it and replay everything when it has none or the checkpoint is
        outside the changelog (re-created topic, retention)."""
        assert self.changelog_topic is not None
        ctp = (self.changelog_topic, tp[1])
        with AssignConsumer(self.bootstrap, isolation_level="read_uncommitted") as probe:
            probe.assign([ctp])
            probe.seek_to_beginning()
            start = probe.position(*ctp)
            probe.seek_to_end()
            target = probe.position(*ctp)
        checkpoint = store.checkpoint()
        if checkpoint is None or not start <= checkpoint <= target:
            if checkpoint is not None:
                log.info("%s-%d: checkpoint %d outside the changelog [%d, %d]: full restore",
                         ctp[0], ctp[1], checkpoint, start, target)
            store.wipe()
            checkpoint = None
        if checkpoint is not None and checkpoint >= target:
            log.info("%s-%d: store up to date at checkpoint %d", ctp[0], ctp[1], checkpoint)
            return
        if target == start:
            store.apply((), checkpoint=target)
            return
        restored = 0
        with AssignConsumer(self.bootstrap, isolation_level="read_committed", auto_offset_reset="earliest") as reader:
            reader.assign([ctp])
            if checkpoint is None:
                reader.seek_to_beginning()
            else:
                reader.seek(ctp[0], ctp[1], checkpoint)
            deadline = time.monotonic() + RESTORE_TIMEOUT_S
            while reader.position(*ctp) < target:
                if time.monotonic() > deadline:
                    raise client_errors.RequestTimedOutError(
                        f"restoring {ctp}: stuck below {target} (an open transaction?)")
                changes = []
                for r in reader.poll(200):
                    deleted = any(h == _DELETE_HEADER or tuple(h) == _DELETE_HEADER for h in r.headers)
                    changes.append((r.key or b"", None if deleted else r.value))
                store.apply(changes)
                restored += len(changes)
            store.apply((), checkpoint=reader.position(*ctp))
        log.info("restored %s-%d: %d changelog records from %s up to offset %d", ctp[0], ctp[1], restored,
                 "the beginning" if checkpoint is None else f"checkpoint {checkpoint}", target)

    def close(self) -> None:
        """Commit the open transaction (abort if that fails), leave the group, close."""
        try:
            self._commit()
        except Exception as exc:  # fenced: nothing of ours can commit any more
            log.info("final commit failed: %s", exc)
            self._in_txn = False
        try:
            self._consumer.close()
        finally:
            try:
                self._producer.close()
            finally:
                if self._kv is not None:
                    self._kv.close()
                    self._kv = None
