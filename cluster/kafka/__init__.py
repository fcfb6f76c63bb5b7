"""The Kafka-protocol listener of a broker (issue 17): existing Kafka clients, unchanged.

`listener` frames and orders requests per connection, `codec` decodes and encodes them with
kio (Kafka's own schemas), `handlers` serves each API over the broker's replica manager,
metadata quorum and coordinators, `errors` maps Semel's error codes to Kafka's. Started by
`semel.cluster.broker.process` when the broker has `--kafka-listen`; nothing else imports it.
Served APIs and versions, and what differs from Apache Kafka: docs/kafka.md.
"""
