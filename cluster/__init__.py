"""The cluster: brokers (`broker`), the metadata quorum and controller (`metadata`), and the
tools that run clusters locally and benchmark them (`tooling`). The Python client
(`semel.client`) and the command line (`semel.cli`) live in subfolders here too but import as
top-level names, since they are what users import and run."""
