"""Tools around a cluster rather than inside it: the local process supervisor behind
`semel cluster up` and the test harness (`local_cluster`), and the client benchmark driver
(`bench`)."""
