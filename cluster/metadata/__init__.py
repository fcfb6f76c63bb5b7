"""The cluster's metadata: the pure replicated state machine (`state`), its pysyncobj
Raft shell (`quorum`) and the active controller that acts on it (`controller`)."""
