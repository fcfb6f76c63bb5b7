#!/usr/bin/env node
// A Semel client over raw gRPC in Node.js, written from docs/protocol.md alone: no Semel
// client library, the services and messages loaded at run time from proto/semel/v1/*.proto.
//
//   1. Metadata and CreateTopics; keyed records go to murmur2(key) partitions (protocol.md,
//      "Key partitioning"), checked against the doc's test vectors first.
//   2. An idempotent producer: InitProducerId without a transactional id, one batch per
//      partition with per-partition sequences from 0; a resent batch answers its original
//      offsets with duplicate = true.
//   3. A transactional producer: FindCoordinator, InitProducerId, AddPartitionsToTxn,
//      TRANSACTIONAL batches, EndTxn(commit); then a second transaction, aborted. EndTxn
//      answers the identity of the next transaction (sequences restart at 0).
//   4. Wait until every partition is stable (LSO = HW), then read READ_COMMITTED from offset 0
//      and from the middle of a batch (the broker answers whole batches: the client skips the
//      records below its position), and READ_UNCOMMITTED: assert what each sees.
//
// Run it against a cluster (`make up` in another terminal):
//
//   cd docs/examples/node && npm ci && node transaction.js --bootstrap 127.0.0.1:9092
//
// It prints each step and exits 0 once every check held (1 otherwise).
// tests/cluster/test_protocol_example_node.py runs it in CI.
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', '..', 'proto');
const PROTO_FILES = ['admin', 'broker', 'common', 'txn'].map((n) => `semel/v1/${n}.proto`);
const MAX_MESSAGE_BYTES = 16 * 1024 * 1024; // protocol.md, "Limits": MAX_REQUEST_BYTES

// longs: Number is exact below 2^53 (offsets, producer ids of this example); a long-lived client
// would use String or BigInt. defaults: true fills the fields the wire leaves out (0, NONE, []).
const LOADER_OPTIONS = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
  includeDirs: [PROTO_ROOT] };
const semel = grpc.loadPackageDefinition(protoLoader.loadSync(PROTO_FILES, LOADER_OPTIONS)).semel.v1;

// The `records` bytes of a RecordBatch are a serialized `semel.v1.Records` message: gRPC stubs
// only carry them, so encode and decode them with protobufjs from the same .proto file.
const root = new protobuf.Root();
root.resolvePath = (_origin, target) => path.join(PROTO_ROOT, target);
root.loadSync('semel/v1/common.proto', { keepCase: true });
const Records = root.lookupType('semel.v1.Records');
const ControlRecord = root.lookupType('semel.v1.ControlRecord');

const TRANSACTIONAL = 0x10;
const CONTROL = 0x20;

// --- errors and retries (protocol.md, "Channels and errors" and "Retry budgets") ----------------

// The retriable codes of common.proto this example can meet. After the ones in REFRESH the
// partition leader may have moved: look it up again.
const RETRIABLE = new Set(['NOT_LEADER_OR_FOLLOWER', 'LEADER_NOT_AVAILABLE', 'UNKNOWN_TOPIC_OR_PARTITION',
  'FENCED_LEADER_EPOCH', 'UNKNOWN_LEADER_EPOCH', 'NOT_ENOUGH_REPLICAS', 'NOT_ENOUGH_REPLICAS_AFTER_APPEND',
  'REQUEST_TIMED_OUT', 'NOT_COORDINATOR', 'COORDINATOR_NOT_AVAILABLE', 'COORDINATOR_LOAD_IN_PROGRESS',
  'CONCURRENT_TRANSACTIONS', 'BROKER_NOT_AVAILABLE', 'REPLICA_NOT_AVAILABLE', 'STORAGE_ERROR',
  'RESOURCE_EXHAUSTED', 'METADATA_QUORUM_UNAVAILABLE']);
const TOTAL_BUDGET_MS = 60_000; // one call's retries give up after this (protocol.md, "Retry budgets")

class Failed extends Error {}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const step = (text) => console.log(`- ${text}`);

function check(condition, message) {
  if (!condition) throw new Failed(message);
}

function expectOk(result, what) {
  if (result.error_code !== 'NONE') throw new Failed(`${what}: ${result.error_code}: ${result.error_message}`);
}

// Promisified unary call with a gRPC deadline. The deadline bounds the wait of *this* attempt
// and must exceed the request's own timeout_ms (protocol.md, "Timeouts and deadlines").
function call(client, method, request, deadlineMs = 15_000) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: new Date(Date.now() + deadlineMs) }, (err, resp) => {
      if (err) reject(err); else resolve(resp);
    });
  });
}

// Run `attempt()` (which answers a response or a per-partition result) until it answers a code
// that is not retriable, with the backoff protocol.md recommends: CONCURRENT_TRANSACTIONS from
// 20 ms doubling to 100 ms, other codes and transport errors from 100 ms doubling to 1 s; the
// whole call gives up after TOTAL_BUDGET_MS. `onRetry(code)` may drop a cached leader or
// coordinator before the next attempt.
async function untilFinal(what, attempt, onRetry = () => {}) {
  const giveUp = Date.now() + TOTAL_BUDGET_MS;
  let failures = 0;
  for (;;) {
    let code;
    let why;
    try {
      const result = await attempt();
      if (!RETRIABLE.has(result.error_code)) return result;
      code = result.error_code;
      why = `${code}: ${result.error_message}`;
    } catch (err) {
      if (err instanceof Failed || err.code === undefined) throw err;
      code = 'TRANSPORT';
      why = `transport: ${grpc.status[err.code]} ${err.details}`;
    }
    onRetry(code);
    console.log(`  (retrying ${what}: ${why})`);
    failures += 1;
    const backoff = code === 'CONCURRENT_TRANSACTIONS'
      ? Math.min(100, 20 * 2 ** (failures - 1))
      : Math.min(1000, 100 * 2 ** (failures - 1));
    if (Date.now() + backoff > giveUp) throw new Failed(`${what}: still failing after ${TOTAL_BUDGET_MS} ms (${why})`);
    await sleep(backoff);
  }
}

// --- murmur2 key partitioning (protocol.md, "Key partitioning") --------------------------------

// Kafka's murmur2 as a signed 32-bit int. Math.imul keeps the products in 32 bits.
function murmur2(data) {
  const m = 0x5bd1e995;
  const length = data.length;
  let h = (0x9747b28c ^ length) | 0;
  const blocksEnd = length & ~3;
  for (let i = 0; i < blocksEnd; i += 4) {
    let k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24);
    k = Math.imul(k, m);
    k ^= k >>> 24;
    k = Math.imul(k, m);
    h = Math.imul(h, m) ^ k;
  }
  const rest = length & 3;
  if (rest === 3) h ^= data[blocksEnd + 2] << 16;
  if (rest >= 2) h ^= data[blocksEnd + 1] << 8;
  if (rest >= 1) {
    h ^= data[blocksEnd];
    h = Math.imul(h, m);
  }
  h ^= h >>> 13;
  h = Math.imul(h, m);
  h ^= h >>> 15;
  return h | 0;
}

const partitionForKey = (key, partitionCount) => (murmur2(key) & 0x7fffffff) % partitionCount;

// The test vectors of protocol.md (tests/cluster/test_protocol_doc.py checks them against the
// Python client): a port to another language checks itself against these before use.
const MURMUR2_VECTORS = [['21', -973932308], ['foobar', -790332482], ['a-little-bit-long-string', -985981536],
  ['abc', 479470107], ['', 275646681]];

// --- the cluster ------------------------------------------------------------------------------

class Cluster {
  constructor(bootstrap) {
    this.bootstrap = bootstrap;
    this.clients = new Map(); // `${service}@${address}` -> client
    this.leaders = new Map(); // `${topic}/${partition}` -> address
  }

  client(Service, address) {
    const key = `${Service.serviceName}@${address}`;
    if (!this.clients.has(key)) {
      this.clients.set(key, new Service(address, grpc.credentials.createInsecure(), {
        'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
        'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
      }));
    }
    return this.clients.get(key);
  }

  close() {
    for (const c of this.clients.values()) c.close();
  }

  // The leader's address of every partition of `topic` (waits while one has none).
  async refreshLeaders(topic) {
    const md = await untilFinal(`Metadata(${topic})`, async () => {
      const resp = await call(this.client(semel.Broker, this.bootstrap), 'Metadata', { topics: [topic] });
      const t = resp.topics[0];
      if (t.error_code !== 'NONE') return t;
      const missing = t.partitions.find((p) => p.leader_id < 0);
      return missing !== undefined ? missing : { error_code: 'NONE', resp };
    });
    const brokers = new Map(md.resp.brokers.map((b) => [b.broker_id, `${b.host}:${b.port}`]));
    const partitions = md.resp.topics[0].partitions;
    for (const p of partitions) this.leaders.set(`${topic}/${p.partition}`, brokers.get(p.leader_id));
    return partitions.length;
  }

  async leader(topic, partition) {
    const key = `${topic}/${partition}`;
    if (!this.leaders.has(key)) await this.refreshLeaders(topic);
    return this.leaders.get(key);
  }

  forgetLeader(topic, partition) {
    this.leaders.delete(`${topic}/${partition}`);
  }

  // One batch to one partition, retried unchanged (same producer id, epoch, sequence) until a
  // final answer: a retry of a batch that was written answers its original offsets, duplicate.
  async produce(topic, partition, batch, transactionalId = '') {
    const request = { acks: 'ACKS_ALL', timeout_ms: 10_000, transactional_id: transactionalId,
      partitions: [{ topic, partition, batch }] };
    return untilFinal(`Produce to ${topic}-${partition}`, async () => {
      const leader = await this.leader(topic, partition);
      const resp = await call(this.client(semel.Broker, leader), 'Produce', request, 15_000);
      return resp.results[0];
    }, () => this.forgetLeader(topic, partition));
  }

  async fetch(topic, partition, offset, isolation) {
    return untilFinal(`Fetch ${topic}-${partition}`, async () => {
      const leader = await this.leader(topic, partition);
      const resp = await call(this.client(semel.Broker, leader), 'Fetch', {
        isolation_level: isolation, max_wait_ms: 0, min_bytes: 0, max_bytes: 1 << 20,
        partitions: [{ topic, partition, fetch_offset: offset, max_bytes: 1 << 20 }] });
      return resp.results[0];
    }, () => this.forgetLeader(topic, partition));
  }
}

// A data batch of `values` (optionally keyed) for one producer identity and sequence.
function dataBatch(entries, { producerId = -1, producerEpoch = -1, baseSequence = -1, transactional = false }) {
  const now = Date.now();
  const records = Records.encode(Records.fromObject({ records: entries.map(([key, value], i) => ({
    offset_delta: i, timestamp_delta_ms: 0, key: key ?? Buffer.alloc(0), value, headers: [] })) })).finish();
  return { last_offset_delta: entries.length - 1, record_count: entries.length,
    attributes: transactional ? TRANSACTIONAL : 0, producer_id: producerId, producer_epoch: producerEpoch,
    base_sequence: baseSequence, base_timestamp_ms: now, max_timestamp_ms: now, records: Buffer.from(records) };
}

// --- producers --------------------------------------------------------------------------------

class IdempotentProducer {
  constructor(cluster) {
    this.c = cluster;
    this.sequences = new Map(); // `${topic}/${partition}` -> next base_sequence
  }

  async init() {
    // Any broker answers; COORDINATOR_NOT_AVAILABLE ("no producer id block yet") is retried.
    const init = await untilFinal('InitProducerId (idempotent)', () => call(
      this.c.client(semel.Transactions, this.c.bootstrap), 'InitProducerId',
      { transactional_id: '', transaction_timeout_ms: 0, producer_id: -1, producer_epoch: -1 }));
    expectOk(init, 'InitProducerId');
    this.producerId = init.producer_id;
    this.epoch = init.producer_epoch;
  }

  nextBatch(topic, partition, entries) {
    const key = `${topic}/${partition}`;
    const baseSequence = this.sequences.get(key) ?? 0;
    this.sequences.set(key, (baseSequence + entries.length) % 2 ** 31);
    return dataBatch(entries, { producerId: this.producerId, producerEpoch: this.epoch, baseSequence });
  }
}

class TransactionalProducer {
  constructor(cluster, transactionalId) {
    this.c = cluster;
    this.tid = transactionalId;
    this.coordinatorAddress = null;
    this.sequences = new Map();
  }

  async coordinator() {
    if (this.coordinatorAddress === null) {
      const found = await untilFinal('FindCoordinator', () => call(this.c.client(semel.Transactions, this.c.bootstrap),
        'FindCoordinator', { key: this.tid, key_type: 'TRANSACTION' }));
      expectOk(found, 'FindCoordinator');
      this.coordinatorAddress = `${found.host}:${found.port}`;
    }
    return this.c.client(semel.Transactions, this.coordinatorAddress);
  }

  // A call to the coordinator: NOT_COORDINATOR / COORDINATOR_NOT_AVAILABLE / a transport error
  // mean "find it again" (cheap: FindCoordinator answers the same broker if nothing moved).
  async atCoordinator(what, method, request) {
    return untilFinal(what, async () => call(await this.coordinator(), method, request, 15_000), (code) => {
      if (code === 'NOT_COORDINATOR' || code === 'COORDINATOR_NOT_AVAILABLE' || code === 'TRANSPORT') {
        this.coordinatorAddress = null;
      }
    });
  }

  async init() {
    const init = await this.atCoordinator('InitProducerId', 'InitProducerId', {
      transactional_id: this.tid, transaction_timeout_ms: 60_000, producer_id: -1, producer_epoch: -1 });
    expectOk(init, 'InitProducerId');
    this.producerId = init.producer_id;
    this.epoch = init.producer_epoch;
  }

  async addPartitions(partitions) {
    const added = await this.atCoordinator('AddPartitionsToTxn', 'AddPartitionsToTxn', {
      transactional_id: this.tid, producer_id: this.producerId, producer_epoch: this.epoch,
      partitions: partitions.map(([topic, partition]) => ({ topic, partition })) });
    expectOk(added, 'AddPartitionsToTxn');
  }

  async send(topic, partition, entries) {
    const key = `${topic}/${partition}`;
    const baseSequence = this.sequences.get(key) ?? 0;
    const batch = dataBatch(entries, { producerId: this.producerId, producerEpoch: this.epoch, baseSequence,
      transactional: true });
    const result = await this.c.produce(topic, partition, batch, this.tid);
    expectOk(result, `transactional Produce to ${key}`);
    this.sequences.set(key, (baseSequence + entries.length) % 2 ** 31);
    return result;
  }

  async end(commit) {
    const ended = await this.atCoordinator('EndTxn', 'EndTxn', {
      transactional_id: this.tid, producer_id: this.producerId, producer_epoch: this.epoch, commit });
    expectOk(ended, `EndTxn(commit=${commit})`);
    // KIP-890: every transaction end bumps the epoch; sequences restart at 0 under it.
    this.producerId = ended.producer_id;
    this.epoch = ended.producer_epoch;
    this.sequences.clear();
  }
}

// --- consuming --------------------------------------------------------------------------------

// Every record from `from` up to the LSO (read_committed) or HW, as "key=value" strings, and
// how many control batches and records below `from` were skipped on the way.
async function readAll(cluster, topic, partition, { committed, from = 0 }) {
  const isolation = committed ? 'READ_COMMITTED' : 'READ_UNCOMMITTED';
  let position = from;
  const out = [];
  let markers = 0;
  let skippedBelow = 0;
  for (;;) {
    const r = await cluster.fetch(topic, partition, position, isolation);
    expectOk(r, `Fetch ${topic}-${partition}`);
    for (const b of r.batches) {
      if (b.attributes & CONTROL) {
        check(!committed, `${topic}-${partition}: read_committed returned a control batch`);
        ControlRecord.decode(b.records); // a marker: COMMIT or ABORT, nothing for the application
        markers += 1;
        continue;
      }
      for (const rec of Records.decode(b.records).records) {
        const offset = b.base_offset + rec.offset_delta;
        if (offset < position) { // the first batch may start before fetch_offset: skip
          skippedBelow += 1;
          continue;
        }
        out.push(`${Buffer.from(rec.key).toString()}=${Buffer.from(rec.value).toString()}`);
      }
    }
    const end = committed ? r.last_stable_offset : r.high_watermark;
    if (r.next_fetch_offset <= position || r.next_fetch_offset >= end) return { values: out, markers, skippedBelow };
    position = r.next_fetch_offset;
  }
}

// EndTxn answers before every marker is written; wait until the partition has no open
// transaction (LSO = HW) before reading what a transaction wrote.
async function waitUntilStable(cluster, topic, partition, timeoutMs = 20_000) {
  const giveUp = Date.now() + timeoutMs;
  for (;;) {
    const r = await cluster.fetch(topic, partition, 0, 'READ_COMMITTED');
    expectOk(r, `Fetch ${topic}-${partition}`);
    if (r.last_stable_offset === r.high_watermark) return r.high_watermark;
    check(Date.now() < giveUp, `${topic}-${partition}: LSO ${r.last_stable_offset} below HW ${r.high_watermark}`);
    await sleep(50);
  }
}

// --- main ----------------------------------------------------------------------------------------

async function main(bootstrap) {
  for (const [text, want] of MURMUR2_VECTORS) {
    check(murmur2(Buffer.from(text)) === want, `murmur2(${JSON.stringify(text)}) = ${murmur2(Buffer.from(text))}, want ${want}`);
  }
  step(`murmur2 matches the ${MURMUR2_VECTORS.length} test vectors of docs/protocol.md`);

  const c = new Cluster(bootstrap);
  try {
    const suffix = `${Date.now()}`;
    const topic = `node-orders-${suffix}`;
    const created = await call(c.client(semel.Admin, bootstrap), 'CreateTopics',
      { topics: [{ name: topic, partitions: 3, configs: { min_insync_replicas: '1' } }], timeout_ms: 10_000 }, 30_000);
    expectOk(created.results[0], `CreateTopics ${topic}`);
    const partitionCount = await c.refreshLeaders(topic);
    check(partitionCount === 3, `${topic} has ${partitionCount} partitions, expected 3`);
    step(`created ${topic} with ${partitionCount} partitions`);

    // Every partition gets records: pick keys by where murmur2 sends them.
    const keys = [];
    for (let i = 0; keys.length < partitionCount; i += 1) {
      const key = `customer-${i}`;
      if (partitionForKey(Buffer.from(key), partitionCount) === keys.length) keys.push(key);
    }
    const expected = new Map([...Array(partitionCount).keys()].map((p) => [p, []]));

    // 2. the idempotent producer
    const idem = new IdempotentProducer(c);
    await idem.init();
    step(`idempotent producer: id ${idem.producerId}, epoch ${idem.epoch}`);
    for (const [p, key] of keys.entries()) {
      const entries = [[Buffer.from(key), Buffer.from(`order-${p}-a`)], [Buffer.from(key), Buffer.from(`order-${p}-b`)]];
      const batch = idem.nextBatch(topic, p, entries);
      const first = await c.produce(topic, p, batch);
      expectOk(first, `Produce to ${topic}-${p}`);
      check(!first.duplicate, 'a first attempt is not a duplicate');
      const again = await c.produce(topic, p, batch); // a retry after a lost answer, say
      expectOk(again, `resent Produce to ${topic}-${p}`);
      check(again.duplicate && again.base_offset === first.base_offset,
        `the resent batch answered base_offset ${again.base_offset} duplicate=${again.duplicate}, ` +
        `expected ${first.base_offset} duplicate=true`);
      expected.get(p).push(...entries.map(([k, v]) => `${k}=${v}`));
    }
    step(`idempotent: ${partitionCount} batches of 2 written once each; each resend answered duplicate with its original offsets`);

    // 3. transactions: one committed, one aborted
    const txn = new TransactionalProducer(c, `node-payments-${suffix}`);
    await txn.init();
    step(`InitProducerId(${txn.tid}): producer id ${txn.producerId}, epoch ${txn.epoch}`);
    const all = keys.map((_, p) => [topic, p]);

    await txn.addPartitions(all);
    for (const [p, key] of keys.entries()) {
      await txn.send(topic, p, [[Buffer.from(key), Buffer.from(`paid-${p}`)]]);
      expected.get(p).push(`${key}=paid-${p}`);
    }
    const firstEpoch = txn.epoch;
    await txn.end(true);
    check(txn.epoch > firstEpoch, 'EndTxn answers a bumped epoch');
    step(`transaction 1 committed; next epoch ${txn.epoch}`);

    await txn.addPartitions(all);
    for (const [p, key] of keys.entries()) await txn.send(topic, p, [[Buffer.from(key), Buffer.from(`refund-${p}`)]]);
    await txn.end(false);
    step(`transaction 2 aborted; next epoch ${txn.epoch}`);

    // 4. read back
    for (let p = 0; p < partitionCount; p += 1) {
      const hw = await waitUntilStable(c, topic, p);
      const committed = await readAll(c, topic, p, { committed: true });
      check(JSON.stringify(committed.values) === JSON.stringify(expected.get(p)),
        `read_committed ${topic}-${p}: ${JSON.stringify(committed.values)}, expected ${JSON.stringify(expected.get(p))}`);
      // From the second record of the idempotent batch: the batch comes back whole, from its
      // first record; the client skips the one below its position.
      const middle = await readAll(c, topic, p, { committed: true, from: 1 });
      check(middle.skippedBelow === 1 && JSON.stringify(middle.values) === JSON.stringify(expected.get(p).slice(1)),
        `read_committed ${topic}-${p} from offset 1: ${JSON.stringify(middle.values)}, skipped ${middle.skippedBelow}`);
      const everything = await readAll(c, topic, p, { committed: false });
      check(everything.values.length === 4 && everything.markers === 2,
        `read_uncommitted ${topic}-${p}: ${JSON.stringify(everything.values)}, ${everything.markers} marker(s), HW ${hw}`);
    }
    step('read_committed sees the idempotent records and transaction 1, never transaction 2 nor a marker');
    step('a fetch from inside a batch returns the whole batch; the records below the position were skipped');
    step('read_uncommitted sees both transactions and their 2 markers per partition');
  } finally {
    c.close();
  }
}

function parseBootstrap(argv) {
  const i = argv.indexOf('--bootstrap');
  const value = i >= 0 ? argv[i + 1] : '127.0.0.1:9092';
  if (!value) throw new Failed('--bootstrap needs HOST:PORT');
  return value.split(',')[0];
}

main(parseBootstrap(process.argv.slice(2))).then(() => {
  console.log('ok');
}, (err) => {
  console.error(err instanceof Failed ? `FAILED: ${err.message}` : `FAILED: ${err.stack || err}`);
  process.exitCode = 1;
});
